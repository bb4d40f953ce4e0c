"""Create the project's four topics if they are missing.

    ensure_topics(get_settings())   # -> names it created; [] if all existed

Partitions, replication factor and retention come from settings (`RLHF_TOPIC_PARTITIONS`,
`RLHF_TOPIC_REPLICATION`, `RLHF_TOPIC_RETENTION_MS`). Existing topics are left as they are:
nothing here changes a topic an operator has configured. Works against Tansu and Apache Kafka.
"""

from __future__ import annotations

import logging

from kafka import KafkaAdminClient
from kafka.admin import NewTopic
from kafka.errors import KafkaError, TopicAlreadyExistsError

from feedback.kafka_security import client_security
from feedback.schema import ALL_TOPICS
from rlhf.settings import Settings

log = logging.getLogger(__name__)


def bootstrap_servers(settings: Settings) -> list[str]:
    return [s.strip() for s in settings.kafka_bootstrap.split(",") if s.strip()]


def ensure_topics(settings: Settings, topics: tuple[str, ...] = ALL_TOPICS, timeout_s: float = 5.0) -> list[str]:
    """Create whichever of `topics` do not exist; returns the names created.

    Raises kafka.errors.KafkaError (e.g. NoBrokersAvailable) if the broker cannot be reached."""
    timeout_ms = int(timeout_s * 1000)
    admin = KafkaAdminClient(bootstrap_servers=bootstrap_servers(settings), client_id="rlhf-topics",
                             request_timeout_ms=timeout_ms, bootstrap_timeout_ms=min(timeout_ms, 3000),
                             **client_security(settings))
    try:
        missing = [t for t in topics if t not in set(admin.list_topics())]
        created = []
        for name in missing:  # one by one: "already exists" for one must not hide the others
            topic = NewTopic(name, settings.topic_partitions, settings.topic_replication,
                             topic_configs={"retention.ms": str(settings.topic_retention_ms)})
            try:
                admin.create_topics([topic], timeout_ms=timeout_ms)
                created.append(name)
            except TopicAlreadyExistsError:  # another replica created it first
                pass
        if created:
            log.info("created topics %s (%d partitions, replication %d)", created,
                     settings.topic_partitions, settings.topic_replication)
        return created
    finally:
        try:
            admin.close()
        except KafkaError:  # pragma: no cover - closing a dead connection
            pass
