"""Grouping sequences by length: every sequence in exactly one group, the cost rule by hand, and
rewards (reward model) and answer log-probs (policy) computed in groups or without the columns
that are padding in every row equal those of one batch padded to the longest, and the LM head run
on real answer tokens only gives the same log-probs and gradients as on every position (tiny model)."""

from __future__ import annotations

import random

import torch

from learner.policy_model import answer_logprobs, by_length, load_policy, trimmed
from learner.ppo import PPOConfig
from learner.reward import RewardConfig, RewardModel
from learner.tokenization import length_buckets, load_tokenizer, pad_prompt_response


def random_pairs(n: int, seed: int) -> list[tuple[list[int], list[int]]]:
    rng = random.Random(seed)
    return [([2] + [rng.randint(5, 400) for _ in range(rng.randint(3, 12))],
             [rng.randint(5, 400) for _ in range(rng.randint(1, 40))]) for _ in range(n)]


def test_groups_cover_every_sequence_once():
    rng = random.Random(0)
    lengths = [rng.randint(1, 60) for _ in range(37)]
    for cost in (0, 8, 64, 10_000):
        for cap in (None, 5):
            groups = length_buckets(lengths, cost, cap)
            assert sorted(i for g in groups for i in g) == list(range(len(lengths)))
            if cap:
                assert max(map(len, groups)) <= cap
            # contiguous in length: every length of a group is >= every length of the group before
            for a, b in zip(groups, groups[1:]):
                assert max(lengths[i] for i in a) <= min(lengths[i] for i in b)


def test_cost_rule_by_hand():
    lengths = [10, 10, 50, 50]
    # one group: 4 rows x 50 + c; two groups: 2 x 10 + 2 x 50 + 2c; splitting saves 80 - c
    assert length_buckets(lengths, 79) == [[0, 1], [2, 3]]
    assert length_buckets(lengths, 81) == [[0, 1, 2, 3]]
    assert length_buckets([], 5) == []
    assert length_buckets([3, 1, 2], 1_000) == [[1, 2, 0]]  # shortest first


def test_grouped_rewards_equal_one_padded_batch(tiny_model_path):
    tok = load_tokenizer(tiny_model_path)
    rm = RewardModel.create(tiny_model_path, RewardConfig()).eval()
    pairs = random_pairs(12, seed=1)
    with torch.no_grad():
        one_batch = rm.raw_pairs(pairs, tok.pad_token_id, bucket_cost=10**9)
        grouped = rm.raw_pairs(pairs, tok.pad_token_id, bucket_cost=0)
        alone = torch.cat([rm.raw_pairs([p], tok.pad_token_id, bucket_cost=0) for p in pairs])
    assert len(length_buckets([len(p) + len(a) for p, a in pairs], 0)) > 1
    torch.testing.assert_close(grouped, one_batch, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(grouped, alone, rtol=1e-4, atol=1e-5)


def test_trimmed_rows_give_the_same_answer_logprobs(tiny_model_path):
    tok = load_tokenizer(tiny_model_path)
    policy = load_policy(tiny_model_path, PPOConfig()).eval()
    pairs = random_pairs(10, seed=2)
    ids, mask, _, rmask, P = pad_prompt_response([p for p, _ in pairs], [a for _, a in pairs], tok.pad_token_id)
    with torch.no_grad():
        full = answer_logprobs(policy, ids, mask, P, 1.0) * rmask
        chunks = by_length(mask, 3)
        assert sorted(torch.cat(chunks).tolist()) == list(range(10))
        for rows in chunks:
            t_ids, t_mask, t_P = trimmed(ids, mask, P, rows)
            assert t_ids.shape[1] < ids.shape[1] or len(rows) == 0
            part = answer_logprobs(policy, t_ids, t_mask, t_P, 1.0)
            R = part.shape[1]
            assert R == int(rmask[rows].sum(1).max())
            torch.testing.assert_close(part * rmask[rows, :R], full[rows, :R], rtol=1e-4, atol=1e-4)


def test_the_head_on_real_answer_tokens_only_gives_the_same_logprobs_and_gradients(tiny_model_path):
    tok = load_tokenizer(tiny_model_path)
    policy = load_policy(tiny_model_path, PPOConfig())
    pairs = random_pairs(6, seed=3)
    ids, mask, _, rmask, P = pad_prompt_response([p for p, _ in pairs], [a for _, a in pairs], tok.pad_token_id)
    assert (rmask == 0).any()                                          # some answer is padded
    params = [p for p in policy.parameters() if p.requires_grad]

    def logprobs_and_grads(answer_mask):
        policy.zero_grad()
        lp = answer_logprobs(policy, ids, mask, P, 0.7, answer_mask)
        (lp * rmask).sum().backward()
        return lp.detach(), [p.grad.clone() for p in params]

    every_position, grads = logprobs_and_grads(None)
    real_only, real_grads = logprobs_and_grads(rmask)
    assert torch.equal(real_only[rmask == 0], torch.zeros(int((rmask == 0).sum())))
    torch.testing.assert_close(real_only, every_position * rmask, rtol=1e-4, atol=1e-5)
    for g, g_real in zip(grads, real_grads):
        torch.testing.assert_close(g_real, g, rtol=1e-3, atol=1e-6)
