"""Secure by default: outside development mode, serving refuses weak secrets at start-up and says how
to make a good one; the container image runs outside development mode, `rlhf up` inside it."""

from __future__ import annotations

import os
import re
import secrets
import subprocess
import sys

import pytest

from rlhf.settings import Settings
from tests.conftest import ROOT

GOOD = secrets.token_urlsafe(32)  # 43 bytes
HOW = 'python -c "import secrets; print(secrets.token_urlsafe(32))"'


def production(**overrides) -> Settings:
    return Settings(**{"dev_mode": False, "hmac_key": GOOD, "event_hmac_key": secrets.token_urlsafe(32),
                       "admin_token": GOOD, **overrides})


@pytest.mark.parametrize("setting, value", [
    ("hmac_key", "dev-only-insecure-key"),  # the built-in development key
    ("hmac_key", "changeme"),
    ("hmac_key", "x" * 31),
    ("admin_token", "admin"),
    ("admin_token", "y" * 31),
])
def test_weak_secrets_are_refused_with_how_to_make_one(setting, value):
    with pytest.raises(SystemExit) as refused:
        production(**{setting: value}).check_secrets()
    message = str(refused.value)
    assert f"RLHF_{setting.upper()}" in message and "32 bytes" in message and HOW in message


def test_real_secrets_pass_and_no_admin_token_turns_the_admin_routes_off():
    production().check_secrets()
    production(admin_token="", hmac_key="z" * 32).check_secrets()
    Settings(dev_mode=True).check_secrets()  # `make up` / `rlhf up`: the built-in development key is fine


def test_rlhf_serve_refuses_to_start_with_a_short_key():
    env = {k: v for k, v in os.environ.items() if not k.startswith("RLHF_")}
    env.update(RLHF_DEV_MODE="false", RLHF_HMAC_KEY="short", RLHF_AUTH="api-key", RLHF_API_KEYS_FILE="/nonexistent")
    done = subprocess.run([sys.executable, "-m", "rlhf.cli", "serve", "--model", "tiny"], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode != 0
    assert "RLHF_HMAC_KEY" in done.stderr and HOW in done.stderr, done.stderr[-2000:]


def test_the_image_runs_outside_development_mode_and_rlhf_up_inside_it():
    dockerfile = (ROOT / "Dockerfile").read_text()
    assert re.search(r"^\s+RLHF_DEV_MODE=false\b", dockerfile, re.M), "the image must set RLHF_DEV_MODE=false"
    assert Settings.model_fields["dev_mode"].default is True  # what `make up` / `rlhf up` run with
    assert "RLHF_DEV_MODE" not in (ROOT / "rlhf" / "up.py").read_text()  # `rlhf up` does not turn it off
