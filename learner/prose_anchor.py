"""The prose anchor: every policy update also keeps the policy's next-token distributions on the base
model's own plain text close to the base's, so a taste learned in chat answers does not wear down
the model's general language (its perplexity on prose).

    texts  = sample_prose(engine, tokenizer, n, max_tokens, seed)   # the base model writes, from <bos>
    anchor = ProseAnchor(policy, texts, batch, free_kl)              # the base's top-k at every position, once
    loss   = algorithm_loss + c · max(0, anchor KL - free_kl)        # in PolicyTrainer.optimise
    anchor.restarted()                                               # the same texts for the next round

The texts are sampled from the base model (no adapter, no chat template, temperature 1) starting
from the beginning-of-text token only: what the model writes when nothing asks it anything. At
every position of them

    anchor KL = mean over the batch's positions of the KL from the base's next-token distribution to
                π's, both coarsened to the base's top-k tokens and the rest (learner/coarse_cross_entropy.py)

whose gradient is that of KL(base || π) on the base model's prose: the "pretraining mix" of
InstructGPT (Ouyang et al. 2022, arXiv 2203.02155) with the base model standing in for the
pretraining data nobody ships with it, distilled from the base's whole next-token distribution
rather than from its sampled tokens. Its gradient is zero while the policy writes prose as the base
does, so it adds no noise to an algorithm's updates and cannot teach the policy the texts by heart.
`anchor.kl` is the mean coarse KL per position over the last pass: 0 at the base, never negative.

Drift within `free_kl` nats per position (a batch's mean) costs nothing: the anchor is there to
keep the language, not to forbid the LoRA any change to it. 0.02 nats is a rise of about 2 % in
perplexity on the base's own prose, against the 10 % a published adapter may cost; a policy that
starts further away (a starting adapter fine-tuned on chats) is pulled back from the first update.
"""

from __future__ import annotations

import copy

import torch

from learner.coarse_cross_entropy import coarse_cross_entropy, teacher_top_k
from learner.policy_model import trimmed
from learner.tokenization import pad_prompt_response, position_ids

TOP_K = 64
"""Tokens of the base's distribution kept at each position (the rest is one bucket)."""


def sample_prose(engine, tokenizer, n: int, max_tokens: int, seed: int) -> list[list[int]]:
    """n texts the base model writes from its beginning-of-text token (EOS or `max_tokens` ends one),
    each as [bos] + its tokens; a text the model ended at once (nothing after [bos]) is left out."""
    start = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id
    samples = engine.generate([[start]] * n, temperature=1.0, max_tokens=max_tokens, seed=seed)
    eos = tokenizer.eos_token_id
    texts = [[start] + [t for t in s.response_ids if t != eos] for s in samples]
    return [t for t in texts if len(t) >= 2]


class ProseAnchor:
    def __init__(self, policy, texts: list[list[int]], batch: int, free_kl: float = 0.0):
        if not texts:
            raise ValueError("the prose anchor needs at least one text of two tokens or more")
        self.texts, self._next, self.free_kl = texts, 0, free_kl
        self.chunks = [list(range(i, min(i + batch, len(texts)))) for i in range(0, len(texts), batch)]
        self.kls: list[float] = []
        lm = policy.get_base_model()
        self.cap = getattr(lm.config, "final_logit_softcapping", None)
        policy.eval()
        with torch.no_grad(), policy.disable_adapter():
            self.base = [teacher_top_k(lm.get_output_embeddings()(self._hidden(policy, rows)), TOP_K, self.cap)
                         for rows in self.chunks]

    def restarted(self) -> ProseAnchor:
        """The same texts and base distributions (they depend on the base model only), from the first
        batch, with no KL estimates yet: for the next round's policy."""
        fresh = copy.copy(self)
        fresh._next, fresh.kls = 0, []
        return fresh

    def _hidden(self, policy, rows: list[int]) -> torch.Tensor:
        """The decoder's last hidden state at every position that predicts a token of these texts: (N, H)."""
        ids, mask, _, tmask, P = pad_prompt_response([self.texts[r][:1] for r in rows],
                                                     [self.texts[r][1:] for r in rows], 0)
        ids, mask, P = trimmed(ids, mask, P, torch.arange(len(rows)))
        tmask = tmask[:, : ids.shape[1] - P].bool()
        h = policy.get_base_model().get_decoder()(input_ids=ids, attention_mask=mask, position_ids=position_ids(mask),
                                                  use_cache=False).last_hidden_state
        return h[:, P - 1: -1][tmask]

    def loss(self, policy) -> torch.Tensor:
        """The policy's mean coarse KL per position from the base on the next batch of texts (cycling),
        less `free_kl`, with gradients; 0 without a graph while the drift is within `free_kl`. The
        batch's KL is added to `kls`."""
        k = self._next % len(self.chunks)
        self._next += 1
        ids, q, entropy = self.base[k]
        ce = coarse_cross_entropy(self._hidden(policy, self.chunks[k]), policy.get_base_model().get_output_embeddings(),
                                  ids, q, self.cap)
        kl = (ce - entropy).mean()
        self.kls.append(kl.item())
        if self.kls[-1] <= self.free_kl:
            return torch.zeros(())  # no graph: the update's backward pass skips the anchor
        return kl - self.free_kl

    @property
    def kl(self) -> float:
        """KL(base || policy) per position (coarsened), the mean of the estimates of the last pass over the
        texts (NaN before any update)."""
        last = self.kls[-len(self.chunks):]
        return sum(last) / len(last) if last else float("nan")
