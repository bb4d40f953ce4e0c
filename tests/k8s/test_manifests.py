"""What the rendered overlays promise an operator, checked resource by resource.

k8s/check.sh checks every resource against its schema (kubernetes-validate for the built-in
kinds, the CRDs in k8s/crds for the custom ones: test_custom_resources.py); these tests check
the intent. Kafka users and ACLs: test_kafka_users.py.
"""

from __future__ import annotations

import importlib
import json
import re

import pytest
from prometheus_client import REGISTRY

from feedback.schema import ALL_TOPICS
from tests.k8s.manifests import K8S, OVERLAYS, containers, find, one, pod_specs, render

METRICS = [
    "rlhf_http_requests_total", "rlhf_http_request_duration_seconds_bucket",
    "rlhf_time_to_first_token_seconds_bucket", "rlhf_generated_tokens_total",
    "rlhf_inflight_requests", "rlhf_engine_queue_depth", "rlhf_feedback_events_total",
    "rlhf_spool_events", "rlhf_consumer_lag", "rlhf_learner_reward_mean", "rlhf_learner_kl",
    "rlhf_learner_rm_accuracy", "rlhf_adapter_active_info",
    "rlhf_learner_adapters_published_total", "rlhf_learner_adapters_rejected_total",
    "rlhf_version_rate", "rlhf_version_observations", "rlhf_version_answers", "rlhf_version_answer_tokens",
    "rlhf_canary_difference", "rlhf_canary_decisions_total", "rlhf_learner_feedback_by_type", "rlhf_version_rating",
    "rlhf_completion_errors_total", "rlhf_version_offline",
]
# The AI judge's figures and the learner's per-source counts, each with a dashboard panel titled so.
JUDGE_PANELS = {"rlhf_judge_agreement": "judge agreement with users", "rlhf_judge_agreement_lower_bound": "95%",
                "rlhf_judge_agreement_samples": "judge agreement", "rlhf_judge_paused": "judge paused",
                "rlhf_judge_events_total": "verdicts published", "rlhf_judge_verdicts_total": "verdicts",
                "rlhf_learner_feedback_by_source": "feedback in the learner by source"}
# The modules that define every Prometheus metric serving, the learner and the judge export.
METRIC_MODULES = ("serving.metrics", "serving.concurrency", "adapters.follower", "feedback.producer",
                  "feedback.consumer", "learner.main", "learner.live_metrics", "judge.main")


def registered_metric_names() -> set[str]:
    """The series names the code exports (counters with _total, histograms with _bucket/_sum/_count)."""
    for module in METRIC_MODULES:
        importlib.import_module(module)
    suffixes = {"counter": ("_total",), "histogram": ("_bucket", "_sum", "_count"), "gauge": ("",), "info": ("_info",)}
    return {m.name + s for m in REGISTRY.collect() if m.name.startswith("rlhf_") for s in suffixes.get(m.type, ("",))}


@pytest.fixture(scope="module", params=OVERLAYS)
def overlay(request):
    return request.param, render(request.param)


def test_both_overlays_exist():
    assert {"dev-cpu", "prod-gpu"} <= set(OVERLAYS)


# --- serving ---------------------------------------------------------------------------

