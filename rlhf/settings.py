"""The one settings object of the service: every field is an `RLHF_*` environment variable.

Serving, the learner, the broker launcher and the Kubernetes manifests all read this object;
`tests/k8s/test_settings_names.py` checks that the manifests set only names defined here.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Literal, get_args

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from rlhf.cpu_share import CpuListError, parse_cpus

# Secrets that ship in examples; the service refuses to run with them outside dev mode.
PLACEHOLDER_SECRETS = {"", "changeme", "change-me", "secret", "changethis"}
MIN_SECRET_BYTES = 32  # outside dev mode, the HMAC key and the admin token are at least this long
LearnerAlgorithm = Literal["ppo", "rloo", "dpo", "online-dpo", "kto"]  # RLHF_LEARNER_ALGORITHM: learner/<name>.py


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="RLHF_", extra="ignore")

    # --- model and engine -------------------------------------------------------------
    model: str = Field("gemma-3-270m", description="`gemma-3-270m` (default), `tiny`, or a local HF model folder.")
    served_model_name: str = Field("", description="Name clients put in `model`; defaults to the model's name.")
    cache_dir: Path = Field(Path.home() / ".cache" / "rlhf", description="Where prepared models are kept.")
    max_model_len: int = Field(2048, description="Context length the engines start with (prompt + answer), capped at the model's own.")
    gpu_memory_utilization: float = Field(0.1, description="vLLM memory share; on CPU the RAM fraction for KV cache.")
    kv_cache_gb: float = Field(1.0, description="KV cache size in GiB (on CPU: RAM); 0 derives it from gpu_memory_utilization.")
    max_num_seqs: int = Field(64, description="Most sequences the engine schedules at once.")
    max_lora_rank: int = Field(16, description="Largest LoRA rank the engine accepts.")
    max_loras: int = Field(4, description="LoRA adapters the engine keeps resident at once.")
    serving_cpus: str = Field("", description="Cores serving's engine computes on (\"0\", \"0-5\", \"0,2-3\"); empty: "
                              "as vLLM chooses. `rlhf up` sets it, with RLHF_LEARNER_CPUS, so that the two never "
                              "compute on the same core (rlhf/cpu_share.py).")
    max_tokens_default: int = Field(256, description="max_tokens when a request gives none.")
    preamble: str = Field("", description="Example exchanges put before each conversation on the base model: "
                          "empty for the model card's, `none` for none, or a JSON file of messages.")

    # --- HTTP -------------------------------------------------------------------------
    host: str = Field("127.0.0.1", description="Address serving listens on.")
    port: int = Field(8000, description="Port serving listens on.")
    admin_token: str = Field("", description="Bearer token for admin routes; empty disables them.")
    hmac_key: str = Field("dev-only-insecure-key", description="Key that signs feedback tokens.")
    dev_mode: bool = Field(True, description="Development mode: allows the built-in HMAC key and RLHF_AUTH=none.")
    replica_id: str = Field("", description="Name of this serving replica (defaults to host:port).")
    event_hmac_key: str = Field("dev-only-insecure-event-key", description="Key of the HMAC on the events serving "
                                "writes (interactions, feedback); the learner stores only events it verifies.")

    # --- signed control plane (adapters/signing.py) -----------------------------------
    signing_key_file: str = Field("", description="Ed25519 private key (PEM) that signs adapter announcements and "
                                  "routing changes: the learner and `rlhf adapters`; `rlhf adapters keygen DIR` "
                                  "makes one. Given to serving, its admin routes publish routing changes.")
    trusted_keys: str = Field("", description="Public keys that routing events must be signed by: a PEM file, or a "
                              "folder of KEY_ID.pub files (several at once for rotation). Development mode without "
                              "key settings: a pair made in RLHF_DATA_DIR/control-keys.")

    # --- callers and quotas (serving) -------------------------------------------------
    auth: Literal["none", "api-key", "jwt"] = Field(
        "none", description="How callers prove who they are: `none` (development mode only), `api-key`, `jwt`.")
    api_keys_file: str = Field("", description="RLHF_AUTH=api-key: the file `rlhf keys add` writes (hashed keys).")
    jwt_secret: str = Field("", description="RLHF_AUTH=jwt: shared secret of HS256 tokens (empty: no HS256).")
    jwt_jwks_file: str = Field("", description="RLHF_AUTH=jwt: JWKS file of RS256/ES256 public keys, chosen by `kid`.")
    jwt_audience: str = Field("", description="RLHF_AUTH=jwt: the `aud` every token must carry.")
    jwt_issuer: str = Field("", description="RLHF_AUTH=jwt: the `iss` every token must carry.")
    chat_rate_limit: int = Field(0, ge=0, description="Chat requests one user may make per minute (0: no limit).")
    client_chat_rate_limit: int = Field(0, ge=0, description="Chat requests one client may make per minute "
                                                             "(0: no limit).")
    client_feedback_rate_limit: int = Field(0, ge=0, description="Feedback posts one client may make per minute "
                                                                 "(0: no limit).")
    serving_replicas: int = Field(1, ge=1, description="Serving replicas sharing the quotas: each enforces "
                                                       "limit / replicas.")
    client_chat_concurrency: int = Field(32, ge=0, description="Chat requests one client (API key or JWT client; "
                                         "without auth, one remote address) may have in progress at once "
                                         "(0: no limit).")

    # --- request limits (serving; every refusal is a 4xx in OpenAI's error shape) ------
    max_body_bytes: int = Field(2 * 2**20, ge=1024, description="Largest request body, in bytes (413 above it).")
    max_messages: int = Field(256, ge=1, description="Most messages in one chat request.")
    max_message_chars: int = Field(100_000, ge=1, description="Most characters in one chat message.")
    max_stop_chars: int = Field(256, ge=1, description="Longest stop string, in characters (at most 4 of them).")
    max_request_tokens: int = Field(8192, ge=1, description="Most tokens one chat request may ask for over all "
                                                            "its choices (n x max_tokens).")
    allow_ignore_eos: bool = Field(False, description="Accept `ignore_eos` (generate max_tokens past the end of "
                                                      "the answer; for benchmarks).")

    # --- Kafka ------------------------------------------------------------------------
    kafka_bootstrap: str = Field("127.0.0.1:9092", description="Kafka bootstrap servers, comma separated.")
    kafka_security_protocol: Literal["PLAINTEXT", "SSL", "SASL_SSL"] = Field(
        "PLAINTEXT", description="How clients reach Kafka: `PLAINTEXT` (embedded broker), `SSL` (TLS) or `SASL_SSL` "
                                 "(TLS + SASL).")
    kafka_ssl_cafile: str = Field("", description="PEM file of the CA that signed the brokers' certificates "
                                                  "(empty: the system's CAs).")
    kafka_ssl_certfile: str = Field("", description="PEM client certificate, for brokers that require one "
                                                    "(mutual TLS); with RLHF_KAFKA_SSL_KEYFILE.")
    kafka_ssl_keyfile: str = Field("", description="PEM private key of RLHF_KAFKA_SSL_CERTFILE.")
    kafka_sasl_mechanism: Literal["SCRAM-SHA-512", "PLAIN"] = Field(
        "SCRAM-SHA-512", description="SASL mechanism with RLHF_KAFKA_SECURITY_PROTOCOL=SASL_SSL.")
    kafka_sasl_username: str = Field("", description="SASL user name (SASL_SSL).")
    kafka_sasl_password_file: str = Field("", description="File whose first line is the SASL password (SASL_SSL; "
                                                          "e.g. a mounted Secret).")
    topic_partitions: int = Field(3, description="Partitions for topics the service creates.")
    topic_replication: int = Field(1, description="Replication factor for topics the service creates.")
    topic_retention_ms: int = Field(7 * 24 * 3600 * 1000, description="Retention of created topics.")
    feedback_rate_limit: int = Field(600, ge=0, description="Feedback posts one user may make per minute "
                                                           "(0: no limit).")
    feedback_comment_max: int = Field(2000, description="Longest accepted feedback comment, in characters.")
    demonstration_max_chars: int = Field(4000, ge=1, description="Longest accepted corrected answer (feedback of "
                                                                 "type `demonstration`), in characters.")
    spool_max_events: int = Field(100_000, description="Events the on-disk spool holds before it refuses more.")
    spool_max_bytes: int = Field(2**30, ge=1, description="Bytes of events the on-disk spool holds before it "
                                                          "refuses more.")
    response_ttl_s: int = Field(7 * 24 * 3600, description="How long a response id accepts feedback.")

    # --- storage ----------------------------------------------------------------------
    data_dir: Path = Field(Path(".data"), description="Spool, learner store and other local state.")
    adapter_dir: Path = Field(Path(".data/adapters"), description="Adapter store shared by learner and serving.")

    # --- routing ----------------------------------------------------------------------
    canary_fraction: float = Field(0.1, description="Share of users (sticky, by user id) a newly published version "
                                   "answers first, as a canary, until promoted or rolled back (0..1). 0: every "
                                   "new version is active for every user at once, an operator's explicit choice "
                                   "(e.g. a one-user development setup); `rlhf adapters publish --activate` skips "
                                   "the canary for one version.")
    blind_compare_share: float = Field(0.5, ge=0.0, le=1.0, description="Share of the chat page's compare turns "
                                       "that, while a canary runs, show the active version's and the canary's answers "
                                       "side by side in random order, unlabelled until the user votes.")
    promote_margin: float = Field(0.0, ge=0.0, le=1.0, description="The promotion controller promotes a canary "
                                  "that is not worse than the active version by more than this (a difference in "
                                  "thumbs-up rate, or in blind-vote wins minus losses); 0: only a better one.")
    promote_confidence: float = Field(0.95, gt=0.5, lt=1.0, description="Confidence of the promotion controller's "
                                      "decisions (always-valid: holds however often it looks).")
    canary_max_events: int = Field(2000, ge=1, description="Canary feedback events after which an undecided canary "
                                   "ends and the active version stays.")

    # --- learner ----------------------------------------------------------------------
    learner_port: int = Field(8001, description="Port of the learner's /metrics and /healthz.")
    learner_min_feedback: int = Field(32, description="New feedback events that trigger a training round.")
    learner_interval_s: float = Field(600.0, description="Seconds after which a round runs with any new feedback.")
    learner_join_wait_s: float = Field(300.0, description="How long feedback waits for its interaction.")
    learner_config: str = Field("", description="JSON file overriding learner.round.LearnerConfig fields.")
    kl_budget: float = Field(5.0, description="Largest mean KL(policy || base) per response a published adapter may have.")
    rm_accuracy_floor: float = Field(0.6, description="Held-out accuracy the reward model needs before publishing.")
    rm_ensemble_size: int | None = Field(None, ge=1, description="Reward heads on the reward model's shared LoRA, "
                                         "each fitted on its own bootstrap resample (1: a single reward model); "
                                         "unset: the learner config's `reward.ensemble_size` (1).")
    rm_uncertainty_penalty: float | None = Field(None, ge=0.0, description="λ in the reward PPO, RLOO and online "
                                                 "DPO optimise, the members' mean − λ·std (the gate judges by the "
                                                 "mean); unset: the learner config's `reward.uncertainty_penalty` "
                                                 "(1.0).")
    learner_max_user_share: float = Field(0.05, description="Largest share of a round's training signal one user "
                                                            "may have (fewer than 1/share users: equal shares).")
    learner_max_client_share: float = Field(0.5, description="Largest share of a round's training signal one client "
                                                             "(API key or JWT client) may have.")
    learner_stall_s: float = Field(300.0, gt=0, description="The learner's /healthz answers 503 when it has "
                                                           "records to read but stored none for this many seconds.")
    learner_keep_days: float = Field(30.0, ge=0, description="Days of interactions and feedback the learner store "
                                                             "keeps (0: no age limit); see learner/retention.py.")
    learner_keep_events: int = Field(1_000_000, ge=0, description="Most interactions, and most feedback rows, the "
                                                                  "learner store keeps, newest first (0: no limit).")
    learner_split_key: str = Field("", description="Secret key of the hash that splits users into training and "
                                                   "held-out (empty: a random key kept in the learner store).")
    learner_cpus: str = Field("", description="Cores the learner computes on, one torch thread and one engine thread "
                              "per core; empty: every core it may run on. `rlhf up` gives it the last quarter of the "
                              "machine's cores (at least one), serving the rest (rlhf/cpu_share.py).")
    learner_algorithm: LearnerAlgorithm = Field(
        "dpo", description="How the learner trains the policy LoRA: `dpo` (learner/dpo.py, from logged pairwise "
        "choices and up/down thumbs of one prompt, no rollouts; a round whose feedback forms no pair trains with "
        "KTO on its thumbs), `ppo` (learner/ppo.py, with a critic), "
        "`rloo` (learner/rloo.py, k answers per prompt, leave-one-out baseline, no critic), `online-dpo` "
        "(learner/online_dpo.py, 2 answers per prompt ranked by the reward model, then the DPO loss) or `kto` "
        "(learner/kto.py, "
        "thumbs as desirable/undesirable answers, pairwise choices as one of each, no rollouts).")

    # --- AI judge (judge/, `rlhf judge`) ----------------------------------------------
    judge_enabled: bool = Field(False, description="`rlhf up` also starts the AI judge (`rlhf judge`), which adds "
                                "pairwise choices with source `ai` to rlhf.feedback.")
    judge_url: str = Field("", description="OpenAI-compatible API the judge asks (ending in /v1); empty: our own "
                           "serving, http://RLHF_HOST:RLHF_PORT/v1, whose answers to the judge are not logged.")
    judge_model: str = Field("", description="Model the judge asks for; empty: the served base model's name.")
    judge_api_key: str = Field("", description="Bearer key for RLHF_JUDGE_URL (our serving with RLHF_AUTH=api-key: "
                               "a key from `rlhf keys add judge`).")
    judge_rubric: str = Field("", description="Text file with the rubric the judge compares two answers by; empty: "
                              "a short built-in rubric (helpful, correct, concise).")
    judge_weight: float = Field(0.5, ge=0.0, description="How much one AI pairwise choice weighs in a round, as a "
                                "multiple of one user's example; AI choices never take a user's share.")
    judge_max_share: float = Field(0.5, ge=0.0, le=1.0, description="Largest share of a round's total example "
                                   "weight the AI judge's choices may have together: more verdicts than that "
                                   "share allows are scaled down, so people keep the rest (1: no cap).")
    judge_agreement_floor: float = Field(0.6, ge=0.0, le=1.0, description="The judge pauses (publishes nothing) "
                                         "while its agreement with users' own pairwise choices is below this.")
    judge_min_agreement_samples: int = Field(20, ge=1, description="Comparisons with users' choices needed before "
                                             "the agreement floor can pause the judge.")
    judge_port: int = Field(8002, description="Port of the judge's /metrics and /healthz.")
    judge_timeout_s: float = Field(60.0, gt=0, description="How long the judge waits for one verdict.")

    log_level: str = Field("INFO", description="Python logging level.")

    @field_validator("canary_fraction")
    @classmethod
    def _fraction(cls, v: float) -> float:
        if not 0.0 <= v <= 1.0:
            raise ValueError("canary_fraction must be between 0 and 1")
        return v

    @field_validator("learner_algorithm", mode="before")
    @classmethod
    def _algorithm(cls, v):
        if v not in get_args(LearnerAlgorithm):  # a clearer refusal than pydantic's literal_error
            raise ValueError(f"RLHF_LEARNER_ALGORITHM must be one of {', '.join(get_args(LearnerAlgorithm))}, "
                             f"not {v!r}")
        return v

    @field_validator("serving_cpus", "learner_cpus")
    @classmethod
    def _cpus(cls, v: str, info) -> str:
        if v.strip():
            try:
                parse_cpus(v)
            except CpuListError as e:
                raise ValueError(f"RLHF_{info.field_name.upper()}: {e}") from None
        return v.strip()

    @field_validator("learner_max_user_share", "learner_max_client_share")
    @classmethod
    def _share(cls, v: float, info) -> float:
        if not 0.0 < v <= 1.0:
            raise ValueError(f"{info.field_name} must be greater than 0 and at most 1")
        return v

    def check_secrets(self) -> None:
        """Refuse placeholder secrets unless running in dev mode."""
        if self.dev_mode:
            return
        for name, value in (("RLHF_HMAC_KEY", self.hmac_key), ("RLHF_ADMIN_TOKEN", self.admin_token),
                            ("RLHF_EVENT_HMAC_KEY", self.event_hmac_key)):
            if name == "RLHF_ADMIN_TOKEN" and not value:
                continue  # no admin token: the admin routes are off
            _refuse_weak_secret(name, value)

    def check_event_hmac_key(self) -> None:
        """The learner's part of check_secrets: the key it checks serving's events with."""
        if not self.dev_mode:
            _refuse_weak_secret("RLHF_EVENT_HMAC_KEY", self.event_hmac_key)

    def check_auth(self) -> None:
        """Refuse to serve with caller settings that cannot work, or that trust anyone outside dev mode."""
        if self.auth == "none" and not self.dev_mode:
            raise SystemExit("RLHF_AUTH=none lets anyone call as any user; it is for development only "
                             "(RLHF_DEV_MODE=true). Set RLHF_AUTH=api-key (keys from `rlhf keys add NAME`) or "
                             "RLHF_AUTH=jwt.")
        if self.auth == "api-key" and not self.api_keys_file:
            raise SystemExit("RLHF_AUTH=api-key needs RLHF_API_KEYS_FILE (the file `rlhf keys add NAME` writes)")
        if self.auth == "jwt":
            if not self.jwt_secret and not self.jwt_jwks_file:
                raise SystemExit("RLHF_AUTH=jwt needs RLHF_JWT_SECRET (HS256) or RLHF_JWT_JWKS_FILE (RS256/ES256)")
            if not self.jwt_audience or not self.jwt_issuer:
                raise SystemExit("RLHF_AUTH=jwt needs RLHF_JWT_AUDIENCE and RLHF_JWT_ISSUER: tokens are checked "
                                 "for both")
            if self.jwt_secret and not self.dev_mode and (self.jwt_secret in PLACEHOLDER_SECRETS
                                                          or len(self.jwt_secret) < 32):
                raise SystemExit("RLHF_JWT_SECRET must be a real secret of at least 32 characters when "
                                 "RLHF_DEV_MODE=false")


def _refuse_weak_secret(name: str, value: str) -> None:
    if value in PLACEHOLDER_SECRETS or value.startswith("dev-only") or len(value.encode()) < MIN_SECRET_BYTES:
        raise SystemExit(f"{name} must be a real secret of at least {MIN_SECRET_BYTES} bytes when "
                         "RLHF_DEV_MODE=false; make one with "
                         "`python -c \"import secrets; print(secrets.token_urlsafe(32))\"`")


@lru_cache
def get_settings() -> Settings:
    return Settings()
