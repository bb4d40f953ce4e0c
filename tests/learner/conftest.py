"""Fixtures for the learner tests: a real `rlhf learn` subprocess, a broker and adapter store of a
test module's own (`loop_env`), and `wait_routed`: until serving routes what the learner published."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from harness.broker import start_broker
from harness.server import ServerProcess

# Small, fast settings for the tiny model (hyperparameters a real deployment leaves at their defaults).
FAST_CONFIG = {
    "reward": {"batch_size": 16, "epochs": 3},
    "ppo": {"steps": 10, "rollout_batch_size": 32, "minibatch_size": 8, "ppo_epochs": 4, "max_new_tokens": 48},
    "gate": {"max_prompts": 32, "samples_per_prompt": 4, "min_heldout_pairs": 6, "min_heldout_thumbs": 3},
    "norm_samples": 64,
}
# The train/held-out split of users is a keyed hash; a fixed key gives every run the same split.
# This one holds out a typical 4 of user0..user19 and 5 of app:user0..19, and puts all of the
# attack test's mallory:m0..m2 on the training side (the strongest attack).
SPLIT_KEY = "tests: fixed split key 17"
# The loop's tests through a learner process (attack, canary, crash, round bounds, ...) train with PPO,
# whose FAST_CONFIG above they are tuned to; the default algorithm, DPO (and its fall-back to KTO),
# has its own rounds in test_dpo.py, test_kto.py and test_demonstrations_http.py.
LOOP_ALGORITHM = "ppo"


class LearnerProcess(ServerProcess):
    """`python -m rlhf.cli learn` in its own session (so a SIGKILL takes its vLLM engine along).

    `launch()` starts it without waiting (tests kill it mid-way); each launch gets a fresh
    metrics port, and `wait` starts it again on another one if its port was taken."""

    def __init__(self, tmp: Path, env: dict):
        self.tmp = tmp
        self.data_dir = tmp / "data"
        self.adapter_dir = tmp / "adapters"
        cfg_path = tmp / "learner.json"
        if not cfg_path.exists():
            cfg_path.write_text(json.dumps(FAST_CONFIG))
        super().__init__({"RLHF_MODEL": "tiny", "RLHF_DATA_DIR": str(self.data_dir),
                          "RLHF_ADAPTER_DIR": str(self.adapter_dir), "RLHF_MAX_MODEL_LEN": "512",
                          "RLHF_LEARNER_CONFIG": str(cfg_path), "RLHF_LOG_LEVEL": "INFO",
                          "RLHF_LEARNER_SPLIT_KEY": SPLIT_KEY, "RLHF_LEARNER_ALGORITHM": LOOP_ALGORITHM,
                          **{k: str(v) for k, v in env.items()}},
                         tmp / "learner.log", (sys.executable, "-m", "rlhf.cli", "learn"),
                         port_env="RLHF_LEARNER_PORT", ready_path="/healthz", new_session=True)

    def kill(self) -> None:
        """SIGKILL the learner and everything it started (vLLM's engine processes)."""
        if self.proc is None:
            return
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.proc.wait(30)

    def stop(self, timeout: float = 60.0) -> int | None:
        if self.proc is None:
            return None
        if self.proc.poll() is not None:
            self.kill()  # what it left running in its session (vLLM's engine processes)
            return self.proc.returncode
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            return None
        finally:
            try:  # the vLLM engine processes of a learner that exited
                os.killpg(self.proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    def query(self, sql: str, args: tuple = ()) -> list[tuple]:
        """Read the learner store from outside (WAL: readers do not block the writer)."""
        path = self.data_dir / "learner.sqlite3"
        if not path.exists():
            return []
        db = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=30)
        try:
            return db.execute(sql, args).fetchall()
        except sqlite3.OperationalError:  # tables not created yet
            return []
        finally:
            db.close()

    def metrics(self) -> str:
        return httpx.get(self.url + "/metrics", timeout=5).text

    def wait(self, what: str, cond, timeout: float, every: float = 0.05):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            value = cond()
            if value:
                return value
            if self.proc is not None and self.proc.poll() is not None and not self.relaunch_if_port_taken():
                raise AssertionError(f"learner exited ({self.proc.returncode}) while waiting for {what}:\n"
                                     f"{self.tail()}")
            time.sleep(every)
        raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}:\n{self.tail()}")


@pytest.fixture
def learner_factory(tmp_path, control_env):
    made: list[LearnerProcess] = []

    def make(**env) -> LearnerProcess:
        lp = LearnerProcess(tmp_path, {**control_env, **env})
        made.append(lp)
        return lp

    yield make
    for lp in made:
        if lp.alive():
            lp.kill()


@pytest.fixture(scope="module")
def loop_env(tmp_path_factory):
    """RLHF_* settings of a module's own broker and adapter store: no other test's events reach its learner."""
    broker = start_broker(tmp_path_factory.mktemp("broker") / "broker.log")
    adapters = tmp_path_factory.mktemp("adapters")
    yield {"RLHF_KAFKA_BOOTSTRAP": broker.bootstrap, "RLHF_ADAPTER_DIR": str(adapters)}
    broker.stop()


def wait_routed(learner: LearnerProcess, server: ServerProcess, role: str, version: str = "policy@v1",
                timeout: float = 1800.0) -> dict:
    """Serving's GET /v1/adapters once it routes `version` as `role` ("active" or "canary"); fails at
    once, with the learner's log, when a round of the learner was rejected or failed."""
    def routed():
        info = httpx.get(server.url + "/v1/adapters", timeout=10).json()
        rounds = learner.query("SELECT id, status, reason FROM rounds WHERE finished_at IS NOT NULL")
        assert not [r for r in rounds if r[1] in ("rejected", "failed")], (rounds, learner.tail())
        return info[role] == version and info

    return learner.wait(f"the learner to publish {version} and serving to route it as {role}", routed,
                        timeout=timeout, every=2.0)
