"""DPO on a LoRA adapter: the policy learns straight from logged preferences, no reward model, no rollouts.

    policy     = frozen base + trainable policy LoRA (starts from the adapter serving now)
    reference  = the starting adapter (frozen), or the base with the adapter off (learner/policy_model.py)
    data       = the round's training feedback (learner/store.py `feedback_examples`), each example
                 with the round's capped weight (no user or client above its share):
                 - a pairwise choice: (prompt, chosen y_w, rejected y_l), weight w
                 - thumbs on answers to the same prompt: every up answer with every down answer is
                   one pair, weight ½(w_up / n_down + w_down / n_up), so the pairs of one prompt carry
                   half of its thumbs' weight (a pair of thumbs says about as much as one choice)
    answers    = logged texts tokenised as the reward model reads them (EOS if serving stopped on it)

The loss, after Rafailov et al., "Direct Preference Optimization: Your Language Model is Secretly
a Reward Model" (2023, arXiv 2305.18290):

    logπ(y|x) = Σ_t log π(y_t | x, y_<t) over the answer's tokens (padding ignored), at temperature T
    h         = (logπ(y_w) - logπ_ref(y_w)) - (logπ(y_l) - logπ_ref(y_l))
    L_DPO     = Σ_i w_i · -log σ(β h_i) / Σ_i w_i          over a minibatch of pairs
    β h       = the implicit-reward margin: > 0 when the policy prefers y_w more than the reference does

The reference log-probs of every pair are computed once, without gradients, when the trainer
starts. One `step` is `examples_per_step` pairs (the data in a shuffled cycle) in minibatches.

The round's stats, for DPO (`step` returns them; round.py logs them as for PPO):
    score           mean implicit-reward margin β h over the step's pairs (before its updates)
    kl              mean logπ(y_w) - logπ_ref(y_w) of the chosen answers: how far the policy moved on
                    logged text (not a sampled KL: the gate measures that on its own samples)
    kl_coef         β (fixed)
    policy_loss     mean L_DPO of the step's minibatches
    clipfrac        0: nothing is clipped
    eos_fraction    share of the step's answers (chosen and rejected) that end with EOS
    response_tokens mean answer length of the step's answers, in tokens
    time_rollout    0: no rollouts;  time_score: the reference pass (first step only);  time_update
`heldout_accuracy` is the share of held-out pairs with β h > 0 (the round's `dpo_heldout_accuracy`).
"""

from __future__ import annotations

import logging
import math
import time
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from learner.logged_feedback_trainer import LoggedFeedbackTrainer
from learner.policy_config import PolicyConfig
from learner.policy_model import answer_logprobs, logprobs_with_reference, trimmed
from learner.store import prompt_key
from learner.tokenization import encode_feedback_answer, pad_prompt_response

log = logging.getLogger(__name__)

NO_PAIRS = ("no preference pairs: no pairwise choice, no corrected answer and no prompt with both an up and a "
            "down thumb in the round's training feedback")


class NoPreferencePairs(ValueError):
    """DPO was given feedback that forms no pair: the round has nothing to train on."""


@dataclass
class DPOConfig(PolicyConfig):
    """Hyperparameters of DPO on the policy LoRA (the learner's, not the operator's); KTO's too
    (learner/kto.py), where an example is one labelled answer instead of a pair."""

    beta: float = 0.3
    """β of the implicit reward β (logπ - logπ_ref) (larger: stays closer to the reference). On the
    default model, β 0.1 took the colour taste as far (+29 points) but past the KL budget (5.4);
    0.3 reached it at KL 3.8 (README)."""
    examples_per_step: int = 64
    """Examples (DPO: pairs) per iteration, taken from the training examples in a shuffled cycle."""
    minibatch_size: int = 8
    """Examples per optimiser step (DPO: 2 sequences each; KTO: 1, plus 1 mismatched without gradients)."""
    max_length: int = 512
    """Longest prompt + answer in tokens (the answer first cut to it, then the prompt from the left)."""
    kl_backoffs_after_supervised: int | None = 1
    """After the supervised steps on corrections, one undone update halves the learning rate and the next
    ends the iterations. On the default model's colour and place logs with corrections, a third attempt at
    a quarter of the rate was undone too, and it cost 36-46 s of the round (an update and a KL check;
    README). Without corrections a third attempt was once kept, so rounds without them keep two."""


# ------------------------------------------------------------------------------------------
# The data: feedback examples -> weighted preference pairs (pure; tests check them by hand)
# ------------------------------------------------------------------------------------------
@dataclass
class PreferencePair:
    messages: list[dict]
    chosen: str
    chosen_finish: str | None
    rejected: str
    rejected_finish: str | None
    weight: float


