"""Request and response models of the HTTP API, in the order of OpenAI's documentation
(chat completions, then models), followed by this service's own endpoints (feedback, adapter
admin) and OpenAI's error shape.

Extensions beyond OpenAI's shapes are marked `# extension`.
"""

from __future__ import annotations

import re
import time
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

LONE_SURROGATE = re.compile(r"[\ud800-\udfff]")  # valid in a JSON escape (\ud800), not in any UTF-8 text
SEED_RANGE = (-2**63, 2**63 - 1)  # vLLM seeds a 64-bit torch generator
MIN_TOP_P = 1e-5  # vLLM's sampling epsilon: smaller nucleus sizes make its sampler refuse the request


class Body(BaseModel):
    """A request body's model: no NaN or Infinity (JSON's `NaN` literal), no lone surrogates in any text."""

    model_config = ConfigDict(allow_inf_nan=False)

    @field_validator("*")
    @classmethod
    def _valid_unicode(cls, v):
        if _has_lone_surrogate(v):
            raise ValueError("text must be valid Unicode (it holds a lone surrogate code point)")
        return v


def _has_lone_surrogate(v) -> bool:
    if isinstance(v, str):
        return not v.isascii() and LONE_SURROGATE.search(v) is not None
    if isinstance(v, (list, tuple)):
        return any(_has_lone_surrogate(x) for x in v)
    return False  # nested models check their own fields


# ---------------------------------------------------------------------------- chat completions
Role = Literal["system", "developer", "user", "assistant"]


class TextPart(Body):
    type: Literal["text"]
    text: str


class ChatMessage(Body):
    model_config = ConfigDict(extra="ignore")
    role: Role
    content: str | list[TextPart] = Field(description="Text, or a list of text parts.")
    name: str | None = None

    def text(self) -> str:
        if isinstance(self.content, str):
            return self.content
        return "".join(p.text for p in self.content)


class StreamOptions(Body):
    include_usage: bool = False


class StructuredOutputs(Body):  # extension (as in vLLM's `structured_outputs`): only the choice form
    model_config = ConfigDict(extra="forbid")
    choice: list[Annotated[str, Field(min_length=1, max_length=256)]] = Field(
        min_length=1, max_length=16, description="The answer is exactly one of these strings (e.g. a judge's A or B).")


