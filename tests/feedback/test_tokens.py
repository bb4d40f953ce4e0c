"""Pure tests of feedback tokens and the per-user rate limiter."""

from __future__ import annotations

import pytest

from feedback import feedback_tokens as tokens
from serving.rate_limit import RateLimiter

KEY = "test-key"


def test_sign_verify_round_trip():
    rid = tokens.response_id("ab" * 16, 1)
    tok = tokens.sign(KEY, rid, "alice", now=1000)
    tokens.verify(KEY, rid, "alice", tok, ttl_s=60, now=1030)
    assert tokens.parse_response_id(rid) == ("ab" * 16, 1)


@pytest.mark.parametrize("change", ["user", "rid", "key", "mac", "expired", "garbage", "empty"])
def test_verify_rejects(change):
    rid = tokens.response_id("cd" * 16, 0)
    tok = tokens.sign(KEY, rid, "alice", now=1000)
    args = dict(key=KEY, rid=rid, user="alice", token=tok, ttl_s=60, now=1010)
    if change == "user":
        args["user"] = "mallory"
    elif change == "rid":
        args["rid"] = tokens.response_id("cd" * 16, 1)
    elif change == "key":
        args["key"] = "other-key"
    elif change == "mac":
        args["token"] = tok[:-1] + ("0" if tok[-1] != "0" else "1")
    elif change == "expired":
        args["now"] = 1061
    elif change == "garbage":
        args["token"] = "v1.abc.def"
    elif change == "empty":
        args["token"] = ""
    with pytest.raises(tokens.TokenError):
        tokens.verify(args["key"], args["rid"], args["user"], args["token"], args["ttl_s"], now=args["now"])


@pytest.mark.parametrize("rid", ["", "r_", "r_xyz_0", "chatcmpl-123", "r_abcdef0123_1234", "r_ABCDEF0123_0"])
def test_unknown_response_ids(rid):
    with pytest.raises(tokens.TokenError):
        tokens.parse_response_id(rid)


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


def test_v2_token_names_its_user_adapter_and_prompt():
    rid = tokens.response_id("ef" * 16, 0)
    digest = tokens.prompt_digest([{"role": "user", "content": "hi"}])
    tok = tokens.sign(KEY, rid, "alice", now=1000, adapter="policy@v3", prompt=digest)
    info = tokens.read(KEY, rid, tok, ttl_s=60, now=1001)  # no claimed user: the token says who
    assert (info.user, info.adapter, info.prompt, info.issued) == ("alice", "policy@v3", digest, 1000)
    assert tokens.read(KEY, rid, tok, ttl_s=60, now=1001, user="alice") == info
    with pytest.raises(tokens.TokenError):
        tokens.read(KEY, rid, tok, ttl_s=60, now=1001, user="mallory")
    # claims cannot be edited: swapping in another user's claims breaks the MAC
    other = tokens.sign(KEY, rid, "mallory", now=1000).split(".")[2]
    v, issued, _, mac = tok.split(".")
    with pytest.raises(tokens.TokenError):
        tokens.read(KEY, rid, ".".join([v, issued, other, mac]), ttl_s=60, now=1001)


def test_prompt_digest_depends_on_roles_and_contents_only():
    a = tokens.prompt_digest([{"role": "user", "content": "hi"}])
    assert a == tokens.prompt_digest([{"role": "user", "content": "hi", "name": "x"}])
    assert a != tokens.prompt_digest([{"role": "system", "content": "hi"}])
    assert a != tokens.prompt_digest([{"role": "user", "content": "hi!"}])


def test_v1_tokens_still_verify():
    rid = tokens.response_id("12" * 16, 0)
    issued = 1000
    tok = f"v1.{issued}.{tokens._mac(KEY, rid, 'bob', issued)}"
    assert tokens.verify(KEY, rid, "bob", tok, ttl_s=60, now=1001).user == "bob"
    with pytest.raises(tokens.TokenError):
        tokens.read(KEY, rid, tok, ttl_s=60, now=1001)  # a v1 token cannot say who; "" is not bob
