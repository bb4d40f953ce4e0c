"""Kafka users and ACLs in the rendered overlays: one KafkaUser per component, TLS + SCRAM-SHA-512,
and exactly the access each component needs (nobody but the learner writes rlhf.adapters).

The ACL table is checked on what Kafka would enforce: each KafkaUser's rules are expanded over
the project's topics (literal, prefix and `*` names; `All` and the operations Read/Write imply
Describe), so a broad rule cannot hide a permission the table does not list.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from feedback.kafka_security import client_security
from feedback.schema import ALL_TOPICS, TOPIC_ADAPTERS, TOPIC_DEADLETTER, TOPIC_FEEDBACK, TOPIC_INTERACTIONS
from rlhf.settings import Settings
from tests.k8s.manifests import ROOT, find, one, pod_specs, render

KAFKA = "rlhf-kafka"
CA_SECRET = f"{KAFKA}-cluster-ca-cert"  # Strimzi's name for the cluster CA certificate Secret


def group_id(module: str) -> str:
    """The consumer group id (GROUP_ID) of `module` ("learner/main.py"), read without importing it (torch, vLLM)."""
    tree = ast.parse((ROOT / module).read_text())
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(getattr(t, "id", None) == "GROUP_ID" for t in node.targets):
            return ast.literal_eval(node.value)
    raise AssertionError(f"{module} defines no GROUP_ID")


# The table of the issue: user -> (resource type, name) -> operations it may perform.
EXPECTED_ACCESS = {
    "rlhf-serving": {
        ("topic", TOPIC_INTERACTIONS): {"Write"},
        ("topic", TOPIC_FEEDBACK): {"Write"},
        ("topic", TOPIC_DEADLETTER): {"Write"},
        ("topic", TOPIC_ADAPTERS): {"Read"},
    },
    "rlhf-learner": {
        ("topic", TOPIC_INTERACTIONS): {"Read"},
        ("topic", TOPIC_FEEDBACK): {"Read"},
        ("topic", TOPIC_ADAPTERS): {"Read", "Write"},
        ("topic", TOPIC_DEADLETTER): {"Write"},
        ("group", group_id("learner/main.py")): {"Read"},
    },
    "rlhf-judge": {  # reads answers and users' choices, writes its verdicts; skips malformed records
        ("topic", TOPIC_INTERACTIONS): {"Read"},
        ("topic", TOPIC_FEEDBACK): {"Read", "Write"},
        ("group", group_id("judge/main.py")): {"Read"},
    },
}
# Operations that change data or topics; Describe alone only shows that a topic exists.
OPERATIONS = {"Read", "Write", "Create", "Delete", "Alter", "AlterConfigs", "DescribeConfigs",
              "ClusterAction", "IdempotentWrite"}
IMPLIES_DESCRIBE = {"Read", "Write", "Delete", "Alter", "All"}


def matches(resource: dict, rtype: str, name: str) -> bool:
    if resource["type"] != rtype:
        return False
    if resource.get("patternType", "literal") == "prefix":
        return name.startswith(resource["name"])
    return resource.get("name") in (name, "*")


def access(user: dict, rtype: str, name: str) -> set[str]:
    """The operations Kafka's simple authorizer lets `user` perform on the resource."""
    allowed, denied = set(), set()
    for acl in user["spec"]["authorization"]["acls"]:
        if matches(acl["resource"], rtype, name):
            ops = set(acl["operations"])
            ops = (OPERATIONS | {"Describe"}) if "All" in ops else ops
            (denied if acl.get("type") == "deny" else allowed).update(ops)
    if allowed & IMPLIES_DESCRIBE:
        allowed.add("Describe")
    return allowed - denied


def users(docs: list[dict]) -> dict[str, dict]:
    return {u["metadata"]["name"]: u for u in find(docs, "KafkaUser")}


@pytest.fixture(scope="module", params=["dev-cpu", "prod-gpu"])
def docs(request):
    return render(request.param)


def test_the_acl_table(docs):
    found = users(docs)
    assert set(found) == set(EXPECTED_ACCESS)
    groups = {name for table in EXPECTED_ACCESS.values() for (rtype, name) in table if rtype == "group"}
    for name, user in found.items():
        assert user["metadata"]["labels"]["strimzi.io/cluster"] == KAFKA
        assert user["spec"]["authentication"]["type"] == "scram-sha-512"
        assert user["spec"]["authorization"]["type"] == "simple"
        for resource in [("topic", t) for t in ALL_TOPICS] + [("group", g) for g in groups]:
            expected = EXPECTED_ACCESS[name].get(resource, set())
            got = access(user, *resource) - {"Describe"}
            assert got == expected, f"{name} on {resource}: {sorted(got)}, expected {sorted(expected)}"
        for rtype in ("cluster", "transactionalId"):
            assert not [a for a in user["spec"]["authorization"]["acls"] if a["resource"]["type"] == rtype], name


def test_nobody_but_the_learner_writes_adapters(docs):
    writers = {name for name, user in users(docs).items() if "Write" in access(user, "topic", TOPIC_ADAPTERS)}
    assert writers == {"rlhf-learner"}


