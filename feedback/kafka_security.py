"""TLS and SASL for every Kafka client the project makes, from settings.

    KafkaProducer(bootstrap_servers=..., **client_security(settings))
    check_client_security(settings)   # at start-up: SystemExit with what is wrong and how to fix it

`RLHF_KAFKA_SECURITY_PROTOCOL`:
- `PLAINTEXT` (default): no TLS, no authentication: the embedded broker on one machine.
- `SSL`: TLS. The broker's certificate must chain to `RLHF_KAFKA_SSL_CAFILE` (empty: the system's
  CAs) and name the host the client dialled. `RLHF_KAFKA_SSL_CERTFILE` + `RLHF_KAFKA_SSL_KEYFILE`
  give a client certificate to brokers that ask for one (mutual TLS).
- `SASL_SSL`: TLS as above plus SASL `RLHF_KAFKA_SASL_MECHANISM` (`SCRAM-SHA-512` or `PLAIN`) as
  `RLHF_KAFKA_SASL_USERNAME`, the password read from `RLHF_KAFKA_SASL_PASSWORD_FILE` (a mounted
  Secret; a password never sits in the environment or a command line).

Files are read each time a client is made (a long-running process takes a rotated password when it
restarts). A missing file or a mechanism without credentials raises `KafkaSecurityError`, which
names the setting.
"""

from __future__ import annotations

from pathlib import Path

from rlhf.settings import Settings

__all__ = ["KafkaSecurityError", "check_client_security", "client_security"]


class KafkaSecurityError(ValueError):
    """The Kafka security settings cannot work (missing file, mechanism without credentials)."""


def _readable(setting: str, path: str) -> str:
    p = Path(path)
    if not p.is_file():
        raise KafkaSecurityError(f"{setting}={path}: no such file")
    try:
        with p.open("rb"):
            pass
    except OSError as e:
        raise KafkaSecurityError(f"{setting}={path}: cannot be read ({e.strerror})") from e
    return str(p)


def _tls(settings: Settings) -> dict:
    kwargs: dict = {"ssl_check_hostname": True}
    if settings.kafka_ssl_cafile:
        kwargs["ssl_cafile"] = _readable("RLHF_KAFKA_SSL_CAFILE", settings.kafka_ssl_cafile)
    if bool(settings.kafka_ssl_certfile) != bool(settings.kafka_ssl_keyfile):
        raise KafkaSecurityError("a client certificate needs both RLHF_KAFKA_SSL_CERTFILE and RLHF_KAFKA_SSL_KEYFILE")
    if settings.kafka_ssl_certfile:
        kwargs["ssl_certfile"] = _readable("RLHF_KAFKA_SSL_CERTFILE", settings.kafka_ssl_certfile)
        kwargs["ssl_keyfile"] = _readable("RLHF_KAFKA_SSL_KEYFILE", settings.kafka_ssl_keyfile)
    return kwargs


def _sasl(settings: Settings) -> dict:
    mechanism = settings.kafka_sasl_mechanism
    if not settings.kafka_sasl_username or not settings.kafka_sasl_password_file:
        raise KafkaSecurityError(f"RLHF_KAFKA_SECURITY_PROTOCOL=SASL_SSL with {mechanism} needs "
                                 "RLHF_KAFKA_SASL_USERNAME and RLHF_KAFKA_SASL_PASSWORD_FILE")
    path = _readable("RLHF_KAFKA_SASL_PASSWORD_FILE", settings.kafka_sasl_password_file)
    lines = Path(path).read_text(encoding="utf-8").splitlines()
    password = lines[0] if lines else ""
    if not password:
        raise KafkaSecurityError(f"RLHF_KAFKA_SASL_PASSWORD_FILE={path} is empty")
    return {"sasl_mechanism": mechanism, "sasl_plain_username": settings.kafka_sasl_username,
            "sasl_plain_password": password}


def client_security(settings: Settings) -> dict:
    """Keyword arguments for KafkaProducer, KafkaConsumer and KafkaAdminClient (empty for PLAINTEXT)."""
    protocol = settings.kafka_security_protocol
    if protocol == "PLAINTEXT":
        return {}
    kwargs = {"security_protocol": protocol, **_tls(settings)}
    if protocol == "SASL_SSL":
        kwargs.update(_sasl(settings))
    return kwargs


def check_client_security(settings: Settings) -> None:
    """Refuse to start with Kafka security settings that cannot work, saying which and why."""
    try:
        client_security(settings)
    except KafkaSecurityError as e:
        raise SystemExit(f"Kafka security settings: {e}") from e
