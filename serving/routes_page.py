"""The chat page: GET / and its static files (plain HTML/JS/CSS, no build step).

The page uses only the public API: /v1/chat/completions, /v1/feedback, /v1/adapters. The page
and its files are open; when those calls answer 401 (RLHF_AUTH=api-key or jwt), the page asks
for an API key or token and sends it as `Authorization: Bearer ...` (static/app.js).
"""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter
from fastapi.responses import FileResponse

from serving.errors import APIError

STATIC = Path(__file__).parent / "static"
FILES = {"app.js": "text/javascript", "style.css": "text/css"}

router = APIRouter()


@router.get("/", include_in_schema=False)
async def chat_page():
    return FileResponse(STATIC / "index.html", media_type="text/html", headers={"Cache-Control": "no-cache"})


@router.get("/static/{name}", include_in_schema=False)
async def static_file(name: str):
    if name not in FILES:
        raise APIError(404, "Not Found")
    return FileResponse(STATIC / name, media_type=FILES[name], headers={"Cache-Control": "no-cache"})
