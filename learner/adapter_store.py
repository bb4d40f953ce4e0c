"""The adapter store: PEFT adapters as safetensors + a manifest, in `RLHF_ADAPTER_DIR`.

Layout (one folder per version, never rewritten once it exists):

    RLHF_ADAPTER_DIR/
      policy/v1/adapter_model.safetensors
                adapter_config.json
                manifest.json          {"version": "policy@v1", "parent": null, "files": {name: sha256}, ...}
      policy/v2/...

`write_adapter` writes a version atomically (a temporary sibling folder renamed into place),
`verify_adapter` checks a version before serving loads it (manifest hash, every file's hash,
no file that is not safetensors or the adapter config), `list_adapters` lists what is there.

Serving imports this module on its hot path: keep it free of torch and other heavy imports.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import tempfile
import time
from pathlib import Path, PurePosixPath
from typing import Any

MANIFEST = "manifest.json"
ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"
MANIFEST_FORMAT = 1

_NAME_RE = re.compile(r"^[a-z][a-z0-9_-]{0,47}$")
_VERSION_DIR_RE = re.compile(r"^v([1-9][0-9]{0,8})$")


class AdapterError(ValueError):
    """An adapter folder that must not be loaded: missing, altered, or not what its manifest says."""


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def version_string(name: str, number: int) -> str:
    return f"{name}@v{number}"


def parse_version(version: str) -> tuple[str, int]:
    """`policy@v3` -> ("policy", 3); raises AdapterError on anything else."""
    name, sep, v = version.partition("@")
    m = _VERSION_DIR_RE.match(v)
    if not sep or not _NAME_RE.match(name) or not m:
        raise AdapterError(f"not an adapter version: {version!r} (expected like 'policy@v3')")
    return name, int(m.group(1))


def _allowed_file(name: str) -> bool:
    return name in (ADAPTER_CONFIG, MANIFEST) or name.endswith(".safetensors")


def next_version_number(adapter_dir: Path, name: str) -> int:
    folder = Path(adapter_dir) / name
    numbers = [int(m.group(1)) for p in (folder.iterdir() if folder.is_dir() else [])
               if (m := _VERSION_DIR_RE.match(p.name))]
    return max(numbers, default=0) + 1


def write_adapter(adapter_dir: Path | str, name: str, source: Path | str, *, parent: str | None = None,
                  base_model: str = "", metrics: dict[str, Any] | None = None, feedback_count: int = 0,
                  source_kind: str = "learner", extra: dict[str, Any] | None = None) -> tuple[str, str, str]:
    """Copy a PEFT adapter folder (`source`) into the store as the next version of `name`.

    Only `adapter_config.json` and `*.safetensors` are copied (a PEFT folder also holds a
    README; pickled `.bin` weights are refused). Returns (version, path relative to
    adapter_dir, sha256 of manifest.json).
    """
    adapter_dir, source = Path(adapter_dir), Path(source)
    if not _NAME_RE.match(name):
        raise AdapterError(f"bad adapter name {name!r}: lowercase letters, digits, '-', '_'")
    if not (source / ADAPTER_CONFIG).is_file():
        raise AdapterError(f"{source} has no {ADAPTER_CONFIG}")
    weights = sorted(p.name for p in source.iterdir() if p.is_file() and p.name.endswith(".safetensors"))
    if not weights:
        raise AdapterError(f"{source} has no .safetensors weights (pickled .bin weights are not accepted)")
    json.loads((source / ADAPTER_CONFIG).read_text())  # must parse

    folder = adapter_dir / name
    folder.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".tmp-", dir=folder))
    try:
        files = {}
        for fname in [ADAPTER_CONFIG, *weights]:
            shutil.copyfile(source / fname, tmp / fname)
            files[fname] = sha256_file(tmp / fname)
        # Another writer (`rlhf adapters publish` beside the learner) may take a number first:
        # rename() onto a non-empty folder fails, and we try the next number.
        for _ in range(100):
            number = next_version_number(adapter_dir, name)
            version = version_string(name, number)
            manifest = {
                "format": MANIFEST_FORMAT,
                "version": version,
                "name": name,
                "number": number,
                "parent": parent,
                "base_model": base_model,
                "source": source_kind,
                "created_at": time.time(),
                "feedback_count": int(feedback_count),
                "metrics": metrics or {},
                "files": files,
                **(extra or {}),
            }
            data = json.dumps(manifest, indent=2, sort_keys=True).encode()
            (tmp / MANIFEST).write_bytes(data)
            _fsync_dir_files(tmp)
            final = folder / f"v{number}"
            if final.exists():
                continue
            try:
                os.rename(tmp, final)
            except OSError:
                if final.exists():
                    continue
                raise
            _fsync_path(folder)
            return version, f"{name}/v{number}", hashlib.sha256(data).hexdigest()
        raise AdapterError(f"could not find a free version number under {folder}")
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def _fsync_path(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_dir_files(folder: Path) -> None:
    for p in folder.iterdir():
        _fsync_path(p)
    _fsync_path(folder)


def resolve_inside(adapter_dir: Path | str, rel_path: str) -> Path:
    """`adapter_dir / rel_path`, refusing absolute paths and anything that leaves the store."""
    adapter_dir = Path(adapter_dir).resolve()
    rel = PurePosixPath(rel_path)
    if rel.is_absolute() or not rel.parts or any(p in ("..", "") for p in rel.parts) or "\\" in rel_path:
        raise AdapterError(f"adapter path {rel_path!r} must be relative to the adapter store")
    path = (adapter_dir / Path(*rel.parts)).resolve()
    if adapter_dir not in path.parents:
        raise AdapterError(f"adapter path {rel_path!r} leaves the adapter store")
    return path


def verify_adapter(adapter_dir: Path | str, rel_path: str, manifest_sha256: str | None,
                   *, max_rank: int | None = None) -> dict[str, Any]:
    """Check one stored version and return its manifest (with `path` added); raise AdapterError on any doubt.

    Checks: the folder is inside the store; manifest.json hashes to `manifest_sha256` (skipped
    only when None is passed, for listing); the manifest's version matches the folder; every
    listed file exists with its sha256; no unlisted file; only safetensors + adapter config;
    the adapter config parses (and its rank is at most `max_rank`, when given).
    """
    folder = resolve_inside(adapter_dir, rel_path)
    if not folder.is_dir():
        raise AdapterError(f"adapter folder {rel_path!r} does not exist")
    mpath = folder / MANIFEST
    if not mpath.is_file():
        raise AdapterError(f"{rel_path}: no {MANIFEST}")
    data = mpath.read_bytes()
    if manifest_sha256 is not None and hashlib.sha256(data).hexdigest() != manifest_sha256:
        raise AdapterError(f"{rel_path}: manifest sha256 does not match the announced one")
    try:
        manifest = json.loads(data)
    except ValueError as e:
        raise AdapterError(f"{rel_path}: manifest is not JSON: {e}") from e
    if not isinstance(manifest, dict) or not isinstance(manifest.get("files"), dict):
        raise AdapterError(f"{rel_path}: manifest has no file list")
    name, number = parse_version(str(manifest.get("version", "")))
    if PurePosixPath(rel_path).parts[-2:] != (name, f"v{number}"):
        raise AdapterError(f"{rel_path}: manifest version {manifest['version']} does not match the folder")

    files: dict[str, str] = manifest["files"]
    present = {p.name for p in folder.iterdir()}
    for fname in present:
        if not (folder / fname).is_file() or (folder / fname).is_symlink():
            raise AdapterError(f"{rel_path}: {fname} is not a regular file")
        if not _allowed_file(fname):
            raise AdapterError(f"{rel_path}: {fname} is not allowed (only safetensors and {ADAPTER_CONFIG})")
        if fname != MANIFEST and fname not in files:
            raise AdapterError(f"{rel_path}: {fname} is not listed in the manifest")
    if ADAPTER_CONFIG not in files or not any(f.endswith(".safetensors") for f in files):
        raise AdapterError(f"{rel_path}: manifest must list {ADAPTER_CONFIG} and safetensors weights")
    for fname, digest in files.items():
        if "/" in fname or not _allowed_file(fname) or fname == MANIFEST:
            raise AdapterError(f"{rel_path}: manifest lists a disallowed file {fname!r}")
        if fname not in present:
            raise AdapterError(f"{rel_path}: {fname} is missing")
        if sha256_file(folder / fname) != digest:
            raise AdapterError(f"{rel_path}: {fname} does not match its sha256")
    try:
        config = json.loads((folder / ADAPTER_CONFIG).read_text())
    except ValueError as e:
        raise AdapterError(f"{rel_path}: {ADAPTER_CONFIG} is not JSON: {e}") from e
    if max_rank is not None and int(config.get("r", 0)) > max_rank:
        raise AdapterError(f"{rel_path}: LoRA rank {config.get('r')} exceeds the largest allowed ({max_rank})")
    return {**manifest, "path": "/".join(PurePosixPath(rel_path).parts)}


def list_adapters(adapter_dir: Path | str) -> list[dict[str, Any]]:
    """Every stored version with a readable manifest, by name then number.

    Each entry: version, name, number, path (relative), parent, created_at, source,
    manifest_sha256, metrics. Hashes of the weights are not checked here (verify_adapter does).
    """
    adapter_dir = Path(adapter_dir)
    out = []
    if not adapter_dir.is_dir():
        return out
    for name_dir in sorted(adapter_dir.iterdir()):
        if not name_dir.is_dir() or not _NAME_RE.match(name_dir.name):
            continue
        for vdir in name_dir.iterdir():
            if not (m := _VERSION_DIR_RE.match(vdir.name)) or not (vdir / MANIFEST).is_file():
                continue
            data = (vdir / MANIFEST).read_bytes()
            try:
                manifest = json.loads(data)
            except ValueError:
                continue
            out.append({
                "version": manifest.get("version", version_string(name_dir.name, int(m.group(1)))),
                "name": name_dir.name,
                "number": int(m.group(1)),
                "path": f"{name_dir.name}/{vdir.name}",
                "parent": manifest.get("parent"),
                "created_at": manifest.get("created_at"),
                "source": manifest.get("source"),
                "base_model": manifest.get("base_model"),
                "manifest_sha256": hashlib.sha256(data).hexdigest(),
                "metrics": manifest.get("metrics", {}),
            })
    out.sort(key=lambda e: (e["name"], e["number"]))
    return out
