"""POST /v1/chat/completions: OpenAI's chat completions, streamed by SSE when `stream` is true.

The caller authenticates first (auth.py: 401 without a valid credential); the request is then
checked and routed (4xx before any byte is sent), counted against the chat quotas (429 with
Retry-After: RLHF_CHAT_RATE_LIMIT per user, RLHF_CLIENT_CHAT_RATE_LIMIT per client; rate_limit.py),
and generated. The work is in chat.py (`ChatService`, kept on `app.state.chat` once the engine runs).
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Request
from fastapi.responses import StreamingResponse

from serving.auth import Authenticated, authenticate
from serving.chat import ChatService, Prepared
from serving.errors import not_ready
from serving.protocol import ChatCompletionRequest

# Authentication comes first: a caller without a valid credential learns nothing about its body.
router = APIRouter(dependencies=[Depends(authenticate)])


async def _service(request: Request) -> ChatService:
    chat = request.app.state.chat
    if chat is None:
        raise not_ready(headers={"Retry-After": "5"})
    return chat


Chat = Annotated[ChatService, Depends(_service)]


async def _prepared_within_quota(req: ChatCompletionRequest, chat: Chat, caller: Authenticated,
                                 request: Request) -> Prepared:
    """Counted once the request is known to be valid, against its end user and client."""
    prepared = chat.prepare(req, caller)
    request.app.state.quotas.charge_chat(prepared.client, prepared.user)
    return prepared


Admitted = Annotated[Prepared, Depends(_prepared_within_quota)]


@router.post("/v1/chat/completions", responses={401: {}, 429: {}})
async def chat_completions(prepared: Admitted, chat: Chat):
    if prepared.request.stream:
        return StreamingResponse(chat.stream(prepared), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
    return await chat.complete(prepared)
