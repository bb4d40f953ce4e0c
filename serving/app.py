"""The serving HTTP app: OpenAI-compatible chat on an in-process vLLM engine, plus feedback.

    rlhf serve --model tiny --port 8000

Routes: POST /v1/chat/completions, GET /v1/models, POST /v1/feedback, GET /v1/adapters,
GET /metrics, GET /healthz (process up), GET /readyz (engine ready), GET / (chat page).
"""

from __future__ import annotations

import asyncio
import logging
from contextlib import asynccontextmanager

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, PlainTextResponse, StreamingResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.exceptions import HTTPException as StarletteHTTPException

from rlhf.models import model_display_name, resolve_model
from rlhf.settings import Settings, get_settings
from serving import metrics
from serving.chat import ChatService
from serving.engine import Engine, PromptTooLong
from serving.protocol import ChatCompletionRequest, ModelCard, ModelList, error_body
from serving.routing import Router

log = logging.getLogger(__name__)


def _loc_to_param(loc) -> str | None:
    parts = [str(p) for p in loc if p not in ("body", "query", "path", "header")]
    out = ""
    for p in parts:
        out += f"[{p}]" if p.isdigit() else (f".{p}" if out else p)
    return out or None


def _install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError):
        errs = exc.errors()
        first = errs[0] if errs else {}
        if first.get("type") == "json_invalid":
            return JSONResponse(error_body("request body is not valid JSON: " + str(first.get("ctx", {}).get("error", "")),
                                           code="invalid_json"), status_code=400)
        param = _loc_to_param(first.get("loc", ()))
        msg = "; ".join(f"{_loc_to_param(e.get('loc', ())) or 'body'}: {e.get('msg')}" for e in errs[:5])
        return JSONResponse(error_body(msg, param=param, code="invalid_value"), status_code=400)

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException):
        if isinstance(exc.detail, dict) and "error" in exc.detail:
            body = exc.detail
        else:
            kind = "invalid_request_error" if exc.status_code < 500 else "server_error"
            body = error_body(str(exc.detail), type_=kind)
        return JSONResponse(body, status_code=exc.status_code, headers=getattr(exc, "headers", None))

    @app.exception_handler(PromptTooLong)
    async def _too_long(request: Request, exc: PromptTooLong):
        return JSONResponse(error_body(str(exc), param="max_tokens", code="context_length_exceeded"), status_code=400)

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception):
        log.exception("unhandled error on %s", request.url.path)
        return JSONResponse(error_body(f"internal error: {type(exc).__name__}", type_="server_error"), status_code=500)


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or get_settings()
    settings.check_secrets()
    served_name = settings.served_model_name or model_display_name(settings.model)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        from feedback.producer import EventPublisher

        app.state.events = EventPublisher(settings)
        await app.state.events.start()
        model_path = await asyncio.to_thread(resolve_model, settings.model)
        engine = Engine(settings, model_path, served_name)
        await engine.start()
        app.state.engine = engine
        app.state.chat = ChatService(engine, app.state.router, settings, app.state.events)
        metrics.QUEUE_DEPTH.set_function(engine.queue_depth)
        # --- adapters (issue 5): follow rlhf.adapters, load/route/roll back (serving/adapters.py) ---
        from serving.adapters import AdapterFollower

        app.state.adapters = AdapterFollower(settings, engine, app.state.router, app.state.events)
        await app.state.adapters.start()
        # --- end adapters ---
        metrics.ENGINE_READY.set(1)
        try:
            yield
        finally:
            metrics.ENGINE_READY.set(0)
            await app.state.adapters.stop()  # adapters (issue 5)
            engine.shutdown()
            await app.state.events.close()

    app = FastAPI(title="rlhf serving", lifespan=lifespan)
    app.state.settings = settings
    app.state.router = Router(served_name, settings.canary_fraction)
    app.state.engine = None
    app.state.adapters = None  # serving.adapters.AdapterFollower, once the engine runs (issue 5)
    app.add_middleware(metrics.MetricsMiddleware)
    _install_error_handlers(app)

    from serving import routes_feedback

    app.include_router(routes_feedback.router)

    # --- adapters (issue 5): GET /v1/adapters, admin routes, the chat page at GET / ---
    from serving import routes_adapters, routes_page

    app.include_router(routes_adapters.router)
    app.include_router(routes_page.router)
    # --- end adapters ---

    @app.get("/healthz")
    async def healthz():
        return {"status": "ok"}

    @app.get("/readyz")
    async def readyz(request: Request):
        engine = request.app.state.engine
        if engine is None or not engine.ready:
            return JSONResponse({"status": "starting"}, status_code=503)
        return {"status": "ready", "model": engine.served_name}

    @app.get("/metrics")
    async def prometheus():
        return PlainTextResponse(generate_latest(), media_type=CONTENT_TYPE_LATEST)

    @app.get("/v1/models", response_model=ModelList)
    async def models(request: Request):
        router: Router = request.app.state.router
        cards = [ModelCard(id=router.base_name)]
        cards += [ModelCard(id=v, root=router.base_name, parent=router.base_name) for v in router.loaded]
        return ModelList(data=cards)

    @app.post("/v1/chat/completions")
    async def chat_completions(req: ChatCompletionRequest, request: Request):
        chat: ChatService | None = getattr(request.app.state, "chat", None)
        if chat is None:
            return JSONResponse(error_body("the model is still loading; retry shortly", type_="server_error",
                                           code="not_ready"), status_code=503, headers={"Retry-After": "5"})
        if req.stream:
            prepared = chat.prepare(req)  # raises 4xx before the stream starts
            return StreamingResponse(chat.stream(req, prepared), media_type="text/event-stream",
                                     headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
        return await chat.complete(req)

    return app


def run() -> int:
    import uvicorn

    settings = get_settings()
    app = create_app(settings)
    uvicorn.run(app, host=settings.host, port=settings.port, log_level=settings.log_level.lower(),
                timeout_graceful_shutdown=30)
    return 0
