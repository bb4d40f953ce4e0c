"""Our DPO, KTO, RLOO and online-DPO trainers beside TRL's (DPOTrainer, KTOTrainer, RLOOTrainer and
trl.experimental's OnlineDPOTrainer) on a recorded log's data: seconds per step, for bench/algorithms.py --trl.

Same work on both sides: LoRA r=8, alpha 16 on the same layers, float32 on CPU, learning rate 3e-4, β 0.1.
- DPO: the log's preference pairs (learner/dpo.py `preference_pairs`: choices, and thumbs up and down of one
  prompt), minibatches of 8 pairs, one optimiser step each. Both sides compute the reference log-probs
  before the timed steps (ours when the trainer starts; TRL with `precompute_ref_log_probs`).
- KTO: the log's labelled answers (learner/kto.py `labelled_answers`), minibatches of 8, each with the
  mismatched pairs of its KL estimate; reference log-probs as for DPO.
- RLOO: bench/learner.py's iterations (32 answers of at most 48 tokens, 4 epochs of minibatches of 8, our
  reward model as the reward) on the log's questions; TRL samples with transformers `generate`.
- Online DPO: TRL's step, made ours: 8 of the log's questions, 2 answers each of at most 48 tokens at
  temperature 1, our (untrained) reward model ranks each question's two, and one optimiser step of the
  DPO loss on the 8 pairs against the reference (the adapter switched off). Ours samples with vLLM
  (learner/online_dpo.py `step`: `num_samples` 2, `minibatch_size` 8, 1 epoch, no score gap; it also
  computes the policy's no-grad log-probs for its KL figure); TRL with transformers `generate`.
The first step (iteration) on each side is a warm-up; figures are medians of the rest. Each side runs in
a process of its own, and a ratio is printed only when the rest of the machine was quiet meanwhile.
"""

from __future__ import annotations

import statistics
import tempfile
import time
from pathlib import Path

from bench.feedback_log import EVENT_KEY, load_log, questions_of

MINIBATCH, LR, BETA, MAX_LENGTH = 8, 3e-4, 0.1, 512
ONLINE_PROMPTS = MINIBATCH  # online DPO: questions per step, two answers each, one optimiser step on their pairs
PARTS = ("dpo", "kto", "rloo", "online-dpo")


def log_examples(log_path: str) -> list[dict]:
    """The log's feedback as the learner reads it (every user's, both sides of the split)."""
    from adapters.signing import ControlKeys, TrustedKeys
    from learner.store import Store

    with tempfile.TemporaryDirectory() as d:
        store = Store(Path(d) / "learner.sqlite3", adapter_dir=Path(d) / "adapters",
                      keys=ControlKeys(None, TrustedKeys()), event_hmac_key=EVENT_KEY)
        store.ingest(load_log(log_path))
        examples = store.feedback_examples("train") + store.feedback_examples("heldout")
        store.close()
    return examples


def timed_steps(step, steps: int) -> float:
    """Median seconds of `steps` calls of `step` after one warm-up call."""
    times = []
    for _ in range(steps + 1):
        t = time.perf_counter()
        step()
        times.append(time.perf_counter() - t)
    return statistics.median(times[1:])


def rollout_engine(model_path):
    from learner.rollout import RolloutEngine
    from learner.tokenization import stop_strings

    return RolloutEngine(model_path, max_model_len=512, stop=stop_strings(model_path), kv_cache_gb=0.5)


def ours_online_dpo(model_path, tok, questions: list[str], steps: int) -> dict:
    from bench.learner import MAX_NEW
    from learner.online_dpo import OnlineDPOConfig, OnlineDPOTrainer
    from learner.reward import RewardConfig, RewardModel
    from learner.tokenization import encode_prompt

    cfg = OnlineDPOConfig(rollout_prompts=ONLINE_PROMPTS, num_samples=2, minibatch_size=ONLINE_PROMPTS, epochs=1,
                          min_score_gap=0.0, max_new_tokens=MAX_NEW, learning_rate=LR, beta=BETA)
    prompts = [encode_prompt(tok, [{"role": "user", "content": q}]) for q in questions]
    engine = rollout_engine(model_path)
    try:
        with tempfile.TemporaryDirectory() as d:
            trainer = OnlineDPOTrainer(model_path, tok, cfg, RewardModel.create(model_path, RewardConfig()), workdir=d)
            return {"step_s": timed_steps(lambda: trainer.step(engine, prompts), steps), "unit": "step"}
    finally:
        engine.close()


def ours(part: str, model_path, tok, log_path: str, steps: int) -> dict:
    questions = sorted(questions_of(load_log(log_path)))
    if part == "online-dpo":
        return ours_online_dpo(model_path, tok, questions, steps)
    if part == "rloo":
        from bench.learner import ours_policy

        engine = rollout_engine(model_path)
        try:
            got = ours_policy("rloo", model_path, tok, steps, engine, questions)
        finally:
            engine.close()
        return {"step_s": got["rloo_step_s"], "unit": "iteration"}
    from learner.dpo import DPOConfig, DPOTrainer
    from learner.kto import KTOConfig, KTOTrainer

    trainer_cls, cfg_cls = (DPOTrainer, DPOConfig) if part == "dpo" else (KTOTrainer, KTOConfig)
    cfg = cfg_cls(examples_per_step=MINIBATCH, minibatch_size=MINIBATCH, learning_rate=LR, beta=BETA,
                  max_length=MAX_LENGTH)
    trainer = trainer_cls(model_path, tok, cfg, log_examples(log_path))
    return {"step_s": timed_steps(trainer.step, steps), "unit": "optimiser step"}


