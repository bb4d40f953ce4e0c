"""The manifest of one stored adapter version, and the check that a folder is what it says.

    manifest.json  {"format": 1, "version": "policy@v3", "parent": "policy@v2",
                    "files": {"adapter_config.json": sha256, "adapter_model.safetensors": sha256}, ...}

An announcement names a version, its folder and the sha256 of its manifest; the manifest
names the sha256 of every file. `check_folder` verifies that chain: what is checked here is
exactly what may be loaded (safetensors weights and the adapter config, nothing else).
"""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path, PurePosixPath
from typing import Any

MANIFEST = "manifest.json"
ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"
MANIFEST_FORMAT = 1

NAME_RE = re.compile(r"^[a-z][a-z0-9_-]{0,47}$")
VERSION_DIR_RE = re.compile(r"^v(0|[1-9][0-9]{0,8})$")  # v0: the starting adapter `rlhf model prepare` builds


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
    m = VERSION_DIR_RE.match(v)
    if not sep or not NAME_RE.match(name) or not m:
        raise AdapterError(f"not an adapter version: {version!r} (expected like 'policy@v3')")
    return name, int(m.group(1))


def allowed_file(name: str) -> bool:
    return name in (ADAPTER_CONFIG, MANIFEST) or name.endswith(".safetensors")


def build_manifest(version: str, name: str, number: int, files: dict[str, str], *, parent: str | None,
                   base_model: str, source_kind: str, created_at: float, feedback_count: int,
                   metrics: dict[str, Any] | None, extra: dict[str, Any] | None) -> bytes:
    """The manifest's bytes (sorted keys: the same content always hashes the same)."""
    manifest = {
        "format": MANIFEST_FORMAT,
        "version": version,
        "name": name,
        "number": number,
        "parent": parent,
        "base_model": base_model,
        "source": source_kind,
        "created_at": created_at,
        "feedback_count": int(feedback_count),
        "metrics": metrics or {},
        "files": files,
        **(extra or {}),
    }
    return json.dumps(manifest, indent=2, sort_keys=True).encode()


def check_folder(folder: Path, rel_path: str, manifest_sha256: str | None, max_rank: int | None) -> dict[str, Any]:
    """Verify one version's folder against its manifest; returns the manifest, raises AdapterError.

    Checks: manifest.json hashes to `manifest_sha256` (skipped only when None is passed, for
    listing); the manifest's version matches the folder; every listed file exists with its
    sha256; no unlisted file; only safetensors + adapter config; the adapter config parses
    (and its rank is at most `max_rank`, when given)."""
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
        if not allowed_file(fname):
            raise AdapterError(f"{rel_path}: {fname} is not allowed (only safetensors and {ADAPTER_CONFIG})")
        if fname != MANIFEST and fname not in files:
            raise AdapterError(f"{rel_path}: {fname} is not listed in the manifest")
    if ADAPTER_CONFIG not in files or not any(f.endswith(".safetensors") for f in files):
        raise AdapterError(f"{rel_path}: manifest must list {ADAPTER_CONFIG} and safetensors weights")
    for fname, digest in files.items():
        if "/" in fname or not allowed_file(fname) or fname == MANIFEST:
            raise AdapterError(f"{rel_path}: manifest lists a disallowed file {fname!r}")
        if fname not in present:
            raise AdapterError(f"{rel_path}: {fname} is missing")
        if sha256_file(folder / fname) != digest:
            raise AdapterError(f"{rel_path}: {fname} does not match its sha256")
    try:
        config = json.loads((folder / ADAPTER_CONFIG).read_text())
    except ValueError as e:
        raise AdapterError(f"{rel_path}: {ADAPTER_CONFIG} is not JSON: {e}") from e
    if not isinstance(config, dict):
        raise AdapterError(f"{rel_path}: {ADAPTER_CONFIG} is not a JSON object")
    try:
        rank = int(config.get("r", 0))
    except (TypeError, ValueError):
        raise AdapterError(f"{rel_path}: {ADAPTER_CONFIG} has a non-integer rank r={config.get('r')!r}") from None
    if max_rank is not None and rank > max_rank:
        raise AdapterError(f"{rel_path}: LoRA rank {config.get('r')} exceeds the largest allowed ({max_rank})")
    return manifest
