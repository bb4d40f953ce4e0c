"""Validate custom resources against the `openAPIV3Schema` of their CustomResourceDefinitions.

    python k8s/custom_resources.py CRD_DIR RENDERED.yaml
        Validate every custom resource in RENDERED.yaml (anything outside the built-in API
        groups) against the CRDs under CRD_DIR; print one line per resource and exit 1 if any
        resource fails, including one whose kind and version no CRD there serves.

    schemas = load_schemas("k8s/crds")
    errors = validate(resource, schemas)     # [] when the API server would accept it

The OpenAPI v3 schema is turned into a JSON Schema (draft 4, which OpenAPI 3.0 schemas follow)
with the API server's rules for structural schemas:
- an object's fields are the ones its schema lists: any other field is an error (the API server
  rejects unknown fields under strict field validation, kubectl's default), unless the object has
  `x-kubernetes-preserve-unknown-fields: true` or an `additionalProperties` schema (a map);
- `x-kubernetes-int-or-string: true` accepts an integer or a string; `nullable: true` accepts null;
- `required`, `type`, `enum`, `pattern`, `minimum`/`maximum`, `oneOf`/`anyOf`/`not` apply as written;
- the CEL rules of `x-kubernetes-validations` are evaluated (cel-python) with `self` bound to
  the field they sit on, after the schema's `default`s are filled in, as the API server does on
  create; a rule that cannot be evaluated (e.g. it reads a field that is absent) fails, as there.
  Transition rules (`oldSelf`) only apply to updates and are left out.
`metadata` is checked as the API server checks any object's metadata (a name, string labels and
annotations, only ObjectMeta's fields), and a namespaced kind must carry a namespace.

Not checked: `format` (the CRDs here use it only on integers and on status timestamps).
"""

from __future__ import annotations

import functools
import re
import sys
from pathlib import Path

import celpy
import jsonschema
import yaml

# API groups of the built-in kinds: "" (core), group names without a dot (apps, batch, policy,
# autoscaling, ...) and the *.k8s.io groups. Everything else is a custom resource.
BUILTIN_GROUP_SUFFIX = ".k8s.io"
OBJECT_META_FIELDS = {
    "name", "generateName", "namespace", "labels", "annotations", "finalizers", "ownerReferences",
    "uid", "resourceVersion", "generation", "creationTimestamp", "deletionTimestamp",
    "deletionGracePeriodSeconds", "managedFields", "selfLink",
}
DNS_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
GLOBAL_FLAGS = re.compile(r"\(\?[imsU]+\)")
# Keywords whose value is one schema or a list of schemas (recursed into when converting).
SCHEMA_KEYWORDS = ("items", "not")
SCHEMA_LIST_KEYWORDS = ("allOf", "anyOf", "oneOf")


def api_group(api_version: str) -> str:
    return api_version.split("/")[0] if "/" in api_version else ""


def is_builtin(api_version: str) -> bool:
    group = api_group(api_version)
    return "." not in group or group.endswith(BUILTIN_GROUP_SUFFIX)


def python_pattern(pattern: str) -> str:
    """The API server's (Go RE2) pattern for Python's `re`, which wants global flags such as
    `(?i)` at the very start: `^(?i)(abort|warn)?$` becomes `(?i)^(abort|warn)?$`."""
    flags = "".join(GLOBAL_FLAGS.findall(pattern))
    return flags + GLOBAL_FLAGS.sub("", pattern) if flags else pattern


def to_json_schema(node: dict, structural: bool = True) -> dict:
    """A JSON Schema (draft 4) that accepts what the API server accepts for `node`.

    `structural` is False inside allOf/anyOf/oneOf/not: those branches only add constraints to
    the fields the enclosing object declares, so they must not forbid the others."""
    out = {k: v for k, v in node.items() if not k.startswith("x-kubernetes-") and k not in ("nullable", "format")}
    for key in SCHEMA_KEYWORDS:
        if isinstance(node.get(key), dict):
            out[key] = to_json_schema(node[key], structural and key == "items")
    for key in SCHEMA_LIST_KEYWORDS:
        if key in node:
            out[key] = [to_json_schema(n, False) for n in node[key]]
    if "properties" in node:
        out["properties"] = {k: to_json_schema(v, structural) for k, v in node["properties"].items()}
    if isinstance(node.get("additionalProperties"), dict):
        out["additionalProperties"] = to_json_schema(node["additionalProperties"], structural)
    if "pattern" in node:
        out["pattern"] = python_pattern(node["pattern"])
    if node.get("x-kubernetes-int-or-string"):
        out.pop("type", None)
        out.setdefault("anyOf", [{"type": "integer"}, {"type": "string"}])
    if (structural and node.get("type") == "object" and "additionalProperties" not in node
            and not node.get("x-kubernetes-preserve-unknown-fields")):
        out["additionalProperties"] = False
    if node.get("nullable") and "type" in out:
        out["type"] = [out["type"], "null"]
    return out


CEL = celpy.Environment()


@functools.lru_cache(maxsize=None)
def cel_program(rule: str):
    return CEL.program(CEL.compile(rule))


def cel_holds(rule: str, value) -> bool:
    try:
        result = cel_program(rule).evaluate({"self": celpy.json_to_cel(value)})
        return isinstance(result, celpy.celtypes.BoolType) and bool(result)
    except Exception:  # noqa: BLE001 - an error evaluating a rule refuses the object, as the API server does
        return False


def with_defaults(node: dict, value: dict) -> dict:
    defaults = {k: s["default"] for k, s in node.get("properties", {}).items() if "default" in s}
    return {**defaults, **value}


