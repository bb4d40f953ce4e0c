"""Feedback tokens: an HMAC that binds a response id to the caller who received it.

A token is `v1.<issued-at>.<hex hmac-sha256(key, "v1|response_id|user|issued-at")>`. Any replica
holding the key can verify it, so feedback needs no shared response table; the issued-at time
lets tokens expire (`RLHF_RESPONSE_TTL_S`).

Response ids are `r_<completion-hex>_<choice-index>`: the completion part says which request
(and so which prompt) an answer belongs to, which is how pairwise feedback is checked to
compare two answers to the same prompt.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import time

_RESPONSE_ID = re.compile(r"^r_([0-9a-f]{8,64})_([0-9]{1,3})$")


class TokenError(ValueError):
    """The token does not prove the caller received this response."""


def response_id(completion_hex: str, index: int) -> str:
    return f"r_{completion_hex}_{index}"


def parse_response_id(rid: str) -> tuple[str, int]:
    """Return (completion group, choice index); raises TokenError for anything else."""
    m = _RESPONSE_ID.match(rid or "")
    if not m:
        raise TokenError(f"unknown response_id {rid!r}: not an id this service issued")
    return m.group(1), int(m.group(2))


def _mac(key: str, rid: str, user: str, issued: int) -> str:
    msg = f"v1|{rid}|{user}|{issued}".encode()
    return hmac.new(key.encode(), msg, hashlib.sha256).hexdigest()


def sign(key: str, rid: str, user: str, now: float | None = None) -> str:
    issued = int(now if now is not None else time.time())
    return f"v1.{issued}.{_mac(key, rid, user, issued)}"


def verify(key: str, rid: str, user: str, token: str, ttl_s: float, now: float | None = None) -> None:
    """Raise TokenError unless `token` was issued by this service for (`rid`, `user`) and is fresh."""
    parse_response_id(rid)
    parts = (token or "").split(".")
    if len(parts) != 3 or parts[0] != "v1" or not parts[1].isdigit():
        raise TokenError("malformed feedback_token")
    issued = int(parts[1])
    if not hmac.compare_digest(parts[2], _mac(key, rid, user, issued)):
        raise TokenError("feedback_token does not match this response_id and user")
    now = now if now is not None else time.time()
    if now - issued > ttl_s:
        raise TokenError("feedback_token has expired")
