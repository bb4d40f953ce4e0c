"""The adapter follower: every serving replica follows `rlhf.adapters` and routes to what it says.

    AdapterAnnounced ─▶ verify (manifest sha256, sha256 of every file, safetensors only)
                     ─▶ engine.add_lora under the version's own name and a fresh LoRA id
                     ─▶ switch routing (plain assignments on the event loop, no await between
                        them: requests already running keep the LoRARequest they started with)
                     ─▶ unload versions nothing routes to, beyond max_loras - 1
    RoutingChanged   ─▶ activate VERSION | rollback | canary VERSION FRACTION, same switch

What a replica routes to is a pure function of the events: `RoutingState.apply` below is the
whole state machine. On start a replica reads the routing snapshot from the adapter store
(`routing.json`, rewritten after every applied event), then replays `rlhf.adapters` from offset 0
applying only events the snapshot has not seen, so a restarted or new replica serves what the
others serve, even when the broker lost its log (the embedded broker keeps it in memory) or
retention dropped old announcements.

Every replica must see every announcement, so the consumer uses `assign()` without a consumer
group and commits nothing. A refused adapter (tampered, not safetensors, rank too high, or one
vLLM cannot load) is logged, counted in `rlhf_adapter_refused_total` and sent to
`rlhf.deadletter`; routing keeps the current version.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import json
import logging
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from prometheus_client import Counter, Gauge, Histogram

from feedback.schema import (TOPIC_ADAPTERS, TOPIC_DEADLETTER, AdapterAnnounced, DeadLetter, RoutingChanged,
                             parse_event)
from serving.routing import LoadedAdapter, Router

log = logging.getLogger(__name__)

SNAPSHOT = "routing.json"
SNAPSHOT_FORMAT = 1
APPLIED_KEEP = 10_000  # event ids remembered in the snapshot; far more than rlhf.adapters ever holds
HISTORY_KEEP = 100  # earlier active versions kept for rollback

# ------------------------------------------------------------------------------------ metrics
ACTIVE_INFO = Gauge("rlhf_adapter_active_info", "1 for the adapter version that takes default traffic "
                    "(`base` = no adapter)", ["version"])
CANARY_INFO = Gauge("rlhf_adapter_canary_info", "Share of users routed to the canary version", ["version"])
LOADED = Gauge("rlhf_adapters_loaded", "Adapter versions loaded in this replica's engine")
REFUSED = Counter("rlhf_adapter_refused_total", "Announced adapters this replica refused to load", ["stage"])
ROUTING_CHANGES = Counter("rlhf_adapter_routing_changes_total", "Applied events from rlhf.adapters", ["action"])
SWAP_SECONDS = Histogram("rlhf_adapter_swap_seconds", "From an announcement's timestamp to routing switched "
                         "to it on this replica", buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30))


# ------------------------------------------------------------------------------------ state machine
@dataclass
class KnownAdapter:
    """An announced version that passed verification (loaded or not)."""

    version: str  # `policy@v3`
    path: str  # folder relative to the adapter store
    manifest_sha256: str
    parent: str | None = None
    source: str = "learner"
    announced_at: float = 0.0


class RoutingState:
    """Active / canary / history, as a pure function of the events on `rlhf.adapters`.

    - announce V (verified): canary on `canary_fraction` of users if the announcement (or the
      `RLHF_CANARY_FRACTION` setting) gives one > 0, else activate V.
    - activate V: V becomes active (None = the base model); the old active goes on the history.
    - rollback: undoes the newest routing change: drops a running canary, otherwise the
      previous active version comes back (popped from the history).
    - canary V F: V takes a sticky share F of users; V=None or F=0 ends the canary.
    """

    def __init__(self, default_canary_fraction: float = 0.0):
        self.default_canary_fraction = default_canary_fraction
        self.known: dict[str, KnownAdapter] = {}
        self.refused: dict[str, str] = {}  # version -> reason
        self.active: str | None = None
        self.canary: str | None = None
        self.canary_fraction = default_canary_fraction
        self.history: list[str | None] = []  # earlier active versions, newest last
        self.applied: list[str] = []  # event ids already applied, oldest first
        self._applied_set: set[str] = set()

    @property
    def previous(self) -> str | None:
        return self.history[-1] if self.history else None

    def seen(self, event_id: str) -> bool:
        return event_id in self._applied_set

    def mark(self, event_id: str) -> None:
        if event_id not in self._applied_set:
            self.applied.append(event_id)
            self._applied_set.add(event_id)
            if len(self.applied) > APPLIED_KEEP:
                self._applied_set.discard(self.applied.pop(0))

    def apply(self, ev: AdapterAnnounced | RoutingChanged, refused: str | None = None) -> str | None:
        """Apply one event (announcements already verified, or `refused` with the reason).
        Returns why the event changed nothing, or None."""
        self.mark(ev.event_id)
        if isinstance(ev, AdapterAnnounced):
            if refused:
                self.refused[ev.version] = refused
                return f"refused: {refused}"
            self.refused.pop(ev.version, None)
            self.known[ev.version] = KnownAdapter(ev.version, ev.path, ev.manifest_sha256, ev.parent, ev.source,
                                                  ev.ts)
            fraction = ev.canary_fraction if ev.canary_fraction is not None else self.default_canary_fraction
            if fraction > 0:
                return self._set_canary(ev.version, fraction)
            return self._activate(ev.version)
        if ev.action == "activate":
            return self._activate(ev.version)
        if ev.action == "canary":
            return self._set_canary(ev.version, ev.canary_fraction)
        return self._rollback()

    def _activate(self, version: str | None) -> str | None:
        if version is not None and version not in self.known:
            return f"unknown version {version!r}"
        if self.canary == version:
            self.canary = None
        if version == self.active:
            return None
        self.history.append(self.active)
        del self.history[:-HISTORY_KEEP]
        self.active = version
        return None

    def _set_canary(self, version: str | None, fraction: float | None) -> str | None:
        if version is None or fraction == 0:
            self.canary = None
            return None
        if version not in self.known:
            return f"unknown version {version!r}"
        if version == self.active:
            self.canary = None
            return f"{version} is already active"
        self.canary = version
        if fraction is not None:
            self.canary_fraction = fraction
        elif self.canary_fraction <= 0:
            self.canary_fraction = self.default_canary_fraction or 0.1
        return None

    def _rollback(self) -> str | None:
        if self.canary is not None:
            self.canary = None
            return None
        if not self.history:
            return "nothing to roll back to"
        self.active = self.history.pop()
        return None

    def forget(self, version: str, reason: str) -> None:
        """A version that turned out unloadable: out of routing, as if it had been refused."""
        self.known.pop(version, None)
        self.refused[version] = reason
        self.history = [v for v in self.history if v != version]
        if self.canary == version:
            self.canary = None
        if self.active == version:
            self.active = self.history.pop() if self.history else None

    # -------------------------------------------------------------------- snapshot
    def to_json(self) -> dict:
        return {"format": SNAPSHOT_FORMAT, "written_at": time.time(), "active": self.active, "canary": self.canary,
                "canary_fraction": self.canary_fraction, "history": self.history,
                "known": {v: asdict(k) for v, k in self.known.items()}, "refused": self.refused,
                "applied": self.applied}

    @classmethod
    def from_json(cls, data: dict, default_canary_fraction: float = 0.0) -> "RoutingState":
        s = cls(default_canary_fraction)
        if data.get("format") != SNAPSHOT_FORMAT:
            raise ValueError(f"unknown routing snapshot format {data.get('format')!r}")
        s.known = {v: KnownAdapter(**k) for v, k in data.get("known", {}).items()}
        s.refused = dict(data.get("refused", {}))
        s.active = data.get("active")
        s.canary = data.get("canary")
        s.canary_fraction = float(data.get("canary_fraction", default_canary_fraction))
        s.history = list(data.get("history", []))
        for eid in data.get("applied", []):
            s.mark(eid)
        return s

    def describe(self) -> dict:
        return {"active": self.active, "canary": self.canary, "canary_fraction": self.canary_fraction,
                "previous": self.previous, "can_rollback": self.canary is not None or bool(self.history),
                "history": self.history[-10:]}


def read_snapshot(adapter_dir: Path, default_canary_fraction: float = 0.0) -> RoutingState | None:
    path = Path(adapter_dir) / SNAPSHOT
    try:
        return RoutingState.from_json(json.loads(path.read_text()), default_canary_fraction)
    except FileNotFoundError:
        return None
    except (ValueError, TypeError, KeyError) as e:
        log.warning("ignoring unreadable routing snapshot %s: %s", path, e)
        return None


def write_snapshot(adapter_dir: Path, state: RoutingState, replica: str) -> None:
    """Atomic rewrite; every replica writes the same content, the last rename wins."""
    adapter_dir = Path(adapter_dir)
    adapter_dir.mkdir(parents=True, exist_ok=True)
    tmp = adapter_dir / f".{SNAPSHOT}.{os.getpid()}.{replica.replace(':', '_').replace('/', '_')}.tmp"
    tmp.write_text(json.dumps({**state.to_json(), "replica": replica}, indent=1))
    os.replace(tmp, adapter_dir / SNAPSHOT)


def verify_known(settings, version: str, path: str, manifest_sha256: str) -> dict:
    """verify_adapter plus a check that the manifest names the announced version."""
    from learner.adapter_store import AdapterError, verify_adapter

    manifest = verify_adapter(settings.adapter_dir, path, manifest_sha256, max_rank=settings.max_lora_rank)
    if manifest.get("version") != version:
        raise AdapterError(f"announced as {version} but the manifest says {manifest.get('version')}")
    return manifest


# ------------------------------------------------------------------------------------ the topic
class AdapterLog:
    """All of `rlhf.adapters` from offset 0, without a consumer group (blocking; one thread)."""

    def __init__(self, settings, client_id: str = "rlhf-adapters"):
        from kafka import KafkaConsumer, TopicPartition

        from feedback.topics import bootstrap_servers, ensure_topics

        ensure_topics(settings, (TOPIC_ADAPTERS, TOPIC_DEADLETTER))
        self.consumer = KafkaConsumer(
            bootstrap_servers=bootstrap_servers(settings), group_id=None, enable_auto_commit=False,
            auto_offset_reset="earliest", client_id=client_id, fetch_max_wait_ms=100,
            bootstrap_timeout_ms=3000, request_timeout_ms=10_000)
        partitions = None
        for _ in range(50):  # metadata for a just-created topic can lag a moment
            partitions = self.consumer.partitions_for_topic(TOPIC_ADAPTERS)
            if partitions:
                break
            time.sleep(0.1)
        if not partitions:
            self.consumer.close()
            raise RuntimeError(f"topic {TOPIC_ADAPTERS} has no partitions")
        self.tps = [TopicPartition(TOPIC_ADAPTERS, p) for p in sorted(partitions)]
        self.consumer.assign(self.tps)
        self.consumer.seek_to_beginning(*self.tps)
        # What was on the topic when we started: records below these offsets are the replay.
        self.replay_end = {tp.partition: off for tp, off in self.consumer.end_offsets(self.tps).items()}

    def poll(self, timeout_s: float) -> list:
        """Records in offset order within each partition (rlhf.adapters events share one key)."""
        batches = self.consumer.poll(timeout_ms=int(timeout_s * 1000))
        return [r for tp in sorted(batches, key=lambda t: t.partition) for r in batches[tp]]

    def replayed(self) -> bool:
        return all(self.consumer.position(tp) >= self.replay_end[tp.partition] for tp in self.tps)

    def close(self) -> None:
        self.consumer.close()


def replay_state(settings, timeout_s: float = 10.0) -> tuple[RoutingState, bool]:
    """The routing state every replica converges to: snapshot + unseen events of the topic.
    For the command line; returns (state, whether the topic could be read)."""
    state = read_snapshot(settings.adapter_dir, settings.canary_fraction) or RoutingState(settings.canary_fraction)
    try:
        topic = AdapterLog(settings, client_id="rlhf-adapters-cli")
    except Exception as e:  # broker unreachable: the snapshot is all there is
        log.warning("cannot read %s (%s); using the store's routing snapshot only", TOPIC_ADAPTERS, e)
        return state, False
    try:
        deadline = time.monotonic() + timeout_s
        while not topic.replayed() and time.monotonic() < deadline:
            for rec in topic.poll(0.5):
                if rec.offset >= topic.replay_end[rec.partition]:
                    continue
                try:
                    ev = parse_event(rec.value)
                except ValueError:
                    continue
                if not isinstance(ev, (AdapterAnnounced, RoutingChanged)) or state.seen(ev.event_id):
                    continue
                refused = None
                if isinstance(ev, AdapterAnnounced):
                    try:
                        verify_known(settings, ev.version, ev.path, ev.manifest_sha256)
                    except Exception as e:
                        refused = str(e)
                state.apply(ev, refused)
        return state, True
    finally:
        topic.close()


# ------------------------------------------------------------------------------------ the follower
class AdapterFollower:
    """Background task in serving: follows rlhf.adapters, loads adapters into the engine, routes."""

    def __init__(self, settings, engine, router: Router, events=None, *, start_timeout_s: float = 20.0):
        self.settings = settings
        self.engine = engine  # serving.engine.Engine; engine.llm is the AsyncLLM
        self.router = router
        self.events = events  # feedback.producer.EventPublisher (dead letters)
        self.replica = settings.replica_id or f"{settings.host}:{settings.port}"
        self.start_timeout_s = start_timeout_s
        self.state = RoutingState(settings.canary_fraction)
        self.loaded_at: dict[str, float] = {}
        self.following = False  # True once the topic's replay is done
        self._log: AdapterLog | None = None
        self._pool = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="rlhf-adapters")
        self._task: asyncio.Task | None = None
        self._ready = asyncio.Event()
        self._stopping = False
        self._waiters: dict[str, asyncio.Future] = {}

    # -------------------------------------------------------------------- lifecycle
    async def start(self) -> None:
        """Rebuild from the snapshot, then replay the topic; returns once replayed (or after
        start_timeout_s, if the broker is unreachable: then routing follows the snapshot until it is)."""
        snap = read_snapshot(self.settings.adapter_dir, self.settings.canary_fraction)
        if snap is not None:
            self.state = snap
            log.info("routing snapshot: active=%s canary=%s, %d known versions", snap.active, snap.canary,
                     len(snap.known))
        await self._reconcile(live=False)
        self._task = asyncio.create_task(self._run(), name="adapter-follower")
        try:
            await asyncio.wait_for(asyncio.shield(self._ready.wait()), self.start_timeout_s)
        except asyncio.TimeoutError:
            log.warning("%s not replayed within %.0f s; serving the snapshot's routing meanwhile",
                        TOPIC_ADAPTERS, self.start_timeout_s)

    async def stop(self) -> None:
        self._stopping = True
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except (asyncio.CancelledError, Exception):
                pass
        if self._log is not None:
            await asyncio.get_running_loop().run_in_executor(self._pool, self._log.close)
        self._pool.shutdown(wait=False)

    async def _in_thread(self, fn, *args):
        return await asyncio.get_running_loop().run_in_executor(self._pool, fn, *args)

    async def _run(self) -> None:
        while not self._stopping:
            try:
                self._log = await self._in_thread(AdapterLog, self.settings, f"rlhf-adapters-{self.replica}")
                break
            except Exception as e:
                log.warning("cannot follow %s yet (%s); retrying in 2 s", TOPIC_ADAPTERS, e)
                await asyncio.sleep(2.0)
        log.info("following %s from offset 0 (replay up to %s)", TOPIC_ADAPTERS, self._log.replay_end)
        while not self._stopping:
            try:
                records = await self._in_thread(self._log.poll, 0.2)
                for rec in records:
                    await self._handle(rec, live=rec.offset >= self._log.replay_end.get(rec.partition, 0))
                if not self.following and await self._in_thread(self._log.replayed):
                    self.following = True
                    self._ready.set()
                    log.info("adapters replayed: active=%s canary=%s (%.0f%%) loaded=%s", self.state.active,
                             self.state.canary, 100 * self.state.canary_fraction, list(self.router.loaded))
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("adapter follower error; continuing")
                await asyncio.sleep(1.0)

    # -------------------------------------------------------------------- events
    async def _handle(self, rec, live: bool) -> None:
        try:
            ev = parse_event(rec.value)
        except ValueError as e:
            log.warning("malformed event on %s at offset %d: %s", TOPIC_ADAPTERS, rec.offset, e)
            if live:
                await self._dead_letter(f"malformed event: {e}", rec.value)
            return
        if not isinstance(ev, (AdapterAnnounced, RoutingChanged)) or self.state.seen(ev.event_id):
            return
        refused = None
        if isinstance(ev, AdapterAnnounced):
            try:
                await self._in_thread(verify_known, self.settings, ev.version, ev.path, ev.manifest_sha256)
            except Exception as e:
                refused = str(e)
                await self._refuse(ev.version, refused, "verify", rec.value, live)
        why = self.state.apply(ev, refused)
        action = "announce" if isinstance(ev, AdapterAnnounced) else ev.action
        if why and not refused:
            log.warning("%s %s changed nothing: %s", action, getattr(ev, "version", ""), why)
        elif not why:
            ROUTING_CHANGES.labels(action).inc()
        await self._reconcile(live, rec.value)
        if live and isinstance(ev, AdapterAnnounced) and ev.version in (self.state.active, self.state.canary):
            SWAP_SECONDS.observe(max(0.0, time.time() - ev.ts))
        self._save()
        fut = self._waiters.pop(ev.event_id, None)
        if fut is not None and not fut.done():
            fut.set_result(why)

    async def wait_applied(self, event_id: str, timeout_s: float) -> tuple[bool, str | None]:
        """Wait until this replica applied `event_id`: (applied, why it changed nothing)."""
        if self.state.seen(event_id):
            return True, None
        fut = self._waiters.setdefault(event_id, asyncio.get_running_loop().create_future())
        try:
            return True, await asyncio.wait_for(asyncio.shield(fut), timeout_s)
        except asyncio.TimeoutError:
            return False, None
        finally:
            self._waiters.pop(event_id, None)

    # -------------------------------------------------------------------- engine and routing
    async def _load(self, version: str) -> str | None:
        """add_lora under a fresh LoRA id; returns why it failed, or None."""
        k = self.state.known[version]
        try:
            await self._in_thread(verify_known, self.settings, version, k.path, k.manifest_sha256)
        except Exception as e:
            return str(e)
        from learner.adapter_store import resolve_inside

        adapter = LoadedAdapter(version, self.router.new_lora_id(), resolve_inside(self.settings.adapter_dir, k.path),
                                {"parent": k.parent, "source": k.source, "manifest_sha256": k.manifest_sha256,
                                 "path": k.path, "announced_at": k.announced_at})
        try:
            ok = await self.engine.llm.add_lora(adapter.lora_request())
        except Exception as e:  # vLLM refuses e.g. unsupported target modules
            return f"the engine could not load it: {type(e).__name__}: {e}"
        if ok is False:
            return "the engine could not load it"
        self.router.loaded[version] = adapter
        self.loaded_at[version] = time.time()
        log.info("loaded %s as LoRA id %d from %s", version, adapter.lora_id, adapter.path)
        return None

    async def _reconcile(self, live: bool, payload: bytes = b"") -> None:
        """Make the engine hold what routing needs, then switch routing, then unload extras."""
        while True:
            failed = None
            for v in (self.state.active, self.state.canary, self.state.previous):
                if v is not None and v not in self.router.loaded:
                    reason = await self._load(v)
                    if reason:
                        failed = (v, reason)
                        break
            if failed is None:
                break
            self.state.forget(*failed)
            await self._refuse(failed[0], failed[1], "load", payload, live)
        # The switch: plain assignments, no await in between (atomic for every request).
        r = self.router
        r.active, r.canary, r.canary_fraction = self.state.active, self.state.canary, self.state.canary_fraction
        r.history = list(self.state.history)
        self._update_metrics()
        await self._evict()

    async def _evict(self) -> None:
        keep = {self.state.active, self.state.canary, self.state.previous} - {None}
        limit = max(self.settings.max_loras - 1, len(keep))
        for v in [v for v in self.router.loaded if v not in keep]:  # oldest first
            if len(self.router.loaded) <= limit:
                break
            adapter = self.router.loaded.pop(v)  # no new request can pick it from here on
            self.loaded_at.pop(v, None)
            try:
                # A request still running on it is fine: vLLM reloads an evicted LoRA from its
                # path on the next step, and store folders never change.
                await self.engine.llm.remove_lora(adapter.lora_id)
                log.info("unloaded %s (LoRA id %d)", v, adapter.lora_id)
            except Exception as e:
                log.warning("could not unload %s: %s", v, e)
        LOADED.set(len(self.router.loaded))

    def _update_metrics(self) -> None:
        ACTIVE_INFO.clear()
        ACTIVE_INFO.labels(self.state.active or "base").set(1)
        CANARY_INFO.clear()
        if self.state.canary:
            CANARY_INFO.labels(self.state.canary).set(self.state.canary_fraction)
        LOADED.set(len(self.router.loaded))

    async def _refuse(self, version: str, reason: str, stage: str, payload: bytes, live: bool) -> None:
        REFUSED.labels(stage).inc()
        log.error("refused adapter %s (%s): %s; routing stays on %s", version, stage, reason,
                  self.state.active or "the base model")
        if live:
            await self._dead_letter(f"adapter {version} refused: {reason}", payload)

    async def _dead_letter(self, reason: str, payload: bytes) -> None:
        if self.events is None:
            return
        ev = DeadLetter(reason=reason, source_topic=TOPIC_ADAPTERS,
                        payload=(payload or b"").decode("utf-8", "replace"), origin=f"serving:{self.replica}")
        try:
            await self.events.publish(TOPIC_DEADLETTER, ev)
        except Exception as e:
            log.warning("could not publish dead letter: %s", e)

    def _save(self) -> None:
        try:
            write_snapshot(self.settings.adapter_dir, self.state, self.replica)
        except OSError as e:  # a read-only store: the topic alone is the record
            log.debug("cannot write routing snapshot: %s", e)

    # -------------------------------------------------------------------- for the routes
    def describe(self) -> dict:
        roles: dict[str, list[str]] = {}
        for role, v in (("active", self.state.active), ("canary", self.state.canary),
                        ("previous", self.state.previous)):
            if v:
                roles.setdefault(v, []).append(role)
        data = []
        for v, a in self.router.loaded.items():
            data.append({"version": v, "lora_id": a.lora_id, "roles": roles.get(v, []), "parent": a.manifest.get("parent"),
                         "source": a.manifest.get("source"), "path": a.manifest.get("path"),
                         "announced_at": a.manifest.get("announced_at"), "loaded_at": self.loaded_at.get(v)})
        return {"object": "list", "base": self.router.base_name, **self.state.describe(),
                "following": self.following, "replica": self.replica, "data": data,
                "known": list(self.state.known)}