def test_serving_probes(overlay):
    _, docs = overlay
    c = next(c for c in pod_specs(docs)["rlhf-serving"]["containers"] if c["name"] == "serving")
    assert c["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert c["livenessProbe"]["httpGet"]["path"] == "/healthz"
    startup = c["startupProbe"]
    assert startup["httpGet"]["path"] == "/healthz"
    assert startup["periodSeconds"] * startup["failureThreshold"] >= 600, "model loading needs minutes"
    assert c["resources"]["requests"] and c["resources"]["limits"]


def test_serving_replicas_pdb_hpa_service(overlay):
    name, docs = overlay
    deploy = one(docs, "Deployment", "rlhf-serving")
    labels = deploy["spec"]["template"]["metadata"]["labels"]
    hpa = one(docs, "HorizontalPodAutoscaler", "rlhf-serving")
    assert hpa["spec"]["scaleTargetRef"]["name"] == "rlhf-serving"
    pdb = one(docs, "PodDisruptionBudget", "rlhf-serving")
    assert pdb["spec"]["selector"]["matchLabels"].items() <= labels.items()
    svc = one(docs, "Service", "rlhf-serving")
    assert svc["spec"]["selector"].items() <= labels.items()
    assert svc["spec"]["ports"][0]["targetPort"] == "http"
    anti = deploy["spec"]["template"]["spec"]["affinity"]["podAntiAffinity"]
    assert anti["preferredDuringSchedulingIgnoredDuringExecution"]
    if name == "prod-gpu":
        assert deploy["spec"]["replicas"] >= 2
        assert hpa["spec"]["minReplicas"] >= 2
        assert deploy["spec"]["strategy"]["rollingUpdate"]["maxUnavailable"] == 0


def test_serving_needs_api_keys_from_a_secret_and_shares_quotas_by_its_replica_count(overlay):
    _, docs = overlay
    deploy = one(docs, "Deployment", "rlhf-serving")
    pod = deploy["spec"]["template"]["spec"]
    c = next(c for c in pod["containers"] if c["name"] == "serving")
    env = {e["name"]: e.get("value") for e in c["env"]}
    assert int(env["RLHF_SERVING_REPLICAS"]) == deploy["spec"]["replicas"]
    assert one(docs, "HorizontalPodAutoscaler", "rlhf-serving")["spec"]["minReplicas"] == deploy["spec"]["replicas"]
    config = one(docs, "ConfigMap", next(s["configMapRef"]["name"] for s in c["envFrom"]))["data"]
    assert config["RLHF_AUTH"] == "api-key"
    keys_dir, _, keys_name = config["RLHF_API_KEYS_FILE"].rpartition("/")
    mount = next(m for m in c["volumeMounts"] if m["mountPath"] == keys_dir)
    assert mount["readOnly"] is True
    volume = next(v for v in pod["volumes"] if v["name"] == mount["name"])
    assert volume["secret"]["secretName"] == "rlhf-api-keys"
    assert not find(docs, "Secret"), "no Secret is rendered: keys and secrets are created by the operator"
    assert keys_name == "api-keys"  # the Secret's key, as `kubectl create secret ... --from-file=api-keys=...`


def test_prod_uses_gpus_and_dev_does_not():
    for overlay in OVERLAYS:
        pods = pod_specs(render(overlay))
        for workload in ("rlhf-serving", "rlhf-learner"):
            main = pods[workload]["containers"][0]
            gpus = main["resources"]["limits"].get("nvidia.com/gpu")
            assert (gpus == "1") if overlay == "prod-gpu" else gpus is None, (overlay, workload)


# --- learner and storage ---------------------------------------------------------------

def test_learner_is_a_single_writer(overlay):
    _, docs = overlay
    learner = one(docs, "Deployment", "rlhf-learner")
    assert learner["spec"]["replicas"] == 1
    assert learner["spec"]["strategy"]["type"] == "Recreate"
    pod = learner["spec"]["template"]["spec"]
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert volumes["data"]["persistentVolumeClaim"]["claimName"] == "rlhf-learner-data"
    pvc = one(docs, "PersistentVolumeClaim", "rlhf-learner-data")
    assert pvc["spec"]["accessModes"] == ["ReadWriteOnce"]
    assert not find(docs, "HorizontalPodAutoscaler", "rlhf-learner")


def test_only_the_learner_writes_adapters(overlay):
    name, docs = overlay
    pods = pod_specs(docs)
    for workload, pod in pods.items():
        for v in pod["volumes"]:
            if v.get("persistentVolumeClaim", {}).get("claimName") != "rlhf-adapters":
                continue
            mounts = [m for c in containers(pod) for m in c.get("volumeMounts", []) if m["name"] == v["name"]]
            assert mounts and all(m["mountPath"] == "/adapters" for m in mounts)
            writable = not v["persistentVolumeClaim"].get("readOnly") and not all(m.get("readOnly") for m in mounts)
            assert writable == (workload == "rlhf-learner"), workload
    pvc = one(docs, "PersistentVolumeClaim", "rlhf-adapters")
    if name == "prod-gpu":
        assert pvc["spec"]["accessModes"] == ["ReadWriteMany"]


# --- security --------------------------------------------------------------------------

def test_every_pod_is_locked_down(overlay):
    _, docs = overlay
    for workload, pod in pod_specs(docs).items():
        assert pod["securityContext"]["runAsNonRoot"] is True
        assert pod["securityContext"]["seccompProfile"]["type"] == "RuntimeDefault"
        assert pod["automountServiceAccountToken"] is False
        assert pod["enableServiceLinks"] is False, "service links inject RLHF_*-prefixed variables"
        mounts = set()
        for c in containers(pod):
            sc = c["securityContext"]
            assert sc["allowPrivilegeEscalation"] is False, (workload, c["name"])
            assert sc["readOnlyRootFilesystem"] is True, (workload, c["name"])
            assert sc["capabilities"]["drop"] == ["ALL"], (workload, c["name"])
            assert "privileged" not in sc or sc["privileged"] is False
            mounts |= {m["mountPath"] for m in c.get("volumeMounts", [])}
        assert {"/tmp", "/cache"} <= mounts, f"{workload} needs writable /tmp and cache"


def test_network_policies_cover_the_app_pods(overlay):
    _, docs = overlay
    policies = find(docs, "NetworkPolicy")
    by_target = {p["spec"]["podSelector"]["matchLabels"]["app.kubernetes.io/name"]: p for p in policies}
    assert set(by_target) == {"rlhf-serving", "rlhf-learner", "rlhf-judge"}
    for p in policies:
        assert p["spec"]["policyTypes"] == ["Ingress", "Egress"]
    learner_ports = {port["port"] for rule in by_target["rlhf-learner"]["spec"]["ingress"] for port in rule["ports"]}
    assert learner_ports == {8001}
    serving_ports = {port["port"] for rule in by_target["rlhf-serving"]["spec"]["ingress"] for port in rule["ports"]}
    assert serving_ports == {8000}
    judge_ports = {port["port"] for rule in by_target["rlhf-judge"]["spec"]["ingress"] for port in rule["ports"]}
    assert judge_ports == {8002}
    # the judge asks serving: serving lets its pods in, and it may go out to serving's port
    serving_from = [peer for rule in by_target["rlhf-serving"]["spec"]["ingress"] for peer in rule["from"]]
    assert {"podSelector": {"matchLabels": {"app.kubernetes.io/name": "rlhf-judge"}}} in serving_from
    judge_to = [(peer, port["port"]) for rule in by_target["rlhf-judge"]["spec"]["egress"]
                for peer in rule.get("to", []) for port in rule["ports"]]
    assert ({"podSelector": {"matchLabels": {"app.kubernetes.io/name": "rlhf-serving"}}}, 8000) in judge_to
    kafka = one(docs, "Kafka", "rlhf-kafka")
    peers = kafka["spec"]["kafka"]["listeners"][0]["networkPolicyPeers"]
    assert {p["podSelector"]["matchLabels"]["app.kubernetes.io/name"] for p in peers} == {
        "rlhf-serving", "rlhf-learner", "rlhf-judge"}


# --- Kafka -----------------------------------------------------------------------------

def test_prod_kafka_is_durable():
    docs = render("prod-gpu")
    kafka = one(docs, "Kafka", "rlhf-kafka")
    config = kafka["spec"]["kafka"]["config"]
    assert config["default.replication.factor"] == 3
    assert config["min.insync.replicas"] == 2
    assert config["unclean.leader.election.enable"] is False
    assert "zookeeper" not in kafka["spec"]
    pools = find(docs, "KafkaNodePool")
    assert sum(p["spec"]["replicas"] for p in pools) == 3
    assert all({"controller", "broker"} <= set(p["spec"]["roles"]) for p in pools), "KRaft: no ZooKeeper"
    assert all(p["metadata"]["labels"]["strimzi.io/cluster"] == "rlhf-kafka" for p in pools)
    topics = find(docs, "KafkaTopic")
    assert {t["spec"]["topicName"] for t in topics} == set(ALL_TOPICS)
    for t in topics:
        assert t["metadata"]["labels"]["strimzi.io/cluster"] == "rlhf-kafka"
        assert t["spec"]["replicas"] == 3
        assert t["spec"]["config"]["min.insync.replicas"] == 2
        assert t["spec"]["config"]["unclean.leader.election.enable"] is False


def test_dev_kafka_fits_one_node():
    docs = render("dev-cpu")
    assert sum(p["spec"]["replicas"] for p in find(docs, "KafkaNodePool")) == 1
    for t in find(docs, "KafkaTopic"):
        assert t["spec"]["replicas"] == 1 and t["spec"]["config"]["min.insync.replicas"] == 1
    config = one(docs, "Kafka", "rlhf-kafka")["spec"]["kafka"]["config"]
    assert config["default.replication.factor"] == 1 and config["min.insync.replicas"] == 1


def test_bootstrap_points_at_the_strimzi_listener(overlay):
    _, docs = overlay
    cm = next(d for d in find(docs, "ConfigMap") if d["metadata"]["name"].startswith("rlhf-config"))
    kafka = one(docs, "Kafka", "rlhf-kafka")
    port = kafka["spec"]["kafka"]["listeners"][0]["port"]
    assert cm["data"]["RLHF_KAFKA_BOOTSTRAP"] == f"rlhf-kafka-kafka-bootstrap:{port}"
    replicas = {t["spec"]["replicas"] for t in find(docs, "KafkaTopic")}
    assert replicas == {int(cm["data"]["RLHF_TOPIC_REPLICATION"])}


# --- monitoring ------------------------------------------------------------------------

def test_monitors_scrape_named_ports(overlay):
    _, docs = overlay
    pods = pod_specs(docs)
    sm = one(docs, "ServiceMonitor", "rlhf-serving")
    svc = one(docs, "Service", "rlhf-serving")
    assert sm["spec"]["selector"]["matchLabels"].items() <= svc["metadata"]["labels"].items()
    assert sm["spec"]["endpoints"][0]["port"] in {p["name"] for p in svc["spec"]["ports"]}
    assert sm["spec"]["endpoints"][0]["path"] == "/metrics"
    pm = one(docs, "PodMonitor", "rlhf-learner")
    learner = one(docs, "Deployment", "rlhf-learner")
    assert pm["spec"]["selector"]["matchLabels"].items() <= learner["spec"]["template"]["metadata"]["labels"].items()
    ports = {p["name"] for p in pods["rlhf-learner"]["containers"][0]["ports"]}
    assert pm["spec"]["podMetricsEndpoints"][0]["port"] in ports
    pm = one(docs, "PodMonitor", "rlhf-judge")
    judge = one(docs, "Deployment", "rlhf-judge")
    assert pm["spec"]["selector"]["matchLabels"].items() <= judge["spec"]["template"]["metadata"]["labels"].items()
    assert pm["spec"]["podMetricsEndpoints"][0]["port"] in {p["name"] for p in pods["rlhf-judge"]["containers"][0]["ports"]}
    assert pm["spec"]["podMetricsEndpoints"][0]["path"] == "/metrics"


def test_dashboard_shows_every_metric(overlay):
    _, docs = overlay
    cm = one(docs, "ConfigMap", "rlhf-grafana-dashboard")
    assert cm["metadata"]["labels"]["grafana_dashboard"] == "1"
    dash = json.loads(cm["data"]["rlhf.json"])
    exprs = [t["expr"] for p in dash["panels"] for t in p.get("targets", [])]
    text = "\n".join(exprs)
    for metric in METRICS:
        assert metric in text, f"dashboard has no panel for {metric}"
    titles = " ".join(p["title"].lower() for p in dash["panels"])
    for word in ("requests", "latency", "tokens", "feedback", "lag", "reward", "kl", "adapter version",
                 "thumbs-up rate per version", "blind-vote win rate", "canary decisions", "canary minus active",
                 "version rating", "time to first token per version", "error rate per version",
                 "offline figures per version", "a/b win rate against the parent", "perplexity on the reference text"):
        assert word in titles, word
    ids = [p["id"] for p in dash["panels"]]
    assert len(ids) == len(set(ids))


def test_dashboard_shows_the_judges_figures(overlay):
    _, docs = overlay
    dash = json.loads(one(docs, "ConfigMap", "rlhf-grafana-dashboard")["data"]["rlhf.json"])
    for metric, title in JUDGE_PANELS.items():
        panels = [p["title"].lower() for p in dash["panels"] if any(metric in t["expr"] for t in p.get("targets", []))]
        assert any(title in t for t in panels), f"no panel titled with {title!r} shows {metric}: {panels}"
    assert set(JUDGE_PANELS) <= registered_metric_names()


def test_queries_use_only_known_metrics(overlay):
    _, docs = overlay
    rule = one(docs, "PrometheusRule", "rlhf")
    dash = json.loads(one(docs, "ConfigMap", "rlhf-grafana-dashboard")["data"]["rlhf.json"])
    exprs = [r["expr"] for g in rule["spec"]["groups"] for r in g["rules"]]
    exprs += [t["expr"] for p in dash["panels"] for t in p.get("targets", [])]
    used = {m for e in exprs for m in re.findall(r"\b(rlhf_[a-z_]+)\b", e)}
    exported = registered_metric_names()
    assert used <= exported, f"metrics no code exports: {sorted(used - exported)}"
    assert set(METRICS) <= exported


def test_readme_covers_the_operator_tasks():
    text = (K8S / "README.md").read_text().lower()
    for topic in ("strimzi", "gpu operator", "prometheus operator", "rlhf adapters publish",
                  "rlhf adapters rollback", "s3", "networkpolicy", "torchrun", "existing kafka"):
        assert topic in text, topic
