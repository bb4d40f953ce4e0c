"""The prose anchor: every policy update also keeps the base model's own plain text likely, so a taste
learned in chat answers does not wear down the model's general language (its perplexity on prose).

    texts  = sample_prose(engine, tokenizer, n, max_tokens, seed)   # the base model writes, from <bos>
    anchor = ProseAnchor(policy, texts, batch)                       # base log-probs once, without gradients
    loss   = algorithm_loss + c · anchor.loss(policy)                # in PolicyTrainer.optimise
    anchor.restarted()                                               # the same texts for the next round

The texts are sampled from the base model (no adapter, no chat template, temperature 1) starting
from the beginning-of-text token only: what the model writes when nothing asks it anything. On them

    anchor.loss = mean over the batch's tokens of -log π(t | the tokens before it)

whose gradient is that of KL(base || π) estimated on the base model's own samples (the base's
log-probs do not depend on the policy), the "pretraining mix" of InstructGPT (Ouyang et al. 2022,
arXiv 2203.02155) with the base model standing in for the pretraining data nobody ships with it.
`anchor.kl` is the running estimate of that KL per token, mean(log π_base - log π) over the tokens
the updates saw: 0 when the policy writes prose as the base does.
"""

from __future__ import annotations

import copy

import torch

from learner.policy_model import answer_logprobs, trimmed
from learner.tokenization import pad_prompt_response


def sample_prose(engine, tokenizer, n: int, max_tokens: int, seed: int) -> list[list[int]]:
    """n texts the base model writes from its beginning-of-text token (EOS or `max_tokens` ends one),
    each as [bos] + its tokens; a text the model ended at once (nothing after [bos]) is left out."""
    start = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id
    samples = engine.generate([[start]] * n, temperature=1.0, max_tokens=max_tokens, seed=seed)
    eos = tokenizer.eos_token_id
    texts = [[start] + [t for t in s.response_ids if t != eos] for s in samples]
    return [t for t in texts if len(t) >= 2]


class ProseAnchor:
    def __init__(self, policy, texts: list[list[int]], batch: int):
        if not texts:
            raise ValueError("the prose anchor needs at least one text of two tokens or more")
        self.texts, self._next = texts, 0
        self.chunks = [list(range(i, min(i + batch, len(texts)))) for i in range(0, len(texts), batch)]
        self.kls: list[float] = []
        policy.eval()
        with torch.no_grad(), policy.disable_adapter():
            self.base = [self._logprobs(policy, rows) for rows in self.chunks]

    def restarted(self) -> ProseAnchor:
        """The same texts and base log-probs (they depend on the base model only), from the first batch,
        with no KL estimates yet: for the next round's policy."""
        fresh = copy.copy(self)
        fresh._next, fresh.kls = 0, []
        return fresh

    def _logprobs(self, policy, rows: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
        """(log π of every token after the first (b, T), its mask (b, T)) of these texts."""
        ids, mask, _, tmask, P = pad_prompt_response([self.texts[r][:1] for r in rows],
                                                     [self.texts[r][1:] for r in rows], 0)
        ids, mask, P = trimmed(ids, mask, P, torch.arange(len(rows)))
        tmask = tmask[:, : ids.shape[1] - P]
        return answer_logprobs(policy, ids, mask, P, 1.0) * tmask, tmask

    def loss(self, policy) -> torch.Tensor:
        """Mean NLL per token of the policy on the next batch of texts (cycling), with gradients; the
        batch's KL estimate is added to `kls`."""
        k = self._next % len(self.chunks)
        self._next += 1
        logp, tmask = self._logprobs(policy, self.chunks[k])
        base, _ = self.base[k]
        n = tmask.sum().clamp(min=1)
        self.kls.append(((base - logp.detach()) * tmask).sum().item() / n.item())
        return -(logp * tmask).sum() / n

    @property
    def kl(self) -> float:
        """KL(base || policy) per token, the mean of the estimates of the last pass over the texts (NaN
        before any update)."""
        last = self.kls[-len(self.chunks):]
        return sum(last) / len(last) if last else float("nan")
