"""The gate: a candidate adapter is published only when it is measurably better and still close.

Four conditions, all on data the candidate was not trained on:
1. Reward: on held-out prompts (asked by users kept out of training), the candidate's mean
   reward beats the adapter serving now (or the base model) by more than `min_reward_gain`
   and by more than `z` standard errors of the per-prompt difference. Both policies answer
   the same prompts with the same sampling seeds; reward = the normalised reward-model score,
   minus the missing-EOS penalty for answers cut off without EOS (what PPO optimised).
2. KL: the candidate's mean KL to the reference per answer, Σ_t log π/π_ref over its own samples
   (the first `kl_answers_per_prompt` of each held-out prompt's), is at most `RLHF_KL_BUDGET`. The
   reference is the round's supervised policy when it learned users' corrected answers first (DPO's
   recipe takes the SFT policy as the reference), else the nearest of the version it starts from and
   its ancestors that learned corrections or is the starting adapter `policy@v0`, else the base model
   (learner/round.py `reference_adapter_dir`).
3. Language, when the reference is neither `policy@v0` nor the base: the KL budget then bounds the
   distance from a policy whose language no one measured against the base, so the gate checks it
   directly: perplexity on the fixed reference text (learner/reference_text.py) at most
   `max_perplexity_rise` above the base model's.
4. Reward model: its held-out accuracy is at least `RLHF_RM_ACCURACY_FLOOR`: the lower of
   pairwise accuracy (when there are `min_heldout_pairs` held-out pairs) and thumbs AUC (when
   there are `min_heldout_thumbs` ups and as many downs), each weighted by its held-out user's
   capped share. Not enough held-out feedback: no publishing, and the round stops before PPO
   (`UNMEASURED`): a candidate that cannot pass is not worth training. The learner does not
   even start a round until the held-out feedback is enough (`can_measure`, learner/main.py).

Otherwise the candidate is kept (data dir, `candidates/round-N`) with every failed reason.
"""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass, field

UNMEASURED = "not enough held-out feedback to measure the reward model"


@dataclass
class GateConfig:
    """How the gate measures (the thresholds it enforces are operator settings: kl_budget, rm_accuracy_floor)."""

    max_prompts: int = 64
    """Held-out prompts evaluated (distinct, drawn across held-out users by their capped weights)."""
    min_prompts: int = 4
    """Fewer held-out prompts than this: not enough evidence, do not publish."""
    samples_per_prompt: int = 4
    """Answers per prompt and policy, averaged per prompt before comparing."""
    kl_answers_per_prompt: int = 1
    """Answers per prompt whose KL to the reference the gate measures (the first of the candidate's).
    Most of the KL's variance is between prompts: on 47 questions (default model, 4 answers each), the
    standard error of the mean KL over one answer each was 1.28 times that over all four, for a
    quarter of the cost (docs/learner.md, "When an adapter is published")."""
    min_reward_gain: float = 0.0
    """Smallest mean reward gain (normalised units: std of the current policy's rewards)."""
    z: float = 1.0
    """The gain must also exceed z standard errors of the per-prompt differences."""
    min_heldout_pairs: int = 8
    """Held-out pairs needed for pairwise accuracy to count."""
    min_heldout_thumbs: int = 4
    """Held-out ups (and as many downs) needed for the thumbs AUC to count."""
    max_perplexity_rise: float = 0.10
    """Largest relative rise of perplexity on the reference text over the base model's, checked when
    the round's reference is neither `policy@v0` nor the base (condition 3 above)."""
    seed: int = 1234
    """Sampling seed, the same for candidate and serving policy."""


@dataclass
class GateDecision:
    publish: bool
    reasons: list[str] = field(default_factory=list)  # why not (empty when publishing)
    metrics: dict = field(default_factory=dict)


def can_measure(pairs: int, ups: int, downs: int, cfg: GateConfig) -> bool:
    """Whether held-out feedback of these counts lets the gate measure the reward model at all."""
    return pairs >= cfg.min_heldout_pairs or min(ups, downs) >= cfg.min_heldout_thumbs


