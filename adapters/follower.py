"""The adapter follower: every serving replica follows `rlhf.adapters` and routes to what it says.

    any event        ─▶ its Ed25519 signature by a trusted key (signing.py); unsigned, forged or
                        signed by an unknown key: nothing changes, a dead letter with the reason,
                        `rlhf_control_events_refused_total{reason}`
    AdapterAnnounced ─▶ verify in a worker thread (announcements.refusal: manifest sha256, every
                        file's sha256, safetensors only) ─▶ routing state on the loop (routing_state.py)
                     ─▶ copy into this replica's private cache and verify the copy (cache.py)
                     ─▶ engine.add_lora of the copy, under the version's own name and a fresh LoRA id
                     ─▶ switch the Router (plain assignments on the event loop, no await between
                        them: requests already running keep the adapter they started with)
                     ─▶ unload versions nothing routes to, beyond max_loras - 1
    RoutingChanged   ─▶ activate VERSION | rollback | canary VERSION FRACTION, same switch
    LiveFigures      ─▶ kept if newer than the one held (the learner's live table per version, shown by
                        GET /v1/adapters under `live`); routing and the snapshot are untouched
    a record over MAX_CONTROL_EVENT_BYTES ─▶ refused unread, a dead letter

On start a replica replays the signed events of the routing snapshot (snapshot.py), then
`rlhf.adapters` from offset 0 applying only events the snapshot has not seen, so a restarted
or new replica serves what the others serve. A refused adapter (tampered, not safetensors, rank too high, or
one vLLM cannot load) is logged, counted in `rlhf_adapter_refused_total` and sent to
`rlhf.deadletter`; routing keeps the current version.

The engine is serving's (`serving.engine.Engine`: `add_lora(LoadedAdapter)`, `remove_lora(id)`);
this module does not import serving.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import time

from prometheus_client import Counter, Gauge, Histogram

from adapters.announcements import AdapterLog, control_event, refusal, snapshot_state
from adapters.cache import cache_dir_of, private_copy
from adapters.router import LoadedAdapter, Router
from adapters.routing_state import RoutingState
from adapters.signing import ControlKeys, control_keys, refusal_label, signature_refusal
from adapters.snapshot import write_snapshot
from feedback.schema import (
    MAX_CONTROL_EVENT_BYTES,
    TOPIC_ADAPTERS,
    TOPIC_DEADLETTER,
    AdapterAnnounced,
    DeadLetter,
    LiveFigures,
)

log = logging.getLogger(__name__)

ACTIVE_INFO = Gauge("rlhf_adapter_active_info", "1 for the adapter version that takes default traffic "
                    "(`base` = no adapter)", ["version"])
CANARY_INFO = Gauge("rlhf_adapter_canary_info", "Share of users routed to the canary version", ["version"])
LOADED = Gauge("rlhf_adapters_loaded", "Adapter versions loaded in this replica's engine")
REFUSED = Counter("rlhf_adapter_refused_total", "Announced adapters this replica refused to load", ["stage"])
UNTRUSTED = Counter("rlhf_control_events_refused_total", "Events on rlhf.adapters refused for their signature "
                    "(unsigned, unknown key, bad signature) or size (oversized): nothing changed", ["reason"])
ROUTING_CHANGES = Counter("rlhf_adapter_routing_changes_total", "Applied events from rlhf.adapters", ["action"])
SWAP_SECONDS = Histogram("rlhf_adapter_swap_seconds", "From an announcement's timestamp to routing switched "
                         "to it on this replica", buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30))


class AdapterFollower:
    """Background task in serving: follows rlhf.adapters, loads adapters into the engine, routes."""

    def __init__(self, settings, engine, router: Router, events=None, *, keys: ControlKeys | None = None,
                 start_timeout_s: float = 20.0):
        self.settings = settings
        self.keys = keys or control_keys(settings)  # raises SigningError without trusted keys
        self.engine = engine  # serving.engine.Engine: add_lora(LoadedAdapter), remove_lora(lora_id)
        self.router = router
        self.events = events  # feedback.producer.EventPublisher (dead letters)
        self.replica = settings.replica_id or f"{settings.host}:{settings.port}"
        self.start_timeout_s = start_timeout_s
        self.state = RoutingState(settings.canary_fraction)
        self.loaded_at: dict[str, float] = {}
        self.following = False  # True once the topic's replay is done
        self.live_figures: LiveFigures | None = None  # the newest verified live figures (the learner's)
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
        snap = await self._in_thread(snapshot_state, self.settings.adapter_dir, self.settings.canary_fraction,
                                     self.keys.trusted, self.settings.max_lora_rank)
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
        size = len(rec.value or b"")
        if size > MAX_CONTROL_EVENT_BYTES:
            UNTRUSTED.labels("oversized").inc()
            log.error("refused a %d-byte record on %s at offset %d: control events are at most %d bytes", size,
                      TOPIC_ADAPTERS, rec.offset, MAX_CONTROL_EVENT_BYTES)
            if live:
                await self._dead_letter(f"oversized: {size} bytes (at most {MAX_CONTROL_EVENT_BYTES})",
                                        rec.value[:MAX_CONTROL_EVENT_BYTES])
            return
        try:
            ev = control_event(rec.value)
        except ValueError as e:
            log.warning("malformed event on %s at offset %d: %s", TOPIC_ADAPTERS, rec.offset, e)
            if live:
                await self._dead_letter(f"malformed event: {e}", rec.value)
            return
        if ev is None or self.state.seen(ev.event_id):
            return
        untrusted = signature_refusal(ev, self.keys.trusted)
        if untrusted:  # not applied, not marked seen: it cannot take the event id of a real one
            UNTRUSTED.labels(refusal_label(untrusted)).inc()
            log.error("refused %s on %s at offset %d: %s; routing unchanged", ev.type, TOPIC_ADAPTERS, rec.offset,
                      untrusted)
            if live:
                await self._dead_letter(f"{ev.type} refused: {untrusted}", rec.value)
            return
        if isinstance(ev, LiveFigures):  # a view for the routes: not routing, not in the snapshot
            if self.live_figures is None or ev.ts > self.live_figures.ts:
                self.live_figures = ev
            return
        # files are hashed in the worker thread; the state changes here, on the loop the routes read it from
        refused = await self._in_thread(refusal, ev, self.settings.adapter_dir, self.settings.max_lora_rank)
        why = self.state.apply(ev, refused)
        action = "announce" if isinstance(ev, AdapterAnnounced) else ev.action
        if refused:
            await self._refuse(ev.version, refused, "verify", rec.value, live)
        elif why:
            log.warning("%s %s changed nothing: %s", action, getattr(ev, "version", ""), why)
        else:
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
        """add_lora of the verified private copy, under a fresh LoRA id; returns why it failed, or None."""
        k = self.state.known[version]
        try:
            path = await self._in_thread(private_copy, self.settings.adapter_dir, k.path, k.manifest_sha256,
                                         cache_dir_of(self.settings), self.settings.max_lora_rank)
        except Exception as e:  # noqa: BLE001 - whatever a hostile folder makes the check raise, it is a refusal
            return str(e) if isinstance(e, (ValueError, OSError)) else f"{type(e).__name__}: {e}"
        adapter = LoadedAdapter(version, self.router.new_lora_id(), path,
                                {"parent": k.parent, "source": k.source, "manifest_sha256": k.manifest_sha256,
                                 "path": k.path, "announced_at": k.announced_at})
        try:
            ok = await self.engine.add_lora(adapter)
        except Exception as e:  # noqa: BLE001 - vLLM refuses e.g. unsupported target modules
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
                # path on the next step, and that path is the private copy, not the store.
                await self.engine.remove_lora(adapter.lora_id)
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
        held = self.live_figures
        figures = {f.version: f.model_dump(exclude={"version"}) for f in held.versions} if held else {}
        data = []
        for v, a in self.router.loaded.items():
            data.append({"version": v, "lora_id": a.lora_id, "roles": roles.get(v, []), "parent": a.manifest.get("parent"),
                         "source": a.manifest.get("source"), "path": a.manifest.get("path"),
                         "announced_at": a.manifest.get("announced_at"), "loaded_at": self.loaded_at.get(v),
                         "live": figures.get(v)})
        live = {"as_of": held.ts, "versions": figures} if held else None
        return {"object": "list", "base": self.router.base_name, **self.state.describe(),
                "following": self.following, "replica": self.replica, "data": data,
                "known": list(self.state.known), "live": live}
