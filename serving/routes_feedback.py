"""POST /v1/feedback: thumbs, pairwise choices and corrected answers on answers this service produced.

    POST /v1/feedback {"type": "thumbs", "response_id": "r_...", "feedback_token": "...",
                       "value": "up", "comment": "optional", "user": "alice"}
    POST /v1/feedback {"type": "pairwise", "user": "alice",
                       "chosen":   {"response_id": "r_..._0", "feedback_token": "..."},
                       "rejected": {"response_id": "r_..._1", "feedback_token": "..."}}
    POST /v1/feedback {"type": "demonstration", "response_id": "r_...", "feedback_token": "...",
                       "text": "the answer as it should have been", "user": "alice"}
    -> 202 {"event_id": "..."}

Identity: the caller authenticates as for chat (serving/auth.py), and the feedback token names
the user the answer was served to (the end user of the chat request: `CLIENT:user` with API
keys, the JWT's `sub`, the bare `user` without auth). The feedback is that user's, and must come
from them: a body that gives `user` must give the same one (within its client, with API keys;
with JWTs the body's `user` is ignored and the token's `sub` must be the answer's user), and a
client may rate only answers served to its own users; otherwise 403. So only the caller that
received an answer (holds its token) can rate it, and always as the user it asked as.

Answers: 202 once the event is durable (acked by Kafka or fsynced to the spool); 401 without a
valid credential; 404 for a response id this service never issued; 403 for a forged,
mismatched or expired token, or another user's; 422 for pairwise answers to different prompts,
the same answer twice, a comment longer than RLHF_FEEDBACK_COMMENT_MAX, or a demonstration's
text empty or longer than RLHF_DEMONSTRATION_MAX_CHARS; 429 with Retry-After
above RLHF_FEEDBACK_RATE_LIMIT posts per user or RLHF_CLIENT_FEEDBACK_RATE_LIMIT per client per
minute; 503 with Retry-After if the spool is full (`spool_full`) or its disk is (`storage_full`); 400 for
text that is not valid Unicode (a lone surrogate) and 413 for a body over RLHF_MAX_BODY_BYTES.
Nothing is published on any 4xx. Errors use
OpenAI's shape {"error": {"message", "type", "param", "code"}}.
The same feedback posted again (same `dedupe_key()` in schema.py, same value) gets 202 with the
first event id and publishes nothing; a changed value gets a new event id, and consumers keep
the latest per `dedupe_key()`, so it replaces the earlier one (feedback_repeats.py).

The checks live in feedback_service.py, the quotas in rate_limit.py, the caller in auth.py; the
body models in protocol.py.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Body, Depends, Request

from feedback.schema import UserFeedback
from serving.auth import Authenticated, authenticate
from serving.errors import not_ready
from serving.feedback_service import FeedbackService
from serving.protocol import FeedbackAccepted, FeedbackRequest

# Authentication comes first: a caller without a valid credential learns nothing about its body.
router = APIRouter(dependencies=[Depends(authenticate)])


# Dependencies are `async def` so they run on the event loop, not in a thread pool: the quotas'
# buckets and the record of recent feedback are then never updated by two threads at once.
async def _service(request: Request) -> FeedbackService:
    service = request.app.state.feedback
    if service is None:
        raise not_ready()
    return service


Feedback = Annotated[FeedbackService, Depends(_service)]


async def _checked_event(body: Annotated[FeedbackRequest, Body()], feedback: Feedback,
                         caller: Authenticated) -> UserFeedback:
    return feedback.check(body, caller)


CheckedEvent = Annotated[UserFeedback, Depends(_checked_event)]


async def _within_quota(event: CheckedEvent, request: Request) -> UserFeedback:
    """Counted after the checks, against the user the token proves and their client: invalid posts cost nothing."""
    request.app.state.quotas.charge_feedback(event.client, event.user)
    return event


RateLimitedEvent = Annotated[UserFeedback, Depends(_within_quota)]


@router.post("/v1/feedback", status_code=202, response_model=FeedbackAccepted,
             responses={401: {}, 403: {}, 404: {}, 422: {}, 429: {}, 503: {}})
async def post_feedback(event: RateLimitedEvent, feedback: Feedback) -> FeedbackAccepted:
    return FeedbackAccepted(event_id=await feedback.publish(event))
