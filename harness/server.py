"""An HTTP server child (by default `rlhf serve`) ready and listening on a port of its own.

    ServerProcess(env, log_path).start()   started again on a fresh port when its port was taken
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Sequence

from harness import ports
from harness.procfs import listening_here, listening_sockets
from harness.waiting import answers_200

ROOT = Path(__file__).resolve().parents[1]
SERVE = (sys.executable, "-m", "rlhf.cli", "serve")


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
        self.port = ports.pick_port(self.host)
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
        if self.alive() or not ports.address_in_use(self.log_since_launch()):
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
                if ports.address_in_use(self.log_since_launch()) or listening_sockets(self.port):
                    return "the port was taken"  # by its log, or another process listens there now
                raise RuntimeError(f"server exited early ({self.proc.returncode}); log:\n{self.tail()}")
            if self.ready_path is None or answers_200(self.url + self.ready_path):
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
