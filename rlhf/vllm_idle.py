"""A vLLM plugin: an idle engine stops spinning after 50 ms instead of one second.

vLLM's CPU backend always runs the model in a worker process (the multiprocess executor), which
waits for the engine's next step on a shared-memory queue. After each message it busy-waits
(`sched_yield` in a loop) for one second before it sleeps on a socket: fast while decoding, but
after every batch of answers one core is burned for a second. On the two cores the learner and
serving share, that second is taken from whatever runs next: the learner's scoring and updates
right after its rollouts, or serving's answers right after the learner sampled. Measured on the
2-core VM with the tiny model: the worker used 0.28-0.76 CPU-seconds in the 1.5 s after a
`generate` returned, and 0.01 in the second after that.

Decode steps on CPU are tens of milliseconds apart, so a 50 ms window keeps the worker spinning
while it generates and lets it sleep soon after. Registered as a `vllm.general_plugins` entry
point (pyproject.toml), which vLLM loads in every one of its processes, the worker included.
"""

from __future__ import annotations

import logging

IDLE_SPIN_S = 0.05
"""How long a vLLM reader busy-waits for the next message before it sleeps (vLLM's own: 1 s)."""

log = logging.getLogger(__name__)


def register() -> None:
    """Cap the busy-wait window of vLLM's shared-memory queues (idempotent)."""
    try:
        from vllm.distributed.device_communicators.shm_broadcast import SpinCondition
    except ImportError:  # a vLLM without this queue: nothing to change
        return
    if getattr(SpinCondition.wait, "rlhf_capped", False):
        return
    spin_wait = SpinCondition.wait

    def wait(self, timeout_ms: int | None = None) -> None:
        if self.is_reader and self.busy_loop_s > IDLE_SPIN_S:
            self.busy_loop_s = IDLE_SPIN_S
        return spin_wait(self, timeout_ms)

    wait.rlhf_capped = True
    SpinCondition.wait = wait
