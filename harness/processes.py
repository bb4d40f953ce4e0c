"""Real servers on ports of their own: `rlhf serve` (or any HTTP server), the broker, `rlhf up`.

A port picked here is free when picked, but the server binds it a moment (or, for vLLM, half a
minute) later, and in between another process can take it: a client's outgoing connection, or
another test run's server. So each starter checks that the server it started is the process
listening on the port, and when the port was taken (the log says "address in use", or another
process answers there) starts it again on a fresh port, at most `attempts` times in all.
Ports are picked outside the kernel's ephemeral range, where outgoing connections never land,
which makes that rare. Linux only: ownership is read from /proc.

    pick_port()                             a port nothing uses right now
    ServerProcess(env, log_path).start()    a server child, ready and listening on its own port
    start_broker(log_path)                  the embedded broker (Tansu) on a fresh port
    UpProcess(env, model).start()           `rlhf up`: broker, serving and learner on fresh ports
    wait_until(check, timeout_s)            poll until truthy
"""

from __future__ import annotations

import os
import queue
import random
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import httpx

from feedback import broker as embedded_broker

ROOT = Path(__file__).resolve().parents[1]
SERVE = (sys.executable, "-m", "rlhf.cli", "serve")

_rng = random.SystemRandom()  # not the `random` module: tests seed that, and runs must not pick alike
_IN_USE = re.compile(r"address (already )?in use|AddrInUse|port \d+ on \S+ is (already )?in use", re.I)


# ---------------------------------------------------------------------------------- ports
def _ephemeral_range() -> tuple[int, int]:
    try:
        low, high = map(int, Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split())
        return low, high
    except (OSError, ValueError):
        return 32768, 60999


def pick_port(host: str = "127.0.0.1") -> int:
    """A port nothing is bound to right now, outside the range the kernel hands outgoing connections."""
    low, high = _ephemeral_range()
    candidates = range(10000, low) if low > 11000 else range(high + 1, 65536)
    for _ in range(100 if len(candidates) else 0):
        port = _rng.choice(candidates)
        with socket.socket() as s:
            try:
                s.bind((host, port))
            except OSError:
                continue
            return port
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def address_in_use(text: str) -> bool:
    """Whether a log says a bind failed because the address was taken (uvicorn, Python, Tansu, `rlhf`)."""
    return _IN_USE.search(text) is not None


