"""Fixtures for serving with authenticated callers: a keys file, `rlhf keys` run as the real
command line, and one serving process with RLHF_AUTH=api-key shared by the modules that need it
(tests/conftest.py has the session's development-mode server)."""

from __future__ import annotations

import os
import secrets
import subprocess
import sys

import httpx
import pytest

from harness.waiting import wait_until
from tests.conftest import ROOT


def rlhf_keys(keys_file, *args: str) -> subprocess.CompletedProcess:
    """`rlhf keys ARGS` as an operator runs it, on `keys_file`."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("RLHF_")}
    return subprocess.run([sys.executable, "-m", "rlhf.cli", "keys", *args], cwd=ROOT, capture_output=True,
                          text=True, timeout=60, env={**env, "RLHF_API_KEYS_FILE": str(keys_file)})


def bearer(credential: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {credential}"}


@pytest.fixture(scope="session")
def keys_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("keys") / "api-keys"
    path.touch()  # no clients yet: serving starts and lets nobody in
    return path


@pytest.fixture(scope="session")
def api_key_server(server_factory, broker, keys_file):
    """Serving as in production: API keys, no development mode, a real HMAC key; generous quotas."""
    return server_factory(shared=True, RLHF_KAFKA_BOOTSTRAP=broker, RLHF_AUTH="api-key", RLHF_DEV_MODE="false",
                          RLHF_HMAC_KEY=secrets.token_hex(32), RLHF_API_KEYS_FILE=keys_file,
                          RLHF_FEEDBACK_RATE_LIMIT=100000)


@pytest.fixture(scope="session")
def new_client(api_key_server, keys_file):
    """new_client(NAME) -> the key `rlhf keys add NAME` printed, once serving lets it in."""

    def make(name: str) -> str:
        r = rlhf_keys(keys_file, "add", name)
        assert r.returncode == 0, r.stderr
        key = r.stdout.splitlines()[-1]
        # serving looks at the file at most once a second: poll until it has seen the new line
        wait_until(lambda: httpx.get(api_key_server.url + "/v1/models", headers=bearer(key), timeout=10)
                   .status_code == 200, 15, 0.2, f"serving accepts the key of {name}")
        return key

    return make
