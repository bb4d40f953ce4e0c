"""Per-request routing: which loaded adapter version answers a request.

A request whose `model` names a loaded version (`policy@v3`) or the base model gets exactly
that; anything else follows routing: the canary for a sticky share of users (by a hash of the
user id), otherwise the active version (None = the base model).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path


@dataclass
class LoadedAdapter:
    version: str  # `policy@v3`: a new name and LoRA id for every set of weights
    lora_id: int
    path: Path
    manifest: dict = field(default_factory=dict)


def user_bucket(user: str) -> float:
    """A stable number in [0, 1) per user, for sticky canary assignment."""
    h = hashlib.sha256(user.encode()).digest()
    return int.from_bytes(h[:8], "big") / 2**64


class Router:
    def __init__(self, base_name: str, canary_fraction: float = 0.0):
        self.base_name = base_name
        self.loaded: dict[str, LoadedAdapter] = {}
        self.active: str | None = None
        self.canary: str | None = None
        self.canary_fraction = canary_fraction
        self.history: list[str | None] = []  # earlier active versions, newest last
        self._next_lora_id = 1

    def new_lora_id(self) -> int:
        lid = self._next_lora_id
        self._next_lora_id += 1
        return lid

    def pick(self, user: str, requested: str | None) -> LoadedAdapter | None:
        """The adapter for one request; None means the base model."""
        if requested == self.base_name:
            return None
        if requested in self.loaded:
            return self.loaded[requested]
        if self.canary and self.canary in self.loaded and user_bucket(user) < self.canary_fraction:
            return self.loaded[self.canary]
        if self.active and self.active in self.loaded:
            return self.loaded[self.active]
        return None

