"""The RLHF_* variables the manifests set are the ones the code reads (rlhf/settings.py).

Names come from container `env` entries (plain values, downward API, Secret references) and
from the keys of the `rlhf-config` ConfigMap the containers load with `envFrom`. Each must be
a field of `rlhf.settings.Settings` (env name = "RLHF_" + field name in upper case), and
together they must be exactly the set below: adding a setting to the manifests is a
deliberate change to this list.
"""

from __future__ import annotations

import os
import re

import pytest

from rlhf.settings import Settings
from tests.k8s.manifests import K8S, OVERLAYS, ROOT, containers, find, pod_specs, render, source_docs

# What the deployment sets, and why each is needed there.
EXPECTED = {
    "RLHF_MODEL",                   # gemma-3-270m (dev-cpu) or a model folder on a volume (prod-gpu)
    "RLHF_HOST",                    # 0.0.0.0: reachable from the Service, not only loopback
    "RLHF_PORT",                    # serving's port, matches containerPort/probes/Service
    "RLHF_LEARNER_PORT",            # learner's /metrics and /healthz, matches its probes
    "RLHF_DEV_MODE",                # false: refuse the built-in development HMAC key
    "RLHF_KAFKA_BOOTSTRAP",         # the Strimzi bootstrap Service, its TLS listener
    "RLHF_KAFKA_SECURITY_PROTOCOL",  # SASL_SSL: TLS + SCRAM-SHA-512 (the listener's authentication)
    "RLHF_KAFKA_SASL_MECHANISM",    # SCRAM-SHA-512
    "RLHF_KAFKA_SSL_CAFILE",        # the cluster CA certificate (Secret rlhf-kafka-cluster-ca-cert), mounted
    "RLHF_KAFKA_SASL_USERNAME",     # per workload: its KafkaUser (k8s/kafka/users.yaml)
    "RLHF_KAFKA_SASL_PASSWORD_FILE",  # that user's Secret from the User Operator, mounted as a file
    "RLHF_TOPIC_PARTITIONS",        # if the code creates a topic first, same shape as KafkaTopic
    "RLHF_TOPIC_REPLICATION",
    "RLHF_DATA_DIR",                # /data: spool (serving), learner store (learner volume)
    "RLHF_ADAPTER_DIR",             # /adapters: the ReadWriteMany adapter store
    "RLHF_CACHE_DIR",               # /cache: prepared models, writable emptyDir
    "RLHF_MAX_MODEL_LEN",
    "RLHF_CANARY_FRACTION",
    "RLHF_LOG_LEVEL",
    "RLHF_GPU_MEMORY_UTILIZATION",  # per workload: serving and learner share no device budget
    "RLHF_KV_CACHE_GB",             # serving: fixed on CPU (inside the memory limit), 0 on GPU
    "RLHF_REPLICA_ID",              # the pod name, from the downward API
    "RLHF_HMAC_KEY",                # from the Secret rlhf-secrets
    "RLHF_ADMIN_TOKEN",             # from the Secret rlhf-secrets
    "RLHF_EVENT_HMAC_KEY",          # from the Secret rlhf-secrets: serving's HMAC on events, checked by the learner
    "RLHF_TRUSTED_KEYS",            # the Secret rlhf-trusted-keys (public keys), mounted in serving and the learner
    "RLHF_SIGNING_KEY_FILE",        # the learner: the Secret rlhf-signing-key (private), mounted as a file
    "RLHF_AUTH",                    # api-key: no anonymous callers outside dev mode
    "RLHF_API_KEYS_FILE",           # the Secret rlhf-api-keys, mounted as a file
    "RLHF_SERVING_REPLICAS",        # = the Deployment's replicas: how the replicas share the quotas
    "RLHF_CHAT_RATE_LIMIT",         # quotas (off by default): per user and per client
    "RLHF_CLIENT_CHAT_RATE_LIMIT",
    "RLHF_CLIENT_FEEDBACK_RATE_LIMIT",
    "RLHF_JUDGE_PORT",              # the AI judge's /metrics and /healthz, matches its probes
    "RLHF_JUDGE_URL",               # the judge asks serving's Service
    "RLHF_JUDGE_API_KEY",           # from the Secret rlhf-judge-api-key: the judge's key for serving
    "RLHF_JUDGE_RUBRIC",            # the ConfigMap rlhf-judge-rubric, mounted as a file
}
SECRETS = {"RLHF_HMAC_KEY", "RLHF_ADMIN_TOKEN", "RLHF_EVENT_HMAC_KEY"}
IMPORTANT = {"model", "kafka_bootstrap", "adapter_dir", "data_dir", "hmac_key", "admin_token"}


def env_name(field: str) -> str:
    return "RLHF_" + field.upper()


SETTINGS_NAMES = {env_name(f) for f in Settings.model_fields}


def names_in(docs: list[dict]) -> set[str]:
    """RLHF_* names set by the workloads in `docs`: env entries and envFrom ConfigMap keys."""
    configmaps = {d["metadata"]["name"]: d for d in find(docs, "ConfigMap")}
    names = set()
    for pod in pod_specs(docs).values():
        for c in containers(pod):
            names |= {e["name"] for e in c.get("env", [])}
            for src in c.get("envFrom", []):
                if "configMapRef" in src:
                    names |= set(configmaps[src["configMapRef"]["name"]].get("data", {}))
    return {n for n in names if n.startswith("RLHF_")}


def generator_literals() -> dict[str, str]:
    """name -> value of every configMapGenerator literal under k8s/ (an overlay's after the base's)."""
    values = {}
    for doc in source_docs():
        if doc.get("kind") == "Kustomization":
            for gen in doc.get("configMapGenerator", []):
                values.update(lit.split("=", 1) for lit in gen.get("literals", []))
    return values


