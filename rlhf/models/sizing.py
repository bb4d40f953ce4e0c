"""Engine sizes read from the model: the context length and vLLM's scheduling arguments.

Serving's engine and the learner's rollout engine both start from these, so they agree.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

log = logging.getLogger(__name__)


def context_length(path: Path, wanted: int) -> int:
    """The context the engines start with: `wanted` (RLHF_MAX_MODEL_LEN), capped at what the model
    was built for (`max_position_embeddings`), so `--model tiny` works with the default setting."""
    try:
        config = json.loads((Path(path) / "config.json").read_text())
    except (OSError, ValueError):
        return wanted
    limit = config.get("max_position_embeddings") or config.get("text_config", {}).get("max_position_embeddings")
    if isinstance(limit, int) and 0 < limit < wanted:
        log.info("context length %d capped at the model's %d positions", wanted, limit)
        return limit
    return wanted


def vllm_scheduling(context: int, token_budget: int) -> dict:
    """Engine arguments that never split a prompt across engine steps (both engines use them).

    With chunked prefill, vLLM rewinds a seeded request's generator when its prompt is split,
    and a CPU generator cannot be rewound: the engine dies ("CPU Generator does not use
    offset") the first time seeded requests' prompts exceed one step's token budget. Without
    it, a prompt waits until it fits whole; the budget must then hold the longest prompt."""
    return {"enable_chunked_prefill": False, "max_num_batched_tokens": max(context, token_budget)}
