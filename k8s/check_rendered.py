"""Helpers for k8s/check.sh: inspect rendered manifests and checkov's report.

    python k8s/check_rendered.py split RENDERED.yaml BUILTIN.yaml
        Write the built-in Kubernetes kinds of RENDERED.yaml to BUILTIN.yaml (for
        kubernetes-validate --strict) and print the custom resources it leaves out.
        A custom resource of an unknown kind or apiVersion is an error, so a typo such as
        `apps/v2` cannot slip through as "no schema, skipped".
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

# Custom resources kubernetes-validate has no schema for: kind -> accepted apiVersions.
# Their content is checked by tests/k8s/test_manifests.py instead.
CUSTOM_KINDS = {
    "Kafka": {"kafka.strimzi.io/v1beta2", "kafka.strimzi.io/v1"},
    "KafkaNodePool": {"kafka.strimzi.io/v1beta2", "kafka.strimzi.io/v1"},
    "KafkaTopic": {"kafka.strimzi.io/v1beta2", "kafka.strimzi.io/v1"},
    "ServiceMonitor": {"monitoring.coreos.com/v1"},
    "PodMonitor": {"monitoring.coreos.com/v1"},
    "PrometheusRule": {"monitoring.coreos.com/v1"},
}
CUSTOM_GROUPS = {"kafka.strimzi.io", "monitoring.coreos.com"}
SKIP_RE = re.compile(r"^(CKV2?_[A-Z0-9]+_\d+)=(.{10,})$")


def _docs(path: str) -> list[dict]:
    with open(path) as f:
        return [d for d in yaml.safe_load_all(f) if d]


def split(rendered: str, builtin_out: str) -> int:
    builtin, skipped, errors = [], Counter(), []
    for d in _docs(rendered):
        kind, api = d.get("kind", "?"), d.get("apiVersion", "?")
        group = api.split("/")[0] if "/" in api else ""
        if group in CUSTOM_GROUPS or kind in CUSTOM_KINDS:
            if api not in CUSTOM_KINDS.get(kind, ()):
                errors.append(f"unexpected custom resource {api} {kind} {d['metadata'].get('name')}")
            else:
                skipped[f"{kind} ({api})"] += 1
        else:
            builtin.append(d)
    with open(builtin_out, "w") as f:
        yaml.safe_dump_all(builtin, f, sort_keys=False)
    for e in errors:
        print(f"ERROR {e}")
    print(f"built-in resources: {len(builtin)}; custom resources without a schema (skipped): "
          + ", ".join(f"{k} x{n}" for k, n in sorted(skipped.items())))
    return 1 if errors or not builtin else 0


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