def reward_model_accuracy(rm_metrics: dict, cfg: GateConfig) -> float | None:
    """The reward model's held-out accuracy the gate uses, or None when there is too little held-out feedback."""
    measures = []
    if rm_metrics.get("rm_heldout_pairs", 0) >= cfg.min_heldout_pairs:
        measures.append(rm_metrics["rm_pairwise_accuracy"])
    ups = rm_metrics.get("rm_heldout_ups", 0)
    downs = rm_metrics.get("rm_heldout_thumbs", 0) - ups
    if min(ups, downs) >= cfg.min_heldout_thumbs and not math.isnan(rm_metrics.get("rm_thumbs_auc", math.nan)):
        measures.append(rm_metrics["rm_thumbs_auc"])
    return min(measures) if measures else None


def per_prompt_means(rewards: list[float], n_prompts: int, per_prompt: int) -> list[float]:
    return [statistics.fmean(rewards[i * per_prompt:(i + 1) * per_prompt]) for i in range(n_prompts)]


def decide(candidate: list[float], serving: list[float], kl_per_answer: list[float], rm_accuracy: float | None,
           *, kl_budget: float, rm_accuracy_floor: float, cfg: GateConfig,
           perplexity: tuple[float, float] | None = None) -> GateDecision:
    """candidate/serving: mean reward per held-out prompt (same prompts, same order); perplexity:
    (candidate's, base's) on the reference text when the language is checked (condition 3), else None."""
    reasons = []
    n = min(len(candidate), len(serving))
    diffs = [c - s for c, s in zip(candidate, serving)]
    gain = statistics.fmean(diffs) if diffs else math.nan
    se = statistics.stdev(diffs) / math.sqrt(n) if n > 1 else math.inf
    kl = statistics.fmean(kl_per_answer) if kl_per_answer else math.nan
    kl_se = statistics.stdev(kl_per_answer) / math.sqrt(len(kl_per_answer)) if len(kl_per_answer) > 1 else math.nan
    metrics = {"gate_prompts": n, "reward_candidate": statistics.fmean(candidate) if candidate else math.nan,
               "reward_serving": statistics.fmean(serving) if serving else math.nan,
               "reward_gain": gain, "reward_gain_se": se, "kl_candidate": kl, "kl_candidate_se": kl_se,
               "rm_accuracy": rm_accuracy if rm_accuracy is not None else math.nan,
               "kl_budget": kl_budget, "rm_accuracy_floor": rm_accuracy_floor}
    if n < cfg.min_prompts:
        reasons.append(f"only {n} held-out prompts (need {cfg.min_prompts})")
    elif not (gain > cfg.min_reward_gain and gain > cfg.z * se):
        reasons.append(f"reward gain {gain:+.3f} ± {se:.3f} over the serving policy is not enough "
                       f"(need > {cfg.min_reward_gain:g} and > {cfg.z:g} standard errors)")
    if math.isnan(kl) or kl > kl_budget:
        reasons.append(f"KL to the reference {kl:.3f} nats per answer exceeds the budget {kl_budget:g}")
    if perplexity is not None:
        rise = perplexity[0] / perplexity[1] - 1
        metrics["perplexity_rise"] = rise
        if not rise <= cfg.max_perplexity_rise:
            reasons.append(f"perplexity on the reference text {perplexity[0]:.2f} is {100 * rise:+.1f}% over the base "
                           f"model's {perplexity[1]:.2f} (at most {100 * cfg.max_perplexity_rise:+g}%)")
    if rm_accuracy is None:
        reasons.append(UNMEASURED)
    elif rm_accuracy < rm_accuracy_floor:
        reasons.append(f"reward-model held-out accuracy {rm_accuracy:.3f} is below the floor {rm_accuracy_floor:g}")
    return GateDecision(not reasons, reasons, metrics)
