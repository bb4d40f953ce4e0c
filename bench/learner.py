"""Learner throughput beside TRL: reward-model examples/s, PPO iteration time and tokens/s.

    .venv/bin/python bench/learner.py                              # tiny and gemma-3-270m
    .venv/bin/python bench/learner.py --models tiny --iterations 3   # the tiny model's default is 10
    .venv/bin/python bench/learner.py --skip-trl                   # ours only

Same work on both sides (LoRA r=8 on q,k,v,o,gate,up,down; fp32 on CPU; learning rates,
batch sizes, answer length and temperature equal):
- reward model: pairs of (prompt, chosen, rejected), batch 16, one optimiser step per batch.
  Ours: learner/reward.py `RewardTrainer.step`. TRL: `trl.RewardTrainer` (sequence-classification
  head + LoRA), timed by a callback from its second step on.
- policy optimisation: 32 answers of at most 48 new tokens per iteration, 4 epochs over
  minibatches of 8 (16 optimiser steps), KL penalty to the base, our reward model as reward.
  Ours: learner/rloo.py `RLOOTrainer.step` (16 prompts x 2 answers, leave-one-out baseline)
  and learner/ppo.py `PPOTrainer.step` (critic, GAE), both sampling with vLLM under a new
  LoRA id. TRL: its RLOO trainer configured the same way (16 prompts x 2 generations,
  num_iterations=4, beta=0.1), which samples with transformers `generate` (TRL's vLLM mode
  needs a GPU). TRL 1.16 ships no PPO trainer, so our PPO is also set beside TRL's RLOO.
Each measurement runs in a process of its own (this script, `--worker`), so neither side
inherits the other's memory, threads or engine processes. Times exclude the first (warm-up)
step on both sides and are medians over at least 3 timed steps; the reward model's pairs are tokenised before the timed steps on both sides. Each
measurement also records how many cores other processes used meanwhile (bench/machine_load.py);
a ratio is printed only when both sides ran on a quiet machine (`--max-other-cores`), otherwise
the row says `busy`. Needs `trl` for the comparison
(`.venv/bin/pip install trl==1.16.0`; not in the `bench` extra because it pulls datasets, pandas
and pyarrow), or `--skip-trl`.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

# This script's own name is `learner`: put the project first on the path, before bench/
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402
from transformers import TrainerCallback  # noqa: E402

from bench.machine_load import OtherLoad  # noqa: E402
from learner.ppo import PPOConfig, PPOTrainer  # noqa: E402
from learner.reward import RewardConfig, RewardModel, RewardTrainer  # noqa: E402
from learner.rloo import RLOOConfig, RLOOTrainer  # noqa: E402
from learner.rollout import RolloutEngine  # noqa: E402
from learner.tokenization import encode_prompt, encode_response, load_tokenizer, stop_strings  # noqa: E402
from rlhf.models.dialogues import tiny_dialogues, tiny_prompts  # noqa: E402
from rlhf.models.registry import resolve_model  # noqa: E402

log = logging.getLogger("bench.learner")
TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
RM_BATCH, RM_LR = 16, 2e-3
ROLLOUTS, MINIBATCH, EPOCHS, MAX_NEW, LR, BETA = 32, 8, 4, 48, 3e-4, 0.1


def tiny_questions() -> list[str]:
    """The policy iterations' prompts unless a caller gives its own."""
    return tiny_prompts(256, seed=5)


def pairs_data(n: int, seed: int = 0) -> list[dict]:
    """Pairs of answers of the kind the tiny model writes (lengths like real feedback)."""
    ds = tiny_dialogues(2 * n, seed)
    return [{"type": "pairwise", "seq": i + 1, "messages": [ds[2 * i][0]], "chosen": ds[2 * i][1]["content"],
             "chosen_finish": "stop", "rejected": ds[2 * i + 1][1]["content"], "rejected_finish": "stop"}
            for i in range(n)]


# ------------------------------------------------------------------------------------------ ours
def ours_reward(model_path, tokenizer, steps: int) -> dict:
    cfg = RewardConfig(learning_rate=RM_LR, batch_size=RM_BATCH)
    rm = RewardModel.create(model_path, cfg)
    tr = RewardTrainer(rm, tokenizer, cfg)
    data = pairs_data(RM_BATCH * (steps + 1))
    for ex in data:  # tokenised before the timed steps, as TRL's trainer maps its dataset up front
        tr.encode(ex["messages"], ex["chosen"], ex["chosen_finish"])
        tr.encode(ex["messages"], ex["rejected"], ex["rejected_finish"])
    times = []
    for i in range(steps + 1):
        t = time.perf_counter()
        tr.step(data[i * RM_BATCH:(i + 1) * RM_BATCH])
        times.append(time.perf_counter() - t)
    step_s = statistics.median(times[1:])
    return {"rm_step_s": step_s, "rm_examples_per_s": RM_BATCH / step_s}