def preference_pairs(examples: list[dict], weights: list[float] | None = None) -> list[PreferencePair]:
    """Pairwise choices as they are, plus thumbs paired up and down within one prompt (same prompt key).

    Thumbs of one prompt: each of the n_up up answers with each of the n_down down answers, weight
    ½(w_up / n_down + w_down / n_up). Thumbs with no opposite thumb on the same prompt make no pair."""
    weights = [1.0] * len(examples) if weights is None else weights
    pairs: list[PreferencePair] = []
    thumbs: dict[str, tuple[list, list]] = defaultdict(lambda: ([], []))  # prompt key -> (downs, ups)
    for ex, w in zip(examples, weights):
        if ex["type"] == "pairwise":
            pairs.append(PreferencePair(ex["messages"], ex["chosen"], ex["chosen_finish"], ex["rejected"],
                                        ex["rejected_finish"], w))
        elif ex["type"] == "thumbs":
            thumbs[prompt_key(ex["messages"])][int(ex["label"])].append((ex, w))
    for downs, ups in thumbs.values():
        for up, w_up in ups:
            for down, w_down in downs:
                pairs.append(PreferencePair(up["messages"], up["response"], up["finish_reason"], down["response"],
                                            down["finish_reason"], 0.5 * (w_up / len(downs) + w_down / len(ups))))
    return pairs


