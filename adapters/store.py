"""The adapter store: PEFT adapters as safetensors + a manifest, in `RLHF_ADAPTER_DIR`.

Layout (one folder per version, never rewritten once it exists):

    RLHF_ADAPTER_DIR/
      policy/v1/adapter_model.safetensors
                adapter_config.json
                manifest.json          {"version": "policy@v1", "parent": null, "files": {name: sha256}, ...}
      policy/v2/...

`write_adapter` writes a version atomically (a temporary sibling folder renamed into place),
`verify_adapter` checks a version before it is loaded (manifest.py), `verify_announced` also
checks that the manifest names the announced version, `list_adapters` lists what is there.

Serving imports this module on its hot path: keep it free of torch and other heavy imports.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
import time
from pathlib import Path, PurePosixPath
from typing import Any

from adapters.manifest import (
    ADAPTER_CONFIG,
    MANIFEST,
    NAME_RE,
    VERSION_DIR_RE,
    AdapterError,
    build_manifest,
    check_folder,
    sha256_file,
    version_string,
)


def next_version_number(adapter_dir: Path, name: str) -> int:
    folder = Path(adapter_dir) / name
    numbers = [int(m.group(1)) for p in (folder.iterdir() if folder.is_dir() else [])
               if (m := VERSION_DIR_RE.match(p.name))]
    return max(numbers, default=0) + 1


def write_adapter(adapter_dir: Path | str, name: str, source: Path | str, *, parent: str | None = None,
                  base_model: str = "", metrics: dict[str, Any] | None = None, feedback_count: int = 0,
                  source_kind: str = "learner", extra: dict[str, Any] | None = None,
                  number: int | None = None) -> tuple[str, str, str]:
    """Copy a PEFT adapter folder (`source`) into the store as the next version of `name`
    (or as version `number`, e.g. the starting adapter's 0: refused if it exists).

    Only `adapter_config.json` and `*.safetensors` are copied (a PEFT folder also holds a
    README; pickled `.bin` weights are refused). Returns (version, path relative to
    adapter_dir, sha256 of manifest.json).
    """
    adapter_dir, source = Path(adapter_dir), Path(source)
    if not NAME_RE.match(name):
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
        fixed = number
        for _ in range(100):
            number = next_version_number(adapter_dir, name) if fixed is None else fixed
            version = version_string(name, number)
            data = build_manifest(version, name, number, files, parent=parent, base_model=base_model,
                                  source_kind=source_kind, created_at=time.time(), feedback_count=feedback_count,
                                  metrics=metrics, extra=extra)
            (tmp / MANIFEST).write_bytes(data)
            _fsync_dir_files(tmp)
            final = folder / f"v{number}"
            if final.exists() and fixed is not None:
                raise AdapterError(f"{version} already exists in the store")
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
    """Check one stored version (manifest.check_folder) and return its manifest with `path` added;
    raises AdapterError on any doubt, including a path that leaves the store."""
    manifest = check_folder(resolve_inside(adapter_dir, rel_path), rel_path, manifest_sha256, max_rank)
    return {**manifest, "path": "/".join(PurePosixPath(rel_path).parts)}


def verify_announced(adapter_dir: Path | str, version: str, rel_path: str, manifest_sha256: str,
                     max_rank: int | None = None) -> dict[str, Any]:
    """verify_adapter, plus: the manifest names the version the announcement named."""
    manifest = verify_adapter(adapter_dir, rel_path, manifest_sha256, max_rank=max_rank)
    if manifest.get("version") != version:
        raise AdapterError(f"announced as {version} but the manifest says {manifest.get('version')}")
    return manifest


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
        if not name_dir.is_dir() or not NAME_RE.match(name_dir.name):
            continue
        for vdir in name_dir.iterdir():
            if not (m := VERSION_DIR_RE.match(vdir.name)) or not (vdir / MANIFEST).is_file():
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
