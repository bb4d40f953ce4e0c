"""Feedback tokens: an HMAC that binds a response id to the caller who received it.

A token is `v2.<issued-at>.<claims>.<hex hmac-sha256(key, "v2|response_id|issued-at|claims")>`,
where `claims` is base64url JSON: `u` the user the answer was served to, and optionally `a` the
adapter version that wrote it and `p` a digest of the prompt (`prompt_digest(messages)`). Any
replica holding the key can verify it, so feedback needs no shared response table; the
issued-at time lets tokens expire (`RLHF_RESPONSE_TTL_S`). Because the token names its user,
feedback can be attributed without the client repeating who it is; a client that does say
(`user` in the feedback body) must say the same. Tokens of the first format,
`v1.<issued-at>.<hex hmac(key, "v1|response_id|user|issued-at")>`, still verify.

Response ids are `r_<completion-hex>_<choice-index>`: the completion part says which request
(and so which prompt) an answer belongs to, which is how pairwise feedback is checked to
compare two answers to the same prompt. Answers from two requests can be compared when both
tokens carry the same prompt digest.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import re
import time
from dataclasses import dataclass

_RESPONSE_ID = re.compile(r"^r_([0-9a-f]{8,64})_([0-9]{1,3})$")


class TokenError(ValueError):
    """The token does not prove the caller received this response."""


@dataclass(frozen=True)
class TokenInfo:
    user: str  # who the answer was served to
    issued: int  # unix time the token was signed
    adapter: str | None = None  # adapter version that wrote the answer, if the signer said
    prompt: str | None = None  # prompt digest, if the signer said


def response_id(completion_hex: str, index: int) -> str:
    return f"r_{completion_hex}_{index}"


def parse_response_id(rid: str) -> tuple[str, int]:
    """Return (completion group, choice index); raises TokenError for anything else."""
    m = _RESPONSE_ID.match(rid or "")
    if not m:
        raise TokenError(f"unknown response_id {rid!r}: not an id this service issued")
    return m.group(1), int(m.group(2))


def prompt_digest(messages: list[dict]) -> str:
    """Digest of a prompt (the messages' roles and contents): equal prompts, equal digests."""
    canon = json.dumps([[m["role"], m["content"]] for m in messages], ensure_ascii=False, separators=(",", ":"))
    return hashlib.sha256(canon.encode()).hexdigest()[:32]


def _mac(key: str, rid: str, user: str, issued: int) -> str:  # v1
    msg = f"v1|{rid}|{user}|{issued}".encode()
    return hmac.new(key.encode(), msg, hashlib.sha256).hexdigest()


def _mac2(key: str, rid: str, issued: int, claims: str) -> str:
    msg = f"v2|{rid}|{issued}|{claims}".encode()
    return hmac.new(key.encode(), msg, hashlib.sha256).hexdigest()


def sign(key: str, rid: str, user: str, now: float | None = None, *, adapter: str | None = None,
         prompt: str | None = None) -> str:
    issued = int(now if now is not None else time.time())
    body = {"u": user}
    if adapter is not None:
        body["a"] = adapter
    if prompt is not None:
        body["p"] = prompt
    raw = json.dumps(body, ensure_ascii=False, separators=(",", ":"), sort_keys=True).encode()
    claims = base64.urlsafe_b64encode(raw).decode().rstrip("=")
    return f"v2.{issued}.{claims}.{_mac2(key, rid, issued, claims)}"


def read(key: str, rid: str, token: str, ttl_s: float, now: float | None = None, user: str | None = None) -> TokenInfo:
    """Verify `token` for `rid` and return what it says; raise TokenError if forged or stale.

    `user`: who the caller says it is. A v2 token must name that user (any user if None);
    a v1 token can only be checked against a given user ("" if None)."""
    parse_response_id(rid)
    parts = (token or "").split(".")
    if len(parts) == 3 and parts[0] == "v1" and parts[1].isdigit():
        issued = int(parts[1])
        info = TokenInfo(user=user or "", issued=issued)
        if not hmac.compare_digest(parts[2], _mac(key, rid, info.user, issued)):
            raise TokenError("feedback_token does not match this response_id and user")
    elif len(parts) == 4 and parts[0] == "v2" and parts[1].isdigit():
        issued = int(parts[1])
        if not hmac.compare_digest(parts[3], _mac2(key, rid, issued, parts[2])):
            raise TokenError("feedback_token does not match this response_id")
        body = json.loads(base64.urlsafe_b64decode(parts[2] + "=" * (-len(parts[2]) % 4)))
        info = TokenInfo(user=body["u"], issued=issued, adapter=body.get("a"), prompt=body.get("p"))
        if user is not None and user != info.user:
            raise TokenError("feedback_token was issued to another user")
    else:
        raise TokenError("malformed feedback_token")
    now = now if now is not None else time.time()
    if now - info.issued > ttl_s:
        raise TokenError("feedback_token has expired")
    return info


def verify(key: str, rid: str, user: str, token: str, ttl_s: float, now: float | None = None) -> TokenInfo:
    """Raise TokenError unless `token` was issued by this service for (`rid`, `user`) and is fresh."""
    return read(key, rid, token, ttl_s, now=now, user=user)
