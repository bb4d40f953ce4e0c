"""The embedded broker (Tansu) on a port of its own, started again when its port was taken.

    start_broker(log_path) -> Broker   .bootstrap, .stop()
    start_broker(log_path, advertised="127.0.0.1:PORT")   clients are sent to PORT (a proxy in front)
"""

from __future__ import annotations

import subprocess
from dataclasses import dataclass
from pathlib import Path

from feedback import broker as embedded_broker
from harness import ports
from harness.procfs import listening_here


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


def start_broker(log_path: Path, host: str = "127.0.0.1", attempts: int = 3, advertised: str | None = None) -> Broker:
    """The embedded broker (Tansu) on a fresh port, its output appended to `log_path`; `advertised`
    is the address it gives clients in metadata (default: its own)."""
    Path(log_path).parent.mkdir(parents=True, exist_ok=True)
    for _ in range(attempts):
        p = ports.pick_port(host)
        with open(log_path, "ab") as log:
            start = log.tell()
            try:
                proc = embedded_broker.start_broker(p, host, stdout=log, advertised=advertised)
            except embedded_broker.BrokerError as e:
                if ports.address_in_use(str(e) + Path(log_path).read_bytes()[start:].decode(errors="replace")):
                    continue
                raise
        if listening_here(proc.pid, p):
            return Broker(proc, p, host)
        embedded_broker.stop_broker(proc)  # another process answered on the port while ours failed to bind
    raise embedded_broker.BrokerError(f"the broker found its port taken {attempts} times in a row")
