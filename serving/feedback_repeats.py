"""Feedback posted again unchanged is answered with the first event id and published once.

Clients retry: after a timeout, on a flaky network, or because a user pressed 👍 twice. A post
with the same dedupe key (`dedupe_key()` of Thumbs, Pairwise, Demonstration: the user and the
answer or pair) and the same value as the one that stands gets 202 with that earlier event's
`event_id`, and nothing new goes on `rlhf.feedback`. A changed value (👍 then 👎, the other
answer of a pair preferred, a changed comment) is a new event that replaces the earlier one,
and then stands itself. Two identical posts in flight at once publish once: the second waits
for the first and answers with its id (or publishes itself if the first could not be stored).

Per replica and bounded: at most `max_keys` dedupe keys (least recently posted forgotten
first), each kept for `ttl_s` (RLHF_RESPONSE_TTL_S: by then the answer's feedback token has
expired, and a re-post gets 403 anyway). A repeat that reaches another replica, or comes
after its key was forgotten, is published again; readers keep one event per dedupe key and
value, so it changes nothing downstream.
"""

from __future__ import annotations

import asyncio
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from feedback.schema import Demonstration, Thumbs, UserFeedback
from serving import metrics

MAX_KEYS = 200_000


def feedback_value(event: UserFeedback) -> tuple:
    """What the user said, apart from who and about what (the dedupe key)."""
    if isinstance(event, Thumbs):
        return ("thumbs", event.value, event.comment)
    if isinstance(event, Demonstration):
        return ("demonstration", event.text)
    return ("pairwise", event.chosen_response_id)


@dataclass
class _Standing:
    value: tuple
    event_id: str
    expires: float
    stored: asyncio.Event = field(default_factory=asyncio.Event)  # set once publishing ended
    ok: bool = False  # publishing ended with the event durable


class RecentFeedback:
    def __init__(self, ttl_s: float, max_keys: int = MAX_KEYS, clock: Callable[[], float] = time.monotonic):
        self.ttl_s, self.max_keys, self.clock = ttl_s, max_keys, clock
        self._standing: OrderedDict[str, _Standing] = OrderedDict()  # dedupe key -> the event that stands

    def __len__(self) -> int:
        return len(self._standing)

    async def publish_once(self, event: UserFeedback, publish: Callable[[UserFeedback], Awaitable[None]]
                           ) -> str:
        """Publish `event` unless the same feedback stands already; returns the event id that stands."""
        key, value = event.dedupe_key(), feedback_value(event)
        while True:
            now = self.clock()
            prior = self._standing.get(key)
            if prior is None or prior.value != value or prior.expires <= now:
                break
            self._standing.move_to_end(key)
            await prior.stored.wait()
            if prior.ok:
                metrics.FEEDBACK_REPEATS.inc()
                return prior.event_id
            # the first post failed (and was answered with its error): this one tries afresh
        mine = _Standing(value=value, event_id=event.event_id, expires=now + self.ttl_s)
        self._standing[key] = mine
        self._standing.move_to_end(key)
        while len(self._standing) > self.max_keys:
            self._standing.popitem(last=False)
        try:
            await publish(event)
            mine.ok = True
        finally:
            if not mine.ok and self._standing.get(key) is mine:
                del self._standing[key]
            mine.stored.set()
        return event.event_id