def cel_errors(node: dict, value, path: str) -> list[str]:
    """The failed `x-kubernetes-validations` rules at `node` and below, for `value` at `path`."""
    errors = []
    if isinstance(value, dict) and node.get("type") == "object":
        value = with_defaults(node, value)
        properties = node.get("properties", {})
        for key, item in value.items():
            sub = properties.get(key, node.get("additionalProperties"))
            if isinstance(sub, dict):
                errors += cel_errors(sub, item, f"{path}.{key}".lstrip("."))
    elif isinstance(value, list) and isinstance(node.get("items"), dict):
        for i, item in enumerate(value):
            errors += cel_errors(node["items"], item, f"{path}[{i}]")
    for rule in node.get("x-kubernetes-validations", []):
        if "oldSelf" not in rule["rule"] and not cel_holds(rule["rule"], value):
            errors.append(f"{path or '(root)'}: {rule.get('message') or 'rule not met: ' + rule['rule']}")
    return errors


def count_cel_rules(node) -> int:
    if isinstance(node, dict):
        return len(node.get("x-kubernetes-validations", [])) + sum(count_cel_rules(v) for v in node.values())
    if isinstance(node, list):
        return sum(count_cel_rules(v) for v in node)
    return 0


class Schema:
    """One served version of one CRD."""

    def __init__(self, crd: dict, version: dict):
        self.kind = crd["spec"]["names"]["kind"]
        self.api_version = f"{crd['spec']['group']}/{version['name']}"
        self.namespaced = crd["spec"]["scope"] == "Namespaced"
        raw = version["schema"]["openAPIV3Schema"]
        self.raw = {**raw, "properties": {k: v for k, v in raw["properties"].items() if k != "metadata"}}
        self.cel_rules = count_cel_rules(raw)
        schema = to_json_schema(raw)
        schema["properties"]["metadata"] = {"type": "object"}  # checked by check_metadata instead
        schema["required"] = sorted(set(schema.get("required", [])) | {"apiVersion", "kind", "metadata"})
        jsonschema.Draft4Validator.check_schema(schema)
        self.validator = jsonschema.Draft4Validator(schema)


def load_schemas(crd_dir: str | Path) -> dict[tuple[str, str], Schema]:
    """(apiVersion, kind) -> Schema for every served version of every CRD under crd_dir."""
    schemas = {}
    for path in sorted(Path(crd_dir).rglob("*.yaml")):
        for crd in yaml.safe_load_all(path.read_text()):
            if not crd or crd.get("kind") != "CustomResourceDefinition":
                continue
            for version in crd["spec"]["versions"]:
                if version.get("served"):
                    s = Schema(crd, version)
                    schemas[(s.api_version, s.kind)] = s
    return schemas


def check_metadata(meta, namespaced: bool) -> list[str]:
    if not isinstance(meta, dict):
        return ["metadata: must be an object"]
    errors = [f"metadata.{k}: unknown field" for k in sorted(set(meta) - OBJECT_META_FIELDS)]
    name = meta.get("name")
    if not isinstance(name, str) or len(name) > 253 or not DNS_SUBDOMAIN.match(name):
        errors.append(f"metadata.name: {name!r} is not a DNS subdomain name")
    for key in ("labels", "annotations"):
        values = meta.get(key) or {}
        if not isinstance(values, dict) or not all(isinstance(v, str) for v in values.values()):
            errors.append(f"metadata.{key}: values must be strings")
    if namespaced and not meta.get("namespace"):
        errors.append("metadata.namespace: missing on a namespaced kind")
    return errors


def _path(error: jsonschema.ValidationError) -> str:
    return "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in error.absolute_path).lstrip(".") or "(root)"


def validate(doc: dict, schemas: dict[tuple[str, str], Schema]) -> list[str]:
    """Every reason the API server would refuse `doc`; [] when it would accept it."""
    key = (doc.get("apiVersion", "?"), doc.get("kind", "?"))
    schema = schemas.get(key)
    if schema is None:
        served = sorted(v for v, k in schemas if k == key[1])
        return [f"no CRD serves {key[0]} {key[1]}" + (f" (served: {', '.join(served)})" if served else "")]
    errors = [f"{_path(e)}: {e.message}" for e in sorted(schema.validator.iter_errors(doc), key=_path)]
    if not errors:  # CEL rules assume the object already has the schema's shape
        errors = cel_errors(schema.raw, doc, "")
    return errors + check_metadata(doc.get("metadata"), schema.namespaced)


def describe(doc: dict) -> str:
    meta = doc.get("metadata") if isinstance(doc.get("metadata"), dict) else {}
    return f"{doc.get('kind', '?')} ({doc.get('apiVersion', '?')}) {meta.get('name', '?')}"


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print(__doc__, file=sys.stderr)
        return 2
    schemas = load_schemas(argv[0])
    with open(argv[1]) as f:
        docs = [d for d in yaml.safe_load_all(f) if d and not is_builtin(d.get("apiVersion", ""))]
    failed = 0
    for doc in docs:
        errors = validate(doc, schemas)
        failed += bool(errors)
        print(f"{'FAIL' if errors else 'ok  '} {describe(doc)}")
        for e in errors:
            print(f"       {e}")
    cel = sum(schemas[k].cel_rules for k in {(d.get("apiVersion"), d.get("kind")) for d in docs} if k in schemas)
    print(f"custom resources: {len(docs)} validated against their CRD schemas ({cel} CEL rules among them), "
          f"{failed} failed")
    return 1 if failed or not docs else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
