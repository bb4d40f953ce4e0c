"""The sizes a chat request may have, from settings: each refusal a 400 in OpenAI's error shape,
raised before the prompt is rendered or tokenized.

    check_chat_request(req, settings)

RLHF_MAX_MESSAGES messages of at most RLHF_MAX_MESSAGE_CHARS characters each; stop strings of
at most RLHF_MAX_STOP_CHARS characters (they are copied into every interaction event, so this
also bounds the events); n x max_tokens at most RLHF_MAX_REQUEST_TOKENS; `ignore_eos` only when
RLHF_ALLOW_IGNORE_EOS is on. The body as a whole is bounded by body_limit.py, the numbers (seed,
top_p, NaN) by the request models in protocol.py.
"""

from __future__ import annotations

from rlhf.settings import Settings
from serving.errors import APIError
from serving.protocol import ChatCompletionRequest


def check_chat_request(req: ChatCompletionRequest, settings: Settings) -> None:
    if len(req.messages) > settings.max_messages:
        raise _too_big(f"{len(req.messages)} messages; at most {settings.max_messages} are accepted "
                       "(RLHF_MAX_MESSAGES)", "messages")
    for i, message in enumerate(req.messages):
        chars = len(message.text())
        if chars > settings.max_message_chars:
            raise _too_big(f"messages[{i}] has {chars} characters; at most {settings.max_message_chars} are "
                           "accepted (RLHF_MAX_MESSAGE_CHARS)", f"messages[{i}].content")
    for i, stop in enumerate(req.stop or []):
        if len(stop) > settings.max_stop_chars:
            raise _too_big(f"stop[{i}] has {len(stop)} characters; at most {settings.max_stop_chars} are accepted "
                           "(RLHF_MAX_STOP_CHARS)", "stop")
    wanted = req.wanted_tokens()
    if wanted is not None and req.n * wanted > settings.max_request_tokens:
        raise _too_big(f"n x max_tokens = {req.n} x {wanted} tokens; at most {settings.max_request_tokens} are "
                       "accepted per request (RLHF_MAX_REQUEST_TOKENS)", "max_tokens")
    if req.ignore_eos and not settings.allow_ignore_eos:
        raise APIError(400, "ignore_eos is turned off on this service (RLHF_ALLOW_IGNORE_EOS)", param="ignore_eos",
                       code="unsupported_parameter")


def _too_big(message: str, param: str) -> APIError:
    return APIError(400, message, param=param, code="too_large")
