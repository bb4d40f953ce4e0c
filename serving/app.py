"""The serving HTTP app: OpenAI-compatible chat on an in-process vLLM engine, plus feedback.

    rlhf serve --model tiny --port 8000

Routes: POST /v1/chat/completions, GET /v1/models, POST /v1/feedback, GET /v1/adapters,
GET /metrics, GET /healthz (process up), GET /readyz (engine ready), GET / (chat page).
One module per endpoint group (routes_*.py); request and response models in protocol.py;
the work in services kept on `app.state` (chat.ChatService, feedback_service.FeedbackService,
adapters.follower.AdapterFollower); who calls in auth.py (RLHF_AUTH), quotas in rate_limit.py,
chat requests in progress per client in concurrency.py; request sizes in body_limit.py (413)
and limits.py; error answers in errors.py (documented in /openapi.json by openapi_errors.py).
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
from contextlib import asynccontextmanager

import uvicorn
from fastapi import FastAPI

from adapters.follower import AdapterFollower
from adapters.router import Router
from adapters.signing import SigningError, control_keys
from feedback.kafka_security import check_client_security
from feedback.producer import EventPublisher
from rlhf.cpu_share import CpuListError, bind_serving
from rlhf.models.registry import model_display_name, resolve_model
from rlhf.settings import Settings, get_settings
from serving import (metrics, routes_adapters, routes_chat, routes_feedback, routes_health, routes_models,
                     routes_page)
from serving.auth import build_authenticator
from serving.body_limit import BodySizeLimit
from serving.chat import ChatService
from serving.concurrency import ChatSlots
from serving.engine import Engine
from serving.errors import install_error_handlers
from serving.feedback_service import FeedbackService
from serving.openapi_errors import document_errors
from serving.rate_limit import Quotas

log = logging.getLogger(__name__)

ENGINE_DIED_EXIT = 3


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or get_settings()
    settings.check_secrets()
    check_client_security(settings)  # exits naming the Kafka security setting that cannot work
    auth = build_authenticator(settings)  # exits with a clear message on unusable auth settings
    try:
        keys = control_keys(settings)  # public keys routing events must be signed by (+ a signing key: admin routes)
    except SigningError as e:
        raise SystemExit(str(e)) from None
    try:
        bind_serving(settings.serving_cpus)  # before the engine starts: its worker reads the binding then
    except CpuListError as e:
        raise SystemExit(f"RLHF_SERVING_CPUS: {e}") from None
    served_name = settings.served_model_name or model_display_name(settings.model)

    app = FastAPI(title="rlhf serving", lifespan=lifespan)
    app.state.settings = settings
    app.state.router = Router(served_name, settings.canary_fraction)
    app.state.auth = auth
    app.state.control_keys = keys
    app.state.quotas = Quotas(settings)
    app.state.chat_slots = ChatSlots(settings.client_chat_concurrency)
    # Set by the lifespan once the engine runs; until then the routes needing them answer 503.
    app.state.engine = None
    app.state.chat = None
    app.state.feedback = None
    app.state.adapters = None
    app.state.engine_died = False

    app.add_middleware(metrics.MetricsMiddleware)
    app.add_middleware(BodySizeLimit, max_bytes=settings.max_body_bytes)  # outermost: before anything reads the body
    install_error_handlers(app)
    document_errors(app)
    for module in (routes_feedback, routes_adapters, routes_page, routes_health, routes_models, routes_chat):
        app.include_router(module.router)
    return app


@asynccontextmanager
async def lifespan(app: FastAPI):
    settings: Settings = app.state.settings
    app.state.events = EventPublisher(settings)
    await app.state.events.start()
    app.state.feedback = FeedbackService(settings, app.state.events)
    model_path = await asyncio.to_thread(resolve_model, settings.model)
    engine = Engine(settings, model_path, app.state.router.base_name)
    await engine.start()
    app.state.engine = engine
    app.state.chat = ChatService(engine, app.state.router, settings, app.state.events)
    metrics.QUEUE_DEPTH.set_function(engine.queue_depth)
    app.state.adapters = AdapterFollower(settings, engine, app.state.router, app.state.events,
                                         keys=app.state.control_keys)
    await app.state.adapters.start()
    metrics.ENGINE_READY.set(1)
    watcher = asyncio.create_task(_watch_engine(app, engine))
    try:
        yield
    finally:
        watcher.cancel()
        metrics.ENGINE_READY.set(0)
        await app.state.adapters.stop()
        engine.shutdown()
        await app.state.events.close()


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
    settings = get_settings()
    app = create_app(settings)
    app.state.uvicorn = uvicorn.Server(uvicorn.Config(app, host=settings.host, port=settings.port,
                                                      log_level=settings.log_level.lower(),
                                                      timeout_graceful_shutdown=30))
    app.state.uvicorn.run()
    return ENGINE_DIED_EXIT if app.state.engine_died else 0
