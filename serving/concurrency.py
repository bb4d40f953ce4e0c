"""Chat requests in progress per client, at most RLHF_CLIENT_CHAT_CONCURRENCY: 429 with Retry-After above it.

    slots = ChatSlots(settings.client_chat_concurrency)
    slot = slots.acquire(client_key(caller, request))   # or APIError 429
    ...                                                  # render, tokenize, generate, stream
    slot.release()                                       # idempotent; HeldStream releases at the stream's end

A slot is taken before the prompt is rendered and tokenized (the costly part of a huge request)
and given back when the answer is complete, the stream has ended, or the client went away.
The client is the authenticated client (API key or JWT client); without authentication, the
remote address. Per replica, in memory; 0 turns it off.
"""

from __future__ import annotations

from collections import Counter

from fastapi import Request
from starlette.responses import StreamingResponse

from serving import metrics
from serving.auth import Caller
from serving.errors import APIError

RETRY_AFTER_S = 1  # a slot frees when one of the client's answers ends: usually within seconds


def client_key(caller: Caller, request: Request) -> str:
    if caller.client:
        return f"client:{caller.client}"
    return f"address:{request.client.host if request.client else 'unknown'}"


class Slot:
    def __init__(self, slots: "ChatSlots", key: str):
        self._slots, self._key, self._held = slots, key, True

    def release(self) -> None:
        if self._held:
            self._held = False
            self._slots._give_back(self._key)


class ChatSlots:
    def __init__(self, per_client: int):
        self.per_client = per_client
        self._in_use: Counter[str] = Counter()

    def acquire(self, key: str) -> Slot:
        if self.per_client and self._in_use[key] >= self.per_client:
            metrics.QUOTA_REJECTED.labels("chat_concurrency").inc()
            raise APIError(429, f"this client already has {self._in_use[key]} chat requests in progress; at most "
                                f"{self.per_client} at once are accepted (RLHF_CLIENT_CHAT_CONCURRENCY)",
                           type_="rate_limit_error", code="too_many_concurrent_requests",
                           headers={"Retry-After": str(RETRY_AFTER_S)})
        self._in_use[key] += 1
        return Slot(self, key)

    def _give_back(self, key: str) -> None:
        self._in_use[key] -= 1
        if self._in_use[key] <= 0:
            del self._in_use[key]


class HeldStream(StreamingResponse):
    """A streamed answer that gives its slot back however the stream ends (done, error, client gone),
    even when it never started."""

    def __init__(self, content, slot: Slot, **kwargs):
        super().__init__(content, **kwargs)
        self.slot = slot

    async def __call__(self, scope, receive, send):
        try:
            await super().__call__(scope, receive, send)
        finally:
            self.slot.release()
