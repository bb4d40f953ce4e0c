"""Kafka over TLS for real: the embedded broker (Tansu) behind a TLS-terminating proxy that the test
starts (harness/tls_proxy.py), the broker advertising the proxy's address, certificates made here.

The proxy asks for client certificates (mutual TLS), so one round trip checks the CA, the client
certificate and its key reaching the project's own producer and consumer. Clients without the CA,
without a client certificate, or without TLS at all are refused at the handshake. Settings that cannot
work stop `rlhf serve` and `rlhf learn` at start, naming the setting.
"""

from __future__ import annotations

import asyncio
import datetime
import ipaddress
import os
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from kafka.errors import KafkaError

from feedback.consumer import EventConsumer
from feedback.kafka_security import KafkaSecurityError, check_client_security, client_security
from feedback.producer import EventPublisher
from feedback.schema import TOPIC_FEEDBACK, Thumbs
from feedback.topics import ensure_topics
from harness.broker import start_broker
from harness.kafka import read_topic
from harness.tls_proxy import TlsProxy, server_context
from learner.publish import OutboxSender
from rlhf.settings import Settings

ROOT = Path(__file__).resolve().parents[2]


# ---------------------------------------------------------------------------- certificates
def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def _write_key(key, path: Path) -> None:
    path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                       serialization.NoEncryption()))