class ChatCompletionRequest(Body):
    # Unknown OpenAI fields are ignored, as OpenAI-compatible servers do; known ones are checked.
    model_config = ConfigDict(extra="ignore")

    messages: list[ChatMessage] = Field(min_length=1)
    model: str | None = None
    frequency_penalty: float = Field(0.0, ge=-2.0, le=2.0)
    max_tokens: int | None = Field(None, ge=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    n: int = Field(1, ge=1, le=8)
    presence_penalty: float = Field(0.0, ge=-2.0, le=2.0)
    seed: int | None = Field(None, ge=SEED_RANGE[0], le=SEED_RANGE[1])
    stop: str | list[str] | None = None
    stream: bool = False
    stream_options: StreamOptions | None = None
    temperature: float | None = Field(None, ge=0.0, le=2.0, description="Default: the model card's (else 1.0).")
    top_p: float | None = Field(None, ge=MIN_TOP_P, le=1.0, description="Default: the model card's (else 1.0).")
    user: str = Field("", max_length=256, description="End-user id; feedback tokens are bound to it.")
    ignore_eos: bool = False  # extension (as in vLLM): generate max_tokens even past EOS; for benchmarks
    structured_outputs: StructuredOutputs | None = None  # extension, as in vLLM
    store: bool = Field(True, description="As in OpenAI's API: false keeps this completion out of the event log, "
                        "so it never trains (the AI judge's own questions); it then has no feedback tokens.")

    @field_validator("stop")
    @classmethod
    def _stop(cls, v):
        if v is None:
            return None
        stops = [v] if isinstance(v, str) else v
        if len(stops) > 4:
            raise ValueError("at most 4 stop sequences")
        if any(s == "" for s in stops):
            raise ValueError("stop sequences must not be empty")
        return stops

    def wanted_tokens(self) -> int | None:
        return self.max_completion_tokens or self.max_tokens


class RLHFResponse(BaseModel):  # extension: one choice's handle for POST /v1/feedback
    index: int
    response_id: str
    feedback_token: str


class RLHFInfo(BaseModel):  # extension: what a later feedback call needs
    adapter: str | None
    responses: list[RLHFResponse]


class AssistantMessage(BaseModel):
    role: Literal["assistant"] = "assistant"
    content: str


class Choice(BaseModel):
    index: int
    message: AssistantMessage
    finish_reason: str | None
    logprobs: None = None


class Usage(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


class ChatCompletion(BaseModel):
    id: str
    object: Literal["chat.completion"] = "chat.completion"
    created: int = Field(default_factory=lambda: int(time.time()))
    model: str
    choices: list[Choice]
    usage: Usage
    system_fingerprint: str | None = None
    rlhf: RLHFInfo  # extension


class Delta(BaseModel):
    role: Literal["assistant"] | None = None
    content: str | None = None


class ChunkChoice(BaseModel):
    index: int
    delta: Delta
    finish_reason: str | None = None
    logprobs: None = None


class ChatCompletionChunk(BaseModel):
    id: str
    object: Literal["chat.completion.chunk"] = "chat.completion.chunk"
    created: int
    model: str
    choices: list[ChunkChoice]
    usage: Usage | None = None
    rlhf: RLHFInfo | None = None  # extension: on the last chunk before [DONE]


# ---------------------------------------------------------------------------- models
class ModelCard(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int = Field(default_factory=lambda: int(time.time()))
    owned_by: str = "rlhf"
    root: str | None = None
    parent: str | None = None


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]


# ---------------------------------------------------------------------------- feedback (extension)
class ResponseRef(Body):  # an answer being rated: the ids of one `RLHFResponse`
    model_config = ConfigDict(extra="forbid")
    response_id: str = Field(max_length=128)
    feedback_token: str = Field(max_length=4096)


class ThumbsFeedback(Body):
    model_config = ConfigDict(extra="forbid")
    type: Literal["thumbs"]
    response_id: str = Field(max_length=128)
    feedback_token: str = Field(max_length=4096)
    value: Literal["up", "down"]
    comment: str | None = None  # length checked against settings by the feedback service
    user: str | None = Field(None, max_length=1024, description="Who is giving feedback; must match the token.")


class PairwiseFeedback(Body):
    model_config = ConfigDict(extra="forbid")
    type: Literal["pairwise"]
    chosen: ResponseRef
    rejected: ResponseRef
    user: str | None = Field(None, max_length=1024, description="Who is giving feedback; must match the token.")


class DemonstrationFeedback(Body):
    model_config = ConfigDict(extra="forbid")
    type: Literal["demonstration"]
    response_id: str = Field(max_length=128)
    feedback_token: str = Field(max_length=4096)
    text: str = Field(min_length=1, description="The corrected answer (length checked against settings).")
    user: str | None = Field(None, max_length=1024, description="Who is giving feedback; must match the token.")


FeedbackRequest = Annotated[ThumbsFeedback | PairwiseFeedback | DemonstrationFeedback, Field(discriminator="type")]


class FeedbackAccepted(BaseModel):
    event_id: str


# ---------------------------------------------------------------------------- adapter admin (extension)
class ActivateBody(Body):
    model_config = ConfigDict(extra="forbid")
    version: str | None = Field(description="A loaded or announced version, or `base` (or null) for no adapter.")


class CanaryBody(Body):
    model_config = ConfigDict(extra="forbid")
    version: str | None = Field(description="The canary version; null ends the canary.")
    fraction: float = Field(0.1, ge=0.0, le=1.0, description="Share of users (sticky by user id).")


# ---------------------------------------------------------------------------- errors
def error_body(message: str, type_: str = "invalid_request_error", param: str | None = None,
               code: str | None = None) -> dict[str, Any]:
    """OpenAI's error shape."""
    return {"error": {"message": message, "type": type_, "param": param, "code": code}}
