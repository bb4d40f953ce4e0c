"""`rlhf up` as a user runs it: broker + serving + learner come up, the chat page and API answer,
a serving process that dies is restarted, and SIGINT (Ctrl-C) stops everything cleanly.
"""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import httpx

from feedback.broker import port_open
from harness import ports
from harness.procfs import cmdline, descendants, environ, thread_cpus
from harness.up import UpProcess
from harness.waiting import answers_200, wait_until
from rlhf.cpu_share import parse_cpus


def test_up_starts_supervises_and_stops_everything(tmp_path, tiny_model_path):
    # The default context (2048) too: capped at the tiny model's 1024.
    up = UpProcess({"RLHF_DATA_DIR": str(tmp_path / "data"), "RLHF_ADAPTER_DIR": str(tmp_path / "adapters")}, "tiny")
    try:
        up.start(timeout=600)  # serving ready and the learner answering, each on its own port
        out = up.output
        out.wait_for("serving's model computes on ", 10)
        out.wait_for("broker listening at", 10)
        out.wait_for("chat page", 30)
        page = httpx.get(up.url + "/", timeout=10)
        assert page.status_code == 200 and "<title>rlhf chat</title>" in page.text
        r = httpx.post(up.url + "/v1/chat/completions", json={"messages": [{"role": "user", "content": "Hi"}],
                                                              "max_tokens": 8}, timeout=60)
        assert r.status_code == 200, r.text
        kids = descendants(up.proc.pid)
        names = {pid: cmdline(pid) for pid in kids}
        serve = [pid for pid, c in names.items() if c.endswith("rlhf.cli serve ")]
        learn = [pid for pid, c in names.items() if c.endswith("rlhf.cli learn ")]
        assert serve and learn and any("tansu" in c for c in names.values()), names

        # The cores are shared out: serving's engine computes only on its share, the learner has the rest.
        allowed = os.sched_getaffinity(0)
        serving_cpus = set(parse_cpus(environ(serve[0])["RLHF_SERVING_CPUS"]))
        learner_cpus = set(parse_cpus(environ(learn[0])["RLHF_LEARNER_CPUS"]))
        assert serving_cpus | learner_cpus == allowed
        if len(allowed) > 1:
            assert not serving_cpus & learner_cpus
            bound = [cpus for pid in descendants(serve[0]) for cpus in thread_cpus(pid).values() if cpus != allowed]
            assert bound and all(cpus <= serving_cpus for cpus in bound), bound

        # A dead serving process is restarted (on the same port) and becomes ready again.
        os.kill(serve[0], signal.SIGKILL)
        out.wait_for("restarting `rlhf serve`", 30)
        out.wait_for("chat page", 300)
        assert httpx.get(up.url + "/readyz", timeout=10).status_code == 200

        kids = descendants(up.proc.pid)
        up.proc.send_signal(signal.SIGINT)  # what Ctrl-C sends
        assert up.proc.wait(90) == 0, out.rest()
        text = out.rest()
        assert "stopped" in text
        time.sleep(1.0)
        left = [pid for pid in kids if Path(f"/proc/{pid}").exists() and "zombie" not in
                Path(f"/proc/{pid}/status").read_text(errors="replace")]
        assert not left, {pid: cmdline(pid) for pid in left}
        assert not port_open("127.0.0.1", up.port) and not port_open("127.0.0.1", up.broker_port)
    finally:
        up.stop()


def test_up_starts_the_judge_when_enabled(tmp_path, tiny_model_path):
    judge_port = ports.pick_port()
    up = UpProcess({"RLHF_DATA_DIR": str(tmp_path / "data"), "RLHF_ADAPTER_DIR": str(tmp_path / "adapters"),
                    "RLHF_JUDGE_ENABLED": "true", "RLHF_JUDGE_PORT": str(judge_port)}, "tiny")
    try:
        up.start(timeout=600)
        up.output.wait_for(f"judge: http://127.0.0.1:{judge_port}/metrics", 30)
        judge = [pid for pid in descendants(up.proc.pid) if cmdline(pid).endswith("rlhf.cli judge ")]
        assert judge, {pid: cmdline(pid) for pid in descendants(up.proc.pid)}
        wait_until(lambda: answers_200(f"http://127.0.0.1:{judge_port}/healthz"), 120, 0.5, "the judge's /healthz")
        assert "rlhf_judge_paused 0.0" in httpx.get(f"http://127.0.0.1:{judge_port}/metrics", timeout=10).text
        up.proc.send_signal(signal.SIGINT)
        assert up.proc.wait(90) == 0, up.output.rest()
        assert not port_open("127.0.0.1", judge_port)
    finally:
        up.stop()
