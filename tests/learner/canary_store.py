"""A learner store where policy@v1 is active and policy@v2 a canary, and users' thumbs and blind votes on them."""

from __future__ import annotations

import random

from adapters.store import write_adapter
from feedback.schema import TOPIC_ADAPTERS, TOPIC_FEEDBACK, AdapterAnnounced, Pairwise
from tests.learner.test_store import ingest, interaction, open_store, thumbs

ACTIVE, CANARY = "policy@v1", "policy@v2"


def canary_store(tmp_path):
    s = open_store(tmp_path / "learner.sqlite3", heldout_fraction=0.0, adapter_dir=tmp_path / "adapters")
    src = tmp_path / "src"
    src.mkdir()
    (src / "adapter_config.json").write_text('{"r": 8}')
    (src / "adapter_model.safetensors").write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00{}      ")
    for i, fraction in ((1, 0.0), (2, 0.5)):  # v1 active, then v2 announced as a canary
        version, rel, sha = write_adapter(tmp_path / "adapters", "policy", src)
        ingest(s, [(TOPIC_ADAPTERS, AdapterAnnounced(version=version, path=rel, manifest_sha256=sha,
                                                     canary_fraction=fraction, ts=1000.0 * i))])
    routing = s.routing()
    assert (routing.active, routing.canary) == (ACTIVE, CANARY)
    return s


def feedback(store, n_users: int, up_rate: dict[str, float], per_user: int = 3, seed: int = 0, ts: float = 3000.0,
             tokens: dict[str, int] | None = None) -> None:
    """n_users users, each routed to one version (as sticky routing does), thumbs up with its rate."""
    rng = random.Random(seed)
    items = []
    for u in range(n_users):
        version = CANARY if u % 2 else ACTIVE
        for k in range(per_user):
            rid = f"r-{seed}-{u}-{k}"
            items.append(interaction(rid, conv=f"c{u}", adapter=version, ts=ts,
                                     completion_tokens=(tokens or {}).get(version, 0)))
            items.append(thumbs(rid, "up" if rng.random() < up_rate[version] else "down", ts + 1, conv=f"c{u}",
                                user=f"user{u}"))
    ingest(store, items)


def votes(store, n: int, wins: int, a: str | None, b: str | None, prefix: str) -> None:
    """n blind votes, each by another user, between an answer of version `a` and one of `b` (None: the
    base model) to the same prompt; `a` chosen in the first `wins` of them."""
    items = []
    for k in range(n):
        ra, rb, conv = f"{prefix}-a{k}", f"{prefix}-b{k}", f"{prefix}-c{k}"
        chosen, rejected = (ra, rb) if k < wins else (rb, ra)
        items += [interaction(ra, conv=conv, adapter=a), interaction(rb, conv=conv, adapter=b),
                  (TOPIC_FEEDBACK, Pairwise(chosen_response_id=chosen, rejected_response_id=rejected,
                                            conversation_id=conv, user=f"{prefix}-voter{k}"))]
    ingest(store, items)
