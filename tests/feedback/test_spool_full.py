"""A full spool answers 503 (never a silent drop): the feedback route with a real EventPublisher,
no broker at all, and a spool of 3 events, served over real HTTP by uvicorn in a thread."""

from __future__ import annotations

import socket
import threading
import time
from contextlib import asynccontextmanager

import httpx
import uvicorn
from fastapi import FastAPI
from prometheus_client import REGISTRY

from feedback import feedback_tokens
from feedback.producer import EventPublisher
from feedback.spool import Spool
from rlhf.settings import Settings
from serving import routes_feedback
from serving.auth import build_authenticator
from serving.errors import install_error_handlers
from serving.feedback_service import FeedbackService
from serving.rate_limit import Quotas


def test_full_spool_answers_503_and_counts_the_drop(tmp_path, nowhere):
    settings = Settings(kafka_bootstrap=nowhere, data_dir=tmp_path, spool_max_events=3)

    @asynccontextmanager
    async def lifespan(app):
        app.state.events = EventPublisher(settings)
        await app.state.events.start(connect_wait_s=0.5)
        app.state.feedback = FeedbackService(settings, app.state.events)
        yield
        await app.state.events.close(drain_wait_s=0.1)

    app = FastAPI(lifespan=lifespan)
    app.state.settings = settings
    app.state.auth = build_authenticator(settings)
    app.state.quotas = Quotas(settings)
    install_error_handlers(app)
    app.include_router(routes_feedback.router)
    listener = socket.socket()  # bound here and handed to uvicorn: no other process can take the port first
    listener.bind(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [listener]}, daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 30
        while not server.started and time.monotonic() < deadline:
            time.sleep(0.05)
        def thumbs_up(i: int) -> dict:  # four different answers: four events (a repeat would publish nothing)
            rid = feedback_tokens.response_id("ab" * 16, i)
            token = feedback_tokens.sign(settings.hmac_key, rid, "erin")
            return {"type": "thumbs", "response_id": rid, "feedback_token": token, "value": "up"}

        dropped = REGISTRY.get_sample_value("rlhf_spool_dropped_total") or 0.0
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=30) as client:
            assert [client.post("/v1/feedback", json=thumbs_up(i)).status_code for i in range(3)] == [202] * 3
            r = client.post("/v1/feedback", json=thumbs_up(3))
        assert r.status_code == 503 and int(r.headers["Retry-After"]) > 0
        assert r.json()["error"]["code"] == "spool_full"
        assert REGISTRY.get_sample_value("rlhf_spool_dropped_total") == dropped + 1
        assert REGISTRY.get_sample_value("rlhf_spool_events") == 3
    finally:
        server.should_exit = True
        thread.join(30)
        listener.close()
    assert len(Spool(tmp_path / "spool", 3)) == 3  # the accepted three wait on disk for the broker
