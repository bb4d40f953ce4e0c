"""The chat endpoint against a real server (tiny model on vLLM), called with the official openai client."""

from __future__ import annotations

import concurrent.futures as cf

import httpx
import openai
import pytest

from feedback import feedback_tokens

PROMPT = [{"role": "user", "content": "Tell me about cats."}]


def test_models_lists_the_served_model(openai_client):
    ids = [m.id for m in openai_client.models.list().data]
    assert ids[0] == "tiny"


def test_non_streaming_completion(openai_client):
    r = openai_client.chat.completions.create(model="tiny", messages=PROMPT, max_tokens=24, temperature=0.0,
                                              user="alice")
    assert r.id.startswith("chatcmpl-")
    assert r.object == "chat.completion"
    assert len(r.choices) == 1
    text = r.choices[0].message.content
    assert r.choices[0].message.role == "assistant"
    assert isinstance(text, str) and text.strip()
    assert r.choices[0].finish_reason in ("stop", "length")
    assert r.usage.prompt_tokens > 0
    assert 0 < r.usage.completion_tokens <= 24
    assert r.usage.total_tokens == r.usage.prompt_tokens + r.usage.completion_tokens
    # the extension: what a feedback call needs, signed for this user
    ext = r.model_extra["rlhf"]
    assert ext["adapter"] is None
    ref = ext["responses"][0]
    assert ref["index"] == 0 and ref["response_id"] == f"r_{r.id.removeprefix('chatcmpl-')}_0"
    feedback_tokens.verify("dev-only-insecure-key", ref["response_id"], "alice", ref["feedback_token"], ttl_s=60)
    with pytest.raises(feedback_tokens.TokenError):
        feedback_tokens.verify("dev-only-insecure-key", ref["response_id"], "mallory", ref["feedback_token"], ttl_s=60)


def test_greedy_is_deterministic_and_ids_unique(openai_client):
    a = openai_client.chat.completions.create(model="tiny", messages=PROMPT, max_tokens=16, temperature=0.0)
    b = openai_client.chat.completions.create(model="tiny", messages=PROMPT, max_tokens=16, temperature=0.0)
    assert a.choices[0].message.content == b.choices[0].message.content
    assert a.id != b.id


def test_seed_reproduces_sampling(openai_client):
    kw = dict(model="tiny", messages=PROMPT, max_tokens=24, temperature=1.0, seed=1234)
    a = openai_client.chat.completions.create(**kw)
    b = openai_client.chat.completions.create(**kw)
    assert a.choices[0].message.content == b.choices[0].message.content


def test_concurrent_seeded_requests_with_long_prompts(openai_client, server):
    """Seeded requests whose prompts together exceed one engine step's token budget. With vLLM's
    chunked prefill, a prompt split across steps rewinds its seeded generator, which a CPU
    generator cannot do: the engine died ("CPU Generator does not use offset") and every later
    request failed. The engine now starts with chunked prefill off, so prompts wait whole."""
    long = [{"role": "user", "content": " ".join(["Tell me about cats and the sun."] * 50)}]

    def ask(i):
        return openai_client.chat.completions.create(model="tiny", messages=long, max_tokens=8, temperature=1.0,
                                                     seed=i, n=2)

    with cf.ThreadPoolExecutor(16) as pool:
        results = list(pool.map(ask, range(16)))
    assert all(len(r.choices) == 2 and r.usage.prompt_tokens > 300 for r in results)
    assert sum(r.usage.prompt_tokens for r in results) > 2048  # more than one step's budget
    assert httpx.get(server.url + "/readyz", timeout=10).status_code == 200
    assert openai_client.chat.completions.create(model="tiny", messages=PROMPT, max_tokens=4, seed=1).choices


def test_n2_gives_two_choices_with_their_own_response_ids(openai_client):
    r = openai_client.chat.completions.create(model="tiny", messages=PROMPT, max_tokens=24, n=2, temperature=1.0,
                                              seed=7)
    assert [c.index for c in r.choices] == [0, 1]
    refs = r.model_extra["rlhf"]["responses"]
    assert [x["index"] for x in refs] == [0, 1]
    assert refs[0]["response_id"] != refs[1]["response_id"]
    # both answers belong to the same completion (same prompt): what pairwise feedback checks
    groups = [feedback_tokens.parse_response_id(r["response_id"])[0] for r in refs[:2]]
    assert groups[0] == groups[1]


def test_streaming_matches_usage_and_ends_with_done(openai_client, server):
    stream = openai_client.chat.completions.create(model="tiny", messages=PROMPT, max_tokens=20, stream=True,
                                                   temperature=0.0, stream_options={"include_usage": True})
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    finals = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert finals and finals[-1] in ("stop", "length")
    last = chunks[-1]
    assert last.usage is not None and 0 < last.usage.completion_tokens <= 20
    assert last.model_extra["rlhf"]["responses"][0]["response_id"].startswith("r_")
    assert len({c.id for c in chunks}) == 1
    # same greedy text as non-streaming
    same = openai_client.chat.completions.create(model="tiny", messages=PROMPT, max_tokens=20, temperature=0.0)
    assert text == same.choices[0].message.content
    # the raw SSE stream ends with [DONE]
    with httpx.stream("POST", server.url + "/v1/chat/completions", timeout=60,
                      json={"messages": PROMPT, "max_tokens": 5, "stream": True}) as r:
        lines = [ln for ln in r.iter_lines() if ln]
    assert lines[-1] == "data: [DONE]"


