"""End to end against the shared real server and broker: chat -> Interaction on
rlhf.interactions; thumbs and pairwise -> events on rlhf.feedback, read back by a plain
kafka-python consumer and validated against the schema; bad inputs -> 4xx, nothing published."""

from __future__ import annotations

import time

import httpx
import pytest

from feedback import feedback_tokens
from feedback.schema import Interaction, Pairwise, Thumbs
from tests.feedback.conftest import as_event, read_topic

DEV_KEY = "dev-only-insecure-key"  # the shared server runs with the development key


def chat(server, user: str, prompt: str, n: int = 1) -> dict:
    r = httpx.post(server.url + "/v1/chat/completions", timeout=120, json={
        "model": "tiny", "messages": [{"role": "user", "content": prompt}], "n": n, "max_tokens": 12,
        "temperature": 1.0, "user": user})
    assert r.status_code == 200, r.text
    return r.json()


def ref(body: dict, i: int) -> dict:
    r = body["rlhf"]["responses"][i]
    return {"response_id": r["response_id"], "feedback_token": r["feedback_token"]}


def post(server, body, **kw) -> httpx.Response:
    return httpx.post(server.url + "/v1/feedback", json=body, timeout=30, **kw)


def test_chat_and_feedback_reach_the_topics(server, broker):
    c = chat(server, "alice", "Tell me about rivers.", n=2)
    hexid = c["id"].removeprefix("chatcmpl-")
    a, b = ref(c, 0), ref(c, 1)

    r1 = post(server, {"type": "thumbs", **a, "value": "up", "comment": "clear and short"})  # user from the token
    r2 = post(server, {"type": "pairwise", "chosen": b, "rejected": a, "user": "alice"})
    assert r1.status_code == 202 and r2.status_code == 202, (r1.text, r2.text)
    thumbs_id, pair_id = r1.json()["event_id"], r2.json()["event_id"]
    assert thumbs_id != pair_id

    rids = {a["response_id"], b["response_id"]}
    inter = read_topic(broker, "rlhf.interactions", until=lambda m: rids <= {x.get("response_id") for x in m})
    mine = [m for m in inter if m.get("response_id") in rids]
    assert len({m["event_id"] for m in mine}) == 2
    for m in mine:
        ev = as_event(m)
        assert isinstance(ev, Interaction)
        assert ev.user == "alice" and ev.conversation_id == hexid and ev.completion_id == c["id"]
        assert ev.messages[-1].content == "Tell me about rivers." and ev.response == \
            c["choices"][ev.choice_index]["message"]["content"]
        assert m["_key"] == hexid.encode()

    fb = read_topic(broker, "rlhf.feedback", until=lambda m: {thumbs_id, pair_id} <= {x["event_id"] for x in m})
    got = {m["event_id"]: m for m in fb if m["event_id"] in (thumbs_id, pair_id)}
    t, p = as_event(got[thumbs_id]), as_event(got[pair_id])
    assert isinstance(t, Thumbs) and isinstance(p, Pairwise)
    assert (t.response_id, t.value, t.comment, t.user, t.conversation_id) == \
        (a["response_id"], "up", "clear and short", "alice", hexid)
    assert (p.chosen_response_id, p.rejected_response_id, p.user, p.conversation_id) == \
        (b["response_id"], a["response_id"], "alice", hexid)
    # one conversation, one partition, in order
    assert got[thumbs_id]["_key"] == got[pair_id]["_key"] == hexid.encode()
    assert got[thumbs_id]["_partition"] == got[pair_id]["_partition"]
    assert got[thumbs_id]["_offset"] < got[pair_id]["_offset"]

    metrics = httpx.get(server.url + "/metrics", timeout=10).text
    assert 'rlhf_feedback_events_total{adapter="none",type="thumbs"}' in metrics
    assert "rlhf_spool_events 0.0" in metrics
    assert 'rlhf_events_published_total{topic="rlhf.feedback"}' in metrics


