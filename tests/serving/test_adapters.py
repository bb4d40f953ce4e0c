"""Adapter hot-swap, canary and rollback against real processes: Tansu, `rlhf serve` (tiny model on
vLLM, LoRA-enabled) and the `rlhf adapters` command line.

The module has its own broker so its announcements do not reach the session's shared server.
Replica A serves every test; replica B (same broker, same adapter store, the admin token but no
signing key: public keys only) joins late, which is also the check that a new replica rebuilds
the routing the others have. Announcements are signed with the session's key (tests/conftest.py
`control_env`), as the learner and the CLI sign them; the tests of refusals write unsigned or
forged events straight to Kafka, as anyone who can reach the broker could.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import random
import re
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest
from kafka import KafkaProducer
from safetensors.torch import load_file, save_file

from adapters.router import user_bucket
from adapters.routing_state import RoutingState
from adapters.signing import load_signing_key, make_key_pair, signed
from adapters.store import write_adapter
from feedback.schema import (
    MAX_CONTROL_EVENT_BYTES,
    TOPIC_ADAPTERS,
    AdapterAnnounced,
    DeadLetter,
    Interaction,
    LiveFigures,
    LiveRate,
    RoutingChanged,
    VersionLive,
    encode,
)
from harness.broker import start_broker
from harness.kafka import announce, read_topic
from harness.loras import make_lora, marker_lora, train_lora
from harness.metrics import metric_total, scrape
from harness.user import Preference
from harness.waiting import wait_until
from rlhf.models.dialogues import tiny_prompts
from tests.conftest import ROOT

TOKEN = "test-admin-token"
ADMIN = {"Authorization": f"Bearer {TOKEN}"}
PROMPT = [{"role": "user", "content": "Tell me about cats."}]
MARKER = "zoo"  # the tiny model's training text has no "z"


# ---------------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def env(tmp_path_factory, control_env):
    """Own broker + adapter store shared by the replicas of this module; the session's keys (the CLI signs with them)."""
    broker = start_broker(tmp_path_factory.mktemp("broker") / "broker.log")
    store = tmp_path_factory.mktemp("adapters")
    yield {"RLHF_KAFKA_BOOTSTRAP": broker.bootstrap, "RLHF_ADAPTER_DIR": str(store), "RLHF_MAX_LORAS": "4",
           **control_env}
    broker.stop()


def signer(env):
    """The key the learner and `rlhf adapters` sign with."""
    return load_signing_key(env["RLHF_SIGNING_KEY_FILE"])


@pytest.fixture(scope="module")
def replica_a(server_factory, env):
    replica = server_factory(**env, RLHF_ADMIN_TOKEN=TOKEN, RLHF_REPLICA_ID="replica-a")
    yield replica
    replica.stop()  # before this module's broker stops (tests/conftest.py would stop it after)


@pytest.fixture(scope="module")
def loras(tmp_path_factory, tiny_model_path) -> list[Path]:
    """Valid adapters with random weights: distinct versions, not meant to change any answer."""
    d = tmp_path_factory.mktemp("loras")
    return [make_lora(tiny_model_path, d / f"lora{i}", seed=i) for i in range(6)]


@pytest.fixture(scope="module")
def marker(tmp_path_factory, tiny_model_path) -> Path:
    """An adapter whose greedy answer to PROMPT is MARKER, a word the base model cannot write."""
    prompts = [PROMPT[0]["content"]] + tiny_prompts(15, seed=5)
    return marker_lora(tiny_model_path, tmp_path_factory.mktemp("marker") / "lora", prompts, MARKER)


def store(env, src: Path, name: str = "policy") -> tuple[str, str, str]:
    return write_adapter(env["RLHF_ADAPTER_DIR"], name, src, base_model="tiny")


def publish(env, src: Path, name: str = "policy", canary: float = 0.0) -> AdapterAnnounced:
    """Store and announce `src`; active at once (canary 0, as `rlhf adapters publish --activate`) unless a
    `canary` share is given: the tests using it are about swapping and rolling back, not staged rollout."""
    version, rel, sha = store(env, src, name)
    ev = AdapterAnnounced(version=version, path=rel, manifest_sha256=sha, canary_fraction=canary)
    announce(env["RLHF_KAFKA_BOOTSTRAP"], ev, key=signer(env))
    return ev


def adapters(server) -> dict:
    return httpx.get(server.url + "/v1/adapters", timeout=10).json()


def _serving(info: dict, version: str | None) -> bool:
    """Routing says `version` is active and (for an adapter) the engine holds it: the router has switched."""
    return info["active"] == version and (version is None or any(d["version"] == version for d in info["data"]))


