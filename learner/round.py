"""One training round: reward model update -> PPO, RLOO, DPO, online DPO or KTO on the policy LoRA -> gate -> publish.

    learner = Learner(get_settings())          # opens the store; the vLLM engine starts on first use
    result = learner.run_round()               # RoundResult(status='published'|'rejected', ...)

Steps, each logged with its duration:
1. Reward model: continue from the newest version; train on feedback new since then plus a
   replay sample, each example weighted so no user and no client exceeds its share of the
   round (learner/weighting.py); find suspect users against the held-out users' consensus,
   down-weight them and refit briefly (learner/suspects.py); measure held-out pairwise
   accuracy and thumbs AUC, weighted per held-out user.
2. Normalise rewards: sample the policy serving now (vLLM) on training prompts and set the
   reward model's mean/std so those answers score mean 0, std 1. Save the version.
3. Policy: users' corrected answers in the round (demonstrations) first train the policy LoRA
   by supervised steps (learner/sft.py, `demonstration_sft`); then RLHF_LEARNER_ALGORITHM picks
   PPO (learner/ppo.py), RLOO (learner/rloo.py), DPO (learner/dpo.py), online DPO
   (learner/online_dpo.py) or KTO (learner/kto.py); the policy LoRA starts from that (else the
   serving adapter, or fresh) and runs the algorithm's `steps` iterations: PPO, RLOO and online
   DPO on a pool of training users' prompts drawn by the users' capped weights, DPO and KTO on
   the training feedback under the same weights (no rollouts). The round's metrics of this
   stage are `<algorithm>_*` (`online_dpo_*` for online-dpo).
4. Gate (learner/gate.py) on held-out users' prompts: reward gain, KL budget, reward-model accuracy.
   Beside it, the offline figures the manifest keeps (learner/offline_figures.py): perplexity on a
   fixed reference text (candidate and base), answer length, A/B win rate against the parent.

The split is by user (`learner.store.split_of`): the gate measures whether the learned taste
carries over to people the round never trained on. A round whose feedback all comes from users
on one side of the split (one user, or a few who all hash to the same side) splits by
conversation instead, and says so (`split` in its metrics).
5. Publish (learner/publish.py) to the adapter store + `rlhf.adapters`, or keep the candidate
   in `RLHF_DATA_DIR/candidates/round-N` with the reasons.
"""

from __future__ import annotations

import dataclasses
import gc
import json
import logging
import math
import random
import shutil
import time
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from adapters.cache import cache_dir_of, private_copy
from adapters.manifest import AdapterError
from learner.dpo import NO_PAIRS, DPOConfig, DPOTrainer, preference_pairs
from learner.gate import UNMEASURED, GateConfig, decide, reward_model_accuracy
from learner.kl_guard import BACK_OFF, KEEP, LEARNING_RATE_FACTOR, KLGuard
from learner.kto import KTOConfig, KTOTrainer
from learner.offline_figures import offline_figures
from learner.online_dpo import OnlineDPOConfig, OnlineDPOTrainer
from learner.policy_trainer import UnchangedPolicy
from learner.ppo import PPOConfig, PPOTrainer
from learner.prose_anchor import ProseAnchor, sample_prose
from learner.reward import RewardConfig, RewardModel, RewardTrainer
from learner.rloo import RLOOConfig, RLOOTrainer
from learner.sft import SFTConfig, SFTTrainer
from learner.starting_adapter import STARTING_VERSION, reference_ancestor
from learner.store import Store
from learner.suspects import SuspectConfig, UserAgreement, consensus_rate, find_suspects
from learner.tokenization import encode_feedback_answer, encode_prompt, load_tokenizer, stop_strings
from learner.weighting import (CappedWeights, capped_weights, group_shares, systematic_sample, weighted_order,
                               with_ai_examples)
from rlhf.models.registry import model_display_name, resolve_model
from rlhf.models.sizing import context_length

log = logging.getLogger(__name__)

NOTHING_TO_LEARN = f"{NO_PAIRS}, and no thumbs for KTO: DPO skipped"
SUPERVISED_ONLY = "sft"
"""The round's `algorithm` when only the supervised steps made the candidate: after them, the other
feedback formed no preference pair for DPO (KTO on thumbs alone is not run then: `Learner.policy_feedback`)."""


@dataclass
class LearnerConfig:
    """Everything the learner tunes, beside the operator settings (RLHF_*). Load overrides from JSON."""

    reward: RewardConfig = field(default_factory=RewardConfig)
    """Reward model hyperparameters (learner/reward.py)."""
    ppo: PPOConfig = field(default_factory=PPOConfig)
    """PPO hyperparameters (learner/ppo.py), used when RLHF_LEARNER_ALGORITHM=ppo."""
    rloo: RLOOConfig = field(default_factory=RLOOConfig)
    """RLOO hyperparameters (learner/rloo.py), used when RLHF_LEARNER_ALGORITHM=rloo."""
    dpo: DPOConfig = field(default_factory=DPOConfig)
    """DPO hyperparameters (learner/dpo.py), used when RLHF_LEARNER_ALGORITHM=dpo."""
    online_dpo: OnlineDPOConfig = field(default_factory=OnlineDPOConfig)
    """Online DPO hyperparameters (learner/online_dpo.py), used when RLHF_LEARNER_ALGORITHM=online-dpo."""
    kto: KTOConfig = field(default_factory=KTOConfig)
    """KTO hyperparameters (learner/kto.py), used when RLHF_LEARNER_ALGORITHM=kto."""
    sft: SFTConfig = field(default_factory=SFTConfig)
    """Supervised steps on users' corrected answers before the policy stage (learner/sft.py)."""
    gate: GateConfig = field(default_factory=GateConfig)
    """How candidates are measured before publishing (learner/gate.py)."""
    suspects: SuspectConfig = field(default_factory=SuspectConfig)
    """How users who disagree with the consensus are found and down-weighted (learner/suspects.py)."""
    heldout_fraction: float = 0.2
    """Share of users (by a stable hash) kept out of training, for the gate and reward-model accuracy."""
    max_train_prompts: int = 1024
    """Size of PPO's prompt pool, drawn across training users by their capped weights (each
    user's newest this many distinct prompts are the candidates)."""
    norm_samples: int = 64
    """Answers of the serving policy used to normalise rewards (mean 0, std 1)."""
    adapter_name: str = "policy"
    """Published versions are `<adapter_name>@vN` in `<adapter dir>/<adapter_name>/vN`."""
    keep_candidates: int = 5
    """Rejected candidates kept on disk (newest)."""
    policy_time_budget_s: float = 0.0
    """Seconds the policy stage may run: once spent, the round stops iterating (keeping what the
    policy learned so far) and goes on to the gate, so the next round starts sooner on newer
    feedback. 0: no bound."""
    newer_feedback_factor: float = 0.0
    """Cut the policy stage short (after at least one iteration) once new usable feedback that
    arrived during the round reaches this multiple of the feedback the round has (e.g. 0.5: half as
    much again): the next round, on all of it, starts sooner. 0: never."""

    @classmethod
    def from_dict(cls, data: dict) -> "LearnerConfig":
        parts = {"reward": RewardConfig, "ppo": PPOConfig, "rloo": RLOOConfig, "dpo": DPOConfig,
                 "online_dpo": OnlineDPOConfig, "kto": KTOConfig, "sft": SFTConfig, "gate": GateConfig,
                 "suspects": SuspectConfig}
        kwargs = {}
        for k, v in data.items():
            if k in parts:
                sub = parts[k]
                names = {f.name for f in dataclasses.fields(sub)}
                unknown = set(v) - names
                if unknown:
                    raise ValueError(f"unknown {k} options: {sorted(unknown)}")
                kwargs[k] = sub(**{n: tuple(x) if isinstance(x, list) else x for n, x in v.items()})
            elif k in {f.name for f in dataclasses.fields(cls)}:
                kwargs[k] = v
            else:
                raise ValueError(f"unknown learner option {k!r}")
        return cls(**kwargs)

    @classmethod
    def from_file(cls, path: Path | str) -> "LearnerConfig":
        return cls.from_dict(json.loads(Path(path).read_text()))