def test_bad_feedback_gets_4xx_and_nothing_reaches_the_topic(server, broker):
    user = "bad-input-user"
    c = chat(server, user, "Name a colour.", n=2)
    other = chat(server, user, "Name a fruit.")
    a, b, o = ref(c, 0), ref(c, 1), ref(other, 0)
    hexid = c["id"].removeprefix("chatcmpl-")
    never = feedback_tokens.response_id("0" * 32, 0)
    stale = feedback_tokens.sign(DEV_KEY, a["response_id"], user, now=time.time() - 8 * 24 * 3600)
    thumbs = lambda **kw: {"type": "thumbs", **a, "value": "down", **kw}  # noqa: E731
    cases = [
        # (body, status, param)
        (thumbs(response_id="chatcmpl-123"), 404, "response_id"),
        (thumbs(response_id=never, feedback_token=a["feedback_token"]), 403, "feedback_token"),
        (thumbs(feedback_token=b["feedback_token"]), 403, "feedback_token"),  # token of another answer
        (thumbs(feedback_token="v2.1.e30.00"), 403, "feedback_token"),
        (thumbs(feedback_token=stale), 403, "feedback_token"),
        (thumbs(user="mallory"), 403, "feedback_token"),  # says it is someone else
        (thumbs(comment="x" * 2001), 422, "comment"),
        (thumbs(value="sideways"), (400, 422), None),
        (thumbs(value=1), (400, 422), None),
        (thumbs(comment=["a list"]), (400, 422), None),
        (thumbs(unexpected="field"), (400, 422), None),
        ({"type": "stars", **a, "value": "up"}, (400, 422), None),
        ({"type": "thumbs", "response_id": a["response_id"], "value": "up"}, (400, 422), None),
        ({"type": "pairwise", "chosen": a, "rejected": a}, 422, "rejected.response_id"),
        ({"type": "pairwise", "chosen": a, "rejected": o}, 422, "rejected.response_id"),  # different prompts
        ({"type": "pairwise", "chosen": a, "rejected": {**b, "feedback_token": a["feedback_token"]}}, 403,
         "rejected.feedback_token"),
        ({"type": "pairwise", "chosen": a}, (400, 422), None),
    ]
    for body, status, param in cases:
        r = post(server, body)
        want = status if isinstance(status, tuple) else (status,)
        assert r.status_code in want, (body, r.status_code, r.text)
        err = r.json()["error"]
        assert err["message"] and set(err) == {"message", "type", "param", "code"}, r.text
        if param:
            assert err["param"] == param, r.text
    r = httpx.post(server.url + "/v1/feedback", content=b"{not json", timeout=10,
                   headers={"Content-Type": "application/json"})
    assert 400 <= r.status_code < 500

    # a valid post after all of them: once it is on the topic, anything earlier would be too
    # (same conversation key, same partition, in order)
    ok = post(server, thumbs(comment="sentinel"))
    assert ok.status_code == 202, ok.text
    sentinel = ok.json()["event_id"]
    fb = read_topic(broker, "rlhf.feedback", until=lambda m: any(x["event_id"] == sentinel for x in m))
    mine = [m for m in fb if m.get("user") in (user, "mallory") or m.get("conversation_id") == hexid
            or m.get("response_id") == never]
    assert [m["event_id"] for m in mine] == [sentinel]


@pytest.mark.parametrize("mode", ["thumbs", "pairwise"])
def test_repeated_feedback_gets_new_events_with_one_dedupe_key(server, broker, mode):
    c = chat(server, "carol", "Say something kind.", n=2)
    a, b = ref(c, 0), ref(c, 1)
    if mode == "thumbs":
        bodies = [{"type": "thumbs", **a, "value": "up"}, {"type": "thumbs", **a, "value": "down"}]
    else:
        bodies = [{"type": "pairwise", "chosen": a, "rejected": b}, {"type": "pairwise", "chosen": b, "rejected": a}]
    ids = []
    for body in bodies:
        r = post(server, body)
        assert r.status_code == 202, r.text
        ids.append(r.json()["event_id"])
    fb = read_topic(broker, "rlhf.feedback", until=lambda m: set(ids) <= {x["event_id"] for x in m})
    evs = [as_event(m) for m in fb if m["event_id"] in ids]
    evs = list({e.event_id: e for e in evs}.values())
    assert len(evs) == 2 and evs[0].dedupe_key() == evs[1].dedupe_key()  # the later one replaces the first


def test_tokens_with_prompt_digest_allow_pairs_across_requests(server, broker):
    """Two requests with the same prompt (the page's two-model compare): comparable when the
    tokens carry equal prompt digests; the tokens' adapters land in the events."""
    user = "dave"
    ra, rb, rc = (feedback_tokens.response_id(f"{i:032x}", 0) for i in (0xA1, 0xB2, 0xC3))
    same = feedback_tokens.prompt_digest([{"role": "user", "content": "Which is better?"}])
    diff = feedback_tokens.prompt_digest([{"role": "user", "content": "Something else"}])
    a = {"response_id": ra, "feedback_token": feedback_tokens.sign(DEV_KEY, ra, user, adapter="policy@v1", prompt=same)}
    b = {"response_id": rb, "feedback_token": feedback_tokens.sign(DEV_KEY, rb, user, adapter="policy@v2", prompt=same)}
    c = {"response_id": rc, "feedback_token": feedback_tokens.sign(DEV_KEY, rc, user, prompt=diff)}
    assert post(server, {"type": "pairwise", "chosen": a, "rejected": c}).status_code == 422
    r = post(server, {"type": "pairwise", "chosen": b, "rejected": a})
    assert r.status_code == 202, r.text
    t = post(server, {"type": "thumbs", **b, "value": "up"})
    assert t.status_code == 202, t.text
    want = {r.json()["event_id"], t.json()["event_id"]}
    fb = read_topic(broker, "rlhf.feedback", until=lambda m: want <= {x["event_id"] for x in m})
    evs = {m["event_id"]: as_event(m) for m in fb if m["event_id"] in want}
    p, th = evs[r.json()["event_id"]], evs[t.json()["event_id"]]
    assert (p.chosen_adapter, p.rejected_adapter, p.user) == ("policy@v2", "policy@v1", user)
    assert th.adapter == "policy@v2"
    assert 'rlhf_feedback_events_total{adapter="policy@v2",type="pairwise"}' in \
        httpx.get(server.url + "/metrics", timeout=10).text
