"""POST /v1/chat/completions: OpenAI's chat completions, streamed by SSE when `stream` is true.

The caller authenticates first (auth.py: 401 without a valid credential); the request's sizes are
checked (limits.py: 400), it takes one of its client's chat slots (concurrency.py: 429 with
Retry-After above RLHF_CLIENT_CHAT_CONCURRENCY in progress), is rendered, tokenized (on a worker
thread, so that a huge prompt never holds up the event loop and /healthz; one too long for the
context by its length alone is refused untokenized: engine.py) and routed (4xx before
any byte is sent), counted against the chat quotas (429 with Retry-After: RLHF_CHAT_RATE_LIMIT per
user, RLHF_CLIENT_CHAT_RATE_LIMIT per client; rate_limit.py), and generated. The body as a whole is
bounded by body_limit.py (413). The work is in chat.py (`ChatService`, kept on `app.state.chat`
once the engine runs).
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Request

from serving.auth import Authenticated, authenticate
from serving.chat import ChatService
from serving.concurrency import HeldStream, client_key
from serving.errors import not_ready
from serving.limits import check_chat_request
from serving.protocol import ChatCompletionRequest

# Authentication comes first: a caller without a valid credential learns nothing about its body.
router = APIRouter(dependencies=[Depends(authenticate)])


async def _service(request: Request) -> ChatService:
    chat = request.app.state.chat
    if chat is None:
        raise not_ready(headers={"Retry-After": "5"})
    return chat


Chat = Annotated[ChatService, Depends(_service)]


STREAMED = {"description": "A chat.completion, or with `stream` chat.completion.chunk events ending with "
                          "`data: [DONE]`", "content": {"text/event-stream": {}}}


@router.post("/v1/chat/completions", responses={200: STREAMED, 401: {}, 429: {}, 503: {}})
async def chat_completions(req: ChatCompletionRequest, chat: Chat, caller: Authenticated, request: Request):
    check_chat_request(req, request.app.state.settings)
    slot = request.app.state.chat_slots.acquire(client_key(caller, request))
    streaming = None
    try:
        prepared = await chat.prepare(req, caller)
        # Counted once the request is known to be valid, against its end user and client.
        request.app.state.quotas.charge_chat(prepared.client, prepared.user)
        if not req.stream:
            return await chat.complete(prepared)
        streaming = HeldStream(chat.stream(prepared), slot, media_type="text/event-stream",
                               headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
        return streaming
    finally:
        if streaming is None:  # answered, refused or failed here; a stream gives its slot back when it ends
            slot.release()
