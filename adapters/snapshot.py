"""The routing snapshot `RLHF_ADAPTER_DIR/routing.json`: a replica's routing state, rewritten
after every applied event, so that a replica started against a broker that lost its log
(the embedded broker keeps it in memory, retention drops old events) still serves what the
others serve."""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

from adapters.routing_state import RoutingState

log = logging.getLogger(__name__)

SNAPSHOT = "routing.json"


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
