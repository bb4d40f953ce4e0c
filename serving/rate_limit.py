"""Quotas: token buckets per user and per client, answered with 429 and Retry-After.

    quotas = Quotas(settings)
    quotas.charge_chat(client, user)       # RLHF_CHAT_RATE_LIMIT per user, RLHF_CLIENT_CHAT_RATE_LIMIT per client
    quotas.charge_feedback(client, user)   # RLHF_FEEDBACK_RATE_LIMIT, RLHF_CLIENT_FEEDBACK_RATE_LIMIT

Limits are per minute over the whole service; 0 means no limit. A request is counted against
every quota that applies or none: one refused by its client's quota costs its user nothing.
The client quotas apply to authenticated clients only (without auth there is no client).

Replicas: the buckets live in each replica's memory, and each replica enforces limit /
RLHF_SERVING_REPLICAS (at least one request per minute), so N replicas together allow about
the limit, not N times it. That assumes the load balancer spreads one caller's requests over
the replicas (round robin or least connections do; session affinity would not): a caller
pinned to one replica gets limit / N there. Set RLHF_SERVING_REPLICAS to the Deployment's
replica count (k8s/); with an autoscaler, to its minimum (the service then allows up to
max/min times the limit at peak) or its maximum (stricter than the limit below peak).
"""

from __future__ import annotations

import math
import time
from collections import OrderedDict

from serving import metrics
from serving.errors import APIError


class RateLimiter:
    """Token bucket per key (a user or a client): `per_minute / replicas` at once, refilled at
    that many per minute. Remembers at most `max_keys` keys (least recently seen forgotten first);
    per_minute 0 turns it off."""

    def __init__(self, per_minute: int, replicas: int = 1, max_keys: int = 100_000):
        self.per_minute = per_minute
        self.replicas = replicas
        share = per_minute / replicas
        self.capacity = max(1.0, share)  # a limit smaller than the replica count still lets one through
        self.rate = self.capacity / 60.0
        self.max_keys = max_keys
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()  # key -> (tokens, time)

    @property
    def enabled(self) -> bool:
        return self.per_minute > 0

    def _tokens(self, key: str, now: float) -> float:
        tokens, last = self._buckets.get(key, (self.capacity, now))
        return min(self.capacity, tokens + (now - last) * self.rate)

    def wait(self, key: str, now: float) -> float:
        """Seconds until `key` may spend one (0: now), without spending."""
        tokens = self._tokens(key, now)
        return 0.0 if tokens >= 1.0 else (1.0 - tokens) / self.rate

    def spend(self, key: str, now: float) -> None:
        self._buckets[key] = (self._tokens(key, now) - 1.0, now)
        self._buckets.move_to_end(key)
        if len(self._buckets) > self.max_keys:
            self._buckets.popitem(last=False)

    def take(self, key: str, now: float | None = None) -> float:
        """Spend one if allowed and return 0, else return the seconds to wait (spending nothing)."""
        now = time.monotonic() if now is None else now
        wait = self.wait(key, now)
        if wait == 0.0:
            self.spend(key, now)
        return wait


class Quotas:
    """The four quotas of serving (settings above), checked and charged together."""

    def __init__(self, settings):
        n = settings.serving_replicas
        self.chat_user = RateLimiter(settings.chat_rate_limit, n)
        self.chat_client = RateLimiter(settings.client_chat_rate_limit, n)
        self.feedback_user = RateLimiter(settings.feedback_rate_limit, n)
        self.feedback_client = RateLimiter(settings.client_feedback_rate_limit, n)

    def charge_chat(self, client: str, user: str) -> None:
        self._charge("chat requests", [("user", self.chat_user, user), ("client", self.chat_client, client)])

    def charge_feedback(self, client: str, user: str) -> None:
        self._charge("feedback posts", [("user", self.feedback_user, user),
                                        ("client", self.feedback_client, client)])

    @staticmethod
    def _charge(what: str, quotas: list[tuple[str, RateLimiter, str]], now: float | None = None) -> None:
        """Spend one in every quota that applies, or raise 429 for the first that is exhausted."""
        now = time.monotonic() if now is None else now
        applying = [(scope, lim, key) for scope, lim, key in quotas if lim.enabled and (scope == "user" or key)]
        for scope, lim, key in applying:
            wait = lim.wait(key, now)
            if wait > 0:
                metrics.QUOTA_REJECTED.labels(f"{what.split()[0]}_{scope}").inc()
                shared = (f"; each of the {lim.replicas} replicas allows {lim.capacity:g} of them"
                          if lim.replicas > 1 else "")
                raise APIError(429, f"more than {lim.per_minute} {what} per minute from this {scope}{shared}",
                               type_="rate_limit_error", code="rate_limit_exceeded",
                               headers={"Retry-After": str(max(1, math.ceil(wait)))})
        for _, lim, key in applying:
            lim.spend(key, now)
