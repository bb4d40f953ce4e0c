"""Pure tests of feedback tokens (feedback/feedback_tokens.py)."""

from __future__ import annotations

import pytest

from feedback import feedback_tokens

KEY = "test-key"


def test_sign_verify_round_trip():
    rid = feedback_tokens.response_id("ab" * 16, 1)
    tok = feedback_tokens.sign(KEY, rid, "alice", now=1000)
    feedback_tokens.verify(KEY, rid, "alice", tok, ttl_s=60, now=1030)
    assert feedback_tokens.parse_response_id(rid) == ("ab" * 16, 1)


@pytest.mark.parametrize("change", ["user", "rid", "key", "mac", "expired", "garbage", "empty"])
def test_verify_rejects(change):
    rid = feedback_tokens.response_id("cd" * 16, 0)
    tok = feedback_tokens.sign(KEY, rid, "alice", now=1000)
    args = dict(key=KEY, rid=rid, user="alice", token=tok, ttl_s=60, now=1010)
    if change == "user":
        args["user"] = "mallory"
    elif change == "rid":
        args["rid"] = feedback_tokens.response_id("cd" * 16, 1)
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
    with pytest.raises(feedback_tokens.TokenError):
        feedback_tokens.verify(args["key"], args["rid"], args["user"], args["token"], args["ttl_s"], now=args["now"])


@pytest.mark.parametrize("rid", ["", "r_", "r_xyz_0", "chatcmpl-123", "r_abcdef0123_1234", "r_ABCDEF0123_0"])
def test_unknown_response_ids(rid):
    with pytest.raises(feedback_tokens.TokenError):
        feedback_tokens.parse_response_id(rid)


def test_v2_token_names_its_user_adapter_and_prompt():
    rid = feedback_tokens.response_id("ef" * 16, 0)
    digest = feedback_tokens.prompt_digest([{"role": "user", "content": "hi"}])
    tok = feedback_tokens.sign(KEY, rid, "alice", now=1000, adapter="policy@v3", prompt=digest)
    info = feedback_tokens.read(KEY, rid, tok, ttl_s=60, now=1001)  # no claimed user: the token says who
    assert (info.user, info.adapter, info.prompt, info.issued) == ("alice", "policy@v3", digest, 1000)
    assert feedback_tokens.read(KEY, rid, tok, ttl_s=60, now=1001, user="alice") == info
    with pytest.raises(feedback_tokens.TokenError):
        feedback_tokens.read(KEY, rid, tok, ttl_s=60, now=1001, user="mallory")
    # claims cannot be edited: swapping in another user's claims breaks the MAC
    other = feedback_tokens.sign(KEY, rid, "mallory", now=1000).split(".")[2]
    v, issued, _, mac = tok.split(".")
    with pytest.raises(feedback_tokens.TokenError):
        feedback_tokens.read(KEY, rid, ".".join([v, issued, other, mac]), ttl_s=60, now=1001)


def test_prompt_digest_depends_on_roles_and_contents_only():
    a = feedback_tokens.prompt_digest([{"role": "user", "content": "hi"}])
    assert a == feedback_tokens.prompt_digest([{"role": "user", "content": "hi", "name": "x"}])
    assert a != feedback_tokens.prompt_digest([{"role": "system", "content": "hi"}])
    assert a != feedback_tokens.prompt_digest([{"role": "user", "content": "hi!"}])


def test_v1_tokens_still_verify():
    rid = feedback_tokens.response_id("12" * 16, 0)
    issued = 1000
    tok = f"v1.{issued}.{feedback_tokens._mac(KEY, rid, 'bob', issued)}"
    assert feedback_tokens.verify(KEY, rid, "bob", tok, ttl_s=60, now=1001).user == "bob"
    with pytest.raises(feedback_tokens.TokenError):
        feedback_tokens.read(KEY, rid, tok, ttl_s=60, now=1001)  # a v1 token cannot say who; "" is not bob
