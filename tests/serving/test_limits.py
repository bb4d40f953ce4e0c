"""Hostile input against a real `rlhf serve --model tiny`: every probe gets a 4xx in OpenAI's error
shape (never a 500), and /healthz keeps answering while hostile bodies are processed.

The bodies are written by hand (json.dumps escapes a lone surrogate as `\\ud800`, and keeps Python's
`NaN` literal), as a hostile client would send them, not through a client library that would refuse.
"""

from __future__ import annotations

import json
import select
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

from harness.waiting import wait_until
from serving.protocol import MIN_TOP_P, SEED_RANGE

HELLO = [{"role": "user", "content": "Hello there."}]
# The issue asks that /healthz (the liveness probe) answer "within 1 s" while hostile bodies are being
# processed; it answers in milliseconds when the event loop is free and stalled for 10 s or more before
# prompts were refused by length before tokenizing, and tokenized on a thread. 1 s is the bound a liveness
# probe's timeout would use.
HEALTHZ_BOUND_S = 1.0


def post(server, body: dict | str, path: str = "/v1/chat/completions") -> httpx.Response:
    content = body if isinstance(body, str) else json.dumps(body)
    return httpx.post(server.url + path, content=content, headers={"Content-Type": "application/json"}, timeout=120)


def refused(r: httpx.Response, status: int, param: str | None = None, code: str | None = None) -> dict:
    assert r.status_code == status, r.text[:500]
    error = r.json()["error"]
    assert set(error) == {"message", "type", "param", "code"} and error["message"]
    if param is not None:
        assert error["param"] == param, error
    if code is not None:
        assert error["code"] == code, error
    return error


def chat(**fields) -> dict:
    return {"model": "tiny", "messages": HELLO, "max_tokens": 4, **fields}


# ---------------------------------------------------------------------------- the probes
def test_lone_surrogate_in_a_feedback_comment_is_400(server):
    answer = post(server, chat(user="sam"))
    assert answer.status_code == 200, answer.text
    ref = answer.json()["rlhf"]["responses"][0]
    thumbs = {"type": "thumbs", "response_id": ref["response_id"], "feedback_token": ref["feedback_token"],
              "value": "up", "user": "sam"}
    error = refused(post(server, {**thumbs, "comment": "nice \ud800 answer"}, "/v1/feedback"), 400)
    assert error["param"].endswith("comment") and "Unicode" in error["message"]
    assert post(server, {**thumbs, "comment": "nice answer \u00e9\U0001F600"}, "/v1/feedback").status_code == 202


@pytest.mark.parametrize("where", ["content", "parts", "stop", "user"])
def test_lone_surrogate_anywhere_in_a_chat_request_is_400(server, where):
    bad = "a\udc00b"
    body = {"content": chat(messages=[{"role": "user", "content": bad}]),
            "parts": chat(messages=[{"role": "user", "content": [{"type": "text", "text": bad}]}]),
            "stop": chat(stop=[bad]), "user": chat(user=bad)}[where]
    error = refused(post(server, body), 400, code="invalid_value")
    assert "unicode" in error["message"].lower()


def test_seed_outside_64_bits_is_400_and_its_edges_are_served(server):
    refused(post(server, chat(seed=2**70)), 400, "seed")
    refused(post(server, chat(seed=SEED_RANGE[0] - 1)), 400, "seed")
    for seed in SEED_RANGE:
        assert post(server, chat(seed=seed)).status_code == 200


def test_top_p_below_what_vllm_samples_with_is_400(server):
    refused(post(server, chat(top_p=5e-324)), 400, "top_p")
    assert post(server, chat(top_p=MIN_TOP_P)).status_code == 200


@pytest.mark.parametrize("literal", ["NaN", "Infinity", "-Infinity"])
def test_nan_and_infinity_literals_are_400(server, literal):
    body = json.dumps(chat()).replace('"max_tokens": 4', f'"max_tokens": 4, "temperature": {literal}')
    assert literal in body
    refused(post(server, body), 400, "temperature")


def test_too_many_messages_and_too_long_a_message_are_400(server):
    refused(post(server, chat(messages=HELLO * 257)), 400, "messages", "too_large")  # default limit: 256
    refused(post(server, chat(messages=[{"role": "user", "content": "x" * 100_001}])), 400, "messages[0].content")


def test_n_8_with_four_long_stop_strings_is_refused(server):
    # four 2 MB stop strings: the body alone is over the 2 MiB limit
    refused(post(server, chat(n=8, stop=["s" * 2_000_000] * 4)), 413, code="request_too_large")
    # under the body limit, each stop string is still bounded (they are copied into every interaction event)
    refused(post(server, chat(n=8, stop=["s" * 257] * 4)), 400, "stop", "too_large")
    assert post(server, chat(n=8, stop=["s" * 256] * 4)).status_code == 200


def test_n_times_max_tokens_is_bounded(server):
    refused(post(server, chat(n=8, max_tokens=1025)), 400, "max_tokens", "too_large")  # 8200 > 8192


def test_ignore_eos_is_refused_unless_allowed(server):
    refused(post(server, chat(ignore_eos=True)), 400, "ignore_eos", "unsupported_parameter")


# ---------------------------------------------------------------------------- 64 MB bodies
def healthz_latencies(server, while_running) -> list[float]:
    """GET /healthz every 50 ms for as long as `while_running()` holds (at least once); each latency."""
    latencies = []
    with httpx.Client(timeout=30) as client:
        while not latencies or while_running():  # at least once
            start = time.perf_counter()
            assert client.get(server.url + "/healthz").status_code == 200
            latencies.append(time.perf_counter() - start)
            time.sleep(0.05)
    return latencies


