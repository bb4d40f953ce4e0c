"""Feedback intake: a parsed POST /v1/feedback body -> a verified `Thumbs` or `Pairwise` event on
`rlhf.feedback`. The rules (which answer is which status) are documented in routes_feedback.py.
"""

from __future__ import annotations

from feedback import feedback_tokens
from feedback.producer import EventPublisher, SpoolFull
from feedback.schema import TOPIC_FEEDBACK, Pairwise, Thumbs
from rlhf.settings import Settings
from serving.errors import APIError
from serving.protocol import PairwiseFeedback, ThumbsFeedback


class FeedbackService:
    def __init__(self, settings: Settings, events: EventPublisher):
        self.settings = settings
        self.events = events

    def check(self, body: ThumbsFeedback | PairwiseFeedback) -> Thumbs | Pairwise:
        """The event to publish, or an APIError (404/403/422) if the body may not become one."""
        if isinstance(body, ThumbsFeedback):
            return self._thumbs(body)
        return self._pairwise(body)

    async def publish(self, event: Thumbs | Pairwise) -> None:
        """Returns once the event is durable; 503 if it cannot be (broker down and spool full)."""
        try:
            await self.events.publish(TOPIC_FEEDBACK, event)
        except SpoolFull:
            raise APIError(503, "feedback cannot be stored right now (event log unavailable and local spool full); "
                                "retry later", type_="server_error", code="spool_full",
                           headers={"Retry-After": "30"}) from None

    def _thumbs(self, body: ThumbsFeedback) -> Thumbs:
        limit = self.settings.feedback_comment_max
        if body.comment is not None and len(body.comment) > limit:
            raise APIError(422, f"comment is {len(body.comment)} characters; at most {limit} are accepted",
                           param="comment", code="too_long")
        info = self._verify(body.response_id, body.feedback_token, body.user, "")
        group, _ = feedback_tokens.parse_response_id(body.response_id)
        return Thumbs(response_id=body.response_id, conversation_id=group, user=info.user, value=body.value,
                      comment=body.comment, adapter=info.adapter)

    def _pairwise(self, body: PairwiseFeedback) -> Pairwise:
        if body.chosen.response_id == body.rejected.response_id:
            raise APIError(422, "chosen and rejected are the same response", param="rejected.response_id",
                           code="same_response")
        chosen = self._verify(body.chosen.response_id, body.chosen.feedback_token, body.user, "chosen.")
        rejected = self._verify(body.rejected.response_id, body.rejected.feedback_token, body.user, "rejected.")
        if chosen.user != rejected.user:
            raise APIError(403, "chosen and rejected were served to different users",
                           param="rejected.feedback_token", code="invalid_token")
        group, _ = feedback_tokens.parse_response_id(body.chosen.response_id)
        same_prompt = (feedback_tokens.parse_response_id(body.rejected.response_id)[0] == group
                       or (chosen.prompt is not None and chosen.prompt == rejected.prompt))
        if not same_prompt:
            raise APIError(422, "chosen and rejected answer different prompts; compare two responses of one "
                                "completion", param="rejected.response_id", code="different_prompts")
        return Pairwise(chosen_response_id=body.chosen.response_id, rejected_response_id=body.rejected.response_id,
                        conversation_id=group, user=chosen.user, chosen_adapter=chosen.adapter,
                        rejected_adapter=rejected.adapter)

    def _verify(self, response_id: str, token: str, user: str | None, param: str) -> feedback_tokens.TokenInfo:
        """The token's claims if it proves its user received `response_id`; 404/403 otherwise."""
        try:
            feedback_tokens.parse_response_id(response_id)
        except feedback_tokens.TokenError as e:
            raise APIError(404, str(e), param=f"{param}response_id", code="unknown_response") from None
        try:
            return feedback_tokens.read(self.settings.hmac_key, response_id, token, self.settings.response_ttl_s,
                                        user=user)
        except (feedback_tokens.TokenError, ValueError) as e:  # ValueError: undecodable claims (forged)
            msg = str(e) if isinstance(e, feedback_tokens.TokenError) else "malformed feedback_token"
            code = "expired_token" if "expired" in msg else "invalid_token"
            raise APIError(403, f"{msg} (feedback must come from the user who received the response)",
                           param=f"{param}feedback_token", code=code) from None
