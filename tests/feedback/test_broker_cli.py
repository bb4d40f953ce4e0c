"""`rlhf broker --port N` starts the embedded broker and stops cleanly on SIGTERM."""

from __future__ import annotations

import signal
import subprocess
import sys
import time

from kafka import KafkaAdminClient

from feedback.broker import port_open
from tests.conftest import ROOT, free_port


def test_rlhf_broker_starts_and_stops_on_sigterm():
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "rlhf.cli", "broker", "--port", str(port)], cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 60
        while not port_open("127.0.0.1", port) and time.monotonic() < deadline:
            assert proc.poll() is None, proc.stdout.read()
            time.sleep(0.2)
        admin = KafkaAdminClient(bootstrap_servers=f"127.0.0.1:{port}")
        admin.list_topics()  # a Kafka client can talk to it
        admin.close()
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, out
    assert "broker listening" in out and "broker stopped" in out
    assert not port_open("127.0.0.1", port)  # the Tansu child is gone too


def test_rlhf_broker_refuses_a_busy_port():
    port = free_port()
    first = subprocess.Popen([sys.executable, "-m", "rlhf.cli", "broker", "--port", str(port)], cwd=ROOT,
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 60
        while not port_open("127.0.0.1", port) and time.monotonic() < deadline:
            time.sleep(0.2)
        second = subprocess.run([sys.executable, "-m", "rlhf.cli", "broker", "--port", str(port)], cwd=ROOT,
                                capture_output=True, text=True, timeout=60)
        assert second.returncode == 2 and "already in use" in second.stderr
    finally:
        first.send_signal(signal.SIGTERM)
        first.wait(30)
