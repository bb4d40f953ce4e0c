"""GET /v1/models: the base model and every loaded adapter version (each one a `model` value).

Callers authenticate as for chat (auth.py)."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Request

from adapters.router import Router
from serving.auth import authenticate
from serving.protocol import ModelCard, ModelList

router = APIRouter(dependencies=[Depends(authenticate)])


@router.get("/v1/models", response_model=ModelList, responses={401: {}})
async def models(request: Request):
    routing: Router = request.app.state.router
    cards = [ModelCard(id=routing.base_name)]
    cards += [ModelCard(id=v, root=routing.base_name, parent=routing.base_name) for v in routing.loaded]
    return ModelList(data=cards)
