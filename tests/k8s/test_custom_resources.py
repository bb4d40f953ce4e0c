"""Custom resources against the real CRD schemas (k8s/crds), as k8s/check.sh validates them.

The validator is k8s/custom_resources.py; check.sh runs its command line on each rendered
overlay. These tests run the same code on the same renders, and show that it refuses what the
API server would refuse: a wrong field in the Kafka resource, an apiVersion no CRD serves, a
kind with no CRD at all.
"""

from __future__ import annotations

import copy
import importlib.util
import subprocess
import sys

import pytest
import yaml

from tests.k8s.manifests import K8S, OVERLAYS, kubectl, one, render

CRDS = K8S / "crds"


def _load_validator():
    spec = importlib.util.spec_from_file_location("custom_resources", K8S / "custom_resources.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


cr = _load_validator()
SCHEMAS = cr.load_schemas(CRDS)


def custom(docs: list[dict]) -> list[dict]:
    return [d for d in docs if not cr.is_builtin(d["apiVersion"])]


def run_cli(tmp_path, docs: list[dict]) -> subprocess.CompletedProcess:
    rendered = tmp_path / "rendered.yaml"
    rendered.write_text(yaml.safe_dump_all(docs, sort_keys=False))
    return subprocess.run([sys.executable, str(K8S / "custom_resources.py"), str(CRDS), str(rendered)],
                          capture_output=True, text=True, timeout=120)


def test_the_crds_serve_strimzi_v1_and_monitoring_v1_only():
    assert set(SCHEMAS) == {
        ("kafka.strimzi.io/v1", "Kafka"), ("kafka.strimzi.io/v1", "KafkaNodePool"),
        ("kafka.strimzi.io/v1", "KafkaTopic"), ("kafka.strimzi.io/v1", "KafkaUser"),
        ("monitoring.coreos.com/v1", "PodMonitor"), ("monitoring.coreos.com/v1", "PrometheusRule"),
        ("monitoring.coreos.com/v1", "ServiceMonitor"),
    }


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_kustomize_renders_without_warnings(overlay):
    result = subprocess.run([kubectl(), "kustomize", str(K8S / "overlays" / overlay)],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stderr == "", f"kubectl kustomize printed on stderr: {result.stderr}"


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_custom_resource_matches_its_crd(overlay, tmp_path):
    docs = render(overlay)
    resources = custom(docs)
    kinds = {d["kind"] for d in resources}
    assert {"Kafka", "KafkaNodePool", "KafkaTopic", "KafkaUser", "ServiceMonitor", "PodMonitor",
            "PrometheusRule"} <= kinds
    for d in resources:
        assert cr.validate(d, SCHEMAS) == [], cr.describe(d)
    result = run_cli(tmp_path, docs)
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"custom resources: {len(resources)} validated against their CRD schemas" in result.stdout
    assert result.stdout.rstrip().endswith(", 0 failed")


def _set(path: str, value):
    """A mutation that sets `path` (dots; [n] for list items) of the Kafka resource to value."""
    def mutate(doc: dict) -> None:
        keys = [int(k) if k.isdigit() else k for k in path.replace("[", ".").replace("]", "").split(".")]
        node = doc
        for k in keys[:-1]:
            node = node[k]
        if value is DELETE:
            del node[keys[-1]]
        else:
            node[keys[-1]] = value
    return mutate


DELETE = object()
WRONG_KAFKA = {
    # a misspelt field: the schema lists the fields of spec.kafka and has no place for others
    "unknown field": (_set("spec.kafka.listner", []), "spec.kafka: Additional properties are not allowed ('listner'"),
    "unknown nested field": (_set("spec.kafka.listeners[0].authentication.mechanism", "scram"),
                             "spec.kafka.listeners[0].authentication: Additional properties are not allowed"),
    "value outside the enum": (_set("spec.kafka.listeners[0].authentication.type", "scram-sha-256"),
                               "spec.kafka.listeners[0].authentication.type: 'scram-sha-256' is not one of"),
    "wrong type": (_set("spec.kafka.listeners[0].port", "9093"),
                   "spec.kafka.listeners[0].port: '9093' is not of type 'integer'"),
    "below the minimum": (_set("spec.kafka.listeners[0].port", 80), "spec.kafka.listeners[0].port: 80 is less than"),
    "missing required field": (_set("spec.kafka.listeners", DELETE), "spec.kafka: 'listeners' is a required property"),
    "missing required listener field": (_set("spec.kafka.listeners[0].tls", DELETE),
                                        "spec.kafka.listeners[0]: 'tls' is a required property"),
    "removed API version": (_set("apiVersion", "kafka.strimzi.io/v1beta2"),
                            "no CRD serves kafka.strimzi.io/v1beta2 Kafka (served: kafka.strimzi.io/v1)"),
    "no namespace": (_set("metadata.namespace", DELETE), "metadata.namespace: missing on a namespaced kind"),
}


@pytest.mark.parametrize("case", sorted(WRONG_KAFKA))
def test_a_wrong_field_in_the_kafka_resource_fails(case, tmp_path):
    mutate, expected = WRONG_KAFKA[case]
    docs = copy.deepcopy(render("prod-gpu"))
    kafka = one(docs, "Kafka", "rlhf-kafka")
    assert cr.validate(kafka, SCHEMAS) == []
    mutate(kafka)
    errors = cr.validate(kafka, SCHEMAS)
    assert any(expected in e for e in errors), errors
    result = run_cli(tmp_path, docs)  # what k8s/check.sh runs on the rendered overlay
    assert result.returncode == 1
    assert "FAIL Kafka" in result.stdout and expected in result.stdout, result.stdout
    assert "1 failed" in result.stdout


def test_free_form_broker_config_is_accepted_but_must_be_a_map():
    """spec.kafka.config has x-kubernetes-preserve-unknown-fields: any key, but still an object."""
    kafka = copy.deepcopy(one(render("prod-gpu"), "Kafka", "rlhf-kafka"))
    kafka["spec"]["kafka"]["config"]["log.retention.check.interval.ms"] = 300000
    assert cr.validate(kafka, SCHEMAS) == []
    kafka["spec"]["kafka"]["config"] = "min.insync.replicas=2"
    assert any("spec.kafka.config: 'min.insync.replicas=2' is not of type 'object'" in e
               for e in cr.validate(kafka, SCHEMAS))


@pytest.mark.parametrize("rack, error", [
    ({"topologyKey": "topology.kubernetes.io/zone"}, None),
    ({}, "spec.kafka.rack: topologyKey property is required"),
    ({"type": "environment-variable"}, "spec.kafka.rack: envVarName property is required"),
    ({"type": "environment-variable", "envVarName": "ZONE"}, None),
])
def test_the_crds_cel_rules_are_evaluated(rack, error):
    """spec.kafka.rack's x-kubernetes-validations: the schema alone accepts all four."""
    kafka = copy.deepcopy(one(render("prod-gpu"), "Kafka", "rlhf-kafka"))
    kafka["spec"]["kafka"]["rack"] = rack
    assert cr.validate(kafka, SCHEMAS) == ([error] if error else [])


def test_a_scram_user_cannot_carry_certificate_validity():
    user = copy.deepcopy(one(render("prod-gpu"), "KafkaUser", "rlhf-serving"))
    user["spec"]["authentication"]["validityDays"] = 365
    assert cr.validate(user, SCHEMAS) == [
        "spec.authentication: 'validityDays' and 'renewalDays' can be configured only with 'type: tls'"]


def test_int_or_string_fields_take_either():
    monitor = copy.deepcopy(one(render("prod-gpu"), "PodMonitor", "rlhf-learner"))
    endpoint = monitor["spec"]["podMetricsEndpoints"][0]
    endpoint.pop("port")
    for target in (8001, "metrics"):
        endpoint["targetPort"] = target
        assert cr.validate(monitor, SCHEMAS) == [], target
    endpoint["targetPort"] = [8001]
    assert cr.validate(monitor, SCHEMAS)


def test_a_kind_without_a_crd_fails_instead_of_being_skipped(tmp_path):
    docs = render("dev-cpu") + [{
        "apiVersion": "cert-manager.io/v1", "kind": "Certificate",
        "metadata": {"name": "rlhf", "namespace": "rlhf"}, "spec": {"secretName": "rlhf-tls"},
    }]
    result = run_cli(tmp_path, docs)
    assert result.returncode == 1
    assert "FAIL Certificate (cert-manager.io/v1) rlhf" in result.stdout
    assert "no CRD serves cert-manager.io/v1 Certificate" in result.stdout
    # check.sh's split leaves it out of the built-in resources kubernetes-validate checks
    split = subprocess.run([sys.executable, str(K8S / "check_rendered.py"), "split", str(tmp_path / "rendered.yaml"),
                            str(tmp_path / "builtin.yaml")], capture_output=True, text=True, timeout=120)
    assert split.returncode == 0, split.stderr
    assert "Certificate (cert-manager.io/v1) x1" in split.stdout
    builtin = [d for d in yaml.safe_load_all((tmp_path / "builtin.yaml").read_text()) if d]
    assert builtin and all(cr.is_builtin(d["apiVersion"]) for d in builtin)
    assert {d["kind"] for d in builtin} >= {"Deployment", "Service", "NetworkPolicy", "ConfigMap"}