def test_streaming_n2(openai_client):
    stream = openai_client.chat.completions.create(model="tiny", messages=PROMPT, max_tokens=12, n=2, stream=True,
                                                   temperature=1.0, seed=3)
    texts = {0: "", 1: ""}
    for c in stream:
        for ch in c.choices:
            texts[ch.index] += ch.delta.content or ""
    assert texts[0] and texts[1]


def test_stop_sequence_cuts_the_answer(openai_client):
    free = openai_client.chat.completions.create(model="tiny", messages=PROMPT, max_tokens=40, temperature=0.0)
    full = free.choices[0].message.content
    words = full.split()
    assert len(words) >= 3, full
    stop = " " + words[2]  # cut before the third word
    r = openai_client.chat.completions.create(model="tiny", messages=PROMPT, max_tokens=40, temperature=0.0,
                                              stop=[stop])
    cut = r.choices[0].message.content
    assert r.choices[0].finish_reason == "stop"
    assert stop not in cut
    assert full.startswith(cut) and len(cut) < len(full)


def test_concurrent_requests_all_succeed(openai_client):
    def one(i):
        return openai_client.chat.completions.create(model="tiny", messages=PROMPT, max_tokens=8, seed=i,
                                                     temperature=1.0).id

    with cf.ThreadPoolExecutor(8) as pool:
        ids = list(pool.map(one, range(16)))
    assert len(set(ids)) == 16


BAD = [
    ({"messages": []}, "messages"),
    ({"messages": [{"role": "wizard", "content": "hi"}]}, "messages[0].role"),
    ({"messages": [{"role": "user", "content": "hi"}], "max_tokens": 10_000_000}, "max_tokens"),
    ({"messages": [{"role": "user", "content": "hi"}], "max_tokens": 0}, "max_tokens"),
    ({"messages": [{"role": "user", "content": "hi"}], "temperature": "hot"}, "temperature"),
    ({"messages": [{"role": "user", "content": "hi"}], "n": 100}, "n"),
    ({"messages": "hi"}, "messages"),
    ({"messages": [{"role": "user", "content": 5}]}, None),
    ({"messages": [{"role": "user", "content": "x " * 2000}]}, "max_tokens"),
    ({"messages": [{"role": "user", "content": "hi"}], "stop": ["a", "b", "c", "d", "e"]}, "stop"),
    ({"model": "tiny"}, "messages"),
]


@pytest.mark.parametrize("body,param", BAD)
def test_bad_input_gets_a_clear_400(server, body, param):
    r = httpx.post(server.url + "/v1/chat/completions", json=body, timeout=30)
    assert r.status_code == 400, r.text
    err = r.json()["error"]
    assert set(err) == {"message", "type", "param", "code"}
    assert err["type"] == "invalid_request_error" and err["message"]
    if param is not None:
        assert err["param"] == param


def test_malformed_json_and_client_error_via_openai(server, openai_client):
    r = httpx.post(server.url + "/v1/chat/completions", content=b"{not json", timeout=30,
                   headers={"content-type": "application/json"})
    assert r.status_code == 400 and r.json()["error"]["code"] == "invalid_json"
    with pytest.raises(openai.BadRequestError) as e:
        openai_client.chat.completions.create(model="tiny", messages=[{"role": "wizard", "content": "x"}])
    assert "role" in str(e.value)
    # still serving after bad input
    ok = openai_client.chat.completions.create(model="tiny", messages=PROMPT, max_tokens=4)
    assert ok.choices[0].message.content is not None


def test_health_ready_and_metrics(server, openai_client):
    assert httpx.get(server.url + "/healthz").json()["status"] == "ok"
    assert httpx.get(server.url + "/readyz").status_code == 200
    openai_client.chat.completions.create(model="tiny", messages=PROMPT, max_tokens=4)
    httpx.post(server.url + "/v1/chat/completions", json={"messages": []})
    text = httpx.get(server.url + "/metrics").text
    assert 'rlhf_http_requests_total{route="/v1/chat/completions",status="200"}' in text
    assert 'rlhf_http_requests_total{route="/v1/chat/completions",status="400"}' in text
    assert "rlhf_http_request_duration_seconds_bucket" in text
    assert 'rlhf_time_to_first_token_seconds_count{adapter="base"}' in text
    assert 'rlhf_generated_tokens_total{adapter="base"}' in text
    assert "rlhf_inflight_requests" in text
    assert "rlhf_engine_queue_depth" in text
    gen = [ln for ln in text.splitlines() if ln.startswith('rlhf_generated_tokens_total{adapter="base"}')]
    assert float(gen[0].split()[-1]) > 0
