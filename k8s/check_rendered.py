"""Helpers for k8s/check.sh: inspect rendered manifests and checkov's report.

    python k8s/check_rendered.py split RENDERED.yaml BUILTIN.yaml
        Write the resources of the built-in API groups in RENDERED.yaml to BUILTIN.yaml (for
        kubernetes-validate --strict) and count the custom resources it leaves out; those are
        validated against their CRDs by k8s/custom_resources.py, which fails on a kind or
        version no CRD serves.
    python k8s/check_rendered.py skips RENDERED.yaml...
        Check that every `checkov.io/skipN` annotation names a check and gives a reason.
    python k8s/check_rendered.py checkov REPORT.json
        Print checkov's failed and skipped checks and exit 1 if any check failed.

Runs in .venv-k8s (PyYAML comes with kubernetes-validate and checkov).
"""

from __future__ import annotations

import json
import re
import sys
from collections import Counter

import yaml

from custom_resources import is_builtin

SKIP_RE = re.compile(r"^(CKV2?_[A-Z0-9]+_\d+)=(.{10,})$")


def _docs(path: str) -> list[dict]:
    with open(path) as f:
        return [d for d in yaml.safe_load_all(f) if d]


def split(rendered: str, builtin_out: str) -> int:
    builtin, custom = [], Counter()
    for d in _docs(rendered):
        if is_builtin(d.get("apiVersion", "")):
            builtin.append(d)
        else:
            custom[f"{d.get('kind', '?')} ({d.get('apiVersion', '?')})"] += 1
    with open(builtin_out, "w") as f:
        yaml.safe_dump_all(builtin, f, sort_keys=False)
    print(f"built-in resources: {len(builtin)}; custom resources (validated against their CRDs): "
          + ", ".join(f"{k} x{n}" for k, n in sorted(custom.items())))
    return 0 if builtin else 1


def skips(paths: list[str]) -> int:
    seen, bad = {}, []
    for path in paths:
        for d in _docs(path):
            for key, value in (d.get("metadata", {}).get("annotations") or {}).items():
                if not key.startswith("checkov.io/skip"):
                    continue
                m = SKIP_RE.match(str(value).strip())
                where = f"{d['kind']}/{d['metadata']['name']}"
                if not m:
                    bad.append(f"{path}: {where} {key}: {value!r}")
                else:
                    seen.setdefault((m.group(1), m.group(2)), set()).add(where)
    for b in bad:
        print(f"ERROR skip annotation without a check id and a reason: {b}")
    for (cid, reason), where in sorted(seen.items()):
        print(f"  skipped {cid} on {', '.join(sorted(where))}: {reason}")
    return 1 if bad else 0


def checkov(report: str) -> int:
    with open(report) as f:
        data = json.load(f)
    runs = data if isinstance(data, list) else [data]
    failed_total = 0
    for run in runs:
        if "summary" not in run:  # checkov's shape when a framework found nothing to scan
            continue
        s = run["summary"]
        failed_total += s["failed"]
        print(f"checkov {run['check_type']}: passed {s['passed']}, failed {s['failed']}, "
              f"skipped {s['skipped']}, parsing errors {s['parsing_errors']}")
        failed_total += s["parsing_errors"]
        for c in run["results"]["failed_checks"]:
            print(f"  FAILED {c['check_id']} {c['check_name']}: {c['resource']} ({c['file_path']})")
    return 1 if failed_total else 0


def main(argv: list[str]) -> int:
    if len(argv) >= 3 and argv[0] == "split":
        return split(argv[1], argv[2])
    if len(argv) >= 2 and argv[0] == "skips":
        return skips(argv[1:])
    if len(argv) == 2 and argv[0] == "checkov":
        return checkov(argv[1])
    print(__doc__, file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
