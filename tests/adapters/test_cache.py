"""Load what you verified (adapters/cache.py): the engine only ever gets a private, read-only copy
whose files were checked after copying; a file swapped in the shared store is never in it."""

from __future__ import annotations

import os
import stat

import pytest

from adapters.cache import private_copy
from adapters.manifest import AdapterError
from adapters.store import write_adapter

WEIGHTS = "adapter_model.safetensors"


@pytest.fixture
def published(tmp_path, peft_folder):
    store = tmp_path / "adapters"
    version, rel, sha = write_adapter(store, "policy", peft_folder)
    return store, rel, sha, tmp_path / "data" / "adapter-cache"


def test_the_copy_is_private_read_only_and_outside_the_store(published):
    store, rel, sha, cache = published
    copy = private_copy(store, rel, sha, cache)
    assert copy == cache / sha / "policy" / "v1" and store not in copy.parents
    assert (copy / WEIGHTS).read_bytes() == (store / rel / WEIGHTS).read_bytes()
    assert sorted(p.name for p in copy.iterdir()) == ["adapter_config.json", WEIGHTS, "manifest.json"]  # no README
    assert stat.S_IMODE(cache.stat().st_mode) == 0o700
    for p in copy.iterdir():
        assert stat.S_IMODE(p.stat().st_mode) == 0o400
    for d in (copy, copy.parent, cache / sha):
        assert stat.S_IMODE(d.stat().st_mode) == 0o500


def test_a_file_swapped_in_the_store_after_the_copy_is_never_used(published):
    store, rel, sha, cache = published
    first = private_copy(store, rel, sha, cache)
    original = (first / WEIGHTS).read_bytes()
    (store / rel / WEIGHTS).write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00{}  swap")  # after publication
    again = private_copy(store, rel, sha, cache)  # e.g. loaded again after an eviction
    assert again == first and (again / WEIGHTS).read_bytes() == original


def test_a_file_swapped_before_the_copy_is_refused_not_copied(published):
    store, rel, sha, cache = published
    (store / rel / WEIGHTS).write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00{}  swap")
    with pytest.raises(AdapterError, match="does not match its sha256"):
        private_copy(store, rel, sha, cache)
    assert not (cache / sha).exists() and [p.name for p in cache.iterdir()] == []  # nothing half-made is left


def test_an_altered_copy_is_replaced_from_the_store(published):
    """A copy changed by someone with this user's rights is not trusted either: checked before every use."""
    store, rel, sha, cache = published
    copy = private_copy(store, rel, sha, cache)
    os.chmod(copy, 0o700)
    os.chmod(copy / WEIGHTS, 0o600)
    (copy / WEIGHTS).write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00{}  edit")
    again = private_copy(store, rel, sha, cache)
    assert (again / WEIGHTS).read_bytes() == (store / rel / WEIGHTS).read_bytes()


def test_paths_and_hashes_from_an_event_cannot_leave_the_cache_or_the_store(published):
    store, rel, sha, cache = published
    with pytest.raises(AdapterError, match="must be relative"):
        private_copy(store, "../adapters/policy/v1", sha, cache)
    with pytest.raises(AdapterError, match="not a manifest sha256"):
        private_copy(store, rel, "../../etc", cache)
