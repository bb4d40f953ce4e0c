"""The model cache (`RLHF_CACHE_DIR`): where prepared models live and how a build lands there.

A build writes into a temporary sibling folder that is renamed into place once complete, so
nobody reads half a model, and two processes preparing the same model at once end with one
folder. `ModelError` is what every step raises when a model cannot be made available.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

from rlhf.settings import get_settings


class ModelError(RuntimeError):
    """A model setting that cannot be resolved to a usable local folder."""


def cache_root() -> Path:
    return Path(get_settings().cache_dir).expanduser()


def new_build_dir(final: Path) -> Path:
    """A temporary sibling folder of `final`, to be renamed to it by `publish_build`."""
    final.parent.mkdir(parents=True, exist_ok=True)
    return Path(tempfile.mkdtemp(prefix=final.name + ".tmp-", dir=final.parent))


def publish_build(tmp: Path, final: Path) -> None:
    if final.exists():  # another process won the race; keep theirs
        shutil.rmtree(tmp, ignore_errors=True)
        return
    os.replace(tmp, final)
