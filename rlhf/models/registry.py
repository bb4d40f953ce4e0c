"""Which local folder a model setting (`RLHF_MODEL`, `--model`) names, and the name clients see.

- `gemma-3-270m` (default, alias `gemma`): Gemma 3 270M base, converted once (rlhf/models/gemma.py).
- `tiny`: a ~1 MB Llama built offline (rlhf/models/tiny.py).
- anything else: a local HF model folder, used as it is.

Both prepared models live in the model cache (`RLHF_CACHE_DIR`) and are built on first use.
"""

from __future__ import annotations

from pathlib import Path

from rlhf.models.cache import ModelError, cache_root
from rlhf.models.card import refresh_model_card
from rlhf.models.gemma import GEMMA_CARD, GEMMA_VERSION, build_gemma
from rlhf.models.tiny import TINY_VERSION, build_tiny

DEFAULT_MODEL = "gemma-3-270m"


def resolve_model(name: str, *, prepare: bool = True) -> Path:
    """Return the local folder for the model setting `name`, preparing it if needed."""
    if name == "tiny":
        path = cache_root() / TINY_VERSION
        if not (path / "config.json").exists():
            if not prepare:
                raise ModelError("tiny model not prepared; run `rlhf model prepare --model tiny`")
            build_tiny(path)
        return path
    if name in (DEFAULT_MODEL, "gemma"):
        path = cache_root() / GEMMA_VERSION
        if not (path / "config.json").exists():
            if not prepare:
                raise ModelError(f"{DEFAULT_MODEL} not prepared; run `rlhf model prepare`")
            build_gemma(path)
        refresh_model_card(path, GEMMA_CARD)
        return path
    path = Path(name).expanduser()
    if not (path / "config.json").exists():
        raise ModelError(
            f"model {name!r} is neither `tiny`, `{DEFAULT_MODEL}`, nor a local folder with a config.json"
        )
    return path.resolve()


def model_display_name(name: str) -> str:
    """The name clients see in /v1/models for a model setting."""
    if name in ("tiny", DEFAULT_MODEL):
        return name
    if name == "gemma":
        return DEFAULT_MODEL
    return Path(name).name
