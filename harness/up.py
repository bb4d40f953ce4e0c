"""`rlhf up` as a child on fresh ports for serving, the broker and the learner.

    UpProcess(env, model).start()   ready on its own sockets; `.stop()` is Ctrl-C
"""

from __future__ import annotations

import os
import queue
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Callable

from harness import ports
from harness.procfs import listening_here
from harness.waiting import answers_200

ROOT = Path(__file__).resolve().parents[1]


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
        self.port, self.broker_port, self.learner_port = ports.pick_port(), ports.pick_port(), ports.pick_port()
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
        return ports.address_in_use(text) or "using the broker already listening" in text

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
            if answers_200(self.url + "/readyz") and (not learner or answers_200(self.learner_url + "/healthz")):
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
