"""POST /v1/feedback: thumbs and pairwise choices on answers this service produced.

    POST /v1/feedback {"type": "thumbs", "response_id": "r_...", "feedback_token": "...",
                       "value": "up", "comment": "optional", "user": "alice"}
    POST /v1/feedback {"type": "pairwise", "user": "alice",
                       "chosen":   {"response_id": "r_..._0", "feedback_token": "..."},
                       "rejected": {"response_id": "r_..._1", "feedback_token": "..."}}
    -> 202 {"event_id": "..."}

Identity: the feedback token names the user the answer was served to (the chat request's
`user`), and the feedback is that user's. A body that gives `user` must give the same one, or
it gets 403; clients may leave it out. So only the client that received an answer (holds its
token) can rate it, and always as the user it asked as.

Answers: 202 once the event is durable (acked by Kafka or fsynced to the spool); 404 for a
response id this service never issued; 403 for a forged, mismatched or expired token; 422 for
pairwise answers to different prompts, the same answer twice, or a comment longer than
RLHF_FEEDBACK_COMMENT_MAX; 429 with Retry-After above RLHF_FEEDBACK_RATE_LIMIT posts per user
per minute (per replica); 503 with Retry-After if the spool is full. Nothing is published on
any 4xx. Errors use OpenAI's shape {"error": {"message", "type", "param", "code"}}.
Repeated feedback by a user on an answer gets a new event id; consumers keep the latest per
`dedupe_key()` (schema.py), so it replaces the earlier one.
"""

from __future__ import annotations

import math
import time
from collections import OrderedDict
from typing import Annotated, Literal, Union

from fastapi import APIRouter, Body, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field

from feedback import feedback_tokens as tokens
from feedback.producer import SpoolFull
from feedback.schema import TOPIC_FEEDBACK, Pairwise, Thumbs

router = APIRouter()


# ---------------------------------------------------------------------------- wire models
class ResponseRef(BaseModel):
    model_config = ConfigDict(extra="forbid")
    response_id: str = Field(max_length=128)
    feedback_token: str = Field(max_length=4096)


class ThumbsFeedback(BaseModel):
    model_config = ConfigDict(extra="forbid")
    type: Literal["thumbs"]
    response_id: str = Field(max_length=128)
    feedback_token: str = Field(max_length=4096)
    value: Literal["up", "down"]
    comment: str | None = None  # length checked against settings in the handler
    user: str | None = Field(None, max_length=1024, description="Who is giving feedback; must match the token.")


class PairwiseFeedback(BaseModel):
    model_config = ConfigDict(extra="forbid")
    type: Literal["pairwise"]
    chosen: ResponseRef
    rejected: ResponseRef
    user: str | None = Field(None, max_length=1024, description="Who is giving feedback; must match the token.")


FeedbackRequest = Annotated[Union[ThumbsFeedback, PairwiseFeedback], Field(discriminator="type")]


class FeedbackAccepted(BaseModel):
    event_id: str


# ---------------------------------------------------------------------------- rate limit
class RateLimiter:
    """Token bucket per user: `per_minute` posts at once, refilled at per_minute/60 per second.
    Remembers at most `max_users` users (least recently seen forgotten first)."""

    def __init__(self, per_minute: int, max_users: int = 100_000):
        self.capacity = float(per_minute)
        self.rate = per_minute / 60.0
        self.max_users = max_users
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()  # user -> (tokens, time)

    def take(self, user: str, now: float | None = None) -> float:
        """Spend one post; returns 0 if allowed, else seconds until the next post is allowed."""
        now = time.monotonic() if now is None else now
        tokens_, last = self._buckets.pop(user, (self.capacity, now))
        tokens_ = min(self.capacity, tokens_ + (now - last) * self.rate)
        wait = 0.0
        if tokens_ >= 1.0:
            tokens_ -= 1.0
        else:
            wait = (1.0 - tokens_) / self.rate if self.rate > 0 else 60.0
        self._buckets[user] = (tokens_, now)
        if len(self._buckets) > self.max_users:
            self._buckets.popitem(last=False)
        return wait


