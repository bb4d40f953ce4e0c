"""How precise the KL to the reference is when measured on a few sampled answers.

    .venv/bin/python bench/kl_estimators.py --adapter <a trained policy folder> [--reference <policy@v0 folder>]
                                            [--model gemma-3-270m] [--answers 64] [--questions 47]

Samples `--answers` answers from the adapter (transformers' `generate`, temperature 1, no top-k or
top-p, up to 48 tokens) to a fixed set of everyday questions (with `--questions N`, N questions of
harness/questions.py, the answers spread evenly over them) and prints, for both ways of turning
one answer into a KL:

- sampled log-ratio     Σ_t log π/π_ref(y_t): the sampled tokens' log-ratio
- full vocabulary       Σ_t KL(π(·|x, y_<t) ‖ π_ref(·|x, y_<t)): what the learner's KL guard and gate use
                        (`kl_to_reference` in learner/policy_model.py)

their mean, standard deviation over answers, the standard error of a 16-answer mean (the KL
guard's sample) and the largest answer's KL. Both have the same expectation; the one with the
smaller standard deviation tells the guard sooner whether an update went too far. A trained
adapter comes from `bench/algorithms.py` (`<out>/<taste>/<algorithm>/adapters/policy/v1`, with
`.../v0` as its reference). Without `--reference` the reference is the bare base model.

Then how the full-vocabulary KL's variance splits between questions and between answers to one
question, and from that the standard error of the gate's mean KL over the questions with 1, 2 or
all answers to each (the gate measures `gate.kl_answers_per_prompt` of each held-out prompt's).
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from harness.questions import questions as everyday_questions  # noqa: E402
from learner.policy_config import PolicyConfig  # noqa: E402
from learner.policy_model import kl_to_reference, load_policy, logprobs_with_reference  # noqa: E402
from learner.tokenization import encode_prompt, load_tokenizer, pad_prompt_response  # noqa: E402
from rlhf.models.registry import resolve_model  # noqa: E402

QUESTIONS = ["What is the capital of Peru?", "Name a fruit.", "What language is spoken in Brazil?",
             "How do I boil an egg?", "What is 7 times 8?", "Describe the sea.", "Who wrote Hamlet?",
             "What animal says moo?"]
GUARD_ANSWERS = 16


def summary(name: str, kls: list[float]) -> str:
    sd = statistics.stdev(kls)
    return (f"{name:<18} mean {statistics.fmean(kls):6.2f}  sd {sd:5.2f}  "
            f"se of {GUARD_ANSWERS} {sd / GUARD_ANSWERS ** 0.5:5.2f}  max {max(kls):6.2f}")


def by_question(kls: list[float], n_questions: int) -> str:
    """The variance between questions and within one (answers i, i + n, i + 2n, ... answer question i),
    and the standard error of a mean over the questions with k answers to each."""
    groups = [kls[q::n_questions] for q in range(n_questions)]
    k = min(map(len, groups))
    if n_questions < 2 or k < 2:
        return "variance by question: needs 2 or more questions with 2 or more answers each"
    within = statistics.fmean(statistics.variance(g[:k]) for g in groups)
    between = max(0.0, statistics.variance([statistics.fmean(g[:k]) for g in groups]) - within / k)
    ses = "  ".join(f"{j} per question {((between + within / j) / n_questions) ** 0.5:.2f}"
                    for j in sorted({1, 2, k}) if j <= k)
    return (f"full vocabulary by question ({n_questions} questions, {k} answers each): variance between questions "
            f"{between:.1f}, between answers to one question {within:.1f}; standard error of the mean: {ses}")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--adapter", required=True, help="the policy LoRA folder whose KL is measured")
    p.add_argument("--reference", help="the reference LoRA folder (default: the bare base model)")
    p.add_argument("--model", default="gemma-3-270m")
    p.add_argument("--answers", type=int, default=64)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--questions", type=int, help="this many everyday questions instead of the fixed 8")
    args = p.parse_args()
    if args.answers < 2:
        p.error("--answers must be at least 2")
    if args.questions is not None and not 1 <= args.questions <= args.answers:
        p.error("--questions must be between 1 and --answers")
    for folder in filter(None, (args.adapter, args.reference)):
        if not (Path(folder) / "adapter_config.json").is_file():
            p.error(f"{folder} is not a LoRA folder (no adapter_config.json)")
    model_path = resolve_model(args.model)
    tokenizer = load_tokenizer(model_path)
    cfg = PolicyConfig()
    policy = load_policy(model_path, cfg, args.adapter, reference_adapter=args.reference).eval()
    torch.manual_seed(args.seed)
    questions = everyday_questions(args.questions, args.seed) if args.questions else QUESTIONS
    prompts = [encode_prompt(tokenizer, [{"role": "user", "content": questions[i % len(questions)]}])
               for i in range(args.answers)]
    answers = []
    with torch.no_grad():
        for i, prompt in enumerate(prompts):
            out = policy.generate(torch.tensor([prompt]), do_sample=True, temperature=1.0, top_k=0, top_p=1.0,
                                  max_new_tokens=cfg.max_new_tokens, pad_token_id=tokenizer.pad_token_id)
            answers.append(out[0, len(prompt):].tolist())
            print(f"\rsampled {i + 1}/{args.answers} answers", end="", file=sys.stderr, flush=True)
    print(file=sys.stderr)
    ids, mask, _, rmask, P = pad_prompt_response(prompts, answers, tokenizer.pad_token_id)
    lp, ref = logprobs_with_reference(policy, ids, mask, P, rmask, cfg.forward_batch_size, 1.0)
    full = kl_to_reference(policy, ids, mask, P, rmask, cfg.forward_batch_size, 1.0)
    print(f"{args.answers} answers of {args.adapter} (mean {rmask.sum(1).float().mean():.1f} tokens), "
          f"reference {args.reference or 'the base model'}")
    print(summary("sampled log-ratio", (lp - ref).sum(1).tolist()))
    print(summary("full vocabulary", full.tolist()))
    print(by_question(full.tolist(), len(questions)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