def _issue(ca_key, issuer: x509.Name, subject: str, path: Path, *, ca: bool = False, san=None, usage=None):
    """A key and a certificate for `subject` signed by `ca_key` (self-signed for the CA), written as PEM."""
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.timezone.utc)
    builder = (x509.CertificateBuilder().subject_name(_name(subject)).issuer_name(issuer)
               .public_key(key.public_key()).serial_number(x509.random_serial_number())
               .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + datetime.timedelta(days=1))
               .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True))
    if san:
        builder = builder.add_extension(x509.SubjectAlternativeName(san), critical=False)
    if usage:
        builder = builder.add_extension(x509.ExtendedKeyUsage(usage), critical=False)
    cert = builder.sign(ca_key or key, hashes.SHA256())
    (path / f"{subject}.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    _write_key(key, path / f"{subject}.key")
    return key


@pytest.fixture(scope="module")
def certs(tmp_path_factory) -> Path:
    """ca.pem; server.pem/.key for 127.0.0.1 and client.pem/.key, both signed by the CA; other-ca.pem."""
    d = tmp_path_factory.mktemp("certs")
    ca_key = _issue(None, _name("ca"), "ca", d, ca=True)
    _issue(ca_key, _name("ca"), "server", d, san=[x509.IPAddress(ipaddress.ip_address("127.0.0.1"))],
           usage=[x509.oid.ExtendedKeyUsageOID.SERVER_AUTH])
    _issue(ca_key, _name("ca"), "client", d, usage=[x509.oid.ExtendedKeyUsageOID.CLIENT_AUTH])
    _issue(None, _name("other-ca"), "other-ca", d, ca=True)
    return d


@pytest.fixture(scope="module")
def tls_broker(certs, tmp_path_factory):
    """(proxy, broker): Tansu advertising the proxy's TLS address; the proxy requires client certificates."""
    proxy = TlsProxy(server_context(str(certs / "server.pem"), str(certs / "server.key"),
                                    client_cafile=str(certs / "ca.pem"))).start()
    broker = start_broker(tmp_path_factory.mktemp("tls-broker") / "broker.log", advertised=proxy.address)
    proxy.upstream = (broker.host, broker.port)
    yield proxy, broker
    proxy.stop()
    broker.stop()


def tls_settings(proxy: TlsProxy, certs: Path, tmp_path: Path, **kw) -> Settings:
    base = dict(kafka_bootstrap=proxy.address, kafka_security_protocol="SSL", kafka_ssl_cafile=str(certs / "ca.pem"),
                kafka_ssl_certfile=str(certs / "client.pem"), kafka_ssl_keyfile=str(certs / "client.key"),
                data_dir=tmp_path / "data", topic_partitions=1)
    return Settings(**{**base, **kw})


# ---------------------------------------------------------------------------- TLS end to end
def test_producer_and_consumer_round_trip_through_tls(tls_broker, certs, tmp_path):
    proxy, _ = tls_broker
    settings = tls_settings(proxy, certs, tmp_path)
    ensure_topics(settings)
    ev = Thumbs(response_id=f"r_{uuid.uuid4().hex}_0", conversation_id=uuid.uuid4().hex, user="tls", value="up")

    async def publish():
        pub = EventPublisher(settings, send_timeout_s=10.0)
        await pub.start()
        try:
            await pub.publish(TOPIC_FEEDBACK, ev)
            return len(pub.spool)
        finally:
            await pub.close()

    assert asyncio.run(publish()) == 0  # acked by the broker through TLS, not spooled

    consumer = EventConsumer(settings, [TOPIC_FEEDBACK], group_id=f"tls-{uuid.uuid4().hex[:6]}")
    try:
        got = []
        for _ in range(60):
            got += [r.event.event_id for r in consumer.poll(0.5) if r.event is not None]
            if ev.event_id in got:
                break
        assert ev.event_id in got
    finally:
        consumer.close()
    # the connections the clients made after bootstrap went to the advertised (TLS) address too
    assert proxy.connections >= 2
    # any kafka-python client given the same keyword arguments reads it as well
    events = read_topic(proxy.address, TOPIC_FEEDBACK, security=client_security(settings))
    assert ev.event_id in {e.event_id for e in events}


@pytest.mark.parametrize("refused", ["no CA", "CA of someone else", "no client certificate", "plaintext"])
def test_clients_that_cannot_complete_the_tls_handshake_are_refused(tls_broker, certs, tmp_path, refused):
    proxy, _ = tls_broker
    overrides = {"no CA": dict(kafka_ssl_cafile=""),  # the system's CAs do not know the test CA
                 "CA of someone else": dict(kafka_ssl_cafile=str(certs / "other-ca.pem")),
                 "no client certificate": dict(kafka_ssl_certfile="", kafka_ssl_keyfile=""),
                 "plaintext": dict(kafka_security_protocol="PLAINTEXT")}[refused]
    settings = tls_settings(proxy, certs, tmp_path, **overrides)
    before = len(proxy.handshakes_refused)
    with pytest.raises(KafkaError):
        ensure_topics(settings, timeout_s=3.0)
    assert len(proxy.handshakes_refused) > before, proxy.handshakes_refused


# ---------------------------------------------------------------------------- settings
def test_security_settings_become_client_arguments(tmp_path):
    password = tmp_path / "password"
    password.write_text("s3cret-from-a-secret\n")
    ca = tmp_path / "ca.pem"
    ca.write_text("-----BEGIN CERTIFICATE-----\n")
    assert client_security(Settings()) == {}  # PLAINTEXT: nothing to add
    kw = client_security(Settings(kafka_security_protocol="SASL_SSL", kafka_ssl_cafile=str(ca),
                                  kafka_sasl_username="rlhf-learner", kafka_sasl_password_file=str(password)))
    assert kw == {"security_protocol": "SASL_SSL", "ssl_check_hostname": True, "ssl_cafile": str(ca),
                  "sasl_mechanism": "SCRAM-SHA-512", "sasl_plain_username": "rlhf-learner",
                  "sasl_plain_password": "s3cret-from-a-secret"}
    plain = client_security(Settings(kafka_security_protocol="SASL_SSL", kafka_sasl_mechanism="PLAIN",
                                     kafka_sasl_username="u", kafka_sasl_password_file=str(password)))
    assert plain["sasl_mechanism"] == "PLAIN" and "ssl_cafile" not in plain


@pytest.mark.parametrize("settings, says", [
    (dict(kafka_security_protocol="SASL_SSL"), "RLHF_KAFKA_SASL_USERNAME and RLHF_KAFKA_SASL_PASSWORD_FILE"),
    (dict(kafka_security_protocol="SASL_SSL", kafka_sasl_username="u", kafka_sasl_password_file="/nonexistent/pw"),
     "RLHF_KAFKA_SASL_PASSWORD_FILE=/nonexistent/pw: no such file"),
    (dict(kafka_security_protocol="SSL", kafka_ssl_cafile="/nonexistent/ca.pem"),
     "RLHF_KAFKA_SSL_CAFILE=/nonexistent/ca.pem: no such file"),
    (dict(kafka_security_protocol="SSL", kafka_ssl_certfile="/x.pem"), "RLHF_KAFKA_SSL_KEYFILE"),
])
def test_security_settings_that_cannot_work_stop_the_start(settings, says):
    with pytest.raises(KafkaSecurityError, match=says):
        client_security(Settings(**settings))
    with pytest.raises(SystemExit, match=says):
        check_client_security(Settings(**settings))


@pytest.mark.parametrize("command", ["serve", "learn"])
def test_serve_and_learn_refuse_to_start_naming_the_setting(command, tmp_path):
    env = {**os.environ, "RLHF_MODEL": "tiny", "RLHF_DATA_DIR": str(tmp_path), "RLHF_KAFKA_SECURITY_PROTOCOL": "SASL_SSL",
           "RLHF_KAFKA_SASL_USERNAME": "learner", "RLHF_KAFKA_SASL_PASSWORD_FILE": str(tmp_path / "missing")}
    r = subprocess.run([sys.executable, "-m", "rlhf.cli", command], env=env, cwd=ROOT, capture_output=True, text=True,
                       timeout=300)
    assert r.returncode != 0
    assert f"RLHF_KAFKA_SASL_PASSWORD_FILE={tmp_path / 'missing'}: no such file" in r.stdout + r.stderr


def test_sasl_credentials_reach_the_project_s_clients(tls_broker, certs, tmp_path):
    """SASL end to end needs a broker that checks passwords: Tansu 0.6.0 answers a SASL handshake with
    "unsupported mechanism" unless started with `--authentication`, and then it refuses even the connection
    that would create the first user (memory storage starts empty). So this checks that the SASL settings
    reach real clients of the project: through TLS (the handshake passes) the admin client and the learner's
    producer start a SASL exchange, which this broker refuses, where the same settings without SASL work."""
    proxy, _ = tls_broker
    password = tmp_path / "password"
    password.write_text("pw-from-a-mounted-secret\n")
    sasl = tls_settings(proxy, certs, tmp_path, kafka_security_protocol="SASL_SSL", kafka_sasl_username="learner",
                        kafka_sasl_password_file=str(password))
    tls = tls_settings(proxy, certs, tmp_path)
    for make_client in (lambda st: ensure_topics(st, timeout_s=3.0),  # the admin client every component uses
                        lambda st: OutboxSender(st).close()):         # the learner's producer
        make_client(tls)  # TLS alone: accepted
        refused, connections = len(proxy.handshakes_refused), proxy.connections
        with pytest.raises(KafkaError):
            make_client(sasl)
        assert proxy.connections > connections  # the TLS handshake passed...
        assert len(proxy.handshakes_refused) == refused, proxy.handshakes_refused  # ...and SASL did not