def ours_policy(algorithm: str, model_path, tokenizer, iterations: int, engine, questions: list[str] | None = None
                ) -> dict:
    """Our PPO or RLOO: iterations of the same size as TRL's RLOO (32 answers, 4 epochs of 8), on `questions`
    (default: the tiny model's)."""
    if algorithm == "ppo":
        trainer_cls = PPOTrainer
        cfg = PPOConfig(rollout_batch_size=ROLLOUTS, minibatch_size=MINIBATCH, ppo_epochs=EPOCHS,
                        max_new_tokens=MAX_NEW, learning_rate=LR, init_kl_coef=BETA, adaptive_kl=False)
    else:
        trainer_cls = RLOOTrainer
        cfg = RLOOConfig(rollout_prompts=ROLLOUTS // 2, num_samples=2, minibatch_size=MINIBATCH, epochs=EPOCHS,
                         max_new_tokens=MAX_NEW, learning_rate=LR, beta=BETA)
    rm = RewardModel.create(model_path, RewardConfig())
    with tempfile.TemporaryDirectory() as d:
        trainer = trainer_cls(model_path, tokenizer, cfg, rm, workdir=d)
        prompts = [encode_prompt(tokenizer, [{"role": "user", "content": q}]) for q in questions or tiny_questions()]
        stats = []
        for k in range(iterations + 1):
            t = time.perf_counter()
            s = trainer.step(engine, prompts)
            s["wall"] = time.perf_counter() - t
            stats.append(s)
            log.info("ours %s %d/%d: %.1f s (rollout %.1f, score %.1f, update %.1f), %d tokens", algorithm.upper(),
                     k + 1, iterations + 1, s["wall"], s["time_rollout"], s["time_score"], s["time_update"],
                     s["tokens"])
    rest = stats[1:]
    return {f"{algorithm}_step_s": statistics.median(s["wall"] for s in rest),
            f"{algorithm}_tokens_per_s": statistics.median(s["tokens"] / s["wall"] for s in rest),
            f"{algorithm}_rollout_s": statistics.median(s["time_rollout"] for s in rest),
            f"{algorithm}_update_s": statistics.median(s["time_score"] + s["time_update"] for s in rest)}


# ------------------------------------------------------------------------------------------ TRL
class StepTimer(TrainerCallback):
    """Records when each optimiser step ends."""

    def __init__(self):
        self.ends: list[float] = []
        self.start = time.perf_counter()

    def on_step_end(self, args, state, control, **kw):
        self.ends.append(time.perf_counter())


def trl_reward(model_path, tokenizer, steps: int) -> dict:
    # TRL and its datasets dependency are optional (`--skip-trl`): imported only to compare
    from datasets import Dataset
    from peft import LoraConfig
    from trl import RewardConfig as TRLRewardConfig
    from trl import RewardTrainer

    data = pairs_data(RM_BATCH * (steps + 1))
    ds = Dataset.from_list([{"chosen": d["messages"] + [{"role": "assistant", "content": d["chosen"]}],
                             "rejected": d["messages"] + [{"role": "assistant", "content": d["rejected"]}]}
                            for d in data])
    with tempfile.TemporaryDirectory() as d:
        args = TRLRewardConfig(output_dir=d, per_device_train_batch_size=RM_BATCH, learning_rate=RM_LR,
                               max_steps=steps + 1, logging_steps=1000, save_strategy="no", report_to="none",
                               use_cpu=True, bf16=False, max_length=512, gradient_checkpointing=False,
                               dataloader_num_workers=0, model_init_kwargs={"dtype": "float32"})
        timer = StepTimer()
        trainer = RewardTrainer(model=str(model_path), args=args, train_dataset=ds, processing_class=tokenizer,
                                peft_config=LoraConfig(r=8, lora_alpha=16, target_modules=TARGETS,
                                                       task_type="SEQ_CLS"),
                                callbacks=[timer])
        trainer.train()
        del trainer
    step_s = statistics.median(b - a for a, b in zip(timer.ends, timer.ends[1:]))
    return {"rm_step_s": step_s, "rm_examples_per_s": RM_BATCH / step_s}


def trl_reward_function(model_path, tokenizer):
    """Our (untrained) reward model as a TRL reward function of conversational prompts and completions, the
    reward ours is given."""
    rm = RewardModel.create(model_path, RewardConfig()).eval()

    def reward(prompts, completions, **kw) -> list[float]:
        pairs = [(encode_prompt(tokenizer, p), encode_response(tokenizer, c[0]["content"], True))
                 for p, c in zip(prompts, completions)]
        return rm.score_ids(pairs, tokenizer.pad_token_id)

    return reward