def test_the_listener_is_tls_with_scram_and_acls(docs):
    kafka = one(docs, "Kafka", KAFKA)["spec"]
    listeners = kafka["kafka"]["listeners"]
    assert all(li["tls"] is True and li["authentication"]["type"] == "scram-sha-512" for li in listeners), listeners
    assert kafka["kafka"]["authorization"]["type"] == "simple"
    assert "superUsers" not in kafka["kafka"]["authorization"]
    assert "userOperator" in kafka["entityOperator"], "the User Operator turns KafkaUsers into credentials and ACLs"
    port = listeners[0]["port"]
    config = one(docs, "ConfigMap", next(d["metadata"]["name"] for d in find(docs, "ConfigMap")
                                         if d["metadata"]["name"].startswith("rlhf-config")))["data"]
    assert config["RLHF_KAFKA_BOOTSTRAP"] == f"{KAFKA}-kafka-bootstrap:{port}"
    for policy in find(docs, "NetworkPolicy"):
        kafka_rules = [r for r in policy["spec"]["egress"]
                       if any(p.get("podSelector", {}).get("matchLabels", {}).get("strimzi.io/cluster") == KAFKA
                              for p in r.get("to", []))]
        assert [p["port"] for r in kafka_rules for p in r["ports"]] == [port], policy["metadata"]["name"]


def container_env(docs: list[dict], container: dict) -> dict[str, str]:
    configmaps = {d["metadata"]["name"]: d for d in find(docs, "ConfigMap")}
    env = {}
    for src in container.get("envFrom", []):
        env.update(configmaps[src["configMapRef"]["name"]]["data"])
    env.update({e["name"]: e["value"] for e in container.get("env", []) if "value" in e})
    return env


def secret_file(pod: dict, container: dict, path: str) -> tuple[str, str]:
    """(Secret name, key) that the file at `path` in `container` comes from."""
    folder, _, filename = path.rpartition("/")
    mount = next(m for m in container["volumeMounts"] if m["mountPath"] == folder)
    assert mount["readOnly"] is True
    volume = next(v for v in pod["volumes"] if v["name"] == mount["name"])["secret"]
    items = {i["path"]: i["key"] for i in volume.get("items", [])}
    return volume["secretName"], items.get(filename, filename) if items else filename


def test_each_component_logs_in_as_its_own_user_with_the_mounted_secrets(docs, tmp_path, monkeypatch):
    """Every main container of a workload that talks to Kafka uses one KafkaUser, its password
    from the Secret the User Operator makes for that user and the CA from Strimzi's Secret; the
    client (feedback.kafka_security) builds its TLS/SASL arguments from files laid out as the
    mounts lay them out."""
    found = users(docs)
    kafka = one(docs, "Kafka", KAFKA)
    prefix = kafka["spec"]["entityOperator"]["userOperator"].get("secretPrefix", "")
    used = {}
    for workload, pod in pod_specs(docs).items():
        for c in pod["containers"]:
            env = container_env(docs, c)
            assert env["RLHF_KAFKA_SECURITY_PROTOCOL"] == "SASL_SSL"
            assert env["RLHF_KAFKA_SASL_MECHANISM"] == "SCRAM-SHA-512"
            user = env["RLHF_KAFKA_SASL_USERNAME"]
            assert user in found, f"{workload}/{c['name']} logs in as {user}, which is no KafkaUser"
            assert used.setdefault(user, workload) == workload, f"{user} is shared by {used[user]} and {workload}"
            assert secret_file(pod, c, env["RLHF_KAFKA_SASL_PASSWORD_FILE"]) == (prefix + user, "password")
            assert secret_file(pod, c, env["RLHF_KAFKA_SSL_CAFILE"]) == (CA_SECRET, "ca.crt")

            # The files as the kubelet would lay them out, under tmp_path instead of /.
            contents = {"RLHF_KAFKA_SASL_PASSWORD_FILE": f"{workload}-password",
                        "RLHF_KAFKA_SSL_CAFILE": "-----BEGIN CERTIFICATE-----\n"}
            for setting, content in contents.items():
                local = tmp_path / workload / env[setting].lstrip("/")
                local.parent.mkdir(parents=True, exist_ok=True)
                local.write_text(content)
                env[setting] = str(local)
            for field in Settings.model_fields:
                monkeypatch.delenv(f"RLHF_{field.upper()}", raising=False)
            kwargs = client_security(Settings(
                kafka_bootstrap=env["RLHF_KAFKA_BOOTSTRAP"],
                kafka_security_protocol=env["RLHF_KAFKA_SECURITY_PROTOCOL"],
                kafka_sasl_mechanism=env["RLHF_KAFKA_SASL_MECHANISM"],
                kafka_sasl_username=user,
                kafka_sasl_password_file=env["RLHF_KAFKA_SASL_PASSWORD_FILE"],
                kafka_ssl_cafile=env["RLHF_KAFKA_SSL_CAFILE"]))
            assert kwargs["security_protocol"] == "SASL_SSL" and kwargs["sasl_mechanism"] == "SCRAM-SHA-512"
            assert kwargs["sasl_plain_username"] == user and kwargs["sasl_plain_password"] == f"{workload}-password"
            assert Path(kwargs["ssl_cafile"]).read_text().startswith("-----BEGIN CERTIFICATE-----")
    assert used == {"rlhf-serving": "rlhf-serving", "rlhf-learner": "rlhf-learner", "rlhf-judge": "rlhf-judge"}
