"""Adapter routes: what this replica has loaded and routes to, and the admin switches.

    GET  /v1/adapters                         loaded versions, active / canary / previous, and `live`: the
                                              learner's newest signed figures per version (callers
                                              authenticate as for chat: auth.py)
    POST /v1/admin/adapters/activate  {"version": "policy@v3" | "base"}
    POST /v1/admin/adapters/rollback  {}
    POST /v1/admin/adapters/canary    {"version": "policy@v4", "fraction": 0.1}   (version null or fraction 0 ends it)

Admin routes need `Authorization: Bearer $RLHF_ADMIN_TOKEN`: 404 when no token is configured
(the routes do not exist then), 403 for a missing or wrong one. They do not change routing
here: they publish a signed `RoutingChanged` on `rlhf.adapters`, which every replica (this one
included) follows. The answer waits briefly for this replica to apply it: 200 with the new
state once applied, 202 if it is still on its way (e.g. the broker is slow).

Routing changes are signed (adapters/signing.py), so these routes work only on a replica that
is also given RLHF_SIGNING_KEY_FILE, which makes it a control-plane writer; a replica holding
only public keys answers 503 `no_signing_key` pointing to `rlhf adapters activate|rollback|canary`.
"""

from __future__ import annotations

import hmac
from typing import Annotated

from fastapi import APIRouter, Depends, Header, Request
from fastapi.responses import JSONResponse

from feedback.schema import TOPIC_ADAPTERS, RoutingChanged
from serving.auth import authenticate
from serving.errors import APIError, not_ready
from serving.protocol import ActivateBody, CanaryBody

router = APIRouter()

APPLY_WAIT_S = 5.0  # how long an admin call waits for this replica to apply its change


def _follower(request: Request):
    follower = getattr(request.app.state, "adapters", None)
    if follower is None:
        raise not_ready()
    return follower


@router.get("/v1/adapters", dependencies=[Depends(authenticate)], responses={401: {}, 503: {}})
async def list_adapters(request: Request):
    return {**_follower(request).describe(), "blind_compare_share": request.app.state.settings.blind_compare_share}


# ---------------------------------------------------------------------------------- admin
def require_admin(request: Request, authorization: Annotated[str | None, Header()] = None) -> None:
    token = request.app.state.settings.admin_token
    if not token:
        raise APIError(404, "Not Found", code="not_found")
    scheme, _, given = (authorization or "").partition(" ")
    if scheme.lower() != "bearer" or not hmac.compare_digest(given.strip().encode(), token.encode()):
        raise APIError(403, "admin routes need Authorization: Bearer <RLHF_ADMIN_TOKEN>", code="forbidden")


Admin = Annotated[None, Depends(require_admin)]
# What an admin route may answer besides 200 (documented in /openapi.json).
ADMIN_ANSWERS = {202: {"description": "Published; this replica has not applied it yet"}, 403: {}, 404: {}, 503: {}}


def _base(request: Request, version: str | None) -> str | None:
    """`base`, the base model's name or null all mean: no adapter."""
    if version in (None, "", "base", request.app.state.router.base_name):
        return None
    return version


def _known(request: Request, version: str | None) -> None:
    follower = _follower(request)
    if version is not None and version not in follower.state.known:
        raise APIError(404, f"unknown adapter version {version!r}; known: {sorted(follower.state.known) or 'none'}",
                       param="version", code="unknown_adapter")


async def _publish(request: Request, ev: RoutingChanged):
    follower = _follower(request)
    keys = request.app.state.control_keys
    if keys.signing is None:
        raise APIError(503, "this replica holds no signing key, so it cannot change routing (routing changes are "
                            "signed); run `rlhf adapters activate|rollback|canary` where RLHF_SIGNING_KEY_FILE is "
                            "set, or give this replica RLHF_SIGNING_KEY_FILE to make it a control-plane writer",
                       code="no_signing_key")
    ev = keys.sign(ev)
    await request.app.state.events.publish(TOPIC_ADAPTERS, ev)
    applied, why = await follower.wait_applied(ev.event_id, APPLY_WAIT_S)
    body = {"event_id": ev.event_id, "action": ev.action, "applied": applied, "note": why,
            **follower.state.describe()}
    return JSONResponse(body, status_code=200 if applied else 202)


@router.post("/v1/admin/adapters/activate", responses=ADMIN_ANSWERS)
async def activate(body: ActivateBody, request: Request, _: Admin):
    version = _base(request, body.version)
    _known(request, version)
    return await _publish(request, RoutingChanged(action="activate", version=version))


@router.post("/v1/admin/adapters/rollback", responses=ADMIN_ANSWERS)
async def rollback(request: Request, _: Admin):
    state = _follower(request).state
    if state.canary is None and not state.history:
        raise APIError(409, "nothing to roll back to", code="no_previous_version")
    return await _publish(request, RoutingChanged(action="rollback"))


@router.post("/v1/admin/adapters/canary", responses=ADMIN_ANSWERS)
async def canary(body: CanaryBody, request: Request, _: Admin):
    version = _base(request, body.version)
    _known(request, version)
    if version is not None and version == _follower(request).state.active:
        raise APIError(409, f"{version} is already active", param="version", code="already_active")
    return await _publish(request, RoutingChanged(action="canary", version=version, canary_fraction=body.fraction))
