"""Fixtures for the judge tests: `rlhf judge` as a real process, and a rule-following judge endpoint."""

from __future__ import annotations

import sys

import pytest

from harness.server import ServerProcess


@pytest.fixture
def judge_factory(tmp_path, control_env):
    """Start `rlhf judge` with RLHF_* overrides; ready when its /healthz answers."""
    started: list[ServerProcess] = []

    def make(name: str = "judge", **env) -> ServerProcess:
        base = {"RLHF_MODEL": "tiny", "RLHF_DATA_DIR": str(tmp_path / name / "data"), "RLHF_LOG_LEVEL": "INFO",
                **control_env}
        p = ServerProcess({**base, **{k: str(v) for k, v in env.items()}}, tmp_path / name / "judge.log",
                          (sys.executable, "-m", "rlhf.cli", "judge"), port_env="RLHF_JUDGE_PORT",
                          ready_path="/healthz")
        started.append(p)
        return p.start(120)

    yield make
    for p in started:
        p.stop()


@pytest.fixture
def rule_judge(tmp_path):
    """Start harness/rule_judge.py preferring the `longer` or `shorter` answer; yields a starter."""
    started: list[ServerProcess] = []

    def make(prefer: str) -> ServerProcess:
        p = ServerProcess({}, tmp_path / f"rule-judge-{prefer}.log",
                          (sys.executable, "-m", "harness.rule_judge", "--port", "{port}", "--prefer", prefer),
                          port_env=None, ready_path="/v1/models")
        started.append(p)
        return p.start(60)

    yield make
    for p in started:
        p.stop()
