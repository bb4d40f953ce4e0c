"""RLOO on the tiny model with a real vLLM engine: one step trains the policy LoRA on k answers per
prompt, and a round with RLHF_LEARNER_ALGORITHM=rloo learns a hidden preference and publishes it.

The simulated user prefers answers containing "happy" (the tiny model writes it in ~13 % of its
answers), as in test_learning.py, whose PPO round this mirrors.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pydantic
import pytest
import torch

from learner.reward import RewardConfig, RewardModel
from learner.rloo import RLOOConfig, RLOOTrainer
from learner.round import LearnerConfig
from rlhf.models.dialogues import tiny_prompts
from rlhf.settings import Settings
from tests.learner.rounds import make_learner, published_adapter, round_on_synthetic_feedback, taste_of

RLOO_FAST = {"steps": 10, "rollout_prompts": 16, "num_samples": 2, "minibatch_size": 8, "epochs": 4,
             "max_new_tokens": 48}


@pytest.fixture(scope="module")
def learner(tiny_model_path, tmp_path_factory):
    lrn = make_learner(tmp_path_factory, "rloo", RLOO_FAST)
    yield lrn
    lrn.close()


class RecordingEngine:
    """The real rollout engine, with what each `generate` call asked for and returned kept for the test."""

    def __init__(self, engine):
        self.engine = engine
        self.calls: list[tuple[int, int, list]] = []  # (prompts, answers per prompt, samples)

    def lora(self, path, label):
        return self.engine.lora(path, label)

    def generate(self, prompts, **kw):
        samples = self.engine.generate(prompts, **kw)
        self.calls.append((len(prompts), kw.get("n", 1), samples))
        return samples


# ------------------------------------------------------------------------------------ selection
def test_the_setting_accepts_the_built_algorithms_only(monkeypatch, tmp_path):
    assert Settings().learner_algorithm == "dpo"
    for algo in ("ppo", "rloo", "online-dpo", "kto"):
        monkeypatch.setenv("RLHF_LEARNER_ALGORITHM", algo)
        assert Settings().learner_algorithm == algo
    monkeypatch.setenv("RLHF_LEARNER_ALGORITHM", "grpo")  # not built: refused, not silently the default
    with pytest.raises(pydantic.ValidationError, match="RLHF_LEARNER_ALGORITHM must be one of ppo, rloo, dpo, "
                                                       "online-dpo, kto, not 'grpo'"):
        Settings()
    # `rlhf learn` stops at startup with that message, before it opens a store or loads a model
    env = {**os.environ, "RLHF_LEARNER_ALGORITHM": "grpo", "RLHF_DATA_DIR": str(tmp_path / "data")}
    proc = subprocess.run([sys.executable, "-m", "rlhf.cli", "learn"], env=env, capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode != 0
    assert "RLHF_LEARNER_ALGORITHM must be one of ppo, rloo, dpo, online-dpo, kto, not 'grpo'" in proc.stderr
    assert not (tmp_path / "data").exists()


def test_learner_config_reads_rloo_options():
    cfg = LearnerConfig.from_dict({"rloo": {"num_samples": 4, "target_modules": ["q_proj", "v_proj"]}})
    assert cfg.rloo.num_samples == 4 and cfg.rloo.target_modules == ("q_proj", "v_proj")
    assert cfg.ppo.rollout_batch_size == 32  # the other algorithm keeps its defaults
    with pytest.raises(ValueError, match="unknown rloo options"):
        LearnerConfig.from_dict({"rloo": {"vf_coef": 0.1}})  # RLOO has no critic


# ------------------------------------------------------------------------------------ one step
def test_one_rloo_step_with_vllm_rollouts(learner, tmp_path):
    k = 3
    cfg = RLOOConfig(rollout_prompts=4, num_samples=k, minibatch_size=4, epochs=2)  # 12 answers, 6 optimiser steps
    rm = RewardModel.create(learner.model_path, RewardConfig())
    rloo = RLOOTrainer(learner.model_path, learner.tokenizer, cfg, rm, workdir=tmp_path / "rloo")
    assert not hasattr(rloo, "critic")
    prompts = learner.encode_prompts([[{"role": "user", "content": q}] for q in tiny_prompts(16, seed=3)])
    before = {n: (p.requires_grad, p.detach().clone()) for n, p in rloo.policy.named_parameters()}
    kept = rloo.policy_state()
    engine = RecordingEngine(learner.engine)

    s1 = rloo.step(engine, prompts)
    # k answers of each of 4 prompts, in groups of k consecutive answers to the same prompt
    ((n_prompts, n, samples),) = engine.calls
    assert (n_prompts, n, len(samples)) == (4, k, 4 * k)
    for g in range(4):
        group = samples[g * k: (g + 1) * k]
        assert len({s.prompt_index for s in group}) == 1 and len({tuple(s.prompt_ids) for s in group}) == 1
        assert [s.answer_index for s in group] == list(range(k))
    assert s1["prompts"] == 4 and s1["tokens"] > 0
    assert all(torch.isfinite(torch.tensor(float(v))) for v in s1.values())
    assert "value_loss" not in s1 and 0.0 <= s1["clipfrac"] <= 1.0
    assert s1["kl"] == pytest.approx(0.0, abs=1e-4)  # the first rollout is the starting policy itself
    assert s1["kl_coef"] == cfg.beta

    # the LoRA moved (every trainable tensor after 6 optimiser steps), nothing frozen did
    moved = {n for n, p in rloo.policy.named_parameters() if not torch.equal(before[n][1], p.detach())}
    trainable = {n for n, (rg, _) in before.items() if rg}
    assert moved == trainable and all("lora_" in n for n in moved)

    # the same rollouts scored again: the leave-one-out advantages of each prompt sum to zero, and the
    # policy now differs from the reference
    exp = rloo.make_experience(samples)
    assert exp.advantages.view(4, k).sum(1).abs().max() < 1e-5
    assert exp.kl.abs().max() > 0 and max(rloo.answer_kl(samples)) > 0
    with pytest.raises(ValueError, match="consecutive"):  # answers out of their groups are refused
        rloo.make_experience(samples[1:] + samples[:1])

    s2 = rloo.step(engine, prompts)
    assert s2["kl"] != 0.0
    assert list((tmp_path / "rloo").iterdir()) == []  # rollout adapters are cleaned up

    # the KL guard's undo works on RLOO's policy too
    rloo.restore_policy(kept)
    assert all(torch.equal(before[n][1], p.detach()) for n, p in rloo.policy.named_parameters())
    assert max(abs(x) for x in rloo.answer_kl(samples)) < 1e-4
    folder = rloo.save_policy(tmp_path / "adapter")
    assert {"adapter_config.json", "adapter_model.safetensors"} <= {p.name for p in folder.iterdir()}


# ------------------------------------------------------------------------------------ a round
@pytest.mark.timeout(1800)  # shared 2-core machine; a few minutes when it is quiet
def test_rloo_round_learns_a_hidden_preference_and_publishes(learner):
    # the user's feedback on 700 prompts (~400 events), then one round: reward model, RLOO, gate, publish
    result, stats = round_on_synthetic_feedback(learner, thumbs_share=0.2)
    m = result.metrics
    print(f"\nfeedback {stats}; round: {result.status} {result.reasons}; RM held-out accuracy "
          f"{m['rm_pairwise_accuracy']:.3f} ({m['rm_heldout_pairs']} pairs); RLOO score {m['rloo_score_first']:.3f}"
          f" -> {m['rloo_score']:.3f}; reward {m['reward_candidate']:.3f} vs base {m['reward_serving']:.3f}; "
          f"KL {m['kl_candidate']:.3f}; RLOO {m['time_rloo']:.0f} s of {m['round_seconds']:.0f} s")
    assert m["algorithm"] == "rloo"
    assert "ppo_score" not in m and "rloo_value_loss" not in m  # no critic, and no PPO ran
    assert learner.store.get_meta("kl_coef") is None  # RLOO's β is fixed: nothing carried to the next round
    assert result.status == "published", result.reasons
    assert result.version == "policy@v1"

    # the published adapter: in the store, verified, announced, its metrics naming the algorithm
    ann, manifest = published_adapter(learner)
    assert ann["version"] == "policy@v1"
    assert manifest["metrics"]["algorithm"] == "rloo"
    assert 0.0 < manifest["metrics"]["kl_candidate"] <= learner.settings.kl_budget
    assert manifest["metrics"]["reward_candidate"] > manifest["metrics"]["reward_serving"]
    routing = learner.store.routing()  # default settings: a canary on 10 % of users, not yet active
    assert (routing.active, routing.canary, routing.canary_fraction) == (None, "policy@v1", 0.1)
    assert json.loads(learner.store.last_round()["metrics"])["algorithm"] == "rloo"  # the round's record

    # the adapter writes the preferred word clearly more often than the base model (vLLM samples),
    # by the same bar as PPO's test
    base, tuned, _ = taste_of(learner, ann)
    assert tuned >= base + 0.06 and tuned >= 1.4 * base
