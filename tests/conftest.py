"""Shared fixtures: a real broker process, the tiny model, and one real serving process per session.

Everything here starts real components: Tansu (the embedded Kafka-compatible broker), and
`rlhf serve --model tiny` (FastAPI + vLLM AsyncLLM) as a subprocess on a free port.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

ROOT = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def tiny_model_path() -> Path:
    from rlhf.models.registry import resolve_model

    return resolve_model("tiny")


@pytest.fixture(scope="session")
def broker():
    """A real Tansu broker on a free port; yields its bootstrap address `host:port`."""
    from feedback.broker import start_broker, stop_broker

    port = free_port()
    proc = start_broker(port)
    yield f"127.0.0.1:{port}"
    stop_broker(proc)


@pytest.fixture(scope="session")
def broker_proc():
    """Like `broker` but yields (bootstrap, Popen) for tests that pause the process."""
    from feedback.broker import start_broker, stop_broker

    port = free_port()
    proc = start_broker(port)
    yield f"127.0.0.1:{port}", proc
    stop_broker(proc)


class ServerProcess:
    def __init__(self, env: dict, log_path: Path):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.env = {**os.environ, **env, "RLHF_PORT": str(self.port), "RLHF_HOST": "127.0.0.1"}
        self.log_path = log_path
        self.proc: subprocess.Popen | None = None

    def start(self, timeout: float = 600.0) -> "ServerProcess":
        log = open(self.log_path, "ab")
        self.proc = subprocess.Popen([sys.executable, "-m", "rlhf.cli", "serve"], env=self.env,
                                     stdout=log, stderr=subprocess.STDOUT, cwd=ROOT)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited early ({self.proc.returncode}); log:\n{self.tail()}")
            try:
                if httpx.get(self.url + "/readyz", timeout=2).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.5)
        self.stop()
        raise RuntimeError(f"server not ready within {timeout:.0f} s; log:\n{self.tail()}")

    def tail(self, n: int = 60) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return ""

    def stop(self, timeout: float = 30.0) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


@pytest.fixture(scope="session")
def server_factory(tmp_path_factory, tiny_model_path):
    """Start extra serving processes (tiny model) with given RLHF_* overrides; all stopped at the end."""
    started: list[ServerProcess] = []

    def make(start_timeout: float = 600.0, **env) -> ServerProcess:
        d = tmp_path_factory.mktemp("serve")
        base = {"RLHF_MODEL": "tiny", "RLHF_DATA_DIR": str(d / "data"), "RLHF_ADAPTER_DIR": str(d / "adapters"),
                "RLHF_MAX_MODEL_LEN": "512", "RLHF_LOG_LEVEL": "INFO"}
        s = ServerProcess({**base, **{k: str(v) for k, v in env.items()}}, d / "server.log")
        started.append(s)
        return s.start(start_timeout)

    yield make
    for s in started:
        s.stop()


@pytest.fixture(scope="session")
def server(server_factory, broker):
    """The session's shared serving process (tiny model), wired to the session broker."""
    return server_factory(RLHF_KAFKA_BOOTSTRAP=broker, RLHF_FEEDBACK_RATE_LIMIT=100000)


@pytest.fixture(scope="session")
def openai_client(server):
    from openai import OpenAI

    return OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0, timeout=60)
