"""A candidate's offline figures, measured by the round beside the gate and kept in its manifest.

    metrics.update(offline_figures(trainer.policy, tokenizer, cand_samples, serv_samples,
                                   cand_rewards, serv_rewards, max_len))

What a reader compares version by version (`rlhf adapters status`, the learner's /metrics as
`rlhf_version_offline{version,figure}`, the dashboard):
- perplexity on a fixed reference text (learner/reference_text.py), exp(mean token NLL), of the
  candidate, of the base model (the same weights with the LoRA off) and of the round's reference
  adapter where it has one (the starting adapter): how far the version has drifted from fluent
  plain prose, beside the gate's KL on its own answers;
- mean answer length in tokens of the candidate and of the serving version on the gate's samples;
- A/B win rate against the parent (the version serving when the round started): the share of
  held-out prompts on which the round's reward model scores the candidate's answers above the
  parent's (per-prompt mean rewards; a tie counts half), with a 95 % Wilson interval over prompts.
The gate's reward and KL figures (reward_candidate, reward_serving, kl_candidate) are the others.
"""

from __future__ import annotations

import math
import statistics

import torch

from learner.policy_model import REFERENCE, answer_logprobs, as_reference
from learner.reference_text import REFERENCE_PARAGRAPHS
from rlhf.intervals import wilson_interval


def perplexity(token_logprobs: list[float]) -> float:
    """exp(mean negative log-likelihood per token): the number of equally likely tokens the model was
    choosing among, on average. NaN without tokens."""
    return math.exp(-statistics.fmean(token_logprobs)) if token_logprobs else math.nan


def win_rate(candidate: list[float], parent: list[float]) -> dict[str, float]:
    """A/B win rate of per-prompt rewards (same prompts, same order): wins + ties/2 over prompts, 95 %."""
    n = min(len(candidate), len(parent))
    wins = sum(1.0 if c > p else 0.5 if c == p else 0.0 for c, p in zip(candidate, parent))
    low, high = wilson_interval(wins, n)
    return {"win_rate_vs_parent": wins / n if n else math.nan, "win_rate_vs_parent_low": low,
            "win_rate_vs_parent_high": high, "win_rate_prompts": n}


def mean_answer_tokens(samples) -> float:
    """Mean generated tokens per answer (EOS included, as serving counts completion tokens)."""
    return statistics.fmean(len(s.response_ids) for s in samples) if samples else math.nan


def reference_ids(tokenizer, max_len: int) -> list[list[int]]:
    """Each reference paragraph as ids: <bos> (when the model has one) then its tokens, cut to `max_len`."""
    rows = []
    for text in REFERENCE_PARAGRAPHS:
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        if tokenizer.bos_token_id is not None:
            ids = [tokenizer.bos_token_id] + ids
        rows.append(ids[:max_len])
    return rows


@torch.no_grad()
def reference_logprobs(policy, rows: list[list[int]]) -> list[float]:
    """log π(token | the tokens before it in its paragraph) of every reference token after the first,
    one paragraph per pass (the LM head's logits buffer stays the size of one paragraph)."""
    policy.eval()
    out: list[float] = []
    for ids in rows:
        if len(ids) < 2:
            continue
        t = torch.tensor([ids])
        out += answer_logprobs(policy, t, torch.ones_like(t), 1, 1.0)[0].tolist()  # (T-1,)
    return out


def reference_perplexity(policy, tokenizer, max_len: int) -> dict[str, float]:
    """Perplexity of the policy (a PEFT model) on the reference text with its LoRA on, off (the base),
    and, where the round has one, of its reference adapter (the starting adapter, e.g. policy@v0)."""
    rows = reference_ids(tokenizer, max_len)
    candidate = reference_logprobs(policy, rows)
    with policy.disable_adapter():
        base = reference_logprobs(policy, rows)
    out = {"perplexity_candidate": perplexity(candidate), "perplexity_base": perplexity(base),
           "reference_tokens": len(candidate)}
    if REFERENCE in policy.peft_config:
        with as_reference(policy):
            out["perplexity_reference"] = perplexity(reference_logprobs(policy, rows))
    return out


def offline_figures(policy, tokenizer, candidate_samples, serving_samples, candidate_rewards: list[float],
                    serving_rewards: list[float], max_len: int) -> dict[str, float]:
    """Every offline figure of a candidate (the module docstring), as the round's metrics."""
    return {**reference_perplexity(policy, tokenizer, max_len),
            "answer_tokens_candidate": mean_answer_tokens(candidate_samples),
            "answer_tokens_serving": mean_answer_tokens(serving_samples),
            **win_rate(candidate_rewards, serving_rewards)}