def trl_online_dpo(model_path, tok, questions: list[str], steps: int) -> dict:
    # TRL and its datasets dependency are optional (`--trl`): imported only to compare
    from datasets import Dataset
    from peft import LoraConfig
    from trl.experimental.online_dpo import OnlineDPOConfig, OnlineDPOTrainer

    from bench.learner import MAX_NEW, TARGETS, StepTimer, trl_reward_function

    timer = StepTimer()
    with tempfile.TemporaryDirectory() as d:
        args = OnlineDPOConfig(output_dir=d, per_device_train_batch_size=ONLINE_PROMPTS, max_new_tokens=MAX_NEW,
                               max_length=MAX_LENGTH, temperature=1.0, beta=[BETA], learning_rate=LR, max_grad_norm=1.0,
                               max_steps=steps + 1, logging_steps=1000, save_strategy="no", report_to="none",
                               use_cpu=True, bf16=False, gradient_checkpointing=False, dataloader_num_workers=0,
                               model_init_kwargs={"dtype": "float32"})
        trainer = OnlineDPOTrainer(model=str(model_path), reward_funcs=trl_reward_function(model_path, tok), args=args,
                                   train_dataset=Dataset.from_list([{"prompt": [{"role": "user", "content": q}]}
                                                                    for q in questions]),
                                   processing_class=tok,
                                   peft_config=LoraConfig(r=8, lora_alpha=16, target_modules=TARGETS),
                                   callbacks=[timer])
        trainer.train()
    return {"step_s": statistics.median(b - a for a, b in zip(timer.ends, timer.ends[1:])), "unit": "step"}


def trl(part: str, model_path, tok, log_path: str, steps: int) -> dict:
    # TRL and its datasets dependency are optional (`--trl`): imported only to compare
    if part == "online-dpo":
        return trl_online_dpo(model_path, tok, sorted(questions_of(load_log(log_path))), steps)
    if part == "rloo":
        from bench.learner import trl_rloo

        got = trl_rloo(model_path, tok, steps, sorted(questions_of(load_log(log_path))))
        return {"step_s": got["rloo_step_s"], "unit": "iteration"}
    from datasets import Dataset
    from peft import LoraConfig

    from bench.learner import TARGETS, StepTimer
    from learner.dpo import preference_pairs
    from learner.kto import labelled_answers

    examples = log_examples(log_path)
    common = dict(per_device_train_batch_size=MINIBATCH, learning_rate=LR, beta=BETA, max_length=MAX_LENGTH,
                  max_steps=steps + 1, precompute_ref_log_probs=True, logging_steps=1000, save_strategy="no",
                  report_to="none", use_cpu=True, bf16=False, gradient_checkpointing=False,
                  dataloader_num_workers=0, model_init_kwargs={"dtype": "float32"})
    answer = lambda text: [{"role": "assistant", "content": text}]  # noqa: E731
    if part == "dpo":
        from trl import DPOConfig, DPOTrainer

        rows = [{"prompt": p.messages, "chosen": answer(p.chosen), "rejected": answer(p.rejected)}
                for p in preference_pairs(examples)]
        config_cls, trainer_cls = DPOConfig, DPOTrainer
    else:
        from trl import KTOConfig, KTOTrainer

        rows = [{"prompt": a.messages, "completion": answer(a.response), "label": a.desirable}
                for a in labelled_answers(examples)]
        config_cls, trainer_cls = KTOConfig, KTOTrainer
    timer = StepTimer()
    with tempfile.TemporaryDirectory() as d:
        trainer = trainer_cls(model=str(model_path), args=config_cls(output_dir=d, **common),
                              train_dataset=Dataset.from_list(rows), processing_class=tok,
                              peft_config=LoraConfig(r=8, lora_alpha=16, target_modules=TARGETS),
                              callbacks=[timer])
        trainer.train()
    return {"step_s": statistics.median(b - a for a, b in zip(timer.ends, timer.ends[1:])), "unit": "optimiser step"}


def trl_worker(spec: dict) -> dict:
    """One side of one comparison, in this process (bench/algorithms.py --worker trl)."""
    from learner.tokenization import load_tokenizer
    from rlhf.models.registry import resolve_model

    path = resolve_model(spec["model"])
    side = ours if spec["side"] == "ours" else trl
    return side(spec["part"], path, load_tokenizer(path), spec["log"], spec["steps"])


def compare_steps(model: str, log_path: Path, steps: int, in_worker, parts: tuple[str, ...] = PARTS) -> dict:
    """Both sides of each part, each in a process of its own: {part: {"ours": figures, "trl": figures}}."""
    out = {}
    for part in parts:
        out[part] = {side: in_worker("trl", {"part": part, "side": side, "model": model, "log": str(log_path),
                                             "steps": steps}, f"{part}: {side}, time per step")
                     for side in ("ours", "trl")}
    return out


def steps_table(rows: dict, max_other_cores: float = 0.3) -> str:
    lines = [f"{'trainer':<10} {'unit':<15} {'ours s':>8} {'TRL s':>8}  times faster (ours)"]
    for part, sides in rows.items():
        a, b = sides["ours"], sides["trl"]
        if not a or not b:
            lines.append(f"{part:<10} failed ({'ours' if not a else 'TRL'})")
            continue
        busy = max(a.get("others_cores", 0.0), b.get("others_cores", 0.0))
        ratio = (f"busy ({busy:.2f} cores used by others)" if busy > max_other_cores
                 else f"{b['step_s'] / a['step_s']:.2f}")
        lines.append(f"{part:<10} {a['unit']:<15} {a['step_s']:8.2f} {b['step_s']:8.2f}  {ratio}")
    return "\n".join(lines)
