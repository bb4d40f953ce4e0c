"""A file serving re-reads when it changes (the API keys file, the JWKS file), without a restart.

    watched = WatchedFile(path)
    if watched.changed():      # at most one stat() per `every_s`; True the first time
        reload(path)

A change is a different (inode, size, mtime) from `os.stat`, which follows symlinks: an edit in
place, an atomic replace (`rlhf keys add|revoke`) and Kubernetes swapping a Secret volume's
`..data` link all show. A missing file is a state of its own, so its return is a change too.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from pathlib import Path


class WatchedFile:
    def __init__(self, path: str | Path, every_s: float = 1.0, clock: Callable[[], float] = time.monotonic):
        self.path = Path(path)
        self.every_s = every_s
        self.clock = clock
        self._checked_at: float | None = None
        self._seen: tuple[int, int, int] | None | str = "never looked"

    def _signature(self) -> tuple[int, int, int] | None:
        try:
            st = os.stat(self.path)
        except OSError:
            return None
        return st.st_ino, st.st_size, st.st_mtime_ns

    def changed(self) -> bool:
        """True if the file differs from the last time this said True (always, the first time)."""
        now = self.clock()
        if self._checked_at is not None and now - self._checked_at < self.every_s:
            return False
        self._checked_at = now
        sig = self._signature()
        if sig == self._seen:
            return False
        self._seen = sig
        return True
