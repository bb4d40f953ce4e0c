"""The routing snapshot `RLHF_ADAPTER_DIR/routing.json`: a replica's routing state, rewritten
after every applied event, so that a replica started against a broker that lost its log
(the embedded broker keeps it in memory, retention drops old events) still serves what the
others serve.

Whoever can write the store can write this file, so it is not trusted for what it says:
`read_snapshot_events` returns only the signed events it keeps, and a replica replays them
through the same checks as events from the topic (announcements.snapshot_state)."""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

from adapters.routing_state import RoutingState

log = logging.getLogger(__name__)

SNAPSHOT = "routing.json"


def read_snapshot_events(adapter_dir: Path) -> list | None:
    """The events the snapshot keeps (unchecked: replay them through the signature and file checks);
    None when there is no readable snapshot."""
    path = Path(adapter_dir) / SNAPSHOT
    try:
        events = json.loads(path.read_text()).get("events", [])
    except FileNotFoundError:
        return None
    except (ValueError, TypeError, AttributeError) as e:
        log.warning("ignoring unreadable routing snapshot %s: %s", path, e)
        return None
    return events if isinstance(events, list) else []


def write_snapshot(adapter_dir: Path, state: RoutingState, replica: str) -> None:
    """Atomic rewrite; every replica writes the same content, the last rename wins."""
    adapter_dir = Path(adapter_dir)
    adapter_dir.mkdir(parents=True, exist_ok=True)
    tmp = adapter_dir / f".{SNAPSHOT}.{os.getpid()}.{replica.replace(':', '_').replace('/', '_')}.tmp"
    tmp.write_text(json.dumps({**state.to_json(), "replica": replica}, indent=1))
    os.replace(tmp, adapter_dir / SNAPSHOT)
