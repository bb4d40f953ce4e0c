"""On the tiny model, no vLLM: a round's reward-model step weighs people, not posts.

Zero-weight examples do not move the reward model; a user who flips every label is found
against the held-out users' consensus, down-weighted and counted; PPO's prompt pool gives a
user who asked a thousand questions no more than their share.
"""

from __future__ import annotations

import random
from collections import Counter

import pytest
import torch

from feedback.event_hmac import sealed
from feedback.schema import TOPIC_INTERACTIONS, Interaction, Message
from learner.reward import RewardConfig, RewardModel, RewardTrainer
from learner.round import Learner, LearnerConfig
from learner.tokenization import load_tokenizer
from rlhf.settings import Settings
from tests.learner.conftest import SPLIT_KEY

MSGS = [{"role": "user", "content": "How are you today?"}]
GOOD = ["I am happy today.", "Happy and well, thanks!", "So happy to see you.", "A happy day here."]
BAD = ["I am cold and tired.", "Not well, it rains.", "The sun is gone.", "Cold, grey and old."]


def pair(user: str, rng: random.Random, flip: bool = False, seq: int = 1) -> dict:
    good, bad = rng.choice(GOOD), rng.choice(BAD)
    chosen, rejected = (bad, good) if flip else (good, bad)
    return {"type": "pairwise", "seq": seq, "user": user, "client": "", "messages": MSGS, "chosen": chosen,
            "chosen_finish": "stop", "rejected": rejected, "rejected_finish": "stop"}


@pytest.fixture(scope="module")
def tokenizer(tiny_model_path):
    return load_tokenizer(tiny_model_path)


def test_zero_weight_examples_do_not_move_the_reward_model(tiny_model_path, tokenizer):
    rm = RewardModel.create(tiny_model_path, RewardConfig())
    trainer = RewardTrainer(rm, tokenizer, RewardConfig())
    batch = [pair("a", random.Random(0)),
             {"type": "thumbs", "seq": 2, "messages": MSGS, "response": "I am happy today.", "finish_reason": "stop",
              "label": 1}]
    before = {n: p.detach().clone() for n, p in rm.named_parameters() if p.requires_grad}
    assert trainer.step(batch, [0.0, 0.0]) == 0.0
    assert all(torch.equal(before[n], p.detach()) for n, p in rm.named_parameters() if p.requires_grad)
    assert trainer.step(batch, [1.0, 1.0]) > 0
    assert not all(torch.equal(before[n], p.detach()) for n, p in rm.named_parameters() if p.requires_grad)


@pytest.fixture
def learner(tiny_model_path, tmp_path):
    settings = Settings(model="tiny", data_dir=tmp_path / "data", adapter_dir=tmp_path / "adapters",
                        max_model_len=512, kafka_bootstrap="127.0.0.1:9", learner_split_key=SPLIT_KEY)
    cfg = LearnerConfig.from_dict({"reward": {"batch_size": 16, "epochs": 2, "min_steps": 12, "max_steps": 40}})
    lrn = Learner(settings, cfg)
    yield lrn
    lrn.close()


@pytest.mark.timeout(600)  # about 30 s when the machine is quiet
def test_a_label_flipper_is_found_down_weighted_and_counted(learner):
    rng = random.Random(3)
    honest = [f"user{i}" for i in range(20)]
    train = [pair(u, rng, seq=k) for k, u in enumerate(honest * 8)]
    train += [pair("mallory", rng, flip=True, seq=1000 + k) for k in range(24)]  # 24 labels, every one flipped
    held = [pair(f"held{i}", rng) for i in range(6) for _ in range(4)]
    trainer = RewardTrainer(RewardModel.create(learner.model_path, learner.cfg.reward), learner.tokenizer,
                            learner.cfg.reward)

    fit = learner.fit_reward_model(trainer, train, held, since_seq=0)

    m = fit.metrics
    assert m["rm_pairwise_accuracy"] >= 0.9 and m["consensus_agreement"] >= 0.9
    assert fit.suspects == {"mallory"} and m["suspect_users"] == 1 and m["suspects_tested"] == 21
    assert fit.tested["mallory"].labels == 24 and fit.tested["mallory"].agreed <= 4
    # mallory posted 24 of 184 labels: capped at 0.05 (the others 0.95 / 20 each), then x0.1 as a suspect
    shares = fit.weights.user_shares
    assert shares["mallory"] == pytest.approx(0.005 / 0.955, rel=1e-6)
    assert m["rm_max_user_share"] == pytest.approx(0.95 / 20 / 0.955, rel=1e-6) and m["rm_refit_steps"] > 0

    # accounting: one row per user, the suspect flagged with their counts
    rid, _, _ = learner.store.start_round()
    totals = learner.record_accounting(rid, fit, pool=[{"user": "user0", "client": ""}])
    rows = {r["user"]: r for r in learner.store.round_users(rid)}
    assert rows["mallory"]["suspect"] and rows["mallory"]["labels"] == 24 and rows["mallory"]["examples"] == 24
    assert not rows["user3"]["suspect"] and rows["user0"]["policy_share"] == 1.0
    assert totals["max_user_share"] == 1.0  # the one-prompt pool above: all of it is user0's
    assert sum(r["rm_share"] for r in rows.values()) == pytest.approx(1.0)
    _, note = learner.suspect_summary(fit)
    assert "'mallory'" in note and "1 suspect user" in note