def names_in_sources() -> set[str]:
    """The same, read from the files under k8s/ (base, patches, generator literals)."""
    names = set(generator_literals())
    for doc in source_docs():
        if doc.get("kind") != "Kustomization":
            for pod in pod_specs([doc]).values():
                for c in containers(pod):
                    names |= {e["name"] for e in c.get("env", [])}
    return {n for n in names if n.startswith("RLHF_")}


def test_expected_names_are_settings_fields():
    assert EXPECTED <= SETTINGS_NAMES, f"not fields of Settings: {sorted(EXPECTED - SETTINGS_NAMES)}"


def test_important_settings_are_set():
    assert {env_name(f) for f in IMPORTANT} <= EXPECTED


def test_source_files_set_exactly_the_expected_names():
    found = names_in_sources()
    assert found - SETTINGS_NAMES == set(), f"manifests set names Settings does not define: {sorted(found - SETTINGS_NAMES)}"
    assert found == EXPECTED, f"missing {sorted(EXPECTED - found)}, unexpected {sorted(found - EXPECTED)}"


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_rendered_overlay_sets_exactly_the_expected_names(overlay):
    found = names_in(render(overlay))
    assert found - SETTINGS_NAMES == set(), f"{overlay} sets names Settings does not define: {sorted(found - SETTINGS_NAMES)}"
    assert found == EXPECTED, f"{overlay}: missing {sorted(EXPECTED - found)}, unexpected {sorted(found - EXPECTED)}"


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_secrets_come_from_the_secret_only(overlay):
    docs = render(overlay)
    for cm in find(docs, "ConfigMap"):
        assert not SECRETS & set(cm.get("data", {})), f"secret in ConfigMap {cm['metadata']['name']}"
    for name, pod in pod_specs(docs).items():
        for c in containers(pod):
            for e in c.get("env", []):
                if e["name"] in SECRETS:
                    assert "value" not in e, f"{name}/{c['name']} sets {e['name']} in plain text"
                    ref = e["valueFrom"]["secretKeyRef"]
                    assert ref["name"] == "rlhf-secrets" and ref["key"] == e["name"]


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_each_container_gets_settings_the_code_accepts(overlay, monkeypatch):
    """Build the Settings object from each container's environment, as the pod would."""
    docs = render(overlay)
    configmaps = {d["metadata"]["name"]: d for d in find(docs, "ConfigMap")}
    for name, pod in pod_specs(docs).items():
        for c in containers(pod):
            for var in [v for v in os.environ if v.startswith("RLHF_")]:
                monkeypatch.delenv(var)
            for src in c.get("envFrom", []):
                for k, v in configmaps[src["configMapRef"]["name"]].get("data", {}).items():
                    monkeypatch.setenv(k, v)
            for e in c.get("env", []):
                if "value" in e:
                    monkeypatch.setenv(e["name"], e["value"])
                elif "secretKeyRef" in e.get("valueFrom", {}):
                    monkeypatch.setenv(e["name"], "a-real-secret-of-32-characters!!")
                elif "fieldRef" in e.get("valueFrom", {}):
                    monkeypatch.setenv(e["name"], f"{name}-abc12")
            s = Settings()
            assert s.dev_mode is False, f"{overlay} {name}/{c['name']}: RLHF_DEV_MODE must be false"
            assert s.host == "0.0.0.0"
            assert str(s.data_dir) == "/data" and str(s.adapter_dir) == "/adapters" and str(s.cache_dir) == "/cache"
            if c["name"] == "serving":
                s.check_secrets()  # would exit if the HMAC key were a placeholder
                s.check_auth()  # would exit without real authentication
                assert s.auth != "none"
                assert s.admin_token, "serving needs the admin token"
                ports = [p["containerPort"] for p in c["ports"]]
                assert ports == [s.port]
            if c["name"] == "learner":
                assert [p["containerPort"] for p in c["ports"]] == [s.learner_port]
            if c["name"] == "judge":
                assert [p["containerPort"] for p in c["ports"]] == [s.judge_port]
                assert s.judge_url and s.judge_api_key and s.event_hmac_key


def test_dockerfile_sets_only_settings_names():
    text = (ROOT / "Dockerfile").read_text()
    names = set(re.findall(r"\b(RLHF_[A-Z_]+)=", text))
    assert names, "the Dockerfile sets the container defaults (host, data/adapter/cache dirs)"
    assert names <= SETTINGS_NAMES, f"not fields of Settings: {sorted(names - SETTINGS_NAMES)}"


def test_dockerfile_and_manifests_agree_on_what_both_set():
    """The image's defaults (host, data/adapter/cache folders) are the values the pods set."""
    docker = dict(re.findall(r"\b(RLHF_[A-Z_]+)=([^\s\\]+)", (ROOT / "Dockerfile").read_text()))
    k8s = generator_literals()
    both = docker.keys() & k8s.keys()
    assert {"RLHF_HOST", "RLHF_DATA_DIR", "RLHF_ADAPTER_DIR", "RLHF_CACHE_DIR"} <= both
    assert {n: docker[n] for n in both} == {n: k8s[n] for n in both}


def test_readme_mentions_only_settings_names():
    text = (K8S / "README.md").read_text()
    names = set(re.findall(r"\b(RLHF_[A-Z_]+[A-Z])\b", text))
    assert names <= SETTINGS_NAMES, f"k8s/README.md names unknown settings: {sorted(names - SETTINGS_NAMES)}"

