"""The serving HTTP app: OpenAI-compatible chat on an in-process vLLM engine, plus feedback.

    rlhf serve --model tiny --port 8000

Routes: POST /v1/chat/completions, GET /v1/models, POST /v1/feedback, GET /v1/adapters,
GET /metrics, GET /healthz (process up), GET /readyz (engine ready), GET / (chat page).
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
from contextlib import asynccontextmanager

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, PlainTextResponse, StreamingResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.exceptions import HTTPException as StarletteHTTPException

from adapters.follower import AdapterFollower
from adapters.router import Router
from rlhf.models.registry import model_display_name, resolve_model
from rlhf.settings import Settings, get_settings
from serving import metrics
from serving.chat import ChatService
from serving.engine import Engine, EngineStopped, PromptTooLong
from serving.protocol import ChatCompletionRequest, ModelCard, ModelList, error_body

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

    @app.exception_handler(EngineStopped)
    async def _engine_stopped(request: Request, exc: EngineStopped):
        return JSONResponse(error_body(str(exc), type_="server_error", code="engine_stopped"), status_code=503,
                            headers={"Retry-After": "10"})

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
        app.state.adapters = AdapterFollower(settings, engine, app.state.router, app.state.events)
        await app.state.adapters.start()
        metrics.ENGINE_READY.set(1)
        watcher = asyncio.create_task(_watch_engine(app, engine))
        try:
            yield
        finally:
            watcher.cancel()
            metrics.ENGINE_READY.set(0)
            await app.state.adapters.stop()  # adapters (issue 5)
            engine.shutdown()
            await app.state.events.close()

    app = FastAPI(title="rlhf serving", lifespan=lifespan)
    app.state.settings = settings
    app.state.router = Router(served_name, settings.canary_fraction)
    app.state.engine = None
    app.state.engine_died = False
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
    async def healthz(request: Request):
        if request.app.state.engine_died:  # the process is up but useless: let the orchestrator restart it
            return JSONResponse({"status": "engine stopped"}, status_code=503)
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


ENGINE_DIED_EXIT = 3


async def _watch_engine(app: FastAPI, engine: Engine, every_s: float = 1.0) -> None:
    """When the engine core dies (killed, out of memory, crashed), this replica can only fail
    requests: say so (503 on /readyz and /healthz, `engine_stopped` on requests), then stop the
    process so its supervisor (`rlhf up`, Kubernetes) starts a fresh one."""
    while not engine.dead:
        await asyncio.sleep(every_s)
    app.state.engine_died = True
    metrics.ENGINE_READY.set(0)
    log.critical("the vLLM engine core died; stopping this process (exit code %d) so that it is restarted",
                 ENGINE_DIED_EXIT)
    server = getattr(app.state, "uvicorn", None)
    if server is not None:
        server.should_exit = True  # uvicorn's graceful shutdown: open requests get their 503s
    else:  # run by another ASGI server
        os.kill(os.getpid(), signal.SIGTERM)


def run() -> int:
    import uvicorn

    settings = get_settings()
    app = create_app(settings)
    app.state.uvicorn = uvicorn.Server(uvicorn.Config(app, host=settings.host, port=settings.port,
                                                      log_level=settings.log_level.lower(),
                                                      timeout_graceful_shutdown=30))
    app.state.uvicorn.run()
    return ENGINE_DIED_EXIT if app.state.engine_died else 0