# ------------------------------------------------------------------------------------------
# The math (pure functions on tensors; tests compare them with hand-computed values)
# ------------------------------------------------------------------------------------------
def sequence_logprob(token_logprobs: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """logπ(y|x) = Σ_t log π(y_t | x, y_<t) over real answer tokens: (B, R), (B, R) -> (B,)."""
    return (token_logprobs * mask).sum(1)


def dpo_loss(logp_w: torch.Tensor, logp_l: torch.Tensor, ref_w: torch.Tensor, ref_l: torch.Tensor, beta: float,
             weights: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Σ w_i · -log σ(β h_i) / Σ w_i with h = (logπ(y_w) - logπ_ref(y_w)) - (logπ(y_l) - logπ_ref(y_l)).

    All inputs (B,) sequence log-probs and weights. Returns (loss, β h (B,))."""
    margin = beta * ((logp_w - ref_w) - (logp_l - ref_l))                # (B,)
    return (weights * -F.logsigmoid(margin)).sum() / weights.sum(), margin


# ------------------------------------------------------------------------------------------
# Padded answer batches (shared with learner/kto.py)
# ------------------------------------------------------------------------------------------
def encode_answers(tokenizer, answers: list[tuple[list[dict], str, str | None]], max_length: int
                   ) -> tuple[list[list[int]], list[list[int]]]:
    """(messages, text, finish_reason) of logged answers -> (prompt ids, answer ids), each prompt encoded once."""
    cache: dict[tuple, tuple[list[int], list[int]]] = {}
    prompts, out = [], []
    for messages, text, finish in answers:
        key = (prompt_key(messages), text, finish)
        if key not in cache:
            cache[key] = encode_feedback_answer(tokenizer, messages, text, finish, max_length)
        prompts.append(cache[key][0])
        out.append(cache[key][1])
    return prompts, out


def both_answers(pairs: list[PreferencePair]) -> list[tuple[list[dict], str, str | None]]:
    """The chosen answers of the pairs, then their rejected answers (2N, for `encode_answers`)."""
    return ([(p.messages, p.chosen, p.chosen_finish) for p in pairs]
            + [(p.messages, p.rejected, p.rejected_finish) for p in pairs])


def answer_logprob_sums(policy, prompts: list[list[int]], answers: list[list[int]], pad_id: int,
                        temperature: float) -> torch.Tensor:
    """logπ(y|x) of each answer with gradients, one padded batch: (B,)."""
    ids, mask, _, rmask, P = pad_prompt_response(prompts, answers, pad_id)
    ids, mask, P = trimmed(ids, mask, P, torch.arange(len(prompts)))
    rmask = rmask[:, : ids.shape[1] - P]
    return sequence_logprob(answer_logprobs(policy, ids, mask, P, temperature, rmask), rmask)   # (B,)


@torch.no_grad()
def logprob_sums_with_reference(policy, prompts: list[list[int]], answers: list[list[int]], pad_id: int,
                                chunk: int, temperature: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(logπ(y|x), logπ_ref(y|x)) of each answer without gradients, `chunk` rows at a time: (B,), (B,)."""
    if not prompts:
        return torch.zeros(0), torch.zeros(0)
    ids, mask, _, rmask, P = pad_prompt_response(prompts, answers, pad_id)
    lp, ref = logprobs_with_reference(policy, ids, mask, P, rmask, chunk, temperature)
    return sequence_logprob(lp, rmask), sequence_logprob(ref, rmask)


# ------------------------------------------------------------------------------------------
# Trainer (PPOTrainer's public interface: the round runs any of them)
# ------------------------------------------------------------------------------------------
class DPOTrainer(LoggedFeedbackTrainer):
    def __init__(self, model_path: Path | str, tokenizer, cfg: DPOConfig, examples: list[dict],
                 weights: list[float] | None = None, *, init_adapter: Path | str | None = None,
                 reference_adapter: Path | str | None = None, workdir: Path | str | None = None):
        pairs = preference_pairs(examples, weights)
        if not pairs:
            raise NoPreferencePairs(f"DPO has {NO_PAIRS}")
        self.init_policy(model_path, tokenizer, cfg, init_adapter, reference_adapter=reference_adapter,
                         workdir=workdir)
        self.init_optimizer(self.policy)
        self._order: list[int] = []
        t = time.perf_counter()
        n = len(pairs)
        prompts, answers = encode_answers(tokenizer, both_answers(pairs), cfg.max_length)
        self.prompts, self.chosen, self.rejected = prompts[:n], answers[:n], answers[n:]
        self.weights = torch.tensor([p.weight for p in pairs], dtype=torch.float32)       # (N,)
        self.policy.eval()
        _, ref = logprob_sums_with_reference(self.policy, prompts, answers, self.pad_id, cfg.forward_batch_size,
                                             cfg.temperature)
        self.ref_chosen, self.ref_rejected = ref[:n], ref[n:]                                # (N,), (N,)
        self._time_reference = time.perf_counter() - t
        log.info("DPO: %d pairs (%d from pairwise choices), reference log-probs in %.1f s", n,
                 sum(e["type"] == "pairwise" for e in examples), self._time_reference)

    def step(self, engine=None, prompts=None) -> dict:
        """One iteration: `examples_per_step` logged pairs in minibatches. `engine` and `prompts` are unused
        (the round passes them to every algorithm; DPO samples nothing)."""
        cfg = self.cfg
        t0 = time.perf_counter()
        self.policy.train()
        idx = self.next_indices(min(cfg.examples_per_step, len(self.weights)))
        stats = defaultdict(list)
        for i in range(0, len(idx), cfg.minibatch_size):
            mb = idx[i: i + cfg.minibatch_size]
            b = len(mb)
            logp = answer_logprob_sums(self.policy, [self.prompts[j] for j in mb] * 2,
                                       [self.chosen[j] for j in mb] + [self.rejected[j] for j in mb],
                                       self.pad_id, cfg.temperature)                          # (2b,)
            loss, margin = dpo_loss(logp[:b], logp[b:], self.ref_chosen[mb], self.ref_rejected[mb], cfg.beta,
                                    self.weights[mb])
            self.optimise(loss)
            stats["policy_loss"].append(loss.item())
            stats["score"] += margin.tolist()
            stats["kl"] += (logp[:b] - self.ref_chosen[mb]).tolist()
        return {**self.step_stats(stats, [self.chosen[j] for j in idx] + [self.rejected[j] for j in idx], t0),
                "pairs": len(idx)}

    def heldout_accuracy(self, examples: list[dict]) -> float:
        """Share of held-out pairs (`preference_pairs` of these examples) whose implicit-reward margin
        β h is > 0; NaN when they form no pair."""
        return implicit_reward_accuracy(self.policy, self.tokenizer, examples, self.cfg)


def implicit_reward_accuracy(policy, tokenizer, examples: list[dict], cfg) -> float:
    """Share of the pairs of these feedback examples where the policy raises the chosen answer's
    log-prob over the reference's more than the rejected one's (h > 0, so β h > 0 for any β > 0)."""
    pairs = preference_pairs(examples)
    if not pairs:
        return math.nan
    n = len(pairs)
    prompts, answers = encode_answers(tokenizer, both_answers(pairs), cfg.max_length)
    policy.eval()
    lp, ref = logprob_sums_with_reference(policy, prompts, answers, tokenizer.pad_token_id, cfg.forward_batch_size,
                                          cfg.temperature)
    h = (lp[:n] - ref[:n]) - (lp[n:] - ref[n:])
    return (h > 0).float().mean().item()
