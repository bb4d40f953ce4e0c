"""The HMAC on events serving writes (interactions, feedback): the learner stores only what a
holder of `RLHF_EVENT_HMAC_KEY` wrote, so a client of Kafka cannot inject training data.

    sealed(event, key)      the event with its `hmac` set (events of other types unchanged)
    hmac_refusal(event, key)  why the event must not be stored (None when its HMAC is right)

The key is its own setting, not the feedback-token key: a leaked token key must not let anyone
write training data, and the other way round.
"""

from __future__ import annotations

import hashlib
import hmac

from feedback.schema import Event, ServingEvent, canonical_bytes


def _mac(event: ServingEvent, key: bytes) -> str:
    return hmac.new(key, canonical_bytes(event, "hmac"), hashlib.sha256).hexdigest()


def sealed(event: Event, key: str | bytes) -> Event:
    """`event` with its HMAC (a copy; the event id stays). Events that carry none are returned as they are."""
    if not isinstance(event, ServingEvent):
        return event
    key = key.encode() if isinstance(key, str) else key
    return event.model_copy(update={"hmac": _mac(event, key)})


def hmac_refusal(event: Event, key: str | bytes) -> str | None:
    """Why a serving event must not be stored: no HMAC, or a wrong one. None when it is right
    (and for events that carry none)."""
    if not isinstance(event, ServingEvent):
        return None
    if not event.hmac:
        return f"{event.type} event without an HMAC (not written by serving)"
    key = key.encode() if isinstance(key, str) else key
    if not hmac.compare_digest(event.hmac, _mac(event, key)):
        return f"{event.type} event with a wrong HMAC (altered, or not written by serving)"
    return None
