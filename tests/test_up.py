"""`rlhf up` as a user runs it: broker + serving + learner come up, the chat page and API answer,
a serving process that dies is restarted, and SIGINT (Ctrl-C) stops everything cleanly.
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

import httpx

from feedback.broker import port_open
from tests.conftest import ROOT, free_port


def children_of(pid: int) -> set[int]:
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


class Output:
    """Lines of a process's stdout, readable with a timeout."""

    def __init__(self, stream):
        self.lines: list[str] = []
        self.q: queue.Queue = queue.Queue()
        threading.Thread(target=self._pump, args=(stream,), daemon=True).start()

    def _pump(self, stream):
        for line in stream:
            self.q.put(line)

    def wait_for(self, text: str, timeout_s: float) -> str:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            try:
                line = self.q.get(timeout=0.5)
            except queue.Empty:
                continue
            self.lines.append(line)
            if text in line:
                return line
        raise AssertionError(f"{text!r} not printed within {timeout_s:.0f} s; output:\n{''.join(self.lines[-40:])}")

    def rest(self, timeout_s: float = 2.0) -> str:
        end = time.monotonic() + timeout_s
        while time.monotonic() < end:
            try:
                self.lines.append(self.q.get(timeout=0.2))
            except queue.Empty:
                pass
        return "".join(self.lines)


def test_up_starts_supervises_and_stops_everything(tmp_path, tiny_model_path):
    port, bport, lport = free_port(), free_port(), free_port()
    env = {**os.environ, "RLHF_DATA_DIR": str(tmp_path / "data"), "RLHF_ADAPTER_DIR": str(tmp_path / "adapters"),
           "RLHF_KAFKA_BOOTSTRAP": f"127.0.0.1:{bport}", "RLHF_LEARNER_PORT": str(lport),
           "PYTHONUNBUFFERED": "1"}  # the default context (2048) too: capped at the tiny model's 1024
    proc = subprocess.Popen([sys.executable, "-m", "rlhf.cli", "up", "--model", "tiny", "--port", str(port)],
                            env=env, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    out = Output(proc.stdout)
    try:
        out.wait_for("broker listening at", 60)
        out.wait_for("chat page", 300)
        url = f"http://127.0.0.1:{port}"
        page = httpx.get(url + "/", timeout=10)
        assert page.status_code == 200 and "<title>rlhf chat</title>" in page.text
        r = httpx.post(url + "/v1/chat/completions", json={"messages": [{"role": "user", "content": "Hi"}],
                                                           "max_tokens": 8}, timeout=60)
        assert r.status_code == 200, r.text
        kids = children_of(proc.pid)
        names = {pid: cmdline(pid) for pid in kids}
        serve = [pid for pid, c in names.items() if c.endswith("rlhf.cli serve ")]
        learn = [pid for pid, c in names.items() if c.endswith("rlhf.cli learn ")]
        assert serve and learn and any("tansu" in c for c in names.values()), names

        # A dead serving process is restarted and becomes ready again.
        os.kill(serve[0], signal.SIGKILL)
        out.wait_for("restarting `rlhf serve`", 30)
        out.wait_for("chat page", 300)
        assert httpx.get(url + "/readyz", timeout=10).status_code == 200

        kids = children_of(proc.pid)
        proc.send_signal(signal.SIGINT)  # what Ctrl-C sends
        assert proc.wait(90) == 0, out.rest()
        text = out.rest()
        assert "stopped" in text
        time.sleep(1.0)
        left = [pid for pid in kids if Path(f"/proc/{pid}").exists() and "zombie" not in
                Path(f"/proc/{pid}/status").read_text(errors="replace")]
        assert not left, {pid: cmdline(pid) for pid in left}
        assert not port_open("127.0.0.1", port) and not port_open("127.0.0.1", bport)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
