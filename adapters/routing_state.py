"""What every replica routes to, as a pure function of the events on `rlhf.adapters`.

`RoutingState.apply` is the whole state machine; serving's follower and the learner's store
both run it (announcements.py checks the signature and verifies an announcement's files
first), so "the adapter serving now" means the same everywhere. `to_json`/`from_json` are
the snapshot's format; the snapshot is rebuilt from the signed events it keeps (`events`),
never trusted for its own fields, since whoever writes the store could write them.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass

from feedback.schema import AdapterAnnounced, RoutingChanged

SNAPSHOT_FORMAT = 1
APPLIED_KEEP = 10_000  # event ids remembered; far more than rlhf.adapters ever holds
HISTORY_KEEP = 100  # earlier active versions kept for rollback


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
        self.events: list[dict] = []  # the signed events applied, oldest first (the snapshot replays them)

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
        if ev.signature:
            self.events.append(ev.model_dump(mode="json"))
            del self.events[:-APPLIED_KEEP]
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

    def describe(self) -> dict:
        return {"active": self.active, "canary": self.canary, "canary_fraction": self.canary_fraction,
                "previous": self.previous, "can_rollback": self.canary is not None or bool(self.history),
                "history": self.history[-10:]}

    # -------------------------------------------------------------------- serialised form
    def to_json(self) -> dict:
        return {"format": SNAPSHOT_FORMAT, "written_at": time.time(), "active": self.active, "canary": self.canary,
                "canary_fraction": self.canary_fraction, "history": self.history,
                "known": {v: asdict(k) for v, k in self.known.items()}, "refused": self.refused,
                "applied": self.applied, "events": self.events}

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
        s.events = list(data.get("events", []))
        return s
