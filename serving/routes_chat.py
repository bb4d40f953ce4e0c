"""POST /v1/chat/completions: OpenAI's chat completions, streamed by SSE when `stream` is true.

The work is in chat.py (`ChatService`, kept on `app.state.chat` once the engine runs).
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Request
from fastapi.responses import StreamingResponse

from serving.chat import ChatService
from serving.errors import not_ready
from serving.protocol import ChatCompletionRequest

router = APIRouter()


async def _service(request: Request) -> ChatService:
    chat = request.app.state.chat
    if chat is None:
        raise not_ready(headers={"Retry-After": "5"})
    return chat


Chat = Annotated[ChatService, Depends(_service)]


@router.post("/v1/chat/completions")
async def chat_completions(req: ChatCompletionRequest, chat: Chat):
    if req.stream:
        prepared = chat.prepare(req)  # raises 4xx before the stream starts
        return StreamingResponse(chat.stream(req, prepared), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
    return await chat.complete(req)