def trl_rloo(model_path, tokenizer, iterations: int, questions: list[str] | None = None) -> dict:
    # TRL and its datasets dependency are optional (`--skip-trl`): imported only to compare
    from datasets import Dataset
    from peft import LoraConfig
    from trl import RLOOConfig, RLOOTrainer

    reward = trl_reward_function(model_path, tokenizer)
    lengths: list[int] = []

    def count(prompts, completions, completion_ids, **kw) -> list[float]:
        lengths.extend(len(c) for c in completion_ids)
        return [0.0] * len(completions)

    ds = Dataset.from_list([{"prompt": [{"role": "user", "content": q}]} for q in questions or tiny_questions()])
    steps_per_gen = ROLLOUTS // MINIBATCH
    with tempfile.TemporaryDirectory() as d:
        args = RLOOConfig(output_dir=d, per_device_train_batch_size=MINIBATCH, num_generations=2,
                          steps_per_generation=steps_per_gen, num_iterations=EPOCHS, max_completion_length=MAX_NEW,
                          temperature=1.0, beta=BETA, learning_rate=LR, max_grad_norm=1.0,
                          max_steps=(iterations + 1) * steps_per_gen * EPOCHS, logging_steps=1000,
                          save_strategy="no", report_to="none", use_cpu=True, bf16=False,
                          reward_weights=[1.0, 0.0], model_init_kwargs={"dtype": torch.float32})
        timer = StepTimer()
        trainer = RLOOTrainer(model=str(model_path), reward_funcs=[reward, count], args=args, train_dataset=ds,
                              processing_class=tokenizer,
                              peft_config=LoraConfig(r=8, lora_alpha=16, target_modules=TARGETS),
                              callbacks=[timer])
        trainer.train()
    per_iter = steps_per_gen * EPOCHS
    # an iteration = one generation batch + its updates; skip the first
    ends = timer.ends
    iter_times = [ends[(k + 1) * per_iter - 1] - ends[k * per_iter - 1] for k in range(1, iterations + 1)]
    tokens = [sum(lengths[k * ROLLOUTS:(k + 1) * ROLLOUTS]) for k in range(1, iterations + 1)]
    return {"rloo_step_s": statistics.median(iter_times),
            "rloo_tokens_per_s": statistics.median(n / t for n, t in zip(tokens, iter_times))}


# ------------------------------------------------------------------------------------------ main
def ours_policies(model_path, tokenizer, iterations: int) -> dict:
    """Our RLOO and PPO, sampling with one vLLM engine."""
    engine = RolloutEngine(model_path, max_model_len=512, stop=stop_strings(model_path), kv_cache_gb=0.5)
    try:
        return {**ours_policy("rloo", model_path, tokenizer, iterations, engine),
                **ours_policy("ppo", model_path, tokenizer, iterations, engine)}
    finally:
        engine.close()


WORKERS = {"ours-rm": ours_reward, "trl-rm": trl_reward, "ours-policy": ours_policies, "trl-rloo": trl_rloo}


def run_worker(part: str, name: str, iterations: int, rm_steps: int, out_path: str) -> int:
    """One measurement in this process; its figures as JSON in `out_path`."""
    torch.manual_seed(0)
    path = resolve_model(name)
    tok = load_tokenizer(path)
    figures = WORKERS[part](path, tok, rm_steps if part.endswith("-rm") else iterations)
    Path(out_path).write_text(json.dumps(figures))
    return 0


def measured(out: dict, parts: tuple[str, ...], what: str, worker: str, name: str, args) -> None:
    """Run one measurement in a process of its own; keep its figures and how busy the rest of the
    machine was meanwhile (the worker and its engine processes are not "the rest")."""
    log.info(what)
    with tempfile.TemporaryDirectory() as d:
        figures = Path(d) / "figures.json"
        cmd = [sys.executable, __file__, "--worker", worker, "--worker-out", str(figures), "--models", name,
               "--iterations", str(iterations_for(name, args)), "--rm-steps", str(rm_steps_for(name, args))]
        with OtherLoad() as load:
            done = subprocess.run(cmd)
        log.info("%s: %s", what, load.summary())
        if done.returncode != 0 or not figures.exists():
            raise SystemExit(f"{what} failed (exit {done.returncode}); its log is above")
        out.update(json.loads(figures.read_text()))
    for part in parts:
        out[f"others_{part}"] = load.cores


def iterations_for(name: str, args) -> int:
    """Timed policy iterations: --iterations, else 10 on the tiny model (an iteration there is about a second,
    mostly overhead, and three of them moved by more than the two sides differ) and 3 on the others."""
    return args.iterations or (10 if name == "tiny" else 3)


def rm_steps_for(name: str, args) -> int:
    """Timed reward-model steps: --rm-steps, else 30 on the tiny model (a step there is about 0.05 s, and medians
    of 10 moved by a third between two quiet runs) and 10 on the others."""
    return args.rm_steps or (30 if name == "tiny" else 10)


