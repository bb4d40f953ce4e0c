"""`rlhf broker --port N` starts the embedded broker, stops cleanly on SIGTERM, and refuses a busy port."""

from __future__ import annotations

import signal
import socket
import subprocess
import sys

from kafka import KafkaAdminClient

from feedback.broker import port_open
from harness.server import ServerProcess
from tests.conftest import ROOT

BROKER = (sys.executable, "-m", "rlhf.cli", "broker", "--port", "{port}")


def test_rlhf_broker_starts_and_stops_on_sigterm(tmp_path):
    broker = ServerProcess({}, tmp_path / "broker.log", BROKER, port_env=None, ready_path=None).start(60)
    try:
        admin = KafkaAdminClient(bootstrap_servers=f"127.0.0.1:{broker.port}")
        admin.list_topics()  # a Kafka client can talk to it
        admin.close()
        broker.proc.send_signal(signal.SIGTERM)
        code = broker.proc.wait(30)
    finally:
        broker.stop()
    out = broker.log_since_launch()
    assert code == 0, out
    assert "broker listening" in out and "broker stopped" in out
    assert not port_open("127.0.0.1", broker.port)  # the Tansu child is gone too


def test_rlhf_broker_refuses_a_busy_port():
    with socket.socket() as busy:  # held for the whole test: nobody else can have the port
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        r = subprocess.run([sys.executable, "-m", "rlhf.cli", "broker", "--port", str(port)], cwd=ROOT,
                           capture_output=True, text=True, timeout=60)
    assert r.returncode == 2 and "already in use" in r.stderr, (r.returncode, r.stderr)
