"""Probes and metrics: GET /healthz (process up), GET /readyz (engine ready), GET /metrics (Prometheus)."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, PlainTextResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

router = APIRouter()


@router.get("/healthz", responses={503: {}})
async def healthz(request: Request):
    if request.app.state.engine_died:  # the process is up but useless: let the orchestrator restart it
        return JSONResponse({"status": "engine stopped"}, status_code=503)
    return {"status": "ok"}


@router.get("/readyz", responses={503: {}})
async def readyz(request: Request):
    engine = request.app.state.engine
    if engine is None or not engine.ready:
        return JSONResponse({"status": "starting"}, status_code=503)
    return {"status": "ready", "model": engine.served_name}


@router.get("/metrics", response_class=PlainTextResponse)
async def prometheus():
    return PlainTextResponse(generate_latest(), media_type=CONTENT_TYPE_LATEST)
