"""The port helpers really survive a taken port: each test takes the first port on purpose."""

from __future__ import annotations

import socket
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx
import pytest
from kafka import KafkaAdminClient

from harness import ports
from harness.broker import start_broker
from harness.ports import address_in_use, pick_port
from harness.procfs import listening_here
from harness.server import ServerProcess

HTTP_SERVER = (sys.executable, "-m", "http.server", "{port}", "--bind", "127.0.0.1")


@pytest.fixture
def taken(monkeypatch):
    """A port held by this test, handed out by the next `pick_port()`; yields the holding socket."""
    holder = socket.socket()
    holder.bind(("127.0.0.1", 0))
    port = holder.getsockname()[1]
    real = ports.pick_port
    first = [port]
    monkeypatch.setattr(ports, "pick_port", lambda host="127.0.0.1": first.pop() if first else real(host))
    yield holder
    holder.close()


@pytest.mark.parametrize("listens", [True, False], ids=["listening", "bound-only"])
def test_broker_starts_on_another_port_when_its_port_is_taken(taken, tmp_path, listens):
    if listens:
        taken.listen()  # `start_broker` sees it answer before starting Tansu
    # bound-only: nothing answers, so Tansu starts and fails to bind (its log says so)
    broker = start_broker(tmp_path / "broker.log")
    try:
        assert broker.port != taken.getsockname()[1]
        assert ("AddrInUse" in (tmp_path / "broker.log").read_text()) is not listens
        assert listening_here(broker.proc.pid, broker.port)
        admin = KafkaAdminClient(bootstrap_servers=broker.bootstrap)
        admin.list_topics()
        admin.close()
    finally:
        broker.stop()


def test_server_starts_on_another_port_when_its_port_is_taken(taken, tmp_path):
    taken.listen()
    server = ServerProcess({}, tmp_path / "server.log", HTTP_SERVER, port_env=None, ready_path="/").start(30)
    try:
        assert server.port != taken.getsockname()[1]
        assert "Address already in use" in server.log_path.read_text()  # the first attempt failed
        assert httpx.get(server.url + "/", timeout=5).status_code == 200
    finally:
        server.stop()


def test_an_answer_from_another_process_is_not_taken_for_the_server(taken, tmp_path):
    """Another server answers 200 on the port before the child binds: that is not readiness."""

    class Ok(BaseHTTPRequestHandler):
        def do_GET(self):
            self.send_response(200)
            self.end_headers()

        def log_message(self, *args):
            pass

    other = ThreadingHTTPServer(("127.0.0.1", 0), Ok, bind_and_activate=False)
    other.socket.close()
    other.socket = taken
    other.server_activate()
    threading.Thread(target=other.serve_forever, daemon=True).start()
    slow = ("sh", "-c", f"sleep 2; exec {' '.join(HTTP_SERVER)}")
    try:
        server = ServerProcess({}, tmp_path / "server.log", slow, port_env=None, ready_path="/").start(30)
        try:
            assert server.port != taken.getsockname()[1]
            assert listening_here(server.proc.pid, server.port)
            assert "Address already in use" not in server.log_path.read_text()  # stopped before it tried
        finally:
            server.stop()
    finally:
        other.shutdown()


def test_bind_failures_are_recognised():
    assert address_in_use("ERROR: [Errno 98] error while attempting to bind on address ('127.0.0.1', 8000): "
                          "address already in use")  # uvicorn
    assert address_in_use("OSError: [Errno 98] Address already in use")  # Python's http.server (the learner)
    assert address_in_use('err=Io(Os { code: 98, kind: AddrInUse, message: "Address in use" })')  # Tansu
    assert address_in_use("error: port 9092 on 127.0.0.1 is already in use; choose another with --port")
    assert address_in_use("error: port 8000 on 127.0.0.1 is in use (serving needs it); stop what uses it")
    assert not address_in_use("error: broker exited with code 1 during start")


def test_picked_ports_are_outside_the_ephemeral_range():
    low, high = ports._ephemeral_range()
    assert all(not low <= pick_port() <= high for _ in range(20))


def test_nowhere_refuses_connections(nowhere):
    host, port = nowhere.split(":")
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection((host, int(port)), timeout=2)
