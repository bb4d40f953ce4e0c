"""The AI judge's Deployment in the rendered overlays: off until enabled, one at most, probes on its
status port, the rubric from a ConfigMap, its secrets from Secrets, and serving's Service as its judge
model. Its Kafka user and ACLs: test_kafka_users.py; its network policy and monitor: test_manifests.py."""

from __future__ import annotations

import pytest

from rlhf.settings import Settings
from tests.k8s.manifests import OVERLAYS, find, one, pod_specs, render


@pytest.fixture(scope="module", params=OVERLAYS)
def docs(request):
    return render(request.param)


def judge_container(docs: list[dict]) -> tuple[dict, dict]:
    pod = pod_specs(docs)["rlhf-judge"]
    (c,) = pod["containers"]
    return pod, c


def test_the_judge_is_off_until_enabled_and_never_two(docs):
    deploy = one(docs, "Deployment", "rlhf-judge")
    assert deploy["spec"]["replicas"] == 0  # an overlay sets 1 once the judge's API key Secret exists
    assert deploy["spec"]["strategy"]["type"] == "Recreate"  # two judges would judge every pair twice
    assert not find(docs, "HorizontalPodAutoscaler", "rlhf-judge")


def test_the_judge_runs_rlhf_judge_with_probes_on_its_status_port(docs):
    _, c = judge_container(docs)
    assert c["args"] == ["judge"]
    config = next(d for d in find(docs, "ConfigMap") if d["metadata"]["name"].startswith("rlhf-config"))["data"]
    (port,) = c["ports"]
    assert port["containerPort"] == int(config["RLHF_JUDGE_PORT"]) == Settings.model_fields["judge_port"].default
    for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
        assert c[probe]["httpGet"] == {"path": "/healthz", "port": port["name"]}, probe
    assert c["resources"]["requests"] and c["resources"]["limits"]


def test_the_rubric_is_a_configmap_and_secrets_come_from_secrets(docs):
    pod, c = judge_container(docs)
    env = {e["name"]: e for e in c["env"]}
    folder, _, filename = env["RLHF_JUDGE_RUBRIC"]["value"].rpartition("/")
    mount = next(m for m in c["volumeMounts"] if m["mountPath"] == folder)
    assert mount["readOnly"] is True
    volume = next(v for v in pod["volumes"] if v["name"] == mount["name"])
    rubric = one(docs, "ConfigMap", volume["configMap"]["name"])
    assert rubric["metadata"]["name"].startswith("rlhf-judge-rubric") and rubric["data"][filename].strip()
    assert env["RLHF_JUDGE_API_KEY"]["valueFrom"]["secretKeyRef"] == {"name": "rlhf-judge-api-key",
                                                                      "key": "RLHF_JUDGE_API_KEY"}
    assert env["RLHF_EVENT_HMAC_KEY"]["valueFrom"]["secretKeyRef"] == {"name": "rlhf-secrets",
                                                                       "key": "RLHF_EVENT_HMAC_KEY"}
    assert not find(docs, "Secret"), "no Secret is rendered: the operator creates them"


def test_the_judge_asks_servings_service(docs):
    _, c = judge_container(docs)
    url = next(e["value"] for e in c["env"] if e["name"] == "RLHF_JUDGE_URL")
    svc = one(docs, "Service", "rlhf-serving")
    assert url == f"http://{svc['metadata']['name']}:{svc['spec']['ports'][0]['port']}/v1"
