"""Which CPU cores serving's model and the learner compute on, when they share one machine.

vLLM's CPU worker binds one OpenMP thread to each core it computes on and keeps one core for its
scheduler; the learner trains with torch (OpenMP too) and samples with its own vLLM engine. Two
OpenMP teams bound to the same cores wait for each other at every parallel region: measured with
`bench/stream.py` on the 2-core VM and the tiny model, the learner's reward model did not finish
one epoch in 9.5 minutes beside a saturated serving process, and its engine's worker did not
finish starting in 9 minutes.

`RLHF_SERVING_CPUS` and `RLHF_LEARNER_CPUS` name the cores (`"0"`, `"2-5"`, `"0,2-3"`): serving's
engine binds its compute threads there, the learner binds its engine's there and trains with one
torch thread per core. Empty (the default, and what a Kubernetes pod gets): serving binds as vLLM
chooses, the learner uses every core it may run on. `rlhf up`, which runs both on one machine,
fills whichever is unset with `split()`: the learner's share is the last quarter of the cores (at
least one), serving's the rest, so they never bind the same core. HTTP, the broker and the
engines' schedulers are not bound: the kernel places them.
"""

from __future__ import annotations

import logging
import os

log = logging.getLogger(__name__)

VLLM_BIND = "VLLM_CPU_OMP_THREADS_BIND"  # read by vLLM's CPU worker when it starts


class CpuListError(ValueError):
    """A CPU list that cannot be parsed, or names cores this process may not run on."""


def parse_cpus(text: str) -> list[int]:
    """`"0,2-4"` -> [0, 2, 3, 4] (sorted, each once). Raises CpuListError on anything else."""
    cpus: set[int] = set()
    for part in text.replace(" ", "").split(","):
        first, sep, last = part.partition("-")
        if not first.isdigit() or (sep and not last.isdigit()):
            raise CpuListError(f"{text!r} is not a CPU list (e.g. \"1\", \"2-5\", \"0,2-3\")")
        lo, hi = int(first), int(last) if sep else int(first)
        if hi < lo:
            raise CpuListError(f"{text!r}: the range {part} runs backwards")
        cpus.update(range(lo, hi + 1))
    return sorted(cpus)


def format_cpus(cpus: list[int]) -> str:
    """[0, 2, 3, 4] -> "0,2-4" (vLLM's and taskset's syntax)."""
    parts, run = [], []
    for c in sorted(set(cpus)):
        if run and c != run[-1] + 1:
            parts.append(run)
            run = []
        run.append(c)
    if run:
        parts.append(run)
    return ",".join(str(r[0]) if len(r) == 1 else f"{r[0]}-{r[-1]}" for r in parts)


def allowed_cpus() -> list[int]:
    return sorted(os.sched_getaffinity(0))


def usable(text: str) -> list[int]:
    """The cores a setting names, checked against those this process may run on."""
    cpus = parse_cpus(text)
    allowed = set(allowed_cpus())
    outside = [c for c in cpus if c not in allowed]
    if outside:
        raise CpuListError(f"{text!r} names core(s) {format_cpus(outside)}, but this process may run only on "
                           f"{format_cpus(sorted(allowed))}")
    return cpus


def split(cpus: list[int]) -> tuple[list[int], list[int]]:
    """(serving's cores, the learner's cores) for one machine running both: the learner gets the last
    quarter (at least one core), serving the rest. One core: both get it (nothing to split)."""
    if len(cpus) < 2:
        return list(cpus), list(cpus)
    learner = max(1, len(cpus) // 4)
    return list(cpus[:-learner]), list(cpus[-learner:])


def shares_for_up(serving: str, learner: str) -> tuple[str, str]:
    """`rlhf up`'s two settings with the unset ones filled: both unset, `split()`; one set, the other
    gets the cores it leaves (if it leaves none, the other stays empty: vLLM's binding for serving,
    every core for the learner). Raises CpuListError on unusable lists."""
    allowed = allowed_cpus()
    if not serving and not learner:
        s, le = split(allowed)
        return format_cpus(s), format_cpus(le)
    if serving and learner:
        return format_cpus(usable(serving)), format_cpus(usable(learner))
    given = usable(serving or learner)
    rest = [c for c in allowed if c not in given]
    return (format_cpus(given), format_cpus(rest)) if serving else (format_cpus(rest), format_cpus(given))


def bind_serving(text: str) -> None:
    """Serving's engine computes on these cores (before the engine starts; empty: as vLLM chooses)."""
    if text:
        os.environ[VLLM_BIND] = format_cpus(usable(text))
        log.info("serving's engine computes on cores %s", os.environ[VLLM_BIND])


def bind_learner(text: str) -> list[int]:
    """The learner's engine computes on these cores (before the engine starts); the learner trains with
    one torch thread per core (its caller sets that). Returns the cores, or [] when `text` is empty."""
    if not text:
        return []
    cpus = usable(text)
    os.environ[VLLM_BIND] = format_cpus(cpus)
    return cpus
