"""The event contract between serving and the learner: every event on every topic.

JSON on the wire (`event.model_dump_json()`), one pydantic model per event type, each with
`event_id`, `schema_version`, `ts` and a `type` discriminator. Message keys are the
conversation id, so all events of one conversation land in one partition, in order.

Topics:
- rlhf.interactions  Interaction        one per generated answer (per choice)
- rlhf.feedback      Thumbs | Pairwise | Demonstration  what users said about answers (a demonstration:
                     the answer as the user corrected it)
- rlhf.adapters      AdapterAnnounced | RoutingChanged | LiveFigures (the learner's live table per version,
                     for GET /v1/adapters; changes no routing)
- rlhf.deadletter    DeadLetter         anything malformed or unprocessable, with the reason

Who wrote an event is checked, not assumed: what serving writes (Interaction, Thumbs, Pairwise)
carries `hmac` (feedback/event_hmac.py, checked by the learner before storing); the control
events (AdapterAnnounced, RoutingChanged, LiveFigures) carry an Ed25519 `key_id` and `signature`
(adapters/signing.py, checked by every replica and the learner before applying). Both cover
`canonical_bytes(event)`: every field but the MAC or signature itself.
"""

from __future__ import annotations

import json
import time
import uuid
from typing import Annotated, Any, Literal, Union

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter

SCHEMA_VERSION = 1

TOPIC_INTERACTIONS = "rlhf.interactions"
TOPIC_FEEDBACK = "rlhf.feedback"
TOPIC_ADAPTERS = "rlhf.adapters"
TOPIC_DEADLETTER = "rlhf.deadletter"
ALL_TOPICS = (TOPIC_INTERACTIONS, TOPIC_FEEDBACK, TOPIC_ADAPTERS, TOPIC_DEADLETTER)


def new_event_id() -> str:
    return uuid.uuid4().hex


class Event(BaseModel):
    model_config = ConfigDict(extra="forbid")

    event_id: str = Field(default_factory=new_event_id, min_length=1, max_length=64)
    schema_version: int = SCHEMA_VERSION
    ts: float = Field(default_factory=time.time, description="Unix time the event was created.")

    def key(self) -> bytes:
        """Kafka message key: keeps one conversation's events in one partition."""
        return self.event_id.encode()


# Fields added to an event type after events of it were first sealed: left out of the sealed bytes while
# at their default, so events written before the field existed still verify.
LATER_FIELDS: dict[str, dict[str, Any]] = {"pairwise": {"source": "user"}}


