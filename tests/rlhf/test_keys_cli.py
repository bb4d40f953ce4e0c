"""`rlhf keys add|list|revoke`, run as the real command line (a subprocess per call)."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from serving.api_keys import hash_key
from tests.conftest import ROOT


def rlhf_keys(keys_file, *args: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("RLHF_")}
    if keys_file is not None:
        env["RLHF_API_KEYS_FILE"] = str(keys_file)
    return subprocess.run([sys.executable, "-m", "rlhf.cli", "keys", *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=60)


@pytest.fixture
def keys_file(tmp_path):
    return tmp_path / "api-keys"


def test_add_prints_the_key_once_as_its_last_line(keys_file):
    r = rlhf_keys(keys_file, "add", "acme")
    assert r.returncode == 0, r.stderr
    key = r.stdout.splitlines()[-1]
    assert key.startswith("rlhf-") and len(key) >= 40
    assert key not in r.stderr  # the notes do not repeat it
    stored = keys_file.read_text()
    assert key not in stored and hash_key(key) in stored
    listed = rlhf_keys(keys_file, "list")
    assert listed.returncode == 0 and key not in listed.stdout + listed.stderr


def test_list_shows_names_creation_and_revocation(keys_file):
    for name in ("acme", "beta"):
        assert rlhf_keys(keys_file, "add", name).returncode == 0
    r = rlhf_keys(keys_file, "revoke", "acme")
    assert r.returncode == 0 and "revoked 1 key of client 'acme'" in r.stdout
    rows = {line.split()[0]: line for line in rlhf_keys(keys_file, "list").stdout.splitlines()[1:]}
    assert set(rows) == {"acme", "beta"}
    assert "revoked 20" in rows["acme"] and rows["beta"].endswith("active")


@pytest.mark.parametrize("args,message", [
    (("add", "acme"), "already has an active key"),
    (("add", "a:b"), "bad client name"),
    (("revoke", "nobody"), "no client named 'nobody'"),
])
def test_errors_are_clear_and_change_nothing(keys_file, args, message):
    assert rlhf_keys(keys_file, "add", "acme").returncode == 0
    before = keys_file.read_text()
    r = rlhf_keys(keys_file, *args)
    assert r.returncode == 1 and message in r.stderr and r.stdout == ""
    assert keys_file.read_text() == before


def test_without_the_file_setting_it_says_so():
    r = rlhf_keys(None, "add", "acme")
    assert r.returncode == 1 and "RLHF_API_KEYS_FILE is not set" in r.stderr and r.stdout == ""
