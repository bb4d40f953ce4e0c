"""Pure tests of the quotas (serving/rate_limit.py): token buckets per user and per client,
shared across replicas by dividing the limit."""

from __future__ import annotations

import pytest

from rlhf.settings import Settings
from serving.errors import APIError
from serving.rate_limit import Quotas, RateLimiter


def test_rate_limiter_burst_then_refill():
    lim = RateLimiter(per_minute=60)  # 1 per second after a burst of 60
    assert all(lim.take("u", now=0.0) == 0 for _ in range(60))
    wait = lim.take("u", now=0.0)
    assert wait == pytest.approx(1.0)
    assert lim.take("other", now=0.0) == 0  # per user
    assert lim.take("u", now=0.5) == pytest.approx(0.5)  # refused posts do not spend tokens
    assert lim.take("u", now=1.01) == 0
    assert lim.take("u", now=1.02) > 0


def test_rate_limiter_forgets_oldest_keys():
    lim = RateLimiter(per_minute=1, max_keys=2)
    lim.take("a", now=0)
    lim.take("b", now=0)
    lim.take("c", now=0)  # "a" forgotten: a fresh bucket
    assert lim.take("a", now=0) == 0
    assert lim.take("c", now=0) > 0


def test_each_replica_allows_its_share_of_the_limit():
    lim = RateLimiter(per_minute=60, replicas=3)  # 20 per replica: 3 replicas together allow 60
    assert [lim.take("u", now=0.0) for _ in range(21)].count(0) == 20
    assert lim.take("u", now=0.0) == pytest.approx(3.0)  # refilled at 20 per minute: one per 3 s
    assert lim.take("u", now=3.0) == 0


def test_a_limit_below_the_replica_count_still_lets_one_through():
    lim = RateLimiter(per_minute=1, replicas=4)
    assert lim.take("u", now=0.0) == 0
    assert lim.take("u", now=0.0) == pytest.approx(60.0)


def quotas(**limits) -> Quotas:
    return Quotas(Settings(**limits))


def refusal(call) -> APIError:
    with pytest.raises(APIError) as e:
        call()
    return e.value


def test_chat_quota_per_user_answers_429_with_retry_after():
    q = quotas(chat_rate_limit=2, serving_replicas=1)
    q.charge_chat("acme", "acme:alice")
    q.charge_chat("acme", "acme:alice")
    err = refusal(lambda: q.charge_chat("acme", "acme:alice"))
    assert err.status == 429 and err.body["error"]["type"] == "rate_limit_error"
    assert err.body["error"]["code"] == "rate_limit_exceeded" and "user" in err.body["error"]["message"]
    assert int(err.headers["Retry-After"]) == 30  # 2 per minute refill one per 30 s
    q.charge_chat("acme", "acme:bob")  # another user has a budget of their own


def test_a_request_refused_by_its_client_quota_costs_its_user_nothing():
    q = quotas(chat_rate_limit=2, client_chat_rate_limit=2)
    q.charge_chat("acme", "acme:a")
    q.charge_chat("acme", "acme:b")
    err = refusal(lambda: q.charge_chat("acme", "acme:c"))
    assert "client" in err.body["error"]["message"]
    q.charge_chat("other", "acme:c")  # the user's two are untouched (a client's users are per client in practice)
    q.charge_chat("other", "acme:c")
    assert "user" in refusal(lambda: q.charge_chat("third", "acme:c")).body["error"]["message"]


def test_feedback_quotas_are_separate_from_chat_and_say_how_replicas_share_them():
    q = quotas(feedback_rate_limit=4, client_feedback_rate_limit=6, chat_rate_limit=0, serving_replicas=2)
    for _ in range(2):
        q.charge_feedback("acme", "acme:a")
    err = refusal(lambda: q.charge_feedback("acme", "acme:a"))
    assert "more than 4 feedback posts per minute from this user" in err.body["error"]["message"]
    assert "2 replicas allows 2" in err.body["error"]["message"]
    q.charge_feedback("acme", "acme:b")
    err = refusal(lambda: q.charge_feedback("acme", "acme:b"))
    assert "from this client" in err.body["error"]["message"]
    for _ in range(100):
        q.charge_chat("acme", "acme:a")  # chat_rate_limit=0: no limit


def test_without_auth_there_is_no_client_quota():
    q = quotas(client_chat_rate_limit=1)
    for _ in range(5):
        q.charge_chat("", "alice")  # client "" (RLHF_AUTH=none) is nobody's bucket