def canonical_bytes(event: Event, without: str) -> bytes:
    """The bytes a MAC or signature covers: every field but `without`, as sorted compact JSON.
    Both sides compute it from parsed values, so whitespace or key order on the wire do not matter."""
    data = event.model_dump(mode="json", exclude={without})
    for name, default in LATER_FIELDS.get(data.get("type"), {}).items():
        if data.get(name) == default:
            del data[name]
    return json.dumps(data, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


class ServingEvent(Event):
    """An event serving writes; `hmac` proves it came from a holder of RLHF_EVENT_HMAC_KEY."""

    hmac: str | None = Field(None, description="HMAC-SHA256 of the event without this field (hex).")


class ControlEvent(Event):
    """An event on `rlhf.adapters`, signed by the learner or an operator (Ed25519): replicas act only on
    what a trusted key signed."""

    key_id: str | None = Field(None, description="Id of the signing key (sha256 of its public key, 16 hex).")
    signature: str | None = Field(None, description="Ed25519 signature of the event without this field (base64).")


class Message(BaseModel):
    model_config = ConfigDict(extra="forbid")
    role: Literal["system", "user", "assistant"]
    content: str


class Interaction(ServingEvent):
    """One generated answer (one choice of a chat completion)."""

    type: Literal["interaction"] = "interaction"
    response_id: str = Field(description="Id of this answer; feedback refers to it.")
    completion_id: str = Field(description="Id of the chat completion (shared by its n choices).")
    choice_index: int = 0
    conversation_id: str = Field(description="Groups events of one conversation (partition key).")
    user: str = Field("", description="The end user: `CLIENT:user` with API keys, the JWT's `sub`, or the "
                                       "request's `user` with RLHF_AUTH=none.")
    client: str = Field("", description="The authenticated client (API key name or JWT client); '' without auth.")
    messages: list[Message] = Field(description="The prompt, as the client sent it.")
    response: str = Field(description="The generated text.")
    finish_reason: str | None = Field(None, description="`stop` (EOS or stop string) or `length` (cut off).")
    model: str = Field(description="Base model name.")
    adapter: str | None = Field(None, description="Adapter version that answered (`policy@v3`), None for base.")
    sampling: dict[str, Any] = Field(default_factory=dict, description="temperature, top_p, max_tokens, seed, ...")
    prompt_tokens: int = 0
    completion_tokens: int = 0
    replica: str = ""

    def key(self) -> bytes:
        return self.conversation_id.encode()


class Thumbs(ServingEvent):
    """A user's thumbs up/down on one answer. Later thumbs by the same user on the same answer replace earlier ones."""

    type: Literal["thumbs"] = "thumbs"
    response_id: str
    conversation_id: str
    user: str = ""
    client: str = ""
    value: Literal["up", "down"]
    comment: str | None = None
    adapter: str | None = None

    def key(self) -> bytes:
        return self.conversation_id.encode()

    def dedupe_key(self) -> str:
        """Feedback with the same dedupe key replaces, not adds."""
        return f"thumbs:{self.user}:{self.response_id}"


class Pairwise(ServingEvent):
    """A choice between two answers to the same prompt: a user's (serving writes it from POST /v1/feedback,
    which never lets a client set `source`), or the AI judge's (`source: "ai"`, judge/main.py)."""

    type: Literal["pairwise"] = "pairwise"
    chosen_response_id: str
    rejected_response_id: str
    conversation_id: str
    user: str = ""
    client: str = ""
    chosen_adapter: str | None = None
    rejected_adapter: str | None = None
    source: Literal["user", "ai"] = Field("user", description="Who chose: a user, or the AI judge. The learner "
                                          "weighs AI choices by RLHF_JUDGE_WEIGHT and never counts them as a user.")

    def key(self) -> bytes:
        return self.conversation_id.encode()

    def dedupe_key(self) -> str:
        a, b = sorted((self.chosen_response_id, self.rejected_response_id))
        who = "ai" if self.source == "ai" else self.user  # the judge's verdicts never share a key with a user's
        return f"pairwise:{who}:{a}:{b}"


class Demonstration(ServingEvent):
    """A user's corrected answer: the text the answer should have been. A later correction by the same
    user of the same answer replaces the earlier one."""

    type: Literal["demonstration"] = "demonstration"
    response_id: str = Field(description="The answer that was corrected.")
    conversation_id: str
    user: str = ""
    client: str = ""
    text: str = Field(description="The corrected answer.")
    adapter: str | None = None

    def key(self) -> bytes:
        return self.conversation_id.encode()

    def dedupe_key(self) -> str:
        return f"demonstration:{self.user}:{self.response_id}"


class AdapterAnnounced(ControlEvent):
    """A new adapter version is in the adapter store; replicas verify and load it."""

    type: Literal["adapter_announced"] = "adapter_announced"
    version: str = Field(description="Adapter name and version, e.g. `policy@v3`.")
    path: str = Field(description="Folder of the adapter, relative to the adapter store.")
    manifest_sha256: str = Field(description="sha256 of manifest.json.")
    parent: str | None = None
    canary_fraction: float | None = Field(None, ge=0.0, le=1.0, description="Start as canary on this share of users.")
    source: Literal["learner", "user"] = "learner"

    def key(self) -> bytes:
        return b"adapters"


class RoutingChanged(ControlEvent):
    """Operator action: make a version active (None = base model), or roll back."""

    type: Literal["routing_changed"] = "routing_changed"
    action: Literal["activate", "rollback", "canary"]
    version: str | None = None
    canary_fraction: float | None = Field(None, ge=0.0, le=1.0)
    source: Literal["operator", "promotion-controller"] = "operator"
    reason: str | None = Field(None, max_length=2000, description="Why (the promotion controller's decisions).")
    evidence: dict | None = Field(None, description="The numbers behind a controller's decision.")

    def key(self) -> bytes:
        return b"adapters"


MAX_CONTROL_EVENT_BYTES = 64 * 1024
"""A record on `rlhf.adapters` longer than this is refused unread (dead letter): control events are small."""
MAX_LIVE_VERSIONS = 100
"""Versions one LiveFigures event carries at most (the learner sends the active, the canary, then the newest)."""


class LiveRate(BaseModel):
    """A rate in [0, 1] with its always-valid 95 % interval; estimate None without observations."""

    model_config = ConfigDict(extra="forbid")
    estimate: float | None = Field(None, ge=0.0, le=1.0)
    low: float = Field(ge=0.0, le=1.0)
    high: float = Field(ge=0.0, le=1.0)
    n: int = Field(ge=0, description="Observations behind the rate.")


class LiveRating(BaseModel):
    """Bradley-Terry rating from blind votes on the Elo scale (the base model 0), with its 95 % interval."""

    model_config = ConfigDict(extra="forbid")
    points: float
    low: float
    high: float
    votes: int = Field(ge=0)


class VersionLive(BaseModel):
    """How users receive one version (learner/live_evaluation.py): what `rlhf adapters status` shows."""

    model_config = ConfigDict(extra="forbid")
    version: str = Field(max_length=64, description="`policy@v3`, or `base` for answers without an adapter.")
    role: Literal["active", "canary", ""] = ""
    answers: int = Field(ge=0)
    answer_tokens: float = Field(ge=0.0, description="Mean answer length, tokens.")
    thumbs_up: LiveRate
    with_feedback: LiveRate = Field(description="Share of answers that got any feedback.")
    pairwise_win: LiveRate = Field(description="Win rate in users' blind votes against other versions.")
    rating: LiveRating | None = None


class LiveFigures(ControlEvent):
    """The learner's live figures per version, for every replica's GET /v1/adapters (serving never reads
    the learner's store). Sent when they changed; a replica keeps the newest it verified. Changes no routing."""

    type: Literal["live_figures"] = "live_figures"
    versions: list[VersionLive] = Field(max_length=MAX_LIVE_VERSIONS)

    def key(self) -> bytes:
        return b"adapters"


class DeadLetter(Event):
    """Something that could not be processed, kept with the reason."""

    type: Literal["deadletter"] = "deadletter"
    reason: str
    source_topic: str | None = None
    payload: str = Field(description="The original bytes, decoded as UTF-8 with replacement.")
    origin: str = Field("", description="Component that gave up on it.")


UserFeedback = Union[Thumbs, Pairwise, Demonstration]
FeedbackEvent = Annotated[UserFeedback, Field(discriminator="type")]
AnyEvent = Annotated[
    Union[Interaction, Thumbs, Pairwise, Demonstration, AdapterAnnounced, RoutingChanged, LiveFigures, DeadLetter],
    Field(discriminator="type")
]
_any = TypeAdapter(AnyEvent)


def parse_event(raw: bytes | str) -> (Interaction | UserFeedback | AdapterAnnounced | RoutingChanged | LiveFigures
                                      | DeadLetter):
    """Parse one JSON event; raises pydantic.ValidationError on anything malformed."""
    return _any.validate_json(raw)


def encode(event: Event) -> bytes:
    return event.model_dump_json().encode()
