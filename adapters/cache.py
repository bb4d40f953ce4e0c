"""Load what you verified: a private, read-only copy of each adapter version, checked after copying.

    private_copy(adapter_dir, rel_path, manifest_sha256, cache_dir)   -> folder to load from

The adapter store is shared (a volume other pods write): checking a folder there and then
letting vLLM or PEFT read it again later (at load, and after an eviction) leaves a window in
which whoever can write the store swaps the weights. So the files are copied into
`cache_dir/<manifest sha256>/<name>/v<N>/` (directories 0500 in a 0700 cache, files 0400,
owned by this process's user), the copy is verified against the announced manifest hash,
and only the copy is ever given to the engine. An existing copy is verified again before
it is used; one that fails is replaced.
"""

from __future__ import annotations

import json
import os
import shutil
import stat
import tempfile
from pathlib import Path, PurePosixPath

from adapters.manifest import MANIFEST, AdapterError, check_folder
from adapters.store import resolve_inside

CACHE_DIR = "adapter-cache"  # under RLHF_DATA_DIR: private to the process, never the shared store


def cache_dir_of(settings) -> Path:
    return Path(settings.data_dir) / CACHE_DIR


def _private_dir(path: Path) -> None:
    path.mkdir(parents=True, exist_ok=True)
    st = path.stat()
    if st.st_uid != os.getuid():
        raise AdapterError(f"adapter cache {path} belongs to another user")
    if stat.S_IMODE(st.st_mode) & 0o077:
        os.chmod(path, 0o700)  # not readable, let alone writable, by others


def _remove(path: Path) -> None:
    """rmtree for a read-only tree: give its folders write permission back first."""
    if not path.exists():
        return
    for folder, dirs, _ in os.walk(path):
        os.chmod(folder, 0o700)
        for d in dirs:
            os.chmod(Path(folder) / d, 0o700)
    shutil.rmtree(path, ignore_errors=True)


def _seal(root: Path) -> None:
    """Files 0400, folders 0500, deepest first."""
    for folder, _, files in os.walk(root, topdown=False):
        for f in files:
            os.chmod(Path(folder) / f, 0o400)
        os.chmod(folder, 0o500)


def private_copy(adapter_dir: Path | str, rel_path: str, manifest_sha256: str, cache_dir: Path | str,
                 max_rank: int | None = None) -> Path:
    """The verified private copy of one stored version (made if needed); raises AdapterError.

    What the copy holds is checked against `manifest_sha256` after copying, so a file swapped
    in the store at any moment is either not copied or refused, never loaded."""
    cache_dir = Path(cache_dir)
    _private_dir(cache_dir)
    rel = "/".join(PurePosixPath(rel_path).parts)
    source = resolve_inside(adapter_dir, rel)  # refuses paths that leave the store
    if len(manifest_sha256) != 64 or not all(c in "0123456789abcdef" for c in manifest_sha256):
        raise AdapterError(f"{rel}: not a manifest sha256: {manifest_sha256!r}")
    entry = cache_dir / manifest_sha256
    final = entry / rel
    if final.is_dir():
        try:
            check_folder(final, rel, manifest_sha256, max_rank)
            return final
        except AdapterError:
            _remove(entry)  # altered or half-made: make it again

    tmp = Path(tempfile.mkdtemp(prefix=".tmp-", dir=cache_dir))
    try:
        copy = tmp / rel
        copy.mkdir(parents=True)
        shutil.copyfile(source / MANIFEST, copy / MANIFEST)
        try:
            listed = json.loads((copy / MANIFEST).read_bytes()).get("files", {})
        except (ValueError, AttributeError) as e:
            raise AdapterError(f"{rel}: manifest is not a JSON object: {e}") from e
        for fname in listed if isinstance(listed, dict) else ():
            if "/" in fname or fname in ("", ".", "..", MANIFEST):
                raise AdapterError(f"{rel}: manifest lists a disallowed file {fname!r}")
            try:
                shutil.copyfile(source / fname, copy / fname)
            except FileNotFoundError:
                raise AdapterError(f"{rel}: {fname} is missing") from None
        check_folder(copy, rel, manifest_sha256, max_rank)  # the copy is what will be loaded
        _seal(tmp)
        try:
            os.rename(tmp, entry)
        except OSError:
            if not entry.is_dir():
                raise
            # another process (serving and the learner share a data dir under `rlhf up`) made it first
            check_folder(final, rel, manifest_sha256, max_rank)
        return final
    finally:
        _remove(tmp)