def wait_active(server, version: str | None, timeout_s: float = 20.0) -> dict:
    def switched() -> dict | None:
        info = adapters(server)
        return info if _serving(info, version) else None

    return wait_until(switched, timeout_s, what=f"{server.url} active == {version}")


def chat(server, user: str = "u", model: str | None = None, max_tokens: int = 8) -> dict:
    body = {"messages": PROMPT, "max_tokens": max_tokens, "user": user, "temperature": 0.0}
    if model:
        body["model"] = model
    r = httpx.post(server.url + "/v1/chat/completions", json=body, timeout=60)
    assert r.status_code == 200, r.text
    return r.json()


def cli(env, server, *args, timeout: float = 120) -> subprocess.CompletedProcess:
    e = {**os.environ, **env, "RLHF_MODEL": "tiny", "RLHF_PORT": str(server.port), "RLHF_HOST": "127.0.0.1"}
    return subprocess.run([sys.executable, "-m", "rlhf.cli", "adapters", *args], env=e, cwd=ROOT,
                          capture_output=True, text=True, timeout=timeout)


def metric(server, name: str, labels: str = "") -> float:
    return metric_total(scrape(server.url), name, labels)


# ---------------------------------------------------------------------------------- pure state machine
def _ann(v: str, canary: float | None = None) -> AdapterAnnounced:
    n = v.split("@v")[1]
    return AdapterAnnounced(version=v, path=f"policy/v{n}", manifest_sha256="x" * 64, canary_fraction=canary)


def test_routing_state_machine():
    s = RoutingState()
    s.apply(_ann("policy@v1"))
    s.apply(_ann("policy@v2"))
    assert (s.active, s.previous) == ("policy@v2", "policy@v1")
    assert s.apply(_ann("policy@v3", canary=0.25)) is None
    assert (s.active, s.canary, s.canary_fraction) == ("policy@v2", "policy@v3", 0.25)
    s.apply(RoutingChanged(action="rollback"))  # the newest change was the canary: it ends
    assert (s.active, s.canary) == ("policy@v2", None)
    s.apply(RoutingChanged(action="rollback"))
    assert s.active == "policy@v1"
    s.apply(RoutingChanged(action="rollback"))
    assert s.active is None  # the base model
    assert s.apply(RoutingChanged(action="rollback")) == "nothing to roll back to"
    assert s.apply(RoutingChanged(action="activate", version="policy@v9")).startswith("unknown version")
    s.apply(RoutingChanged(action="activate", version="policy@v3"))
    assert s.apply(_ann("policy@v4"), refused="sha256 mismatch").startswith("refused")
    assert s.active == "policy@v3" and "policy@v4" not in s.known


def test_routing_state_snapshot_round_trip_skips_seen_events():
    s = RoutingState()
    events = [_ann("policy@v1"), _ann("policy@v2"), RoutingChanged(action="rollback")]
    for ev in events:
        s.apply(ev)
    restored = RoutingState.from_json(json.loads(json.dumps(s.to_json())))
    assert restored.describe() == s.describe()
    assert all(restored.seen(ev.event_id) for ev in events)  # a replay applies none of them twice
    assert restored.known.keys() == s.known.keys()


def test_cli_refuses_pickled_weights(tmp_path, env, loras):
    src = tmp_path / "pickled"
    src.mkdir()
    shutil.copy(loras[0] / "adapter_config.json", src)
    (src / "adapter_model.bin").write_bytes(b"\x80\x04not really a pickle")
    r = subprocess.run([sys.executable, "-m", "rlhf.cli", "adapters", "publish", str(src)],
                       env={**os.environ, **env, "RLHF_MODEL": "tiny"}, cwd=ROOT, capture_output=True, text=True,
                       timeout=120)
    assert r.returncode == 1
    assert "pickled weights are refused" in r.stderr
    assert not (Path(env["RLHF_ADAPTER_DIR"]) / "pickled").exists()


def test_cli_refuses_an_adapter_for_another_base_model(tmp_path, env, loras):
    src = tmp_path / "other"
    shutil.copytree(loras[0], src)
    # Same tensor names, shapes of a model with another hidden size.
    w = load_file(src / "adapter_model.safetensors")
    save_file({k: (v.new_zeros(v.shape[0], 2 * v.shape[1]) if "lora_A" in k else v) for k, v in w.items()},
              src / "adapter_model.safetensors")
    r = subprocess.run([sys.executable, "-m", "rlhf.cli", "adapters", "publish", str(src)],
                       env={**os.environ, **env, "RLHF_MODEL": "tiny"}, cwd=ROOT, capture_output=True, text=True,
                       timeout=120)
    assert r.returncode == 1, r.stdout
    assert "does not fit the base model" in r.stderr


