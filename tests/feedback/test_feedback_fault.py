"""Faults, against a private broker and a private server (the shared ones stay undisturbed):
the broker paused in the middle of 1,000 feedback posts; the service restarted while its spool
holds events; the per-user rate limit. The broker is paused with SIGSTOP, not killed: Tansu
keeps data in memory, so killing it would lose what it already held."""

from __future__ import annotations

import os
import signal
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

from feedback.spool import Spool
from harness.broker import start_broker
from harness.metrics import metric_value, scrape
from tests.feedback.conftest import read_topic

RATE_LIMIT = 300  # per user per minute on the private server


def metric(server, name: str) -> float:
    return metric_value(scrape(server.url), name) or 0.0


def refs_for(server, user: str, n: int = 1) -> list[dict]:
    r = httpx.post(server.url + "/v1/chat/completions", timeout=120, json={
        "model": "tiny", "messages": [{"role": "user", "content": f"Hello from {user}"}], "n": n,
        "max_tokens": 8, "user": user})
    assert r.status_code == 200, r.text
    return [{"response_id": x["response_id"], "feedback_token": x["feedback_token"]} for x in r.json()["rlhf"]["responses"]]


def ids_on_topic(bootstrap: str, users: set[str], want: set[str], timeout_s: float = 90) -> list[str]:
    """Event ids of these users' feedback on rlhf.feedback (with copies), once `want` is all there."""
    msgs = read_topic(bootstrap, "rlhf.feedback", timeout_s=timeout_s, quiet_s=3,
                      until=lambda m: want <= {x["event_id"] for x in m})
    return [m["event_id"] for m in msgs if m.get("user") in users]


class Stack:
    """A private Tansu broker and one serving process using it, restartable on the same data dir."""

    def __init__(self, server_factory, tmp_path):
        self.factory = server_factory
        self.broker = start_broker(tmp_path / "broker.log")
        self.bootstrap = self.broker.bootstrap
        self.data_dir = tmp_path / "data"
        self.server = self.start_server()

    def start_server(self):
        return self.factory(RLHF_KAFKA_BOOTSTRAP=self.bootstrap, RLHF_DATA_DIR=self.data_dir,
                            RLHF_FEEDBACK_RATE_LIMIT=RATE_LIMIT, RLHF_TOPIC_PARTITIONS=3)

    def pause(self):
        os.kill(self.broker.proc.pid, signal.SIGSTOP)

    def resume(self):
        os.kill(self.broker.proc.pid, signal.SIGCONT)


def assert_spool_drains(server, timeout_s: float = 60) -> None:
    """The server's spool empties once the broker takes events again."""
    deadline = time.monotonic() + timeout_s
    while metric(server, "rlhf_spool_events") > 0 and time.monotonic() < deadline:
        time.sleep(0.5)
    assert metric(server, "rlhf_spool_events") == 0


@pytest.fixture(scope="module")
def stack(server_factory, tmp_path_factory):
    s = Stack(server_factory, tmp_path_factory.mktemp("fault"))
    yield s
    s.resume()
    s.broker.stop()


def test_broker_paused_during_1000_posts_loses_nothing(stack):
    users = [f"fault-user-{i}" for i in range(4)]
    refs = {u: refs_for(stack.server, u)[0] for u in users}
    posted = threading.Semaphore(0)
    done = {"n": 0}
    lock = threading.Lock()

    def one(i: int) -> httpx.Response:
        u = users[i % len(users)]
        r = client.post("/v1/feedback", json={"type": "thumbs", **refs[u], "value": "up" if i % 2 else "down",
                                               "comment": f"post {i}"})
        with lock:
            done["n"] += 1
            if done["n"] == 300:
                posted.release()
        return r

    def fault():  # pause the broker after 300 answers, for 5 s, while posts keep coming
        posted.acquire()
        stack.pause()
        time.sleep(5)
        stack.resume()

    spooled_before = metric(stack.server, 'rlhf_events_spooled_total{topic="rlhf.feedback"}')
    controller = threading.Thread(target=fault)
    controller.start()
    with httpx.Client(base_url=stack.server.url, timeout=60) as client, ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(one, range(1000)))
    controller.join()

    assert [r.status_code for r in answers] == [202] * 1000, {r.status_code for r in answers}
    posted_ids = {r.json()["event_id"] for r in answers}
    assert len(posted_ids) == 1000
    # the pause really sent events through the spool
    assert metric(stack.server, 'rlhf_events_spooled_total{topic="rlhf.feedback"}') > spooled_before

    on_topic = ids_on_topic(stack.bootstrap, set(users), posted_ids)
    assert set(on_topic) == posted_ids  # exactly the 1,000: none lost, none invented (copies share an id)
    assert_spool_drains(stack.server)


def test_restart_while_the_spool_holds_events_loses_nothing(stack):
    user = "restart-user"
    ref = refs_for(stack.server, user)[0]
    stack.pause()
    try:
        with httpx.Client(base_url=stack.server.url, timeout=60) as client:
            answers = [client.post("/v1/feedback", json={"type": "thumbs", **ref, "value": "up", "comment": str(i)})
                       for i in range(50)]
        assert [r.status_code for r in answers] == [202] * 50
        posted_ids = {r.json()["event_id"] for r in answers}
        assert metric(stack.server, "rlhf_spool_events") == 50
        stack.server.stop()  # SIGTERM while the broker cannot take anything
    finally:
        stack.resume()
    assert len(Spool(stack.data_dir / "spool", max_events=1_000_000)) == 50  # on disk across the restart

    stack.server = stack.start_server()  # same data dir: drains what the earlier run left
    on_topic = ids_on_topic(stack.bootstrap, {user}, posted_ids)
    assert set(on_topic) == posted_ids
    assert_spool_drains(stack.server)


def test_rate_limit_answers_429_and_publishes_nothing_more(stack):
    user = "eager-user"
    ref = refs_for(stack.server, user)[0]
    accepted, limited = [], None
    with httpx.Client(base_url=stack.server.url, timeout=30) as client:
        for i in range(2 * RATE_LIMIT):  # the vote changes each time: an unchanged repeat would publish nothing
            r = client.post("/v1/feedback", json={"type": "thumbs", **ref, "value": ("up", "down")[i % 2]})
            if r.status_code == 429:
                limited = r
                break
            assert r.status_code == 202, r.text
            accepted.append(r.json()["event_id"])
        assert limited is not None, "never rate limited"
        assert len(accepted) >= RATE_LIMIT  # the first minute's burst is allowed
        assert int(limited.headers["Retry-After"]) >= 1
        err = limited.json()["error"]
        assert err["code"] == "rate_limit_exceeded" and err["type"] == "rate_limit_error"
        # another user is not limited by this one
        other = refs_for(stack.server, "patient-user")[0]
        assert client.post("/v1/feedback", json={"type": "thumbs", **other, "value": "up"}).status_code == 202
    on_topic = ids_on_topic(stack.bootstrap, {user}, set(accepted))
    assert sorted(set(on_topic)) == sorted(accepted)  # the 429'd post never reached the topic
