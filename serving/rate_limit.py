"""A per-key token bucket, answered with 429 and Retry-After (per replica, in memory)."""

from __future__ import annotations

import math
import time
from collections import OrderedDict

from serving.errors import APIError


class RateLimiter:
    """Token bucket per key (a user): `per_minute` posts at once, refilled at per_minute/60 per
    second. Remembers at most `max_users` keys (least recently seen forgotten first)."""

    def __init__(self, per_minute: int, max_users: int = 100_000):
        self.per_minute = per_minute
        self.capacity = float(per_minute)
        self.rate = per_minute / 60.0
        self.max_users = max_users
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()  # user -> (tokens, time)

    def take(self, user: str, now: float | None = None) -> float:
        """Spend one post; returns 0 if allowed, else seconds until the next post is allowed."""
        now = time.monotonic() if now is None else now
        tokens_, last = self._buckets.pop(user, (self.capacity, now))
        tokens_ = min(self.capacity, tokens_ + (now - last) * self.rate)
        wait = 0.0
        if tokens_ >= 1.0:
            tokens_ -= 1.0
        else:
            wait = (1.0 - tokens_) / self.rate if self.rate > 0 else 60.0
        self._buckets[user] = (tokens_, now)
        if len(self._buckets) > self.max_users:
            self._buckets.popitem(last=False)
        return wait

    def check(self, user: str, what: str) -> None:
        """Spend one `what` (e.g. "feedback posts") of `user`, or raise 429."""
        wait = self.take(user)
        if wait > 0:
            raise APIError(429, f"more than {self.per_minute} {what} per minute from this user",
                           type_="rate_limit_error", code="rate_limit_exceeded",
                           headers={"Retry-After": str(max(1, math.ceil(wait)))})
