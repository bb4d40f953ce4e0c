"""Feedback benchmark: POST /v1/feedback posts/s and latency, broker up and broker down (spool).

    .venv/bin/python bench/feedback.py [--seconds 10] [--rate 1000] [--concurrency 16] [--url URL]

Starts a private Tansu broker and `rlhf serve --model tiny` (rate limit off), gets feedback
tokens from a few chat completions, then measures, each for `--seconds`:

- broker up,   closed loop: `--concurrency` clients posting back to back (the most it takes);
- broker up,   open loop:   posts sent on a fixed schedule of `--rate` per second; latency is
                            measured from each post's scheduled time, so queueing counts;
- broker down, closed loop: the broker paused (SIGSTOP): every post is fsynced to the spool;
- then the broker resumes and the time to drain the spool is reported.

Each post is acked by Kafka (acks=all) or fsynced before its 202. The server's CPU time per
post (from /proc) is printed too: unlike rates and latencies it hardly depends on what else
runs on the machine. The load generator is a
minimal keep-alive HTTP/1.1 client on asyncio streams (cheaper than httpx), because it shares
the 2 cores with the server. A benchmark, not a test: numbers on a shared machine are noisy.
With `--url`, it only measures an existing server (broker-up phases, no broker control).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import signal
import sys
import tempfile
import time
from pathlib import Path
from urllib.parse import urlsplit

import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from harness.broker import start_broker  # noqa: E402
from harness.metrics import metric_value, scrape  # noqa: E402
from harness.server import ServerProcess  # noqa: E402


# ---------------------------------------------------------------------------- a small HTTP client
class Conn:
    """One keep-alive HTTP/1.1 connection; `post()` returns (status, body)."""

    def __init__(self, host: str, port: int):
        self.host, self.port = host, port
        self.reader = self.writer = None

    async def post(self, path: str, body: bytes) -> tuple[int, bytes]:
        fresh = self.writer is None
        try:
            return await self._post(path, body)
        except (asyncio.IncompleteReadError, ConnectionError):
            if fresh:
                raise
            self.writer = None  # the server closed an idle keep-alive connection: once more on a new one
            return await self._post(path, body)

    async def _post(self, path: str, body: bytes) -> tuple[int, bytes]:
        if self.writer is None:
            self.reader, self.writer = await asyncio.open_connection(self.host, self.port)
        self.writer.write(f"POST {path} HTTP/1.1\r\nHost: {self.host}\r\nContent-Type: application/json\r\n"
                          f"Content-Length: {len(body)}\r\n\r\n".encode() + body)
        head = await self.reader.readuntil(b"\r\n\r\n")
        status = int(head[9:12])
        m = re.search(rb"(?i)content-length: *(\d+)", head)
        data = await self.reader.readexactly(int(m.group(1))) if m else b""
        return status, data


def pct(xs: list[float], q: float) -> float:
    return sorted(xs)[min(len(xs) - 1, int(q * len(xs)))] * 1000 if xs else float("nan")


async def closed_loop(url: str, bodies: list[bytes], seconds: float, concurrency: int) -> dict:
    u = urlsplit(url)
    lat, codes = [], {}
    stop_at = time.perf_counter() + seconds

    async def worker(w: int):
        conn, i = Conn(u.hostname, u.port), w
        while time.perf_counter() < stop_at:
            t = time.perf_counter()
            status, _ = await conn.post("/v1/feedback", bodies[i % len(bodies)])
            lat.append(time.perf_counter() - t)
            codes[status] = codes.get(status, 0) + 1
            i += concurrency

    start = time.perf_counter()
    await asyncio.gather(*(worker(w) for w in range(concurrency)))
    return {"n": len(lat), "wall": time.perf_counter() - start, "lat": lat, "codes": codes}


async def open_loop(url: str, bodies: list[bytes], seconds: float, rate: float, max_conns: int = 1000) -> dict:
    """Send post k at start + k/rate on a free connection; latency from that scheduled time."""
    u = urlsplit(url)
    idle: list[Conn] = []
    lat, codes, tasks = [], {}, []
    start = time.perf_counter()
    total = int(seconds * rate)

    async def one(k: int, scheduled: float):
        conn = idle.pop() if idle else Conn(u.hostname, u.port)
        status, _ = await conn.post("/v1/feedback", bodies[k % len(bodies)])
        lat.append(time.perf_counter() - scheduled)
        codes[status] = codes.get(status, 0) + 1
        idle.append(conn)

    behind = False
    for k in range(total):
        scheduled = start + k / rate
        delay = scheduled - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.create_task(one(k, scheduled)))
        if len(tasks) - len(lat) > max_conns:  # the server fell far behind: stop adding load
            behind = True
            break
    await asyncio.gather(*tasks)
    return {"n": len(lat), "wall": time.perf_counter() - start, "lat": lat, "codes": codes,
            "note": f"fell behind the schedule: stopped after {len(tasks)} of {total}" if behind else ""}


# ---------------------------------------------------------------------------- set-up
def metric(url: str, name: str) -> float:
    return metric_value(scrape(url), name) or 0.0


def feedback_bodies(url: str, users: int) -> list[bytes]:
    """Thumbs and pairwise bodies for answers of `users` chat completions (n=2 each). Each opinion
    comes twice, the second time changed (up <-> down, chosen <-> rejected), so a bench cycling
    through the list changes every vote it posts again: an unchanged repeat would be answered
    from memory and published nothing, which is not what this bench measures."""
    bodies, flipped = [], []
    for u in range(users):
        r = httpx.post(url + "/v1/chat/completions", timeout=120, json={
            "model": "tiny", "messages": [{"role": "user", "content": f"Hello {u}"}], "n": 2, "max_tokens": 8,
            "user": f"bench-{u}"})
        r.raise_for_status()
        a, b = ({k: x[k] for k in ("response_id", "feedback_token")} for x in r.json()["rlhf"]["responses"])
        bodies += [json.dumps({"type": "thumbs", **a, "value": "up", "comment": "bench"}).encode(),
                   json.dumps({"type": "thumbs", **b, "value": "down"}).encode(),
                   json.dumps({"type": "pairwise", "chosen": a, "rejected": b}).encode()]
        flipped += [json.dumps({"type": "thumbs", **a, "value": "down", "comment": "bench"}).encode(),
                    json.dumps({"type": "thumbs", **b, "value": "up"}).encode(),
                    json.dumps({"type": "pairwise", "chosen": b, "rejected": a}).encode()]
    return bodies + flipped


def start_stack(tmp: Path):
    broker = start_broker(tmp / "broker.log")
    server = ServerProcess({"RLHF_MODEL": "tiny", "RLHF_DATA_DIR": str(tmp / "data"),
                            "RLHF_ADAPTER_DIR": str(tmp / "adapters"), "RLHF_MAX_MODEL_LEN": "512",
                            "RLHF_LOG_LEVEL": "WARNING", "RLHF_KAFKA_BOOTSTRAP": broker.bootstrap,
                            "RLHF_FEEDBACK_RATE_LIMIT": str(10**9)}, tmp / "server.log")
    try:
        server.start(600)
    except RuntimeError as e:
        broker.stop()
        raise SystemExit(f"{e}\n(see {tmp / 'server.log'})")
    return broker, server, server.url


def cpu_s(pid: int | None) -> float:
    """CPU seconds (user + system) the process has used so far: robust to other load on the machine."""
    if pid is None:
        return float("nan")
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def measured(pid: int | None, coro) -> dict:
    c0 = cpu_s(pid)
    res = await coro
    res["cpu_us"] = (cpu_s(pid) - c0) / max(1, res["n"]) * 1e6
    return res


def row(name: str, res: dict) -> str:
    ok = sum(v for k, v in res["codes"].items() if 200 <= k < 300)
    bad = res["n"] - ok
    return (f"| {name:<29} | {res['n']:>6} | {res['n'] / res['wall']:>8.0f} | {pct(res['lat'], .5):>7.1f} | "
            f"{pct(res['lat'], .9):>7.1f} | {pct(res['lat'], .99):>7.1f} | {max(res['lat']) * 1000:>7.1f} | {bad:>5} | "
            f"{res['cpu_us']:>8.0f} | {res.get('note', '')}")


async def main_async(args) -> int:
    tmp = Path(tempfile.mkdtemp(prefix="bench-feedback-"))
    broker = server = None
    if args.url:
        url = args.url
    else:
        print("starting broker and `rlhf serve --model tiny` ...", flush=True)
        broker, server, url = start_stack(tmp)
    try:
        bodies = feedback_bodies(url, args.users)
        load0 = os.getloadavg()[0]  # other work on the machine skews every number below
        await closed_loop(url, bodies, 2.0, args.concurrency)  # warm-up
        pid = server.proc.pid if server is not None else None
        rows = [row(f"broker up, {args.concurrency} clients",
                    await measured(pid, closed_loop(url, bodies, args.seconds, args.concurrency))),
                row(f"broker up, open loop {args.rate:.0f}/s",
                    await measured(pid, open_loop(url, bodies, args.seconds, args.rate)))]
        drain = None
        if broker is not None:
            os.kill(broker.proc.pid, signal.SIGSTOP)
            try:
                await closed_loop(url, bodies, 3.0, args.concurrency)  # the first posts wait out the 1.5 s ack timeout
                rows.append(row(f"broker down, {args.concurrency} clients",
                                await measured(pid, closed_loop(url, bodies, args.seconds, args.concurrency))))
                rows.append(row(f"broker down, open loop {args.rate:.0f}/s",
                                await measured(pid, open_loop(url, bodies, args.seconds, args.rate))))
                spooled = metric(url, "rlhf_spool_events")
            finally:
                os.kill(broker.proc.pid, signal.SIGCONT)
            t = time.perf_counter()
            while metric(url, "rlhf_spool_events") > 0 and time.perf_counter() - t < 300:
                await asyncio.sleep(0.2)
            drain = (spooled, time.perf_counter() - t)
        print(f"\nPOST /v1/feedback, {args.seconds:.0f} s per phase, {len(bodies)} distinct bodies, "
              f"{os.cpu_count()} cores, load average before: {load0:.1f}\n")
        print("| phase                         |  posts |  posts/s | p50 ms  | p90 ms  | p99 ms  | max ms  | non-2xx | "
              "server CPU us/post | note |")
        print("| ----------------------------- | -----: | -------: | ------: | ------: | ------: | ------: | ----: | "
              "-------: | --- |")
        for r in rows:
            print(r)
        if drain:
            print(f"\nspool after the broker-down phases: {drain[0]:.0f} events, drained in {drain[1]:.1f} s "
                  f"after the broker resumed")
        return 0
    finally:
        if server is not None:
            server.stop(60)
        if broker is not None:
            broker.stop()


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seconds", type=float, default=10.0, help="length of each measured phase")
    p.add_argument("--rate", type=float, default=1000.0, help="posts per second in the open-loop phases")
    p.add_argument("--concurrency", type=int, default=16, help="clients in the closed-loop phases")
    p.add_argument("--users", type=int, default=8, help="chat completions whose answers get feedback")
    p.add_argument("--url", help="measure this running server instead (no broker-down phase)")
    return asyncio.run(main_async(p.parse_args()))


if __name__ == "__main__":
    sys.exit(main())