def test_suspects_lose_weight_even_among_fewer_users_than_the_cap_needs(learner):
    """15 honest users of one client and 3 suspects of another: under a 0.05 user cap every user
    would get an equal 1/18, the suspects too, and the 0.5 client cap would hand the suspects'
    client back all their users can take; down-weighted, each suspect keeps 0.1 of an honest
    user's share."""
    rows = [{"user": f"app:u{i}", "client": "app"} for i in range(15) for _ in range(4)]
    rows += [{"user": f"m:m{i}", "client": "m"} for i in range(3) for _ in range(40)]
    plain = learner.capped(rows)
    assert plain.user_shares["m:m0"] == pytest.approx(1 / 18) == plain.user_shares["app:u0"]
    down = learner.capped(rows, {"m:m0", "m:m1", "m:m2"})
    assert down.user_shares["app:u0"] == pytest.approx(1 / 15.3)
    assert sum(down.user_shares[f"m:m{i}"] for i in range(3)) == pytest.approx(0.3 / 15.3)


def test_the_prompt_pool_is_drawn_across_users(learner):
    items = []
    for i in range(1000):  # one user asks a thousand questions...
        items.append((TOPIC_INTERACTIONS, Interaction(
            response_id=f"flood{i}", completion_id=f"cf{i}", conversation_id=f"cf{i}", user="flood",
            messages=[Message(role="user", content=f"Question number {i}?")], response="a", model="tiny")))
    for u in range(40):  # ...forty others ask five each
        for k in range(5):
            items.append((TOPIC_INTERACTIONS, Interaction(
                response_id=f"u{u}-{k}", completion_id=f"c{u}-{k}", conversation_id=f"c{u}-{k}", user=f"user{u}",
                messages=[Message(role="user", content=f"Tell me about thing {u}-{k}.")], response="a",
                model="tiny")))
    learner.store.heldout_fraction = 0.0
    learner.store.ingest([(t, sealed(e, learner.settings.event_hmac_key)) for t, e in items])  # as serving wrote them
    learner.cfg.max_train_prompts = 200
    prompts, pool, held = learner.prompt_pools("user", suspects=set())
    assert len(prompts) == len(pool) == 200 and held == []
    counts = Counter(r["user"] for r in pool)
    assert counts["flood"] <= 0.05 * 200 + 1  # the cap, to within one draw
    assert len(counts) == 41


def test_the_judges_examples_weigh_the_judge_weight_and_are_not_a_user(learner):
    rows = [{"user": f"u{i}", "client": "app"} for i in range(30)]  # 30 people, one example each
    rows += [{"user": "ai:judge", "client": "judge", "source": "ai"} for _ in range(300)]
    # 300 verdicts at RLHF_JUDGE_WEIGHT 0.5 would outweigh the 30 people 5 to 1: RLHF_JUDGE_MAX_SHARE (0.5)
    # holds them to half of the weight, so together they weigh as much as the people
    w = learner.capped(rows)
    assert w.ai_share == pytest.approx(learner.settings.judge_max_share) == pytest.approx(0.5)
    assert w.weights[30] == pytest.approx(w.weights[0] * 30 / 300)
    learner.settings = learner.settings.model_copy(update={"judge_max_share": 1.0})  # no cap
    w = learner.capped(rows)
    assert w.weights[30] == pytest.approx(learner.settings.judge_weight * w.weights[0])  # 0.5 x a person's
    assert "ai:judge" not in w.user_shares and w.max_user_share == pytest.approx(1 / 30)
    assert w.client_shares == {"app": pytest.approx(1.0)}

    # in the reward model's fit: a judge that contradicts every user is not tested as a suspect user
    rng = random.Random(5)
    train = [pair(f"user{i}", rng, seq=k) for k, i in enumerate(list(range(20)) * 8)]
    train += [{**pair("ai:judge", rng, flip=True, seq=500 + k), "client": "judge", "source": "ai"} for k in range(24)]
    held = [pair(f"held{i}", rng) for i in range(6) for _ in range(4)]
    trainer = RewardTrainer(RewardModel.create(learner.model_path, learner.cfg.reward), learner.tokenizer,
                            learner.cfg.reward)
    fit = learner.fit_reward_model(trainer, train, held, since_seq=0)
    assert "ai:judge" not in fit.tested and fit.metrics["rm_users"] == 20 and fit.metrics["suspects_tested"] == 20
    assert fit.metrics["rm_ai_share"] == pytest.approx(12 / 172)  # 24 verdicts x 0.5 beside 160 people's pairs
