"""Honest users and an attacker talking to serving at once, for the poisoning test and benchmark.

    key = add_key(env, "app")                      # `rlhf keys add app`: the key it prints last
    jobs = honest_jobs(questions, 20) + attacker_jobs(questions, 3, ...)
    kinds = talk(url, jobs)                        # every job's feedback kind, through /v1/feedback
    shares = attacker_shares(store_path, round_id, attacker_client)

A job is one question asked by one user of one client (its API key), with that user's taste;
the jobs of all users are interleaved, as a live stream would carry them.
"""

from __future__ import annotations

import os
import random
import sqlite3
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import httpx

from harness.user import Preference, converse

ROOT = Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class Job:
    question: str
    seed: int
    user: str
    api_key: str
    taste: Preference


def add_key(keys_file: Path | str, name: str) -> str:
    """A new API key for client `name`, made with the real command line (`rlhf keys add`)."""
    out = subprocess.run([sys.executable, "-m", "rlhf.cli", "keys", "add", name], cwd=ROOT, capture_output=True,
                         text=True, timeout=60, env={**os.environ, "RLHF_API_KEYS_FILE": str(keys_file)})
    if out.returncode != 0:
        raise RuntimeError(f"rlhf keys add {name} failed ({out.returncode}): {out.stderr}")
    return out.stdout.strip().splitlines()[-1]


def jobs_for(questions: list[str], users: list[str], api_key: str, taste: Preference, seed: int) -> list[Job]:
    """One job per question, each asked by a user drawn at random from `users`."""
    rng = random.Random(seed)
    return [Job(q, seed * 100_000 + i, rng.choice(users), api_key, taste) for i, q in enumerate(questions)]


def interleave(*streams: list[Job], seed: int = 0) -> list[Job]:
    jobs = [j for s in streams for j in s]
    random.Random(seed).shuffle(jobs)
    return jobs


def talk(url: str, jobs: list[Job], workers: int = 4, max_tokens: int = 48, timeout_s: float = 120.0) -> list[str | None]:
    """Each job: a question, two answers, the user's feedback, all through the HTTP API."""
    clients: dict[str, httpx.Client] = {}
    for key in {j.api_key for j in jobs}:
        clients[key] = httpx.Client(base_url=url, timeout=timeout_s, headers={"Authorization": f"Bearer {key}"})
    try:
        with ThreadPoolExecutor(workers) as pool:
            return list(pool.map(lambda j: converse(clients[j.api_key], j.taste, j.question, seed=j.seed,
                                                    user=j.user, rng=random.Random(j.seed), max_tokens=max_tokens),
                                 jobs))
    finally:
        for c in clients.values():
            c.close()


def attacker_shares(store_path: Path | str, round_id: int, client: str) -> dict:
    """The attacker client's share of a round's feedback rows, of the reward model's training
    weight and of the policy's prompts, from the learner's per-round accounting (`round_users`)."""
    db = sqlite3.connect(f"file:{store_path}?mode=ro", uri=True)
    try:
        rows = db.execute("SELECT client, examples, rm_share, policy_share, suspect, prompts FROM round_users "
                          "WHERE round_id=?", (round_id,)).fetchall()
    finally:
        db.close()
    posts = sum(r[1] for r in rows) or 1
    return {"posts": sum(r[1] for r in rows if r[0] == client) / posts,
            "rm_weight": sum(r[2] for r in rows if r[0] == client),
            "policy_weight": sum(r[3] for r in rows if r[0] == client),
            "policy_prompts": sum(r[5] for r in rows), "users": len(rows), "rm_users": sum(1 for r in rows if r[2] > 0),
            "policy_users": sum(1 for r in rows if r[3] > 0), "suspects": sum(1 for r in rows if r[4]),
            "attacker_suspects": sum(1 for r in rows if r[4] and r[0] == client)}