# ---------------------------------------------------------------------------------- against replica A
def test_admin_routes_need_the_token(replica_a):
    url = replica_a.url + "/v1/admin/adapters/activate"
    body = {"version": "no-such-adapter@v1"}  # the token passes, then the version is refused: routing unchanged
    assert httpx.post(url, json=body, timeout=10).status_code == 403
    assert httpx.post(url, json=body, headers={"Authorization": "Bearer wrong"}, timeout=10).status_code == 403
    r = httpx.post(url, json=body, headers=ADMIN, timeout=10)
    assert r.status_code == 404 and r.json()["error"]["code"] == "unknown_adapter", r.text
    info = adapters(replica_a)
    assert info["base"] == "tiny" and info["following"] is True


def test_publish_with_the_cli_starts_a_canary_then_activate_serves_it(replica_a, env, marker, tmp_path):
    """Default settings: a published version first answers a sticky RLHF_CANARY_FRACTION (10 %) of
    users, the active version the rest; `rlhf adapters activate` then routes everyone to it."""
    before = adapters(replica_a)
    src = tmp_path / "my-adapter"
    shutil.copytree(marker, src)
    r = cli(env, replica_a, "publish", str(src))
    assert r.returncode == 0, r.stderr
    assert "stored" in r.stdout and "announced my-adapter@v1: canary on 10% of users" in r.stdout
    assert "(canary my-adapter@v1 on 10%)" in r.stdout  # confirmed by the replica at RLHF_PORT
    info = adapters(replica_a)
    assert (info["active"], info["canary"], info["canary_fraction"]) == (before["active"], "my-adapter@v1", 0.1)
    users = [f"user-{i}" for i in range(40)]
    served = {u: chat(replica_a, u)["rlhf"]["adapter"] for u in users}
    assert served == {u: "my-adapter@v1" if user_bucket(u) < 0.1 else before["active"] for u in users}
    assert set(served.values()) == {"my-adapter@v1", before["active"]}  # both groups among these 40 users

    r = cli(env, replica_a, "activate", "my-adapter@v1")
    assert r.returncode == 0, r.stderr
    assert "now answers with my-adapter@v1" in r.stdout  # confirmed by the replica at RLHF_PORT
    info = adapters(replica_a)
    assert info["active"] == "my-adapter@v1" and info["previous"] == before["active"] and info["can_rollback"]
    loaded = [a["version"] for a in info["data"]]
    assert "my-adapter@v1" in loaded
    assert next(a for a in info["data"] if a["version"] == "my-adapter@v1")["source"] == "user"

    routed = chat(replica_a)
    assert routed["model"] == "my-adapter@v1" and routed["rlhf"]["adapter"] == "my-adapter@v1"
    base = chat(replica_a, model="tiny")
    assert base["model"] == "tiny" and base["rlhf"]["adapter"] is None  # the base stays selectable
    # The adapter was trained to answer the marker word, which the base model cannot write.
    assert MARKER in routed["choices"][0]["message"]["content"], routed["choices"][0]
    assert MARKER not in base["choices"][0]["message"]["content"], base["choices"][0]
    models = [m["id"] for m in httpx.get(replica_a.url + "/v1/models").json()["data"]]
    assert models == ["tiny", *loaded]
    assert metric(replica_a, "rlhf_adapter_active_info", 'version="my-adapter@v1"') == 1.0

    listing = cli(env, replica_a, "list")
    assert listing.returncode == 0, listing.stderr
    assert re.search(r"my-adapter@v1\s+user\s.*active", listing.stdout), listing.stdout


def _stream_worker(url: str, user: str, stop: threading.Event, results: list, lock: threading.Lock) -> None:
    rng = random.Random(user)
    with httpx.Client(timeout=60) as client:
        while not stop.is_set():
            rec = {"user": user, "start": time.time(), "models": set(), "adapter": "?", "error": None}
            body = {"messages": PROMPT, "max_tokens": 32, "temperature": 1.0, "seed": rng.randrange(1 << 30),
                    "stream": True, "user": user}
            try:
                with client.stream("POST", url + "/v1/chat/completions", json=body) as r:
                    if r.status_code != 200:
                        rec["error"] = f"HTTP {r.status_code}: {r.read()!r}"
                    else:
                        done = False
                        for line in r.iter_lines():
                            if not line.startswith("data: "):
                                continue
                            if line == "data: [DONE]":
                                done = True
                                continue
                            chunk = json.loads(line[6:])
                            if "error" in chunk:
                                rec["error"] = chunk["error"]
                            rec["models"].add(chunk["model"])
                            if chunk.get("rlhf"):
                                rec["adapter"] = chunk["rlhf"]["adapter"]
                                rec["response_id"] = chunk["rlhf"]["responses"][0]["response_id"]
                        if not done and not rec["error"]:
                            rec["error"] = "stream ended without [DONE]"
            except httpx.HTTPError as e:
                rec["error"] = repr(e)
            rec["end"] = time.time()
            with lock:
                results.append(rec)