def bench_model(name: str, args) -> dict:
    out = {"ours": {}, "trl": {}}
    measured(out["ours"], ("rm",), f"{name}: reward model, ours", "ours-rm", name, args)
    if not args.skip_trl:
        measured(out["trl"], ("rm",), f"{name}: reward model, TRL RewardTrainer", "trl-rm", name, args)
    measured(out["ours"], ("rloo", "ppo"), f"{name}: RLOO and PPO, ours", "ours-policy", name, args)
    if not args.skip_trl:
        measured(out["trl"], ("rloo",), f"{name}: RLOO, TRL", "trl-rloo", name, args)
    return out


def speed(ours: dict, trl: dict, row: tuple, max_other: float) -> str:
    """How many times faster ours is (>= 1: ours faster), or why there is no figure: TRL was not
    measured, or the machine was busy while either side ran."""
    key, trl_key, _, part, trl_part, higher = row
    if trl.get(trl_key) is None:
        return ""
    busy = max(ours.get(f"others_{part}", 0.0), trl.get(f"others_{trl_part}", 0.0))
    if busy > max_other:
        return f"busy ({busy:.2f} cores used by others)"
    return f"{ours[key] / trl[trl_key] if higher else trl[trl_key] / ours[key]:.2f}"


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", default="tiny,gemma-3-270m")
    p.add_argument("--iterations", type=int, help="timed PPO/RLOO iterations after one warm-up (default: 10 on "
                   "the tiny model, 3 on the others)")
    p.add_argument("--rm-steps", type=int, help="timed reward-model steps after one warm-up (default: 30 on the "
                   "tiny model, 10 on the others)")
    p.add_argument("--skip-trl", action="store_true")
    p.add_argument("--max-other-cores", type=float, default=0.3,
                   help="print no ratio when other processes used more cores than this during either side")
    p.add_argument("--worker", choices=sorted(WORKERS), help=argparse.SUPPRESS)  # one measurement...
    p.add_argument("--worker-out", help=argparse.SUPPRESS)  # ...its figures as JSON here
    args = p.parse_args()
    if any(n is not None and n < 3 for n in (args.iterations, args.rm_steps)):
        p.error("--iterations and --rm-steps must be at least 3 (each figure is a median)")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    for noisy in ("vllm", "httpx", "datasets", "transformers", "trl"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    if args.worker:
        return run_worker(args.worker, args.models, iterations_for(args.models, args),
                          rm_steps_for(args.models, args), args.worker_out)
    load0 = tuple(round(x, 1) for x in os.getloadavg())
    # (our key, TRL's key, label, our part, TRL's part, whether higher is better)
    rows = [("rm_examples_per_s", "rm_examples_per_s", "RM pairs/s", "rm", "rm", True),
            ("rm_step_s", "rm_step_s", "RM step s", "rm", "rm", False),
            ("rloo_step_s", "rloo_step_s", "RLOO iteration s", "rloo", "rloo", False),
            ("rloo_tokens_per_s", "rloo_tokens_per_s", "RLOO answer tokens/s", "rloo", "rloo", True),
            ("rloo_rollout_s", None, "  of which rollout s (vLLM)", "rloo", "rloo", False),
            ("rloo_update_s", None, "  of which score+update s", "rloo", "rloo", False),
            ("ppo_step_s", "rloo_step_s", "PPO iteration s (TRL: RLOO)", "ppo", "rloo", False),
            ("ppo_rollout_s", None, "  of which rollout s (vLLM)", "ppo", "rloo", False),
            ("ppo_update_s", None, "  of which score+update s", "ppo", "rloo", False)]
    lines = [f"{'model':<14} {'metric':<28} {'ours':>10} {'TRL':>10}  times faster (ours)"]
    for name in args.models.split(","):
        r = bench_model(name.strip(), args)
        for row in rows:
            a, b = r["ours"].get(row[0]), r["trl"].get(row[1])
            if a is None:
                continue
            lines.append(f"{name:<14} {row[2]:<28} {a:10.3f} {b if b is not None else float('nan'):10.3f}  "
                         f"{speed(r['ours'], r['trl'], row, args.max_other_cores)}")
        for part in ("rm", "rloo", "ppo"):
            lines.append(f"{name:<14} {'cores used by others, ' + part:<28} "
                         f"{r['ours'].get(f'others_{part}', float('nan')):10.2f} "
                         f"{r['trl'].get(f'others_{part}', float('nan')):10.2f}")
        print("\n" + "\n".join(lines), flush=True)  # after each model, so a later failure keeps these
    print(f"\nthreads: torch {torch.get_num_threads()}, cpus {os.cpu_count()}; "
          f"load average at start {load0}, at end {tuple(round(x, 1) for x in os.getloadavg())}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
