"""Load the Kubernetes manifests for the tests: rendered overlays and the raw source files.

    render("prod-gpu") -> list of resource dicts, as `kubectl kustomize k8s/overlays/prod-gpu`
    source_docs()      -> every resource in every YAML file under k8s/ (patches included)
"""

from __future__ import annotations

import functools
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
K8S = ROOT / "k8s"
OVERLAYS = sorted(p.name for p in (K8S / "overlays").iterdir() if (p / "kustomization.yaml").exists())


def kubectl() -> str:
    path = shutil.which("kubectl")
    if path is None:
        pytest.skip("kubectl is not installed (k8s/check.sh installs Debian's kubernetes-client)")
    return path


@functools.lru_cache
def _render(overlay: str, kubectl_path: str) -> tuple[dict, ...]:
    out = subprocess.run([kubectl_path, "kustomize", str(K8S / "overlays" / overlay)],
                         check=True, capture_output=True, text=True, timeout=120).stdout
    return tuple(d for d in yaml.safe_load_all(out) if d)


def render(overlay: str) -> list[dict]:
    return list(_render(overlay, kubectl()))


def source_docs() -> list[dict]:
    """Every resource document in the YAML files under k8s/, kustomizations included."""
    docs = []
    for path in sorted(K8S.rglob("*.yaml")):
        docs.extend(d for d in yaml.safe_load_all(path.read_text()) if d)
    return docs


def find(docs: list[dict], kind: str, name: str | None = None) -> list[dict]:
    return [d for d in docs if d.get("kind") == kind and (name is None or d["metadata"]["name"] == name)]


def one(docs: list[dict], kind: str, name: str) -> dict:
    found = find(docs, kind, name)
    assert len(found) == 1, f"expected one {kind}/{name}, found {len(found)}"
    return found[0]


def pod_specs(docs: list[dict]) -> dict[str, dict]:
    """Pod templates of the workloads, by workload name."""
    return {d["metadata"]["name"]: d["spec"]["template"]["spec"]
            for d in docs if d.get("kind") in ("Deployment", "StatefulSet", "DaemonSet", "Job")}


def containers(pod: dict) -> list[dict]:
    return list(pod.get("initContainers", [])) + list(pod.get("containers", []))