def test_hot_swap_under_load(replica_a, env, loras):
    """8 concurrent streams; publish a new version mid-way: no failed request, every response from
    exactly one version, and every request started after the replica switched gets the new version
    (how soon it switches is measured by bench/swap.py, not asserted here)."""
    old = adapters(replica_a)["active"]
    results, lock, stop = [], threading.Lock(), threading.Event()
    threads = [threading.Thread(target=_stream_worker, args=(replica_a.url, f"load{i}", stop, results, lock))
               for i in range(8)]
    for t in threads:
        t.start()
    producer = KafkaProducer(bootstrap_servers=env["RLHF_KAFKA_BOOTSTRAP"])  # connected before the clock starts
    version, rel, sha = store(env, loras[1])
    try:
        time.sleep(4.0)
        # active at once (canary 0): the swap under load is measured, not the staged rollout; ts: its time
        ev = signed(AdapterAnnounced(version=version, path=rel, manifest_sha256=sha, canary_fraction=0.0), signer(env))
        producer.send("rlhf.adapters", key=ev.key(), value=encode(ev)).get(timeout=15)
        t_announced = ev.ts
        wait_active(replica_a, ev.version)
        t_switched = time.time()  # the replica reports the new version: everything started later uses it
        time.sleep(5.0)
    finally:
        stop.set()
        for t in threads:
            t.join(60)
        producer.close(timeout=5)
    failed = [r for r in results if r["error"]]
    assert not failed, failed[:3]
    for r in results:  # attributable to exactly one version: every chunk and the extension agree
        assert len(r["models"]) == 1, r
        (model,) = r["models"]
        assert r["adapter"] == (None if model == "tiny" else model), r
        assert model in (old or "tiny", ev.version), r
    before = [r for r in results if r["end"] < t_announced]
    after = [r for r in results if r["start"] > t_switched]
    assert before and after, (len(before), len(after))
    assert all(r["models"] == {old or "tiny"} for r in before)
    assert all(r["models"] == {ev.version} for r in after), [r for r in after if r["models"] != {ev.version}][:3]
    first_new = min(r["start"] for r in results if r["models"] == {ev.version})
    print(f"\nhot swap: {len(results)} requests, 0 failed; first request served by {ev.version} started "
          f"{first_new - t_announced:+.3f} s after the announcement")

    # The event log agrees: each answer's Interaction names the adapter that answered.
    by_id = {e.response_id: e.adapter for e in read_topic(env["RLHF_KAFKA_BOOTSTRAP"], "rlhf.interactions")
             if isinstance(e, Interaction)}
    for r in results:
        assert by_id.get(r["response_id"], "missing") == r["adapter"], r


