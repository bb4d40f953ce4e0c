"""Corrected answers (feedback of type `demonstration`) against the shared real server and broker:
accepted under the same token and identity rules as thumbs, one event on rlhf.feedback (posted
again unchanged: the same event id), a later correction replaces the earlier one; someone else's
token, an empty or too long text get 4xx and nothing is published."""

from __future__ import annotations

from feedback.schema import Demonstration
from tests.feedback.conftest import as_event, read_topic
from tests.feedback.test_feedback_api import chat, post, ref

LIMIT = 4000  # RLHF_DEMONSTRATION_MAX_CHARS, default


def test_a_corrected_answer_is_one_event_on_the_feedback_topic(server, broker):
    c = chat(server, "dora", "What is the capital of France?")
    a = ref(c, 0)
    body = {"type": "demonstration", **a, "text": "The capital of France is Paris.", "user": "dora"}
    first, again = post(server, body), post(server, body)
    assert first.status_code == again.status_code == 202, (first.text, again.text)
    assert first.json()["event_id"] == again.json()["event_id"]  # posted twice, published once
    later = post(server, {**body, "text": "Paris."})
    assert later.status_code == 202 and later.json()["event_id"] != first.json()["event_id"]
    ids = {first.json()["event_id"], later.json()["event_id"]}
    fb = read_topic(broker, "rlhf.feedback", until=lambda m: ids <= {x["event_id"] for x in m})
    evs = [as_event(m) for m in fb if m["event_id"] in ids]
    assert len(evs) == 2 and all(isinstance(e, Demonstration) for e in evs)
    by_id = {e.event_id: e for e in evs}
    d = by_id[first.json()["event_id"]]
    assert (d.response_id, d.user, d.text, d.conversation_id) == (
        a["response_id"], "dora", "The capital of France is Paris.", c["id"].removeprefix("chatcmpl-"))
    assert d.dedupe_key() == by_id[later.json()["event_id"]].dedupe_key()  # the later one replaces it


def test_bad_corrections_get_4xx_and_nothing_is_published(server, broker):
    c = chat(server, "erin", "Name a planet.")
    theirs = ref(chat(server, "frank", "Name a planet."), 0)
    a = ref(c, 0)
    demo = lambda **kw: {"type": "demonstration", **a, "text": "Mars.", **kw}  # noqa: E731
    cases = [
        (demo(feedback_token=theirs["feedback_token"]), 403, "feedback_token"),   # someone else's token
        ({**demo(), **theirs, "user": "erin"}, 403, "feedback_token"),             # someone else's answer
        (demo(user="frank"), 403, "feedback_token"),
        (demo(text="x" * (LIMIT + 1)), 422, "text"),
        (demo(text="   "), 422, "text"),
        (demo(text=""), (400, 422), None),
        (demo(text=["not", "text"]), (400, 422), None),
        ({"type": "demonstration", **a}, (400, 422), None),                        # no text
    ]
    for body, status, param in cases:
        r = post(server, body)
        want = status if isinstance(status, tuple) else (status,)
        assert r.status_code in want, (body, r.status_code, r.text)
        err = r.json()["error"]
        assert set(err) == {"message", "type", "param", "code"} and err["message"], r.text
        if param:
            assert err["param"] == param, r.text
    ok = post(server, demo(text="sentinel"))
    assert ok.status_code == 202, ok.text
    sentinel = ok.json()["event_id"]
    fb = read_topic(broker, "rlhf.feedback", until=lambda m: any(x["event_id"] == sentinel for x in m))
    mine = [m for m in fb if m.get("type") == "demonstration" and m.get("user") in ("erin", "frank")]
    assert [m["event_id"] for m in mine] == [sentinel]
