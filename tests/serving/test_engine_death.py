"""A replica whose vLLM engine core dies (killed here with SIGKILL, as the out-of-memory killer
would) answers 503s, never 500s, and stops with exit code 3 so that its supervisor (`rlhf up`,
Kubernetes) starts a fresh one, leaving no engine processes behind."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import httpx

from harness.procfs import cmdline, descendants
from serving.app import ENGINE_DIED_EXIT


def test_a_dead_engine_core_gives_503s_then_the_replica_exits(server_factory, broker):
    server = server_factory(RLHF_KAFKA_BOOTSTRAP=broker)
    kids = descendants(server.proc.pid)
    core = [pid for pid in kids if "EngineCore" in cmdline(pid)]
    assert len(core) == 1, {pid: cmdline(pid) for pid in kids}
    assert httpx.get(server.url + "/healthz", timeout=5).status_code == 200

    os.kill(core[0], signal.SIGKILL)
    codes: list[int] = []
    deadline = time.monotonic() + 120
    while server.proc.poll() is None and time.monotonic() < deadline:
        try:
            r = httpx.post(server.url + "/v1/chat/completions", timeout=30,
                           json={"messages": [{"role": "user", "content": "Hi"}], "max_tokens": 4})
            codes.append(r.status_code)
            if r.status_code == 503:
                assert r.json()["error"]["code"] in ("engine_stopped", "not_ready"), r.text
            codes.append(httpx.get(server.url + "/healthz", timeout=5).status_code)
        except httpx.TransportError:
            pass  # shutting down
        time.sleep(0.2)
    assert server.proc.wait(60) == ENGINE_DIED_EXIT, server.tail()
    assert 500 not in codes and set(codes) <= {200, 503}, codes
    assert "engine core died" in server.tail(200)
    time.sleep(2.0)
    left = [pid for pid in kids if Path(f"/proc/{pid}").exists()
            and "zombie" not in Path(f"/proc/{pid}/status").read_text(errors="replace")]
    assert not left, {pid: cmdline(pid) for pid in left}
