"""Shared fixtures: a real broker process, the tiny model, and one real serving process per session.

Everything here starts real components: Tansu (the embedded Kafka-compatible broker), and
`rlhf serve --model tiny` (FastAPI + vLLM AsyncLLM) as a subprocess on a port of its own
(harness.server: started again on a fresh port if another process takes that one first).

Each serving process holds 2-2.5 GB (its vLLM engine), so one a module starts is stopped when that
module ends; only the session's shared ones (`server_factory(..., shared=True)`) live on.
"""

from __future__ import annotations

import socket
import subprocess
import sys
from pathlib import Path

import pytest
from openai import OpenAI

from harness.broker import start_broker
from harness.server import ServerProcess
from rlhf.models.registry import resolve_model

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def tiny_model_path() -> Path:
    return resolve_model("tiny")


@pytest.fixture(scope="session")
def broker(tmp_path_factory):
    """A real Tansu broker on a port of its own; yields its bootstrap address `host:port`."""
    b = start_broker(tmp_path_factory.mktemp("broker") / "broker.log")
    yield b.bootstrap
    b.stop()


@pytest.fixture
def nowhere() -> str:
    """`host:port` where nothing listens for as long as the test runs: the socket is bound, so no
    other process can take the port (a closed port could get a server meanwhile), but never
    listens, so every connection is refused."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        yield "127.0.0.1:%d" % s.getsockname()[1]


@pytest.fixture(scope="session")
def control_env(tmp_path_factory) -> dict[str, str]:
    """The keys every process of the session shares (a development deployment's, made by the real
    `rlhf adapters keygen`): a signing key pair for routing events, and serving's event HMAC key."""
    folder = tmp_path_factory.mktemp("control-keys")
    r = subprocess.run([sys.executable, "-m", "rlhf.cli", "adapters", "keygen", str(folder)], cwd=ROOT,
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    key_id = r.stdout.splitlines()[-1]
    return {"RLHF_SIGNING_KEY_FILE": str(folder / f"{key_id}.key"), "RLHF_TRUSTED_KEYS": str(folder / f"{key_id}.pub"),
            "RLHF_EVENT_HMAC_KEY": "tests: the event hmac key of the session, 32+ chars"}


@pytest.fixture(scope="session")
def started_servers() -> list[tuple[ServerProcess, bool]]:
    """Every serving process `server_factory` started, each with whether the session shares it."""
    return []


@pytest.fixture(scope="module", autouse=True)
def stop_module_servers(started_servers):
    """At the end of each module, stop the serving processes it started that the session does not share."""
    first = len(started_servers)
    yield
    for s, shared in started_servers[first:]:
        if not shared:
            s.stop()


@pytest.fixture(scope="session")
def server_factory(tmp_path_factory, tiny_model_path, control_env, started_servers):
    """Start extra serving processes (tiny model) with given RLHF_* overrides. One is stopped at the end
    of the module that started it, or with `shared=True` at the end of the session."""

    def make(start_timeout: float = 600.0, *, shared: bool = False, **env) -> ServerProcess:
        d = tmp_path_factory.mktemp("serve")
        base = {"RLHF_MODEL": "tiny", "RLHF_DATA_DIR": str(d / "data"), "RLHF_ADAPTER_DIR": str(d / "adapters"),
                "RLHF_MAX_MODEL_LEN": "512", "RLHF_LOG_LEVEL": "INFO", **control_env}
        s = ServerProcess({**base, **{k: str(v) for k, v in env.items()}}, d / "server.log")
        started_servers.append((s, shared))
        return s.start(start_timeout)

    yield make
    for s, _ in started_servers:
        s.stop()


@pytest.fixture(scope="session")
def server(server_factory, broker):
    """The session's shared serving process (tiny model), wired to the session broker."""
    return server_factory(shared=True, RLHF_KAFKA_BOOTSTRAP=broker, RLHF_FEEDBACK_RATE_LIMIT=100000)


@pytest.fixture(scope="session")
def openai_client(server):
    return OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0, timeout=60)
