"""Feedback intake: a parsed POST /v1/feedback body from an authenticated caller -> a verified
`Thumbs`, `Pairwise` or `Demonstration` event on `rlhf.feedback`, published once however often it is posted
(feedback_repeats.py). The rules (which answer is which status) are documented in routes_feedback.py.
"""

from __future__ import annotations

from feedback import feedback_tokens
from feedback.producer import EventPublisher, SpoolFull, StorageFull
from feedback.schema import TOPIC_FEEDBACK, Demonstration, Pairwise, Thumbs, UserFeedback
from rlhf.settings import Settings
from serving.auth import Caller
from serving.errors import APIError
from serving.feedback_repeats import RecentFeedback
from serving.protocol import DemonstrationFeedback, PairwiseFeedback, ThumbsFeedback


class FeedbackService:
    def __init__(self, settings: Settings, events: EventPublisher):
        self.settings = settings
        self.events = events
        self.recent = RecentFeedback(settings.response_ttl_s)

    def check(self, body: ThumbsFeedback | PairwiseFeedback | DemonstrationFeedback, caller: Caller) -> UserFeedback:
        """The event to publish, or an APIError (404/403/422) if the body may not become one."""
        if isinstance(body, ThumbsFeedback):
            return self._thumbs(body, caller)
        if isinstance(body, DemonstrationFeedback):
            return self._demonstration(body, caller)
        return self._pairwise(body, caller)

    async def publish(self, event: UserFeedback) -> str:
        """The id of the event that stands for this feedback, once it is durable: `event`'s, or
        that of the same feedback posted before. 503 if it cannot be stored (broker down, spool full)."""
        return await self.recent.publish_once(event, self._publish)

    async def _publish(self, event: UserFeedback) -> None:
        try:
            await self.events.publish(TOPIC_FEEDBACK, event)
        except StorageFull:
            raise APIError(503, "feedback cannot be stored right now (event log unavailable and the disk of the "
                                "local spool is full); retry later", type_="server_error", code="storage_full",
                           headers={"Retry-After": "30"}) from None
        except SpoolFull:
            raise APIError(503, "feedback cannot be stored right now (event log unavailable and local spool full); "
                                "retry later", type_="server_error", code="spool_full",
                           headers={"Retry-After": "30"}) from None

    def _thumbs(self, body: ThumbsFeedback, caller: Caller) -> Thumbs:
        limit = self.settings.feedback_comment_max
        if body.comment is not None and len(body.comment) > limit:
            raise APIError(422, f"comment is {len(body.comment)} characters; at most {limit} are accepted",
                           param="comment", code="too_long")
        info = self._verify(body.response_id, body.feedback_token, caller, body.user, "")
        group, _ = feedback_tokens.parse_response_id(body.response_id)
        return Thumbs(response_id=body.response_id, conversation_id=group, user=info.user, client=caller.client,
                      value=body.value, comment=body.comment, adapter=info.adapter)

    def _demonstration(self, body: DemonstrationFeedback, caller: Caller) -> Demonstration:
        limit = self.settings.demonstration_max_chars
        if len(body.text) > limit:
            raise APIError(422, f"text is {len(body.text)} characters; at most {limit} are accepted", param="text",
                           code="too_long")
        if not body.text.strip():
            raise APIError(422, "text is empty: send the corrected answer", param="text", code="empty")
        info = self._verify(body.response_id, body.feedback_token, caller, body.user, "")
        group, _ = feedback_tokens.parse_response_id(body.response_id)
        return Demonstration(response_id=body.response_id, conversation_id=group, user=info.user,
                             client=caller.client, text=body.text, adapter=info.adapter)

    def _pairwise(self, body: PairwiseFeedback, caller: Caller) -> Pairwise:
        if body.chosen.response_id == body.rejected.response_id:
            raise APIError(422, "chosen and rejected are the same response", param="rejected.response_id",
                           code="same_response")
        chosen = self._verify(body.chosen.response_id, body.chosen.feedback_token, caller, body.user, "chosen.")
        rejected = self._verify(body.rejected.response_id, body.rejected.feedback_token, caller, body.user,
                                "rejected.")
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
                        conversation_id=group, user=chosen.user, client=caller.client, chosen_adapter=chosen.adapter,
                        rejected_adapter=rejected.adapter)

    def _verify(self, response_id: str, token: str, caller: Caller, requested: str | None,
                param: str) -> feedback_tokens.TokenInfo:
        """The token's claims if it proves that this caller's user received `response_id`; 404/403 otherwise.

        The user is the one the request names (`requested`, within its client) or, when it names
        none, the one the token names, which the caller must speak for."""
        try:
            feedback_tokens.parse_response_id(response_id)
        except feedback_tokens.TokenError as e:
            raise APIError(404, str(e), param=f"{param}response_id", code="unknown_response") from None
        user = caller.end_user(requested) if requested is not None or caller.user is not None else None
        try:
            info = feedback_tokens.read(self.settings.hmac_key, response_id, token, self.settings.response_ttl_s,
                                        user=user)
            if not caller.speaks_for(info.user):
                raise feedback_tokens.TokenError("feedback_token was issued to another user")
            return info
        except (feedback_tokens.TokenError, ValueError) as e:  # ValueError: undecodable claims (forged)
            msg = str(e) if isinstance(e, feedback_tokens.TokenError) else "malformed feedback_token"
            code = "expired_token" if "expired" in msg else "invalid_token"
            raise APIError(403, f"{msg} (feedback must come from the user who received the response)",
                           param=f"{param}feedback_token", code=code) from None