@dataclass
class RewardFit:
    """What step 1 of a round leaves for the rest of it."""

    examples: list[dict]                  # what the reward model trained on
    weights: CappedWeights                # their final weights (suspects down-weighted)
    tested: dict[str, UserAgreement]      # users checked against the consensus, by user
    consensus: float                      # held-out agreement rate the users were tested against
    metrics: dict

    @property
    def suspects(self) -> set[str]:
        return {u for u, a in self.tested.items() if a.suspect}


@dataclass
class RoundResult:
    round_id: int
    status: str                  # published | rejected | skipped
    reasons: list[str]
    metrics: dict
    version: str | None = None   # published version
    candidate_dir: Path | None = None


class Learner:
    """The training side of the learner: store + tokenizer + (lazily) the vLLM rollout engine."""

    def __init__(self, settings, cfg: LearnerConfig | None = None, *, store: Store | None = None, engine=None):
        self.settings = settings
        cfg = cfg or LearnerConfig()
        # the operator's RLHF_RM_ENSEMBLE_SIZE and RLHF_RM_UNCERTAINTY_PENALTY, where set, win over the config
        # file; on this learner's own copy (the caller's config is left as it was given)
        ensemble = {k: getattr(settings, f"rm_{k}", None) for k in ("ensemble_size", "uncertainty_penalty")}
        self.cfg = dataclasses.replace(cfg, reward=dataclasses.replace(
            cfg.reward, **{k: v for k, v in ensemble.items() if v is not None}))
        self.algorithm = settings.learner_algorithm
        self.stage = stage_name(self.algorithm)
        # the policy algorithm's config: sampling (temperature, answer length, EOS penalty) follows it everywhere
        self.policy_cfg: PPOConfig | RLOOConfig | DPOConfig | OnlineDPOConfig | KTOConfig = getattr(self.cfg,
                                                                                                     self.stage)
        self.model_path = resolve_model(settings.model)
        self.model_name = model_display_name(settings.model)
        self.tokenizer = load_tokenizer(self.model_path)
        self.stop = stop_strings(self.model_path)
        self.store = store or Store.open(settings, self.cfg.heldout_fraction)
        self.data_dir = Path(settings.data_dir)
        self._engine = engine
        self._prose_texts: list[list[int]] | None = None
        self._prose_anchor: ProseAnchor | None = None
        self.rng = random.Random(self.policy_cfg.seed)
        self.max_model_len = context_length(self.model_path, settings.max_model_len)

    def prose_texts(self) -> list[list[int]]:
        """The prose anchor's texts (learner/prose_anchor.py): the base model writes them at the first
        round that needs them; they depend on the base model only, so later rounds reuse them."""
        if self._prose_texts is None:
            pcfg = self.policy_cfg
            self._prose_texts = sample_prose(self.engine, self.tokenizer, pcfg.anchor_texts, pcfg.anchor_tokens,
                                             pcfg.seed)
        return self._prose_texts

    def prose_anchor(self, policy) -> ProseAnchor | None:
        """The prose anchor for this round's policy: the texts, and the base model's log-probs on them,
        computed at the first round and reused (both depend on the base model only). None when the
        base model wrote no text of two tokens or more (it ended every one at once)."""
        if self._prose_anchor is None:
            texts = self.prose_texts()
            if not texts:
                log.warning("prose anchor off: the base model ended all %d of its texts at once",
                            self.policy_cfg.anchor_texts)
                return None
            pcfg = self.policy_cfg
            self._prose_anchor = ProseAnchor(policy, texts, pcfg.anchor_batch, pcfg.anchor_free_kl)
        return self._prose_anchor.restarted()

    @property
    def engine(self):
        if self._engine is None:
            # vLLM is imported only when a round first samples: it is heavy, and it is the one
            # part of the learner that the store, gate and training tests never need
            from learner.rollout import RolloutEngine

            self._engine = RolloutEngine(self.model_path, max_model_len=self.max_model_len,
                                         max_lora_rank=self.settings.max_lora_rank, max_loras=2,
                                         gpu_memory_utilization=self.settings.gpu_memory_utilization,
                                         kv_cache_gb=self.settings.kv_cache_gb,
                                         seed=self.policy_cfg.seed, stop=self.stop)
        return self._engine

    def close(self) -> None:
        if self._engine is not None:
            self._engine.close()

    # ---------------------------------------------------------------------------- helpers
    def encode_prompts(self, messages_list: list[list[dict]]) -> list[list[int]]:
        limit = self.max_model_len - self.policy_cfg.max_new_tokens
        out = [encode_prompt(self.tokenizer, m) for m in messages_list]
        return [p for p in out if len(p) <= limit]

    def encode_rows(self, rows: list[dict]) -> tuple[list[list[int]], list[dict]]:
        """Token ids of prompt rows (Store.user_prompts), each distinct prompt encoded once; rows whose
        prompt leaves no room for an answer are dropped. Returns (ids, the rows kept)."""
        limit = self.max_model_len - self.policy_cfg.max_new_tokens
        cache: dict[str, list[int]] = {}
        ids, kept = [], []
        for r in rows:
            if r["prompt_key"] not in cache:
                cache[r["prompt_key"]] = encode_prompt(self.tokenizer, r["messages"])
            if len(cache[r["prompt_key"]]) <= limit:
                ids.append(cache[r["prompt_key"]])
                kept.append(r)
        return ids, kept

    def capped(self, rows: list[dict], suspects: set[str] = frozenset()) -> CappedWeights:
        """Weights of rows (feedback examples or prompts): the people's under the operator's caps
        (`capped_people`), the AI judge's at RLHF_JUDGE_WEIGHT times a mean person's example, outside
        every cap, and together at most RLHF_JUDGE_MAX_SHARE of the rows' weight (learner/weighting.py
        `with_ai_examples`)."""
        is_ai = [r.get("source") == "ai" for r in rows]
        if not any(is_ai):
            return self.capped_people(rows, suspects)
        people = self.capped_people([r for r, ai in zip(rows, is_ai) if not ai], suspects)
        return with_ai_examples(people, is_ai, self.settings.judge_weight, self.settings.judge_max_share)

    def capped_people(self, rows: list[dict], suspects: set[str] = frozenset()) -> CappedWeights:
        """Weights of rows (feedback examples or prompts, each with `user` and `client`) under the
        operator's caps; a suspect's capped weights are then multiplied by `suspects.weight`, and
        the caps applied again so the others share what the suspects lost. A suspect never gets
        back what it lost: when the caps could only be met by giving weight back to the suspects
        (too few other users, or a client cap moving weight to the suspects' client), the others
        take it above the caps instead."""
        users, clients = [r["user"] for r in rows], [r["client"] for r in rows]
        caps = {"max_user_share": self.settings.learner_max_user_share,
                "max_client_share": self.settings.learner_max_client_share}
        weights = capped_weights(users, clients, **caps)
        if not suspects & set(users):
            return weights
        masses = [w * (self.cfg.suspects.weight if u in suspects else 1.0) for w, u in zip(weights.weights, users)]
        recapped = capped_weights(users, clients, **caps, masses=masses)
        total = sum(masses)
        scaled = [m / total for m in masses]
        if sum(w for w, u in zip(recapped.weights, users) if u in suspects) <= sum(
                w for w, u in zip(scaled, users) if u in suspects) * (1 + 1e-9):
            return recapped
        client_shares = group_shares(scaled, clients)
        return CappedWeights(scaled, group_shares(scaled, users), client_shares, recapped.user_cap, recapped.client_cap,
                             client_cap_met=max(client_shares.values()) <= recapped.client_cap * (1 + 1e-6))

    def split_feedback(self, hwm: int) -> tuple[str, list[dict], list[dict]]:
        """(split, train examples, held-out examples): by user; by conversation when every user
        with feedback falls on one side (nothing to train on, or no one to measure on)."""
        train = self.store.feedback_examples("train", hwm)
        held = self.store.feedback_examples("heldout", hwm)
        if train and held:
            return "user", train, held
        log.warning("all %d feedback events come from users on the %s side of the split: this round splits "
                    "by conversation", len(train) + len(held), "training" if train else "held-out")
        return ("conversation", self.store.feedback_examples("train", hwm, by="conversation"),
                self.store.feedback_examples("heldout", hwm, by="conversation"))

    def fit_reward_model(self, trainer: RewardTrainer, train_ex: list[dict], held_ex: list[dict],
                         since_seq: int) -> RewardFit:
        """Select, weigh and fit; test every training user against the held-out consensus; when
        some are suspect, down-weight them and refit briefly; measure on the held-out users."""
        sc = self.cfg.suspects
        chosen, n_new = trainer.select(train_ex, since_seq)
        weights = self.capped(chosen)
        metrics = {**trainer.fit(chosen, weights.weights), "rm_new_examples": n_new}
        held_weights = self.capped(held_ex).weights
        held_members = trainer.member_scores(held_ex)
        held_scores = trainer.scores(held_ex, held_members)
        consensus = consensus_rate(trainer.agreement(held_ex, held_scores), held_weights, sc.min_consensus_labels)
        people = [e for e in chosen if e.get("source") != "ai"]  # the judge is not tested as a user
        tested = find_suspects([e["user"] for e in people], trainer.agreement(people), consensus, sc)
        suspects = {u for u, a in tested.items() if a.suspect}
        if suspects:
            weights = self.capped(chosen, suspects)
            per_epoch = math.ceil(len(chosen) / self.cfg.reward.batch_size)
            refit = trainer.fit(chosen, weights.weights, epochs=sc.refit_epochs, min_steps=0,
                                max_steps=per_epoch * sc.refit_epochs)
            metrics.update(rm_refit_steps=refit["rm_steps"], rm_refit_loss=refit["rm_loss"])
            held_members = trainer.member_scores(held_ex)
            held_scores = trainer.scores(held_ex, held_members)
        metrics.update(trainer.evaluate(held_ex, held_weights, held_scores))
        metrics.update(trainer.ensemble_metrics(held_ex, held_members, held_weights))
        metrics.update(rm_users=len(weights.user_shares), rm_clients=len(weights.client_shares),
                       rm_max_user_share=weights.max_user_share, rm_max_client_share=weights.max_client_share,
                       rm_client_cap_met=int(weights.client_cap_met), rm_ai_share=weights.ai_share,
                       consensus_agreement=consensus,
                       suspects_tested=len(tested), suspect_users=len(suspects),
                       heldout_users=len({e["user"] for e in held_ex}))
        return RewardFit(chosen, weights, tested, consensus, metrics)

    def prompt_pools(self, by: str, suspects: set[str]) -> tuple[list[list[int]], list[dict], list[list[int]]]:
        """(PPO's prompt pool, its rows, the gate's held-out prompts), both drawn across users.

        PPO: min(`max_train_prompts`, candidates) draws in proportion to the capped weights of
        each user's distinct prompts (a user with few prompts gets them repeated): each user's
        share of the pool is their share of the round, to within one prompt. Gate: up to `gate.max_prompts` distinct held-out
        prompts, a weighted sample without replacement (seeded: the same for both policies)."""
        cfg = self.cfg
        rows = self.store.user_prompts("train", cfg.max_train_prompts, by=by)
        weights = self.capped(rows, suspects).weights
        draws = systematic_sample(weights, min(cfg.max_train_prompts, len(rows)), self.rng)
        train_ids, pool = self.encode_rows([rows[i] for i in draws])
        held_rows = self.store.user_prompts("heldout", cfg.gate.max_prompts, by=by)
        held_weights = self.capped(held_rows).weights
        held_ids, seen = [], set()
        for i in weighted_order(held_weights, random.Random(cfg.gate.seed)):
            if len(held_ids) >= cfg.gate.max_prompts:
                break
            if held_rows[i]["prompt_key"] not in seen:
                seen.add(held_rows[i]["prompt_key"])
                held_ids += self.encode_rows([held_rows[i]])[0]
        return train_ids, pool, held_ids

    def record_accounting(self, round_id: int, fit: RewardFit, pool: list[dict]) -> dict:
        """Per user and client: examples, shares of both training signals, the suspect test (`round_users`).
        Returns the round's largest shares."""
        acc: dict[tuple[str, str], dict] = defaultdict(lambda: {"examples": 0, "rm_share": 0.0, "prompts": 0,
                                                                "policy_share": 0.0})
        for ex, w in zip(fit.examples, fit.weights.weights):
            a = acc[(ex["user"], ex["client"])]
            a["examples"] += 1
            a["rm_share"] += w
        for r in pool:
            a = acc[(r["user"], r["client"])]
            a["prompts"] += 1
            a["policy_share"] += 1.0 / len(pool)
        rows = []
        for (user, client), a in acc.items():
            t = fit.tested.get(user)
            rows.append({"user": user, "client": client, **a, "labels": t.labels if t else 0,
                         "agreed": t.agreed if t else 0, "p_value": t.p_value if t else None,
                         "suspect": bool(t and t.suspect)})
        self.store.record_round_users(round_id, rows)
        policy_users = group_shares([1.0] * len(pool), [r["user"] for r in pool])
        policy_clients = group_shares([1.0] * len(pool), [r["client"] for r in pool])
        m = {"policy_users": len(policy_users),
             "policy_max_user_share": max(policy_users.values(), default=0.0),
             "policy_max_client_share": max(policy_clients.values(), default=0.0)}
        m["max_user_share"] = max(fit.metrics["rm_max_user_share"], m["policy_max_user_share"])
        m["max_client_share"] = max(fit.metrics["rm_max_client_share"], m["policy_max_client_share"])
        return m

    def suspect_summary(self, fit: RewardFit) -> tuple[str, str | None]:
        """(JSON list of the suspects with their counts, one sentence for the round's reason or None)."""
        found = sorted((a for a in fit.tested.values() if a.suspect), key=lambda a: a.p_value)
        listed = json.dumps([{"user": a.user, "labels": a.labels, "agreed": a.agreed, "p_value": a.p_value}
                             for a in found[:20]])
        if not found:
            return listed, None
        sc = self.cfg.suspects
        return listed, (f"{len(found)} suspect user(s) weighted x{sc.weight:g}: the reward model agrees with "
                        f"their labels far less than with the held-out users' ({fit.consensus:.3f}; one-sided "
                        f"binomial p < {sc.alpha:g}/{len(fit.tested)}): "
                        + ", ".join(f"{a.user!r} {a.agreed}/{a.labels}" for a in found[:5])
                        + (" ..." if len(found) > 5 else ""))

    def verified_copy(self, role: str, version: str, path: str, manifest_sha256: str) -> tuple[str | None, Path | None]:
        """(version, folder) of a stored version's verified private copy (adapters/cache.py), so what PEFT
        and vLLM read is what was checked; (None, None), with a warning, when it does not verify: the
        round then uses the base model in that `role`."""
        try:
            return version, private_copy(self.settings.adapter_dir, path, manifest_sha256, cache_dir_of(self.settings))
        except (AdapterError, OSError) as e:
            log.warning("%s %s does not verify (%s); the base model takes its place", role, version, e)
            return None, None

    def serving_adapter_dir(self) -> tuple[str | None, Path | None]:
        """(version, verified folder) of the adapter serving now; (None, None) for the base model."""
        serving = self.store.serving_adapter()
        if not serving:
            return None, None
        return self.verified_copy("serving adapter", serving["version"], serving["path"], serving["manifest_sha256"])

    def reference_adapter_dir(self, serving: str | None) -> tuple[str | None, Path | None]:
        """(version, verified folder) of the policy's reference: the nearest of `serving` and its ancestors
        that is the starting adapter or learned users' corrected answers (learner/starting_adapter.py
        `reference_ancestor`); (None, None): the base, adapter off."""
        ref = reference_ancestor(self.store.routing(), serving, self.store.corrected_versions())
        if ref is None:
            return None, None
        return self.verified_copy("reference adapter", ref.version, ref.path, ref.manifest_sha256)

    def round_algorithm(self, train_ex: list[dict]) -> str | None:
        """The algorithm this round trains with: the configured one, except that DPO, when the round's
        training feedback forms no pair, falls back to KTO, which learns from thumbs alone (None:
        neither has anything to learn from)."""
        if self.algorithm != "dpo" or preference_pairs(train_ex):
            return self.algorithm
        return "kto" if any(e["type"] == "thumbs" for e in train_ex) else None

    def policy_trainer(self, algo: str, rm, serving_dir: Path | None, reference_dir: Path | None, workdir: Path,
                       feedback: tuple[list[dict], list[float]]):
        """The algorithm's trainer, its LoRA starting from the serving adapter (or fresh), its
        reference `reference_dir` (or the base). PPO and RLOO sample and score with the reward model,
        online DPO ranks its samples with it; DPO and KTO learn from `feedback` (examples, their
        capped weights: `policy_feedback`); the reward model only judges at the gate."""
        pcfg = getattr(self.cfg, stage_name(algo))
        start = dict(init_adapter=serving_dir, reference_adapter=reference_dir)
        if algo in ("dpo", "kto"):
            offline = DPOTrainer if algo == "dpo" else KTOTrainer
            return offline(self.model_path, self.tokenizer, pcfg, *feedback, workdir=workdir, **start)
        if algo == "online-dpo":
            return OnlineDPOTrainer(self.model_path, self.tokenizer, pcfg, rm, workdir=workdir, **start)
        if algo == "rloo":  # a fixed β: nothing carried across rounds
            return RLOOTrainer(self.model_path, self.tokenizer, pcfg, rm, workdir=workdir, **start)
        beta = self.store.get_meta("kl_coef")
        return PPOTrainer(self.model_path, self.tokenizer, pcfg, rm, workdir=workdir,
                          kl_coef=float(beta) if beta else None, **start)

    @staticmethod
    def policy_feedback(fit: RewardFit) -> tuple[list[dict], list[float]]:
        """What DPO and KTO learn from (examples and their capped weights): the round's training feedback,
        without the corrected answers when there is other feedback. The supervised steps learn those
        answers (`demonstration_sft`) and their policy is the reference from then on; the pairs
        "correction over the answer it corrects" would push a policy that already writes the
        corrections tens of nats further (README, "Corrections with the prose anchor"). When what is left
        forms no pair for DPO, the supervised policy is the round's candidate (`SUPERVISED_ONLY`): KTO on
        the thumbs would take minutes more. A round with corrections alone keeps them: they are all the
        preferences it has."""
        keep = [i for i, e in enumerate(fit.examples) if not e.get("demonstration")]
        if not keep or len(keep) == len(fit.examples):
            return fit.examples, fit.weights.weights
        return [fit.examples[i] for i in keep], [fit.weights.weights[i] for i in keep]

    def demonstration_sft(self, fit: RewardFit, start: Path | None, folder: Path) -> tuple[Path | None, dict]:
        """Supervised steps on the round's corrected answers (the loss on the answer tokens only),
        from the serving adapter, before the policy algorithm: the policy then explores from the
        answers users wrote instead of having to find them by sampling (the seed documents' order:
        SFT, then RL). Demonstrations are drawn by their users' capped weights, as everywhere in
        the round. Returns the adapter the policy stage starts from, and metrics."""
        idx = [i for i, e in enumerate(fit.examples) if e.get("demonstration")]
        if not idx:
            return start, {"sft_demonstrations": 0}
        draws = systematic_sample([fit.weights.weights[i] for i in idx], len(idx), self.rng)
        pairs = [encode_feedback_answer(self.tokenizer, fit.examples[idx[j]]["messages"],
                                        fit.examples[idx[j]]["chosen"], "stop", self.cfg.reward.max_length)
                 for j in draws]
        trainer = SFTTrainer(self.model_path, self.tokenizer, self.cfg.sft, init_adapter=start)
        anchor = self.prose_anchor(trainer.policy) if self.cfg.sft.anchor_coef > 0 else None
        if anchor is not None:
            trainer.set_prose_anchor(anchor)
        stats = trainer.train(pairs)
        shutil.rmtree(folder, ignore_errors=True)
        trainer.save(folder)
        del trainer
        gc.collect()
        log.info("supervised steps on %d corrected answers: answer loss %s, prose anchor KL %.4f, in %.1f s",
                 len(idx), " -> ".join(f"{x:.3f}" for x in stats["epoch_losses"]), stats["anchor_kl"],
                 stats["seconds"])
        return folder, {"sft_demonstrations": len(idx), "sft_steps": stats["steps"],
                        "sft_loss": stats["epoch_losses"][-1], "sft_anchor_kl": stats["anchor_kl"]}

    def _rewards(self, rm, samples) -> list[float]:
        """The gate's rewards: the members' mean (no uncertainty penalty), the score whose held-out
        accuracy the round measured, minus the missing-EOS penalty."""
        scores = rm.score_samples(samples, self.tokenizer, self.cfg.reward.eval_batch_size, uncertainty_penalty=0.0)
        return [r - (0.0 if s.finished else self.policy_cfg.missing_eos_penalty) for r, s in zip(scores, samples)]

    def _save_reward_model(self, rm, round_id: int, metrics: dict) -> int:
        prev = self.store.latest_reward_model()
        version = (prev["version"] if prev else 0) + 1
        final = self.data_dir / "reward" / f"v{version}"
        tmp = final.with_name(final.name + ".tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.rmtree(final, ignore_errors=True)  # left by a learner killed before recording it
        rm.save(tmp)
        tmp.rename(final)
        return self.store.record_reward_model(str(final), round_id, metrics)

    def _prune_candidates(self) -> None:
        folder = self.data_dir / "candidates"
        if folder.is_dir():
            old = sorted(folder.iterdir(), key=lambda p: p.stat().st_mtime)[: -self.cfg.keep_candidates or None]
            for p in old:
                shutil.rmtree(p, ignore_errors=True)

    def end_early(self, round_id: int, metrics: dict, reasons: list[str], t_round: float,
                  note: str | None = None) -> RoundResult:
        """End the round before a candidate exists: rejected with its reasons. The round's feedback counts
        as seen, so the next round waits for enough new feedback, and then trains on all of it."""
        metrics["round_seconds"] = time.perf_counter() - t_round
        clean = {k: v for k, v in metrics.items() if isinstance(v, (int, float, str, type(None)))}
        self.store.finish_round(round_id, "rejected", reason="; ".join(filter(None, [*reasons, note])), metrics=clean)
        log.info("round %d: %s", round_id, reasons[0])
        return RoundResult(round_id, "rejected", reasons, metrics)

    # ---------------------------------------------------------------------------- the round
    def cut_short(self, started: float, hwm: int, n_feedback: int) -> str | None:
        """Why the policy stage stops before its last iteration (its time budget is spent, or much newer
        feedback arrived since the round started: `policy_time_budget_s`, `newer_feedback_factor`); None: go on."""
        cfg = self.cfg
        spent = time.perf_counter() - started
        if 0 < cfg.policy_time_budget_s <= spent:
            return f"its time budget is spent ({spent:.0f} s of {cfg.policy_time_budget_s:g} s)"
        if cfg.newer_feedback_factor > 0:
            newer = self.store.feedback_count_since(hwm)
            if newer >= cfg.newer_feedback_factor * max(1, n_feedback):
                return (f"{newer} feedback events arrived during the round, {newer / max(1, n_feedback):.2f}x the "
                        f"{n_feedback} it has (newer_feedback_factor {cfg.newer_feedback_factor:g})")
        return None

    def run_round(self, on_progress: Callable[[str, dict], None] | None = None) -> RoundResult:
        cfg, store, settings = self.cfg, self.store, self.settings
        algo, stage, pcfg = self.algorithm, self.stage, self.policy_cfg
        progress = on_progress or (lambda stage, m: None)
        round_id, hwm, n_feedback = store.start_round()
        t_round = time.perf_counter()
        metrics: dict = {"round": round_id, "feedback_count": n_feedback, "algorithm": algo}
        log.info("round %d: %d feedback events (through seq %d); policy algorithm %s", round_id, n_feedback, hwm,
                 algo)
        try:
            # ---- 1. reward model ---------------------------------------------------------
            t = time.perf_counter()
            split, train_ex, held_ex = self.split_feedback(hwm)
            metrics["split"] = split
            if self.round_algorithm(train_ex) is None:
                # nothing DPO or KTO could learn from: stop before the reward model; the feedback stays in
                # the store, and the next round (after enough new feedback) trains on all of it
                return self.end_early(round_id, metrics, [NOTHING_TO_LEARN], t_round)
            prev = store.latest_reward_model()
            rm = (RewardModel.load(self.model_path, prev["path"], cfg.reward) if prev
                  else RewardModel.create(self.model_path, cfg.reward))
            rm_trainer = RewardTrainer(rm, self.tokenizer, cfg.reward)
            since = prev["metrics"].get("trained_through_seq", 0) if prev else 0
            fit = self.fit_reward_model(rm_trainer, train_ex, held_ex, since)
            metrics.update(fit.metrics, **feedback_kinds(fit.examples))
            metrics["suspects"], suspect_note = self.suspect_summary(fit)
            metrics["rm_accuracy"] = reward_model_accuracy(metrics, cfg.gate)
            metrics["time_reward_model"] = time.perf_counter() - t
            log.info("round %d: reward model trained on %d examples of %d users (split by %s, largest user share "
                     "%.3f, client share %.3f) in %.1f s; held-out pairwise accuracy %.3f (%d pairs), thumbs AUC "
                     "%.3f (%d) from %d users", round_id, metrics["rm_train_examples"], metrics["rm_users"], split,
                     metrics["rm_max_user_share"], metrics["rm_max_client_share"], metrics["time_reward_model"],
                     metrics["rm_pairwise_accuracy"], metrics["rm_heldout_pairs"], metrics["rm_thumbs_auc"],
                     metrics["rm_heldout_thumbs"], metrics["heldout_users"])
            if suspect_note:
                log.warning("round %d: %s", round_id, suspect_note)
            progress("reward_model", metrics)
            # DPO and KTO train on what the reward model did (the new feedback and a replay sample of the
            # older): with no pair among it, KTO learns from its thumbs instead of DPO; after supervised steps
            # on corrections, the supervised policy is the candidate instead
            feedback = self.policy_feedback(fit)
            chosen = self.round_algorithm(feedback[0])
            supervised_only = len(feedback[0]) < len(fit.examples) and chosen != algo
            if supervised_only:
                metrics.update(algorithm=SUPERVISED_ONLY, algorithm_configured=self.algorithm)
                log.info("round %d: the feedback besides the corrected answers forms no preference pair: the "
                         "supervised steps' policy is the candidate", round_id)
            elif chosen is None:
                return self.end_early(round_id, metrics, [NOTHING_TO_LEARN], t_round, suspect_note)
            elif chosen != algo:
                algo, stage, pcfg = chosen, stage_name(chosen), getattr(cfg, stage_name(chosen))
                metrics.update(algorithm=algo, algorithm_configured=self.algorithm)
                log.info("round %d: %s; KTO learns from the thumbs instead of DPO", round_id, NO_PAIRS)

            # ---- 2. prompts, serving policy, normalisation --------------------------------
            t = time.perf_counter()
            train_prompts, pool, held_prompts = self.prompt_pools(split, fit.suspects)
            metrics.update(self.record_accounting(round_id, fit, pool))
            if metrics["rm_accuracy"] is None:
                # the gate could not pass any candidate: stop before the costly part; the next round
                # continues from the previous reward-model version, so this feedback is not lost
                reasons = [(f"{UNMEASURED} ({metrics['rm_heldout_pairs']} pairs, {metrics['rm_heldout_thumbs']} "
                            f"thumbs from {metrics['heldout_users']} held-out users): {algo.upper()} skipped")]
                return self.end_early(round_id, metrics, reasons, t_round, suspect_note)
            if not train_prompts:
                raise RuntimeError("no training prompts: no logged interactions in the train split")
            parent, serving_dir = self.serving_adapter_dir()
            reference, reference_dir = self.reference_adapter_dir(parent) if serving_dir else (None, None)
            serving_lora = self.engine.lora(serving_dir, parent) if serving_dir else None
            norm_prompts = [self.rng.choice(train_prompts) for _ in range(cfg.norm_samples)]
            samples = self.engine.generate(norm_prompts, temperature=pcfg.temperature,
                                           max_tokens=pcfg.max_new_tokens, lora=serving_lora,
                                           seed=self.rng.randrange(2**31))
            rm.set_normalisation(rm.member_score_samples(samples, self.tokenizer, cfg.reward.eval_batch_size,
                                                         normalised=False))
            norm_mean, norm_std = rm.norm_mean.mean().item(), rm.norm_std.mean().item()  # over the members
            rm_version = self._save_reward_model(rm, round_id, {
                **{k: v for k, v in metrics.items() if k.startswith("rm_")}, "trained_through_seq": hwm,
                "norm_mean": norm_mean, "norm_std": norm_std})
            metrics.update(rm_version=rm_version, parent=parent, reference=reference or "base", norm_mean=norm_mean,
                           norm_std=norm_std, time_normalise=time.perf_counter() - t)
            log.info("round %d: reward model v%d (%d members, held-out disagreement %.3f) normalised on %d answers "
                     "of %s (mean %.3f, std %.3f)", round_id, rm_version, rm.ensemble_size,
                     metrics["rm_disagreement"], len(samples), parent or "the base model", norm_mean, norm_std)

            # ---- 3. policy: corrected answers first, then PPO, RLOO, DPO or KTO -----------
            t = time.perf_counter()
            sft_dir = self.data_dir / "sft" / f"round-{round_id}"
            start_dir, sft_metrics = self.demonstration_sft(fit, serving_dir, sft_dir)
            metrics.update(sft_metrics, time_sft=time.perf_counter() - t)
            if start_dir == sft_dir:  # DPO's recipe: the supervised policy is the reference from here on
                reference_dir, reference = sft_dir, f"supervised steps of round {round_id}"
                metrics["reference"] = reference
            t = time.perf_counter()
            workdir = self.data_dir / algo / f"round-{round_id}"
            name = algo.upper()
            if supervised_only:
                trainer = UnchangedPolicy(self.model_path, self.tokenizer, pcfg, start_dir,
                                          reference_adapter=reference_dir)
            else:
                trainer = self.policy_trainer(algo, rm, start_dir, reference_dir, workdir, feedback)
            t_anchor = time.perf_counter()
            anchor = self.prose_anchor(trainer.policy) if pcfg.anchor_coef > 0 and not supervised_only else None
            if anchor is not None:
                trainer.set_prose_anchor(anchor)
                metrics["time_prose_anchor"] = time.perf_counter() - t_anchor
                log.info("round %d: prose anchor: %d texts of the base model (%d tokens), ready in %.1f s", round_id,
                         len(trainer.anchor.texts), sum(map(len, trainer.anchor.texts)), metrics["time_prose_anchor"])
            history = defaultdict(list)
            backoffs = pcfg.kl_backoffs
            if start_dir == sft_dir and pcfg.kl_backoffs_after_supervised is not None:
                backoffs = pcfg.kl_backoffs_after_supervised
            guard = KLGuard(pcfg.kl_stop_fraction * settings.kl_budget, backoffs,
                            sampled_after_update=not trainer.samples_before_update)
            before_last = None  # the policy before the latest kept update (PPO, RLOO, online DPO)
            for k in range(0 if supervised_only else pcfg.steps):
                state = trainer.policy_state() if guard.on else None
                stats = trainer.step(self.engine, train_prompts)
                kl_error = 0.0  # PPO, RLOO and online DPO measure their KL on all their rollouts
                if guard.on and guard.sampled_after_update:  # the KL of the policy this update made
                    t_kl = time.perf_counter()
                    stats["kl"], kl_error = trainer.sampled_kl(self.engine, train_prompts)
                    stats["kl_error"] = kl_error
                    stats["time_rollout"] += time.perf_counter() - t_kl
                undo = state if guard.sampled_after_update else before_last
                verdict = guard.verdict(stats["kl"], kl_error) if undo is not None else guard.keep(stats["kl"])
                if verdict != KEEP:
                    trainer.restore_policy(undo)
                    before_last = None  # its rollouts were sampled from the policy just undone
                    if verdict == BACK_OFF:
                        trainer.scale_learning_rate(LEARNING_RATE_FACTOR)
                        metrics[f"{stage}_kl_backoffs"] = guard.backed_off
                        log.info("round %d: %s iteration %d: the policy's KL %.3f ± %.3f went over %.0f%% of the "
                                 "budget (%.3f); undoing that update and going on at %g x the learning rate",
                                 round_id, name, k + 1, stats["kl"], kl_error, 100 * pcfg.kl_stop_fraction, guard.limit,
                                 LEARNING_RATE_FACTOR ** guard.backed_off)
                        continue
                    metrics[f"{stage}_kl_guard"] = k
                    log.info("round %d: %s stopped after %d iterations: the policy's KL %.3f ± %.3f went over "
                             "%.0f%% of the budget (%.3f); keeping the policy from before that update", round_id,
                             name, k, stats["kl"], kl_error, 100 * pcfg.kl_stop_fraction, guard.limit)
                    break
                before_last = state
                for key, v in stats.items():
                    history[key].append(v)
                vf = f" vf {stats['value_loss']:.4f}" if "value_loss" in stats else ""  # RLOO has no critic
                error = f" ± {stats['kl_error']:.3f}" if "kl_error" in stats else ""  # the guard's own sample
                log.info("round %d: %s %d/%d score %+.3f kl %.3f%s (β %.4f) pg %.4f%s clip %.3f eos %.2f "
                         "len %.1f %.1f s", round_id, name, k + 1, pcfg.steps, stats["score"], stats["kl"], error,
                         stats["kl_coef"], stats["policy_loss"], vf, stats["clipfrac"],
                         stats["eos_fraction"], stats["response_tokens"],
                         stats["time_rollout"] + stats["time_score"] + stats["time_update"])
                progress(f"{stage}_step", {**stats, "step": k + 1})
                cut = self.cut_short(t, hwm, n_feedback) if k + 1 < pcfg.steps else None
                if cut:
                    metrics[f"{stage}_cut_short"] = cut
                    log.info("round %d: %s stops after %d of %d iterations: %s", round_id, name, k + 1,
                             pcfg.steps, cut)
                    break
            kept = len(history["kl"])  # updates the candidate carries
            if guard.on and not guard.sampled_after_update and before_last is not None:
                # the last update's KL: its rollouts would have come in the next iteration
                kl, kl_error = trainer.sampled_kl(self.engine, train_prompts)
                if guard.verdict(kl, kl_error) != KEEP:
                    trainer.restore_policy(before_last)
                    kept -= 1
                    metrics[f"{stage}_kl_guard"] = len(history["kl"])
                    log.info("round %d: %s: the last update took the policy's KL to %.3f ± %.3f, over %.0f%% of "
                             "the budget (%.3f); keeping the policy from before it", round_id, name, kl, kl_error,
                             100 * pcfg.kl_stop_fraction, guard.limit)
            metrics[f"{stage}_iterations"] = len(history["kl"])
            if trainer.anchor is not None:
                metrics[f"{stage}_anchor_kl"] = trainer.anchor.kl
            if hasattr(trainer, "heldout_accuracy"):  # algorithms with an implicit reward (DPO, online DPO, KTO)
                metrics[f"{stage}_heldout_accuracy"] = trainer.heldout_accuracy(held_ex)
            last = {key: v[-1] for key, v in history.items() if v}  # none when the guard undid every update
            metrics.update({f"{stage}_{key}": v for key, v in last.items()})
            metrics[f"{stage}_score_first"] = history["score"][0] if history["score"] else math.nan
            metrics[f"time_{stage}"] = time.perf_counter() - t
            if algo == "ppo":  # the adaptive β continues in the next round
                store.set_meta("kl_coef", repr(trainer.kl_ctl.value))
            cand_dir = self.data_dir / "candidates" / f"round-{round_id}"
            shutil.rmtree(cand_dir, ignore_errors=True)
            trainer.save_policy(cand_dir)
            shutil.rmtree(workdir, ignore_errors=True)
            shutil.rmtree(sft_dir, ignore_errors=True)

            # ---- 4. gate -----------------------------------------------------------------
            t = time.perf_counter()
            g = cfg.gate
            held = held_prompts[: g.max_prompts]
            cand_lora = self.engine.lora(cand_dir, f"candidate-r{round_id}")
            gen = dict(n=g.samples_per_prompt, temperature=pcfg.temperature, max_tokens=pcfg.max_new_tokens,
                       seed=g.seed)
            cand_samples = self.engine.generate(held, lora=cand_lora, **gen)
            serv_samples = self.engine.generate(held, lora=serving_lora, **gen)
            metrics["time_gate_sampling"], t_part = time.perf_counter() - t, time.perf_counter()
            cand_r = _per_prompt(cand_samples, self._rewards(rm, cand_samples))
            serv_r = _per_prompt(serv_samples, self._rewards(rm, serv_samples))
            common = sorted(set(cand_r) & set(serv_r))
            metrics["time_gate_scoring"], t_part = time.perf_counter() - t_part, time.perf_counter()
            kl_samples = [s for s in cand_samples if s.answer_index < g.kl_answers_per_prompt]
            if kept == 0 and (start_dir == reference_dir or reference == parent):
                # the candidate is its reference (the guard undid every update): KL 0 by construction
                kl = [0.0] * len(kl_samples)
                log.info("round %d: the candidate is its reference, %s: KL 0", round_id, reference or "the base")
            else:
                kl = trainer.answer_kl(kl_samples)
            metrics["time_gate_kl"], t_part = time.perf_counter() - t_part, time.perf_counter()
            metrics.update(offline_figures(trainer.policy, self.tokenizer, cand_samples, serv_samples,
                                           [cand_r[i] for i in common], [serv_r[i] for i in common],
                                           self.max_model_len))
            metrics["time_offline_figures"] = time.perf_counter() - t_part
            # from a reference other than the starting adapter or the base, the KL budget does not bound the
            # distance from a policy whose language is known: the gate checks the language itself
            language = ((metrics["perplexity_candidate"], metrics["perplexity_base"])
                        if reference not in (STARTING_VERSION, None) else None)
            decision = decide([cand_r[i] for i in common], [serv_r[i] for i in common], kl, metrics["rm_accuracy"],
                              kl_budget=settings.kl_budget, rm_accuracy_floor=settings.rm_accuracy_floor, cfg=g,
                              perplexity=language)
            metrics.update(decision.metrics)
            metrics["eos_fraction_candidate"] = sum(s.finished for s in cand_samples) / max(1, len(cand_samples))
            metrics["time_gate"] = time.perf_counter() - t
            log.info("round %d: perplexity on the reference text %.2f (base %.2f, reference %.2f), answer tokens "
                     "%.1f (serving %.1f), A/B win rate against %s %.2f [%.2f-%.2f] on %d prompts", round_id,
                     metrics["perplexity_candidate"], metrics["perplexity_base"],
                     metrics.get("perplexity_reference", math.nan), metrics["answer_tokens_candidate"],
                     metrics["answer_tokens_serving"], parent or "the base model", metrics["win_rate_vs_parent"],
                     metrics["win_rate_vs_parent_low"], metrics["win_rate_vs_parent_high"],
                     metrics["win_rate_prompts"])
            log.info("round %d: gate: reward %.3f vs serving %.3f (gain %+.3f ± %.3f), KL %.3f ± %.3f "
                     "(budget %g), RM accuracy %s (floor %g) -> %s", round_id, metrics["reward_candidate"],
                     metrics["reward_serving"], metrics["reward_gain"], metrics["reward_gain_se"],
                     metrics["kl_candidate"], metrics["kl_candidate_se"], settings.kl_budget,
                     _fmt(metrics["rm_accuracy"]), settings.rm_accuracy_floor,
                     "publish" if decision.publish else "; ".join(decision.reasons))
            del trainer, rm, rm_trainer
            gc.collect()

            # ---- 5. publish or keep ------------------------------------------------------
            metrics["round_seconds"] = time.perf_counter() - t_round
            clean = {k: v for k, v in metrics.items() if isinstance(v, (int, float, str, type(None)))}
            if decision.publish:
                from learner.publish import publish_adapter

                ev = publish_adapter(store, settings, cand_dir, name=cfg.adapter_name, parent=parent,
                                     base_model=self.model_name, metrics=clean, feedback_count=n_feedback,
                                     round_id=round_id)
                store.finish_round(round_id, "published", candidate=ev.version, reason=suspect_note, metrics=clean)
                shutil.rmtree(cand_dir, ignore_errors=True)
                return RoundResult(round_id, "published", [], metrics, ev.version, None)
            reason = "; ".join(filter(None, [*decision.reasons, suspect_note]))
            store.record_adapter(f"candidate-r{round_id}", "rejected", path=str(cand_dir), parent=parent,
                                 reason=reason, round_id=round_id, metrics=clean)
            store.finish_round(round_id, "rejected", candidate=str(cand_dir), reason=reason, metrics=clean)
            self._prune_candidates()
            return RoundResult(round_id, "rejected", decision.reasons, metrics, None, cand_dir)
        except BaseException as e:
            store.finish_round(round_id, "failed", reason=f"{type(e).__name__}: {e}",
                               metrics={k: v for k, v in metrics.items() if isinstance(v, (int, float, str))})
            if type(e).__name__ == "EngineDeadError" and self._engine is not None:
                log.error("the rollout engine died; the next round starts a new one")
                self._engine.close()
                self._engine = None
            raise


def stage_name(algorithm: str) -> str:
    """The policy stage's name in LearnerConfig and in the round's metrics (`<stage>_kl`, `time_<stage>`):
    the RLHF_LEARNER_ALGORITHM value with `-` as `_` (online-dpo -> online_dpo)."""
    return algorithm.replace("-", "_")


def feedback_kinds(examples: list[dict]) -> dict[str, int]:
    """How many of the round's training examples are of each kind and source (round record, manifest)."""
    demos = sum(1 for e in examples if e.get("demonstration"))
    ai = sum(1 for e in examples if e.get("source") == "ai")
    return {"examples_thumbs": sum(1 for e in examples if e["type"] == "thumbs"),
            "examples_pairwise": sum(1 for e in examples if e["type"] == "pairwise") - demos,
            "examples_demonstration": demos, "examples_user": len(examples) - ai, "examples_ai": ai}


def _per_prompt(samples, rewards: list[float]) -> dict[int, float]:
    """Mean reward per prompt index."""
    acc: dict[int, list[float]] = defaultdict(list)
    for s, r in zip(samples, rewards):
        acc[s.prompt_index].append(r)
    return {i: sum(v) / len(v) for i, v in acc.items()}


def _fmt(x) -> str:
    return "n/a" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.3f}"