def _limiter(request: Request) -> RateLimiter:
    limiter = getattr(request.app.state, "feedback_limiter", None)
    if limiter is None:
        limiter = request.app.state.feedback_limiter = RateLimiter(request.app.state.settings.feedback_rate_limit)
    return limiter


# ---------------------------------------------------------------------------- route
def _error(status: int, message: str, *, param: str | None = None, code: str | None = None,
           type_: str = "invalid_request_error", headers: dict | None = None) -> JSONResponse:
    body = {"error": {"message": message, "type": type_, "param": param, "code": code}}
    return JSONResponse(body, status_code=status, headers=headers)


def _check_token(settings, ref_id: str, token: str, user: str | None, param: str):
    """(TokenInfo, None) if the token proves its user received `ref_id`, else (None, the 404/403 answer)."""
    try:
        tokens.parse_response_id(ref_id)
    except tokens.TokenError as e:
        return None, _error(404, str(e), param=f"{param}response_id", code="unknown_response")
    try:
        return tokens.read(settings.hmac_key, ref_id, token, settings.response_ttl_s, user=user), None
    except (tokens.TokenError, ValueError) as e:  # ValueError: undecodable claims (forged)
        msg = str(e) if isinstance(e, tokens.TokenError) else "malformed feedback_token"
        code = "expired_token" if "expired" in msg else "invalid_token"
        return None, _error(403, f"{msg} (feedback must come from the user who received the response)",
                            param=f"{param}feedback_token", code=code)


@router.post("/v1/feedback", status_code=202, response_model=FeedbackAccepted,
             responses={403: {}, 404: {}, 422: {}, 429: {}, 503: {}})
async def post_feedback(body: Annotated[FeedbackRequest, Body()], request: Request):
    settings = request.app.state.settings
    if isinstance(body, ThumbsFeedback):
        if body.comment is not None and len(body.comment) > settings.feedback_comment_max:
            return _error(422, f"comment is {len(body.comment)} characters; at most "
                               f"{settings.feedback_comment_max} are accepted", param="comment", code="too_long")
        info, err = _check_token(settings, body.response_id, body.feedback_token, body.user, "")
        if err:
            return err
        group, _ = tokens.parse_response_id(body.response_id)
        event = Thumbs(response_id=body.response_id, conversation_id=group, user=info.user, value=body.value,
                       comment=body.comment, adapter=info.adapter)
    else:
        if body.chosen.response_id == body.rejected.response_id:
            return _error(422, "chosen and rejected are the same response", param="rejected.response_id",
                          code="same_response")
        infos = []
        for ref, name in ((body.chosen, "chosen."), (body.rejected, "rejected.")):
            info, err = _check_token(settings, ref.response_id, ref.feedback_token, body.user, name)
            if err:
                return err
            infos.append(info)
        chosen, rejected = infos
        if chosen.user != rejected.user:
            return _error(403, "chosen and rejected were served to different users", param="rejected.feedback_token",
                          code="invalid_token")
        group, _ = tokens.parse_response_id(body.chosen.response_id)
        same_prompt = (tokens.parse_response_id(body.rejected.response_id)[0] == group
                       or (chosen.prompt is not None and chosen.prompt == rejected.prompt))
        if not same_prompt:
            return _error(422, "chosen and rejected answer different prompts; compare two responses of one "
                               "completion", param="rejected.response_id", code="different_prompts")
        event = Pairwise(chosen_response_id=body.chosen.response_id, rejected_response_id=body.rejected.response_id,
                         conversation_id=group, user=chosen.user, chosen_adapter=chosen.adapter,
                         rejected_adapter=rejected.adapter)
        info = chosen
    wait = _limiter(request).take(info.user)
    if wait > 0:
        return _error(429, f"more than {settings.feedback_rate_limit} feedback posts per minute from this user",
                      type_="rate_limit_error", code="rate_limit_exceeded",
                      headers={"Retry-After": str(max(1, math.ceil(wait)))})
    try:
        await request.app.state.events.publish(TOPIC_FEEDBACK, event)
    except SpoolFull:
        return _error(503, "feedback cannot be stored right now (event log unavailable and local spool full); "
                           "retry later", type_="server_error", code="spool_full", headers={"Retry-After": "30"})
    return JSONResponse({"event_id": event.event_id}, status_code=202)
