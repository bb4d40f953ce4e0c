"""Pure tests of the per-user feedback rate limiter (serving/rate_limit.py)."""

from __future__ import annotations

import pytest

from serving.rate_limit import RateLimiter


def test_rate_limiter_burst_then_refill():
    lim = RateLimiter(per_minute=60)  # 1 per second after a burst of 60
    assert all(lim.take("u", now=0.0) == 0 for _ in range(60))
    wait = lim.take("u", now=0.0)
    assert wait == pytest.approx(1.0)
    assert lim.take("other", now=0.0) == 0  # per user
    assert lim.take("u", now=0.5) == pytest.approx(0.5)  # refused posts do not spend tokens
    assert lim.take("u", now=1.01) == 0
    assert lim.take("u", now=1.02) > 0


def test_rate_limiter_forgets_oldest_users():
    lim = RateLimiter(per_minute=1, max_users=2)
    lim.take("a", now=0)
    lim.take("b", now=0)
    lim.take("c", now=0)  # "a" forgotten: a fresh bucket
    assert lim.take("a", now=0) == 0
    assert lim.take("c", now=0) > 0
