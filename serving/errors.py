"""Every error answer of the app, in OpenAI's shape {"error": {"message", "type", "param", "code"}}.

Routes, dependencies and services raise `APIError`; `install_error_handlers` turns it, and every
other exception (bad JSON, validation, unknown route, engine errors, bugs), into one.
"""

from __future__ import annotations

import json
import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from vllm.exceptions import VLLMClientError

from serving import body_limit
from serving.engine import EngineStopped, PromptTooLong
from serving.protocol import error_body

log = logging.getLogger(__name__)


class ErrorResponse(JSONResponse):
    """JSON with non-ASCII escaped: an error message may quote input that is not valid UTF-8 text
    (a lone surrogate), and the answer must still be sent."""

    def render(self, content) -> bytes:
        return json.dumps(content, ensure_ascii=True, separators=(",", ":")).encode("ascii")


class APIError(Exception):
    """An error answer: raise it anywhere below a route."""

    def __init__(self, status: int, message: str, *, type_: str = "invalid_request_error", param: str | None = None,
                 code: str | None = None, headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status = status
        self.body = error_body(message, type_=type_, param=param, code=code)
        self.headers = headers

    def response(self) -> JSONResponse:
        return ErrorResponse(self.body, status_code=self.status, headers=self.headers)


def not_ready(headers: dict[str, str] | None = None) -> APIError:
    """503 for a request that needs the engine before it has started."""
    return APIError(503, "the model is still loading; retry shortly", type_="server_error", code="not_ready",
                    headers=headers)


def _loc_to_param(loc) -> str | None:
    parts = [str(p) for p in loc if p not in ("body", "query", "path", "header")]
    out = ""
    for p in parts:
        out += f"[{p}]" if p.isdigit() else (f".{p}" if out else p)
    return out or None


async def _api_error(request: Request, exc: APIError) -> JSONResponse:
    return exc.response()


async def _validation(request: Request, exc: RequestValidationError) -> JSONResponse:
    errs = exc.errors()
    first = errs[0] if errs else {}
    if first.get("type") == "json_invalid":
        return APIError(400, "request body is not valid JSON: " + str(first.get("ctx", {}).get("error", "")),
                        code="invalid_json").response()
    param = _loc_to_param(first.get("loc", ()))
    msg = "; ".join(f"{_loc_to_param(e.get('loc', ())) or 'body'}: {e.get('msg')}" for e in errs[:5])
    return APIError(400, msg, param=param, code="invalid_value").response()


async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
    """Starlette's own errors: unknown route (404), wrong method (405)."""
    kind = "invalid_request_error" if exc.status_code < 500 else "server_error"
    return APIError(exc.status_code, str(exc.detail), type_=kind, headers=exc.headers).response()


async def _too_long(request: Request, exc: PromptTooLong) -> JSONResponse:
    return APIError(400, str(exc), param="max_tokens", code="context_length_exceeded").response()


async def _too_large(request: Request, exc: body_limit.BodyTooLarge) -> JSONResponse:
    return APIError(413, exc.detail, code=body_limit.CODE, headers={"Connection": "close"}).response()


async def _vllm_refused(request: Request, exc: VLLMClientError) -> JSONResponse:
    """vLLM refused the request's parameters (building its SamplingParams, or adding the request), e.g.
    n > 1 with greedy sampling: a check the request models do not make, so a 400, not a 500."""
    return APIError(400, str(exc), param=getattr(exc, "parameter", None), code="invalid_value").response()


async def _engine_stopped(request: Request, exc: EngineStopped) -> JSONResponse:
    return APIError(503, str(exc), type_="server_error", code="engine_stopped",
                    headers={"Retry-After": "10"}).response()


async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
    log.exception("unhandled error on %s", request.url.path)
    return APIError(500, f"internal error: {type(exc).__name__}", type_="server_error").response()


def install_error_handlers(app: FastAPI) -> None:
    app.add_exception_handler(APIError, _api_error)
    app.add_exception_handler(RequestValidationError, _validation)
    app.add_exception_handler(StarletteHTTPException, _http)
    app.add_exception_handler(PromptTooLong, _too_long)
    app.add_exception_handler(body_limit.BodyTooLarge, _too_large)
    app.add_exception_handler(VLLMClientError, _vllm_refused)
    app.add_exception_handler(EngineStopped, _engine_stopped)
    app.add_exception_handler(Exception, _unexpected)