def raw_request(server, head: str) -> socket.socket:
    sock = socket.create_connection((server.host, server.port), timeout=60)
    sock.sendall(head.encode())
    return sock


def send_until_answered(sock: socket.socket, chunks, sent_bytes: list[int]) -> bytes:
    """Send `chunks` until the server answers (or all are sent); then read the answer."""
    for chunk in chunks:
        if select.select([sock], [], [], 0)[0]:
            break
        try:
            sock.sendall(chunk)
        except (BrokenPipeError, ConnectionResetError):  # the server answered and closed: read what it said
            break
        sent_bytes[0] += len(chunk)
    answer = b""
    while b"\r\n\r\n" not in answer or len(answer.split(b"\r\n\r\n", 1)[1]) < 20:
        data = sock.recv(65536)
        if not data:
            break
        answer += data
    return answer


def test_a_64_mb_body_with_content_length_is_413_before_it_is_read(server):
    size = 64 * 2**20
    sock = raw_request(server, f"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                               f"Content-Length: {size}\r\n\r\n")
    sent = [0]
    with sock:
        answer = send_until_answered(sock, (b"x" * 2**20 for _ in range(64)), sent)
    assert answer.startswith(b"HTTP/1.1 413"), answer[:200]
    assert json.loads(answer.split(b"\r\n\r\n", 1)[1])["error"]["code"] == "request_too_large"
    assert sent[0] < size  # answered before the body was sent, let alone read


def test_a_chunked_64_mb_body_is_cut_off_at_the_limit_and_healthz_keeps_answering(server):
    """No Content-Length: the body is counted as it streams in and refused once past the 2 MiB limit."""
    chunk = b"x" * 2**16
    frames = (b"%x\r\n%s\r\n" % (len(chunk), chunk) for _ in range(1024))  # 64 MiB in chunked encoding
    sent = [0]
    answers: list[bytes] = []

    def upload():
        sock = raw_request(server, "POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\n"
                                   "Content-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n")
        with sock:
            answers.append(send_until_answered(sock, frames, sent))

    uploader = threading.Thread(target=upload)
    uploader.start()
    latencies = healthz_latencies(server, uploader.is_alive)
    uploader.join()
    assert answers[0].startswith(b"HTTP/1.1 413"), answers[0][:200]
    assert json.loads(answers[0].split(b"\r\n\r\n", 1)[1])["error"]["code"] == "request_too_large"
    # the server stopped reading soon after the limit; the socket buffers hold a few MB at most
    assert sent[0] < 16 * 2**20, f"{sent[0]} bytes were sent before the 413"
    assert max(latencies, default=0.0) < HEALTHZ_BOUND_S, latencies


# ---------------------------------------------------------------------------- huge prompts, concurrency
@pytest.fixture(scope="module")
def roomy_server(server_factory, broker):
    """A server that accepts a 16 MB body, `ignore_eos`, and one chat request at a time per client (here:
    per remote address, without auth)."""
    return server_factory(RLHF_KAFKA_BOOTSTRAP=broker, RLHF_MAX_BODY_BYTES=16 * 2**20,
                          RLHF_MAX_MESSAGE_CHARS=16 * 2**20, RLHF_CLIENT_CHAT_CONCURRENCY=1,
                          RLHF_ALLOW_IGNORE_EOS="true")


def test_healthz_answers_while_a_huge_prompt_is_processed(roomy_server):
    huge = chat(messages=[{"role": "user", "content": "hello world, how are you? " * 500_000}])  # 13 MB
    with ThreadPoolExecutor(1) as pool:
        big = pool.submit(post, roomy_server, huge)
        latencies = healthz_latencies(roomy_server, lambda: not big.done())
        answer = big.result()
    refused(answer, 400, code="context_length_exceeded")  # the tiny model's context is 512 tokens
    assert max(latencies) < HEALTHZ_BOUND_S, latencies


def test_a_client_beyond_its_concurrent_requests_gets_429_until_one_ends(roomy_server):
    long_stream = chat(max_tokens=400, ignore_eos=True, stream=True)  # generates for about 2 s on a quiet machine
    with httpx.Client(base_url=roomy_server.url, timeout=120) as client:
        with client.stream("POST", "/v1/chat/completions", json=long_stream) as stream:
            assert stream.status_code == 200
            # Hold the line iterator: a dropped one is finalised at once, which closes the response, and the
            # server then ends the stream (and frees the slot) before the second request arrives.
            lines = stream.iter_lines()
            next(lines)  # generating: this client's only slot is taken
            second = client.post("/v1/chat/completions", json=chat())
        # leaving the block closed the stream mid-answer: its slot is given back
        assert second.status_code == 429 and int(second.headers["Retry-After"]) >= 1
        assert second.json()["error"]["code"] == "too_many_concurrent_requests"
        wait_until(lambda: client.post("/v1/chat/completions", json=chat()).status_code == 200, 60, 0.5,
                   "a chat request once the stream ended")


def test_what_vllm_itself_refuses_is_400(server):
    """Found by the schema fuzz: vLLM refuses several choices with greedy sampling (temperature 0)."""
    error = refused(post(server, chat(n=5, temperature=0.0)), 400, code="invalid_value")
    assert "greedy" in error["message"]
