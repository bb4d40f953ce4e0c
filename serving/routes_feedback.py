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

The checks live in feedback_service.py, the rate limiter in rate_limit.py; the body models
in protocol.py.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Body, Depends, Request

from feedback.schema import Pairwise, Thumbs
from serving.errors import not_ready
from serving.feedback_service import FeedbackService
from serving.protocol import FeedbackAccepted, FeedbackRequest

router = APIRouter()


# Dependencies are `async def` so they run on the event loop, not in a thread pool: the rate
# limiter's buckets are then never updated by two threads at once.
async def _service(request: Request) -> FeedbackService:
    service = request.app.state.feedback
    if service is None:
        raise not_ready()
    return service


Feedback = Annotated[FeedbackService, Depends(_service)]


async def _checked_event(body: Annotated[FeedbackRequest, Body()], feedback: Feedback) -> Thumbs | Pairwise:
    return feedback.check(body)


CheckedEvent = Annotated[Thumbs | Pairwise, Depends(_checked_event)]


async def _limit_per_user(event: CheckedEvent, request: Request) -> Thumbs | Pairwise:
    """Counted after the checks, against the user the token proves: invalid posts cost nothing."""
    request.app.state.feedback_limiter.check(event.user, "feedback posts")
    return event


RateLimitedEvent = Annotated[Thumbs | Pairwise, Depends(_limit_per_user)]


@router.post("/v1/feedback", status_code=202, response_model=FeedbackAccepted,
             responses={403: {}, 404: {}, 422: {}, 429: {}, 503: {}})
async def post_feedback(event: RateLimitedEvent, feedback: Feedback) -> FeedbackAccepted:
    await feedback.publish(event)
    return FeedbackAccepted(event_id=event.event_id)
