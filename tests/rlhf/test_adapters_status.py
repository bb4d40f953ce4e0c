"""`rlhf adapters status`, run as the real command line on a learner store with an active version
and a canary: the per-version table (live figures, then the offline ones of the round that made each
version) and the leaderboard from blind votes, read-only beside a learner
that keeps the store open."""

from __future__ import annotations

import os
import subprocess
import sys

from learner.store import STORE_FILE
from tests.conftest import ROOT
from tests.learner.canary_store import ACTIVE, CANARY, canary_store, feedback, votes


def rlhf_status(data_dir) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("RLHF_")}
    env["RLHF_DATA_DIR"] = str(data_dir)
    return subprocess.run([sys.executable, "-m", "rlhf.cli", "adapters", "status"], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=60)


def test_status_prints_each_version_with_its_figures(tmp_path):
    store = canary_store(tmp_path)          # stays open, as a running learner keeps it
    feedback(store, 100, {CANARY: 0.9, ACTIVE: 0.2}, tokens={CANARY: 9, ACTIVE: 25})
    store.record_adapter(CANARY, "published", metrics={   # the figures of the round that published it
        "reward_gain": 0.3, "reward_gain_se": 0.1, "kl_candidate": 1.5, "perplexity_candidate": 30.0,
        "perplexity_base": 28.0, "answer_tokens_candidate": 9.0, "win_rate_vs_parent": 0.7,
        "win_rate_vs_parent_low": 0.52, "win_rate_vs_parent_high": 0.84, "win_rate_prompts": 30})
    assert (tmp_path / STORE_FILE).is_file()
    r = rlhf_status(tmp_path)
    store.close()
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert lines[0].split()[:4] == ["version", "role", "answers", "tokens"]
    assert lines[1].split()[:4] == [ACTIVE, "active", "150", "25"]
    assert lines[2].split()[:4] == [CANARY, "canary", "150", "9"]
    assert lines[2].split("|")[1].split() == ["+0.30", "±", "0.10", "1.50", "30.0", "(28.0)", "9", "70%", "[52-84]",
                                              "n=30"]
    assert lines[1].split("|")[1].split() == ["-"] * 5 and "perplexity on the reference text" in r.stdout
    assert f"active: {ACTIVE}; canary: {CANARY} on 50% of users" in r.stdout
    assert "no blind votes between versions yet: no leaderboard" in r.stdout


def test_status_ranks_the_versions_by_blind_votes(tmp_path):
    store = canary_store(tmp_path)
    votes(store, 40, 30, CANARY, ACTIVE, "canary")
    votes(store, 20, 12, ACTIVE, None, "active")
    r = rlhf_status(tmp_path)
    store.close()
    assert r.returncode == 0, r.stderr
    board = r.stdout.split("leaderboard from blind votes (Bradley-Terry, 95 % intervals):\n")[1].splitlines()
    assert board[0].split()[:2] == ["version", "rating"]
    assert [line.split()[0] for line in board[1:4]] == [CANARY, ACTIVE, "base"]
    assert board[0].split()[-1] == "votes" and [line.split()[-1] for line in board[1:4]] == ["40", "60", "20"]


def test_status_without_a_learner_store_says_so(tmp_path):
    r = rlhf_status(tmp_path / "nothing-here")
    assert r.returncode == 1 and "no learner store" in r.stderr and "Traceback" not in r.stderr