def test_tampered_adapter_is_refused_and_active_kept(replica_a, env, loras):
    active = adapters(replica_a)["active"]
    refused_before = metric(replica_a, "rlhf_adapter_refused_total")
    version, rel, sha = store(env, loras[2])
    weights = Path(env["RLHF_ADAPTER_DIR"]) / rel / "adapter_model.safetensors"
    data = bytearray(weights.read_bytes())
    data[len(data) // 2] ^= 0x01  # one byte changed after the manifest was written
    weights.write_bytes(bytes(data))
    announce(env["RLHF_KAFKA_BOOTSTRAP"], AdapterAnnounced(version=version, path=rel, manifest_sha256=sha),
             key=signer(env))

    # Pickled weights smuggled into the store with a consistent manifest: refused as well.
    evil = Path(env["RLHF_ADAPTER_DIR"]) / "evil" / "v1"
    evil.mkdir(parents=True)
    shutil.copy(loras[2] / "adapter_config.json", evil)
    (evil / "adapter_model.bin").write_bytes(b"\x80\x04pickle")
    files = {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in evil.iterdir()}
    manifest = json.dumps({"format": 1, "version": "evil@v1", "files": files}).encode()
    (evil / "manifest.json").write_bytes(manifest)
    announce(env["RLHF_KAFKA_BOOTSTRAP"], AdapterAnnounced(version="evil@v1", path="evil/v1",
                                                           manifest_sha256=hashlib.sha256(manifest).hexdigest()),
             key=signer(env))  # signed: the refusal is for the files, not the event

    def dead_letters():
        found = [e for e in read_topic(env["RLHF_KAFKA_BOOTSTRAP"], "rlhf.deadletter")
                 if isinstance(e, DeadLetter) and e.origin == "serving:replica-a"]
        return [e for e in found if version in e.reason or "evil@v1" in e.reason]

    letters = wait_until(lambda: len(dead_letters()) >= 2 and dead_letters(), 20, 0.5, "two dead letters")
    assert any(version in e.reason and "sha256" in e.reason for e in letters), letters
    assert any("evil@v1" in e.reason and "adapter_model.bin" in e.reason for e in letters), letters
    assert metric(replica_a, "rlhf_adapter_refused_total") == refused_before + 2
    info = adapters(replica_a)
    assert info["active"] == active
    assert version not in info["known"] and "evil@v1" not in info["known"]
    assert chat(replica_a)["rlhf"]["adapter"] == active


def test_control_events_not_signed_by_a_trusted_key_change_nothing(replica_a, env, loras, tmp_path):
    """Anyone who can write to rlhf.adapters: a routing change and an announcement written straight to
    Kafka unsigned, one signed by a key serving does not trust, one signed and then altered. Nothing
    changes on serving; each is a dead letter with the reason and counted by kind on /metrics."""
    before = adapters(replica_a)
    counted = {k: metric(replica_a, "rlhf_control_events_refused_total", f'reason="{k}"')
               for k in ("unsigned", "unknown_key", "bad_signature")}
    version, rel, sha = store(env, loras[0])  # real files with a matching manifest: only the signature is missing
    stranger = make_key_pair(tmp_path / "stranger")
    forged = [RoutingChanged(action="activate", version=None),
              AdapterAnnounced(version=version, path=rel, manifest_sha256=sha),
              signed(RoutingChanged(action="rollback"), stranger),
              signed(RoutingChanged(action="canary", version=None, canary_fraction=0.0), signer(env)).model_copy(
                  update={"action": "activate"})]  # signed as harmless, altered on the way
    announce(env["RLHF_KAFKA_BOOTSTRAP"], *forged, key=None)
    ids = {ev.event_id for ev in forged}

    def dead_letters():
        found = [e for e in read_topic(env["RLHF_KAFKA_BOOTSTRAP"], "rlhf.deadletter")
                 if isinstance(e, DeadLetter) and e.origin == "serving:replica-a"]
        return [e for e in found if any(i in e.payload for i in ids)]

    letters = wait_until(lambda: len(dead_letters()) >= 4 and dead_letters(), 20, 0.5, "four dead letters")
    reasons = sorted(e.reason.split(": ", 1)[1].split(":")[0] for e in letters)
    assert reasons == ["bad signature", "unknown key", "unsigned", "unsigned"], reasons
    after = adapters(replica_a)
    assert (after["active"], after["canary"], after["history"]) == (before["active"], before["canary"],
                                                                   before["history"])
    assert version not in after["known"] and chat(replica_a)["rlhf"]["adapter"] == before["active"]
    for kind, n in (("unsigned", 2), ("unknown_key", 1), ("bad_signature", 1)):
        assert metric(replica_a, "rlhf_control_events_refused_total", f'reason="{kind}"') == counted[kind] + n


def _figures(answers: int, ts: float) -> LiveFigures:
    unrated = LiveRate(estimate=None, low=0.0, high=1.0, n=0)
    return LiveFigures(ts=ts, versions=[VersionLive(
        version="base", role="active", answers=answers, answer_tokens=31.5,
        thumbs_up=LiveRate(estimate=0.75, low=0.5, high=0.9, n=40),
        with_feedback=LiveRate(estimate=0.3, low=0.2, high=0.4, n=answers), pairwise_win=unrated)])


def test_live_figures_reach_get_adapters_and_forged_ones_are_refused(replica_a, env, tmp_path):
    """The learner's live table per version reaches the replica as a signed LiveFigures on rlhf.adapters:
    GET /v1/adapters shows the newest one under `live`, routing unchanged. An older one does not replace it;
    an unsigned, an altered and an oversized one are refused with a dead letter and change nothing."""
    bootstrap = env["RLHF_KAFKA_BOOTSTRAP"]
    before = adapters(replica_a)
    now = time.time()
    first = _figures(120, now)
    announce(bootstrap, first, key=signer(env))
    info = wait_until(lambda: (i := adapters(replica_a))["live"] and i, 20, what="live figures on GET /v1/adapters")
    assert info["live"]["as_of"] == first.ts
    shown = info["live"]["versions"]["base"]
    assert (shown["role"], shown["answers"], shown["thumbs_up"]) == (
        "active", 120, {"estimate": 0.75, "low": 0.5, "high": 0.9, "n": 40})
    assert shown["pairwise_win"]["estimate"] is None
    routing = ("active", "canary", "canary_fraction", "history", "known")
    assert [info[k] for k in routing] == [before[k] for k in routing]

    oversized_before = metric(replica_a, "rlhf_control_events_refused_total", 'reason="oversized"')
    older = signed(_figures(1, now - 60), signer(env))
    unsigned = _figures(2, now + 10)
    altered = signed(_figures(3, now + 20), signer(env)).model_copy(update={"ts": now + 25})
    announce(bootstrap, older, unsigned, altered, key=None)
    big = signed(_figures(4, now + 30), signer(env))
    producer = KafkaProducer(bootstrap_servers=bootstrap)
    try:  # valid JSON, signed, padded past the limit
        producer.send(TOPIC_ADAPTERS, key=b"adapters", value=encode(big) + b" " * MAX_CONTROL_EVENT_BYTES).get(15)
    finally:
        producer.close(timeout=5)
    ids = {unsigned.event_id, altered.event_id, big.event_id}

    def dead_letters():
        found = [e for e in read_topic(bootstrap, "rlhf.deadletter")
                 if isinstance(e, DeadLetter) and e.origin == "serving:replica-a"]
        return [e for e in found if any(i in e.payload for i in ids)]

    letters = wait_until(lambda: len(dead_letters()) >= 3 and dead_letters(), 20, 0.5, "three dead letters")
    reasons = sorted(e.reason.split(":")[0] if e.reason.startswith("oversized") else
                     e.reason.split(": ", 1)[1].split(":")[0] for e in letters)
    assert reasons == ["bad signature", "oversized", "unsigned"], reasons
    assert metric(replica_a, "rlhf_control_events_refused_total", 'reason="oversized"') == oversized_before + 1
    info = adapters(replica_a)  # the older one came first on the partition: all were handled, none replaced it
    assert info["live"]["as_of"] == first.ts and info["live"]["versions"]["base"]["answers"] == 120

    newest = _figures(200, now + 40)
    announce(bootstrap, newest, key=signer(env))
    info = wait_until(lambda: (i := adapters(replica_a))["live"]["as_of"] == newest.ts and i, 20, what="newest")
    assert info["live"]["versions"]["base"]["answers"] == 200
    assert [info[k] for k in routing] == [before[k] for k in routing]


def test_canary_is_sticky_per_user_and_can_be_promoted(replica_a, env, loras):
    active = adapters(replica_a)["active"]
    r = cli(env, replica_a, "publish", str(loras[3]), "--canary", "0.5")
    assert r.returncode == 0, r.stderr
    assert "announced lora3@v1: canary on 50% of users" in r.stdout and "(canary lora3@v1 on 50%)" in r.stdout
    version = "lora3@v1"
    info = adapters(replica_a)
    assert info["active"] == active and info["canary"] == version and info["canary_fraction"] == 0.5
    users = [f"user-{i}" for i in range(24)]
    served = {u: chat(replica_a, u)["rlhf"]["adapter"] for u in users}
    for u in users:
        assert served[u] == (version if user_bucket(u) < 0.5 else active), u
    assert set(served.values()) == {active, version}
    assert all(chat(replica_a, u)["rlhf"]["adapter"] == served[u] for u in users[:6])  # sticky
    assert metric(replica_a, "rlhf_adapter_canary_info", f'version="{version}"') == 0.5
    assert metric(replica_a, "rlhf_completions_total", f'adapter="{version}"') > 0  # comparable per version

    r = httpx.post(replica_a.url + "/v1/admin/adapters/activate", json={"version": version}, headers=ADMIN,
                   timeout=20)
    assert r.status_code == 200 and r.json()["applied"], r.text
    assert r.json()["active"] == version and r.json()["canary"] is None
    assert {chat(replica_a, u)["rlhf"]["adapter"] for u in users[:8]} == {version}


def test_a_restarted_replica_shows_the_newest_live_figures_again(replica_a, server_factory, env):
    """Live figures are not in the routing snapshot: a replica that starts (or restarts) finds the
    newest one again by replaying rlhf.adapters, before it answers as ready."""
    newest = _figures(321, time.time() + 3600)  # newer than any other test's figures on the topic
    announce(env["RLHF_KAFKA_BOOTSTRAP"], newest, key=signer(env))
    wait_until(lambda: (adapters(replica_a)["live"] or {}).get("as_of") == newest.ts, 20,
               what="the figures on replica A")

    replica_c = server_factory(**{**env, "RLHF_SIGNING_KEY_FILE": ""}, RLHF_ADMIN_TOKEN=TOKEN,
                               RLHF_REPLICA_ID="replica-c")
    try:
        live = adapters(replica_c)["live"]  # ready means replayed: no waiting here
        assert live["as_of"] == newest.ts and live["versions"]["base"]["answers"] == 321
    finally:
        replica_c.stop()


def test_rollback_on_every_replica(replica_a, server_factory, env, loras):
    """Replica B joins late (rebuilding what A routes to), then `rlhf adapters rollback` moves both."""
    first = publish(env, loras[4])
    wait_active(replica_a, first.version)
    second = publish(env, loras[5])
    wait_active(replica_a, second.version)

    # public keys only: it checks routing events and cannot write them
    replica_b = server_factory(**{**env, "RLHF_SIGNING_KEY_FILE": ""}, RLHF_ADMIN_TOKEN=TOKEN,
                               RLHF_REPLICA_ID="replica-b")
    info_b = adapters(replica_b)  # ready means replayed: no waiting here
    assert info_b["active"] == second.version and info_b["previous"] == first.version
    assert chat(replica_b)["rlhf"]["adapter"] == second.version
    r = httpx.post(replica_b.url + "/v1/admin/adapters/rollback", headers=ADMIN)
    assert r.status_code == 503 and r.json()["error"]["code"] == "no_signing_key", r.text
    assert "rlhf adapters" in r.json()["error"]["message"]
    assert adapters(replica_b)["active"] == second.version

    r = cli(env, replica_a, "rollback")
    assert r.returncode == 0, r.stderr
    assert f"rolled back {second.version} -> {first.version}" in r.stdout
    for replica in (replica_a, replica_b):
        wait_active(replica, first.version, timeout_s=10)
        assert chat(replica)["rlhf"]["adapter"] == first.version

    # An admin call on A changes routing on B too (both follow rlhf.adapters).
    r = httpx.post(replica_a.url + "/v1/admin/adapters/activate", json={"version": "base"}, headers=ADMIN, timeout=20)
    assert r.status_code == 200, r.text
    wait_active(replica_b, None, timeout_s=10)
    assert chat(replica_b)["rlhf"]["adapter"] is None
    r = cli(env, replica_a, "activate", second.version)
    assert r.returncode == 0, r.stderr
    for replica in (replica_a, replica_b):
        wait_active(replica, second.version, timeout_s=10)

    # Unused versions were unloaded: at most max_loras - 1 stay, always with active and previous.
    for replica in (replica_a, replica_b):
        info = adapters(replica)
        loaded = [a["version"] for a in info["data"]]
        assert len(loaded) <= 3, loaded
        assert info["active"] in loaded and (info["previous"] is None or info["previous"] in loaded)
    replica_b.stop()


def test_a_replica_rebuilds_from_the_store_when_the_broker_lost_its_data(replica_a, server_factory, env, loras):
    """The embedded broker keeps its topics in memory. A replica started against a broker that lost
    them (a new, empty one) rebuilds routing from the adapter store's snapshot, serves what the
    others serve, and then follows the new broker's announcements."""
    for src in (loras[1], loras[2]):  # a history (active and previous) to rebuild
        ev = publish(env, src)
        wait_active(replica_a, ev.version)
    want = adapters(replica_a)

    empty = start_broker(Path(env["RLHF_ADAPTER_DIR"]).parent / "empty-broker.log")
    try:
        fresh = {**env, "RLHF_KAFKA_BOOTSTRAP": empty.bootstrap}
        replica_c = server_factory(**fresh, RLHF_REPLICA_ID="replica-c")
        info = adapters(replica_c)
        assert (info["active"], info["previous"]) == (want["active"], want["previous"])
        assert want["active"] in [a["version"] for a in info["data"]]  # loaded from the store, verified
        assert chat(replica_c)["rlhf"]["adapter"] == want["active"]
        assert read_topic(fresh["RLHF_KAFKA_BOOTSTRAP"], "rlhf.adapters", timeout_s=3) == []  # really empty

        newer = publish(fresh, loras[3])
        wait_active(replica_c, newer.version)
        assert chat(replica_c)["rlhf"]["adapter"] == newer.version
        replica_c.stop()
    finally:
        empty.stop()


def test_a_file_swapped_in_the_store_is_never_loaded(replica_a, env, marker, loras):
    """The marker adapter is published and served; then its weights in the shared store are swapped for
    weights that answer like the base model (LoRA B zeroed), it is evicted from the engine, and routed
    to again (admin route): the replica loads its private copy, verified when it was made, so it still
    answers the marker word, and nothing is refused. (A swap before the copy is made is refused: the
    tampered test.)"""
    ev = publish(env, marker, name="swapped")
    wait_active(replica_a, ev.version)
    assert MARKER in chat(replica_a)["choices"][0]["message"]["content"]
    weights = Path(env["RLHF_ADAPTER_DIR"]) / ev.path / "adapter_model.safetensors"
    save_file({k: (v.new_zeros(v.shape) if "lora_B" in k else v) for k, v in load_file(weights).items()}, weights)
    for src in loras[1:4]:  # three newer versions: the marker adapter is unloaded (max_loras 4 keeps 3)
        wait_active(replica_a, publish(env, src).version)
    assert ev.version not in [a["version"] for a in adapters(replica_a)["data"]]
    refused = metric(replica_a, "rlhf_adapter_refused_total")

    # the CLI checks the store's files and refuses; the replica knows the version verified, so the admin route
    r = httpx.post(replica_a.url + "/v1/admin/adapters/activate", json={"version": ev.version}, headers=ADMIN,
                   timeout=20)
    assert r.status_code == 200 and r.json()["active"] == ev.version, r.text
    assert cli(env, replica_a, "activate", ev.version).returncode == 1  # (the CLI: "does not match its sha256")
    answer = chat(replica_a)
    assert answer["rlhf"]["adapter"] == ev.version and MARKER in answer["choices"][0]["message"]["content"], answer
    assert metric(replica_a, "rlhf_adapter_refused_total") == refused


# ---------------------------------------------------------------------------------- the loop
USER = Preference(word="happy")  # the simulated user's taste (the tiny model says it in ~13 % of answers)

def _ask(server, prompts: list[str], user: str, feedback: bool) -> list[bool]:
    """n=2 answers per prompt; the user's verdict on each; with `feedback`, sent via /v1/feedback."""
    verdicts = []
    with httpx.Client(base_url=server.url, timeout=60) as client:
        for i, p in enumerate(prompts):
            r = client.post("/v1/chat/completions", json={
                "messages": [{"role": "user", "content": p}], "n": 2, "max_tokens": 48, "temperature": 1.0,
                "seed": i, "user": user}).json()
            texts = [c["message"]["content"] for c in r["choices"]]
            likes = [USER.likes(t) for t in texts]
            verdicts += likes
            if not feedback:
                continue
            refs = r["rlhf"]["responses"]
            if likes[0] != likes[1]:
                win = 0 if likes[0] else 1
                body = {"type": "pairwise", "chosen": {k: refs[win][k] for k in ("response_id", "feedback_token")},
                        "rejected": {k: refs[1 - win][k] for k in ("response_id", "feedback_token")}}
                assert client.post("/v1/feedback", json=body).status_code == 202
            for ref, like in zip(refs, likes):
                body = {"type": "thumbs", "response_id": ref["response_id"], "feedback_token": ref["feedback_token"],
                        "value": "up" if like else "down"}
                assert client.post("/v1/feedback", json=body).status_code == 202
    return verdicts


def test_feedback_loop_raises_the_approval_rate(replica_a, env, tiny_model_path, tmp_path):
    """A simulated user rates base-model answers through the HTTP API; an adapter fitted to what
    it liked (read back from rlhf.feedback + rlhf.interactions) is published with the CLI, serving
    swaps to it, and the same user approves more of its answers to fresh prompts."""
    r = httpx.post(replica_a.url + "/v1/admin/adapters/activate", json={"version": "base"}, headers=ADMIN, timeout=20)
    assert r.status_code == 200 and r.json()["active"] is None, r.text
    user = "simulated-user"
    base_verdicts = _ask(replica_a, tiny_prompts(80, seed=11), user, feedback=True)
    base_rate = sum(base_verdicts) / len(base_verdicts)

    # What the learner would do, reduced to its simplest form: fit the liked answers.
    bootstrap = env["RLHF_KAFKA_BOOTSTRAP"]
    interactions = {e.response_id: e for e in read_topic(bootstrap, "rlhf.interactions") if isinstance(e, Interaction)}
    liked = {e.response_id for e in read_topic(bootstrap, "rlhf.feedback")
             if getattr(e, "user", None) == user and getattr(e, "value", None) == "up"}
    examples = [([m.model_dump() for m in interactions[rid].messages], interactions[rid].response)
                for rid in liked if rid in interactions]
    assert len(examples) >= 5, f"only {len(examples)} liked answers on the topics"
    src = train_lora(tiny_model_path, tmp_path / "liked", examples, steps=80, lr=5e-3,
                     target_modules=("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"))

    r = cli(env, replica_a, "publish", str(src), "--activate")  # the same user must get it: no canary
    assert r.returncode == 0, r.stderr
    version = re.search(r"as (liked@v\d+)", r.stdout).group(1)
    wait_active(replica_a, version, timeout_s=10)

    new_verdicts = _ask(replica_a, tiny_prompts(80, seed=12), user, feedback=False)
    new_rate = sum(new_verdicts) / len(new_verdicts)
    print(f"\napproval of fresh answers: base {base_rate:.2f} -> {version} {new_rate:.2f} "
          f"({len(examples)} liked answers fitted)")
    # One-sided two-proportion z-test: the rise is not sampling noise (z > 2.33: p < 0.01).
    pooled = (sum(base_verdicts) + sum(new_verdicts)) / (len(base_verdicts) + len(new_verdicts))
    z = (new_rate - base_rate) / math.sqrt(pooled * (1 - pooled) * (1 / len(base_verdicts) + 1 / len(new_verdicts)))
    assert z > 2.33, (base_rate, new_rate, z)