def descendants(pid: int) -> set[int]:
    """Every descendant process of `pid` (from /proc)."""
    parents: dict[int, int] = {}
    for p in Path("/proc").iterdir():
        if p.name.isdigit():
            try:
                parents[int(p.name)] = int((p / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                pass
    found, frontier = set(), {pid}
    while frontier:
        frontier = {c for c, pp in parents.items() if pp in frontier} - found
        found |= frontier
    return found


def cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return ""


def _listening_sockets(port: int) -> set[str]:
    """The sockets listening on TCP `port`, as /proc/PID/fd links name them ("socket:[inode]")."""
    inodes = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            rows = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for row in rows:
            f = row.split()  # sl local_address rem_address st ... uid timeout inode
            if f[3] == "0A" and int(f[1].rsplit(":", 1)[1], 16) == port:  # 0A: LISTEN
                inodes.add(f"socket:[{f[9]}]")
    return inodes


def listening_here(pid: int, port: int) -> bool:
    """Whether `pid` or one of its descendants holds the socket listening on TCP `port`."""
    inodes = _listening_sockets(port)
    for p in {pid} | descendants(pid):
        try:
            fds = os.listdir(f"/proc/{p}/fd")
        except OSError:
            continue
        for fd in fds:
            try:
                if os.readlink(f"/proc/{p}/fd/{fd}") in inodes:
                    return True
            except OSError:
                pass
    return False


def wait_until(check, timeout_s: float, interval_s: float = 0.1, what: str = "condition"):
    """Poll `check()` until it returns something truthy; that value is returned."""
    deadline = time.monotonic() + timeout_s
    last = None
    while time.monotonic() < deadline:
        last = check()
        if last:
            return last
        time.sleep(interval_s)
    raise AssertionError(f"{what} not met within {timeout_s:.0f} s (last: {last!r})")


def _answers_200(url: str) -> bool:
    try:
        return httpx.get(url, timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


# ---------------------------------------------------------------------------------- a server child
class ServerProcess:
    """An HTTP server child (by default `rlhf serve`) on a port of its own.

    The port reaches the child as the environment variable `port_env` and as "{port}" in
    `command`. `start()` waits until `ready_path` answers 200 from this child's own socket
    (with `ready_path=None`, until the child listens on the port). `launch()` only starts it,
    and `relaunch_if_port_taken()` lets a caller that waits in its own way start it again on a
    fresh port when the last one was taken."""

    def __init__(self, env: dict, log_path: Path, command: Sequence[str] = SERVE, *,
                 port_env: str | None = "RLHF_PORT", ready_path: str | None = "/readyz", host: str = "127.0.0.1",
                 attempts: int = 3, new_session: bool = False):
        self.env = {**os.environ, "RLHF_HOST": host, **env}
        self.log_path = Path(log_path)
        self.command = list(command)
        self.port_env, self.ready_path, self.host = port_env, ready_path, host
        self.attempts, self.new_session = attempts, new_session
        self.port: int | None = None
        self.proc: subprocess.Popen | None = None
        self._log_from = 0
        self._relaunches = 0

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def launch(self) -> "ServerProcess":
        """Start the child on a freshly picked port, without waiting for it."""
        self._relaunches = 0
        return self._launch()

    def _launch(self) -> "ServerProcess":
        self.port = pick_port(self.host)
        env = {**self.env, self.port_env: str(self.port)} if self.port_env else self.env
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "ab") as log:
            log.write(f"\n===== start {time.strftime('%X')} on port {self.port} =====\n".encode())
            self._log_from = log.tell()
            log.flush()
            self.proc = subprocess.Popen([a.format(port=self.port) for a in self.command], env=env, cwd=ROOT,
                                         stdout=log, stderr=subprocess.STDOUT, start_new_session=self.new_session)
        return self

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def log_since_launch(self) -> str:
        try:
            with open(self.log_path, "rb") as f:
                f.seek(self._log_from)
                return f.read().decode(errors="replace")
        except OSError:
            return ""

    def relaunch_if_port_taken(self) -> bool:
        """If the child exited because its port was taken, start it on a fresh one (within `attempts`)."""
        if self.alive() or not address_in_use(self.log_since_launch()):
            return False
        return self._relaunch()

    def _relaunch(self) -> bool:
        if self._relaunches >= self.attempts - 1:
            return False
        self._relaunches += 1
        self.stop()
        self._launch()
        return True

    def start(self, timeout: float = 600.0) -> "ServerProcess":
        """Launch, then wait until ready; each fresh port gets the whole `timeout`."""
        self.launch()
        while True:
            why = self._wait_ready(timeout)
            if why is None:
                return self
            if not self._relaunch():
                self.stop()
                raise RuntimeError(f"{why}, on {self.attempts} ports in a row; log:\n{self.tail()}")

    def _wait_ready(self, timeout: float) -> str | None:
        """None once ready on its own socket; why not, when the port was taken; raises otherwise."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not self.alive():
                if address_in_use(self.log_since_launch()) or _listening_sockets(self.port):
                    return "the port was taken"  # by its log, or another process listens there now
                raise RuntimeError(f"server exited early ({self.proc.returncode}); log:\n{self.tail()}")
            if self.ready_path is None or _answers_200(self.url + self.ready_path):
                if listening_here(self.proc.pid, self.port):
                    return None
                if self.ready_path is not None:
                    return "another process answers on the port"
            time.sleep(0.5)
        self.stop()
        raise RuntimeError(f"server not ready within {timeout:.0f} s; log:\n{self.tail()}")

    def tail(self, n: int = 60) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return ""

    def stop(self, timeout: float = 30.0) -> None:
        if self.alive():
            self.proc.terminate()
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


# ---------------------------------------------------------------------------------- the broker
@dataclass
class Broker:
    proc: subprocess.Popen
    port: int
    host: str = "127.0.0.1"

    @property
    def bootstrap(self) -> str:
        return f"{self.host}:{self.port}"

    def stop(self) -> None:
        embedded_broker.stop_broker(self.proc)


def start_broker(log_path: Path, host: str = "127.0.0.1", attempts: int = 3) -> Broker:
    """The embedded broker (Tansu) on a fresh port, its output appended to `log_path`."""
    Path(log_path).parent.mkdir(parents=True, exist_ok=True)
    for _ in range(attempts):
        p = pick_port(host)
        with open(log_path, "ab") as log:
            start = log.tell()
            try:
                proc = embedded_broker.start_broker(p, host, stdout=log)
            except embedded_broker.BrokerError as e:
                if address_in_use(str(e) + Path(log_path).read_bytes()[start:].decode(errors="replace")):
                    continue
                raise
        if listening_here(proc.pid, p):
            return Broker(proc, p, host)
        embedded_broker.stop_broker(proc)  # another process answered on the port while ours failed to bind
    raise embedded_broker.BrokerError(f"the broker found its port taken {attempts} times in a row")


# ---------------------------------------------------------------------------------- `rlhf up`
class Output:
    """Lines a child prints, read in a thread; `wait_for` goes forward from the last line it matched."""

    def __init__(self, stream, echo: Callable[[str], None] | None = None):
        self.lines: list[str] = []
        self._cursor = 0
        self._q: queue.Queue = queue.Queue()
        self._echo = echo
        threading.Thread(target=self._pump, args=(stream,), daemon=True).start()

    def _pump(self, stream):
        for line in stream:
            if self._echo:
                self._echo(line)
            self._q.put(line)

    def _drain(self, timeout_s: float = 0.0) -> None:
        try:
            self.lines.append(self._q.get(timeout=timeout_s) if timeout_s else self._q.get_nowait())
            while True:
                self.lines.append(self._q.get_nowait())
        except queue.Empty:
            pass

    def text(self) -> str:
        self._drain()
        return "".join(self.lines)

    def wait_for(self, text: str, timeout_s: float) -> str:
        deadline = time.monotonic() + timeout_s
        while True:
            for i in range(self._cursor, len(self.lines)):
                if text in self.lines[i]:
                    self._cursor = i + 1
                    return self.lines[i]
            if time.monotonic() >= deadline:
                break
            self._drain(0.5)
        raise AssertionError(f"{text!r} not printed within {timeout_s:.0f} s; output:\n{''.join(self.lines[-40:])}")

    def rest(self, timeout_s: float = 2.0) -> str:
        end = time.monotonic() + timeout_s
        while time.monotonic() < end:
            self._drain(0.2)
        return "".join(self.lines)


class UpProcess:
    """`rlhf up --model MODEL` as a child in its own session, on fresh ports for serving, the
    broker and the learner; its output is kept (and passed to `echo`, a line at a time)."""

    def __init__(self, env: dict, model: str, *, echo: Callable[[str], None] | None = None, attempts: int = 3):
        self.env = {**os.environ, **env, "PYTHONUNBUFFERED": "1"}
        self.model, self.echo, self.attempts = model, echo, attempts
        self.proc: subprocess.Popen | None = None
        self.output: Output | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def learner_url(self) -> str:
        return f"http://127.0.0.1:{self.learner_port}"

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.broker_port}"

    def _broker_log(self) -> Path | None:
        return Path(self.env["RLHF_DATA_DIR"]) / "logs" / "broker.log" if "RLHF_DATA_DIR" in self.env else None

    def _launch(self) -> None:
        self.port, self.broker_port, self.learner_port = pick_port(), pick_port(), pick_port()
        log = self._broker_log()
        self._broker_log_from = log.stat().st_size if log and log.exists() else 0
        env = {**self.env, "RLHF_KAFKA_BOOTSTRAP": self.bootstrap, "RLHF_LEARNER_PORT": str(self.learner_port),
               "RLHF_PORT": str(self.port)}
        self.proc = subprocess.Popen([sys.executable, "-m", "rlhf.cli", "up", "--model", self.model, "--port",
                                      str(self.port)], env=env, cwd=ROOT, stdout=subprocess.PIPE,
                                     stderr=subprocess.STDOUT, text=True, start_new_session=True)
        self.output = Output(self.proc.stdout, self.echo)

    def _port_taken(self) -> bool:
        text = self.output.text()
        log = self._broker_log()
        if log and log.exists():
            text += log.read_bytes()[self._broker_log_from:].decode(errors="replace")
        # An answer at the broker's port before ours started means someone else's broker, not ours.
        return address_in_use(text) or "using the broker already listening" in text

    def start(self, timeout: float = 1800.0, learner: bool = True) -> "UpProcess":
        """Launch, then wait until serving is ready (and the learner answers, with `learner`), each
        on its own socket; each fresh set of ports gets the whole `timeout`."""
        for _ in range(self.attempts):
            self._launch()
            if self._wait_ready(timeout, learner):
                return self
            self.stop()
        raise RuntimeError(f"`rlhf up` found a port taken {self.attempts} times in a row:\n"
                           f"{self.output.text()[-4000:]}")

    def _wait_ready(self, timeout: float, learner: bool) -> bool:
        """True once ready on its own sockets, False when a port was taken; raises otherwise."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._port_taken():
                return False
            if self.proc.poll() is not None:
                self.output.rest(1.0)  # its last lines
                if self._port_taken():
                    return False
                raise RuntimeError(f"`rlhf up` exited with {self.proc.returncode}:\n{self.output.text()[-4000:]}")
            if _answers_200(self.url + "/readyz") and (not learner or _answers_200(self.learner_url + "/healthz")):
                ports = [self.port, self.broker_port] + ([self.learner_port] if learner else [])
                return all(listening_here(self.proc.pid, p) for p in ports)  # False: another process answers
            time.sleep(1.0)
        self.stop()
        raise RuntimeError(f"`rlhf up` not ready within {timeout:.0f} s:\n{self.output.text()[-4000:]}")

    def stop(self, timeout: float = 120.0) -> int | None:
        """Ctrl-C, as a user stops it; SIGKILL to its whole session if it does not stop in time."""
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                return self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                return self.proc.wait()
        return self.proc.returncode
