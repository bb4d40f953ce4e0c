"""Authenticated callers, quotas and repeated feedback against real `rlhf serve` processes (tiny
model on vLLM) and the real broker: API keys made by the `rlhf keys` command line and used with
the official openai client; JWTs (HS256, and RS256/ES256 from a JWKS file made at test time);
feedback from another user refused; the same feedback posted three times is one event; quotas
answer 429 with Retry-After.

Two servers: the session's API-key server (tests/serving/conftest.py, generous quotas) and this
module's JWT server with small quotas shared by RLHF_SERVING_REPLICAS=2. Each test uses users
and clients of its own, so no test spends another's quota.
"""

from __future__ import annotations

import os
import secrets
import subprocess
import sys

import httpx
import openai
import pytest
from openai import OpenAI

from feedback.schema import Interaction, Thumbs
from harness.kafka import read_topic
from harness.waiting import wait_until
from rlhf.settings import Settings
from serving.auth import Caller
from tests.conftest import ROOT
from tests.serving.conftest import bearer, rlhf_keys
from tests.serving.jwt_issuer import JwtIssuer

PROMPT = [{"role": "user", "content": "Tell me about cats."}]


def chat(server, credential: str | None, user: str | None = None, n: int = 1) -> httpx.Response:
    body = {"messages": PROMPT, "max_tokens": 4, "n": n, **({"user": user} if user is not None else {})}
    return httpx.post(server.url + "/v1/chat/completions", json=body, timeout=120,
                      headers=bearer(credential) if credential else {})


def refs(completion: dict) -> list[dict]:
    return [{"response_id": r["response_id"], "feedback_token": r["feedback_token"]}
            for r in completion["rlhf"]["responses"]]


def feedback(server, credential: str | None, body: dict) -> httpx.Response:
    return httpx.post(server.url + "/v1/feedback", json=body, timeout=30,
                      headers=bearer(credential) if credential else {})


def interaction(broker, response_id: str) -> Interaction:
    found = wait_until(lambda: [e for e in read_topic(broker, "rlhf.interactions")
                                if isinstance(e, Interaction) and e.response_id == response_id],
                       30, 0.5, f"the Interaction of {response_id}")
    return found[0]


def assert_401(r: httpx.Response, code: str) -> None:
    assert r.status_code == 401, r.text
    assert r.headers["WWW-Authenticate"].startswith("Bearer")
    err = r.json()["error"]
    assert set(err) == {"message", "type", "param", "code"} and err["code"] == code and err["message"]


# ----------------------------------------------------------------------------- the caller, pure
def test_the_end_user_of_each_kind_of_caller():
    anyone, acme, token = Caller(client=""), Caller(client="acme"), Caller(client="web", user="alice")
    assert (anyone.end_user("bob"), anyone.end_user(None)) == ("bob", "")
    assert (acme.end_user("bob"), acme.end_user(""), acme.end_user(None)) == ("acme:bob", "acme", "acme")
    assert token.end_user("mallory") == "alice"  # a JWT's sub cannot be overridden by the body
    assert acme.speaks_for("acme:bob") and acme.speaks_for("acme") and not acme.speaks_for("acmex:bob")
    assert token.speaks_for("alice") and not token.speaks_for("web:alice") and anyone.speaks_for("x")


@pytest.mark.parametrize("env,message", [
    ({"RLHF_AUTH": "none", "RLHF_DEV_MODE": "false"}, "RLHF_AUTH=none lets anyone call as any user"),
    ({"RLHF_AUTH": "api-key", "RLHF_API_KEYS_FILE": "/nonexistent/keys"}, "does not exist"),
])
def test_serving_refuses_to_start_with_unusable_auth_settings(tmp_path, env, message):
    """`rlhf serve` exits with the reason before loading any model (so this needs no port)."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith("RLHF_")}
    r = subprocess.run([sys.executable, "-m", "rlhf.cli", "serve", "--model", "tiny"], cwd=ROOT, timeout=300,
                       capture_output=True, text=True,
                       env={**clean, "RLHF_HMAC_KEY": secrets.token_hex(32), "RLHF_EVENT_HMAC_KEY": secrets.token_hex(32),
                            "RLHF_DATA_DIR": str(tmp_path), **env})
    assert r.returncode != 0 and message in r.stderr, r.stderr[-2000:]


@pytest.mark.parametrize("settings,message", [
    ({"auth": "none", "dev_mode": False}, "development only"),
    ({"auth": "api-key"}, "needs RLHF_API_KEYS_FILE"),
    ({"auth": "jwt", "jwt_audience": "a", "jwt_issuer": "i"}, "needs RLHF_JWT_SECRET"),
    ({"auth": "jwt", "jwt_secret": "s" * 40}, "RLHF_JWT_AUDIENCE and RLHF_JWT_ISSUER"),
    ({"auth": "jwt", "dev_mode": False, "jwt_secret": "changeme", "jwt_audience": "a", "jwt_issuer": "i"},
     "at least 32 characters"),
])
def test_unusable_auth_settings_are_named(settings, message):
    with pytest.raises(SystemExit, match=message):
        Settings(**settings).check_auth()


def test_usable_auth_settings_pass():
    Settings(auth="none", dev_mode=True).check_auth()  # `make up`
    Settings(auth="api-key", dev_mode=False, api_keys_file="/keys/api-keys").check_auth()
    Settings(auth="jwt", dev_mode=False, jwt_jwks_file="/jwks.json", jwt_audience="a", jwt_issuer="i").check_auth()


# ----------------------------------------------------------------------------- API keys
def test_without_a_valid_key_every_api_call_gets_401_and_the_probes_stay_open(api_key_server):
    url = api_key_server.url
    calls = [("POST", "/v1/chat/completions", {"messages": PROMPT}), ("GET", "/v1/models", None),
             ("POST", "/v1/feedback", {"type": "thumbs"}), ("GET", "/v1/adapters", None)]
    for method, path, body in calls:
        assert_401(httpx.request(method, url + path, json=body, timeout=30), "missing_api_key")
        assert_401(httpx.request(method, url + path, json=body, timeout=30, headers=bearer("rlhf-wrong")),
                   "invalid_api_key")
        assert_401(httpx.request(method, url + path, json=body, timeout=30, headers={"Authorization": "Basic eDp5"}),
                   "missing_api_key")
    for path in ("/healthz", "/readyz", "/metrics", "/", "/static/app.js"):
        assert httpx.get(url + path, timeout=30).status_code == 200, path
    with pytest.raises(openai.AuthenticationError):
        OpenAI(base_url=url + "/v1", api_key="rlhf-wrong", max_retries=0).models.list()


def test_a_key_from_rlhf_keys_add_works_with_the_openai_client(api_key_server, new_client, broker):
    key = new_client("acme")
    client = OpenAI(base_url=api_key_server.url + "/v1", api_key=key, max_retries=0, timeout=120)
    assert [m.id for m in client.models.list().data][0] == "tiny"
    r = client.chat.completions.create(model="tiny", messages=PROMPT, max_tokens=6, user="alice")
    ref = r.model_extra["rlhf"]["responses"][0]
    anonymous = client.chat.completions.create(model="tiny", messages=PROMPT, max_tokens=2)

    ev = interaction(broker, ref["response_id"])
    assert (ev.user, ev.client) == ("acme:alice", "acme")
    ev = interaction(broker, anonymous.model_extra["rlhf"]["responses"][0]["response_id"])
    assert (ev.user, ev.client) == ("acme", "acme")  # no `user`: the client alone

    fb = feedback(api_key_server, key, {"type": "thumbs", "response_id": ref["response_id"],
                                        "feedback_token": ref["feedback_token"], "value": "up"})
    assert fb.status_code == 202, fb.text
    event_id = fb.json()["event_id"]
    thumbs = wait_until(lambda: [e for e in read_topic(broker, "rlhf.feedback") if e.event_id == event_id],
                        30, 0.5, "the Thumbs event")
    assert isinstance(thumbs[0], Thumbs) and (thumbs[0].user, thumbs[0].client) == ("acme:alice", "acme")


def test_a_revoked_key_gets_401_without_restarting_serving(api_key_server, new_client, keys_file):
    key = new_client("leaver")
    pid = api_key_server.proc.pid
    assert chat(api_key_server, key, "u").status_code == 200
    r = rlhf_keys(keys_file, "revoke", "leaver")
    assert r.returncode == 0, r.stderr

    def refused():
        resp = chat(api_key_server, key, "u")
        return resp if resp.status_code == 401 else None

    assert_401(wait_until(refused, 10, 0.2, "the revoked key refused"), "invalid_api_key")
    assert api_key_server.alive() and api_key_server.proc.pid == pid


def test_feedback_must_come_from_the_user_the_answer_was_served_to(api_key_server, new_client):
    key, other = new_client("acme-fb"), new_client("other-fb")
    c = chat(api_key_server, key, "alice")
    assert c.status_code == 200, c.text
    ref = refs(c.json())[0]
    up = {"type": "thumbs", **ref, "value": "up"}
    as_bob = feedback(api_key_server, key, {**up, "user": "bob"})
    from_other_client = feedback(api_key_server, other, up)
    from_other_client_as_alice = feedback(api_key_server, other, {**up, "user": "alice"})
    for r in (as_bob, from_other_client, from_other_client_as_alice):
        assert r.status_code == 403 and r.json()["error"]["param"] == "feedback_token", r.text
    assert feedback(api_key_server, key, {**up, "user": "alice"}).status_code == 202


def test_the_same_feedback_three_times_is_one_event_with_one_id(api_key_server, new_client, broker):
    key = new_client("repeater")
    ref = refs(chat(api_key_server, key, "dora").json())[0]
    up = {"type": "thumbs", **ref, "value": "up"}
    answers = [feedback(api_key_server, key, up) for _ in range(3)]
    assert [a.status_code for a in answers] == [202] * 3
    ids = {a.json()["event_id"] for a in answers}
    assert len(ids) == 1
    down = feedback(api_key_server, key, {**up, "value": "down"})  # a changed vote replaces it: a new event
    assert down.status_code == 202 and down.json()["event_id"] not in ids
    # the change is published after the repeats, in the same partition (same conversation): once
    # it is on the topic, any event the repeats had published would be too
    down_id = down.json()["event_id"]

    def votes_until_the_change():
        evs = [e for e in read_topic(broker, "rlhf.feedback")
               if isinstance(e, Thumbs) and e.response_id == ref["response_id"]]
        return evs if down_id in [e.event_id for e in evs] else None

    mine = wait_until(votes_until_the_change, 30, 0.5, "the changed vote on rlhf.feedback")
    distinct = list(dict.fromkeys((e.event_id, e.value) for e in mine))  # delivery is at least once
    assert distinct == [(ids.pop(), "up"), (down_id, "down")]


# ----------------------------------------------------------------------------- JWTs and quotas
@pytest.fixture(scope="module")
def issuer(tmp_path_factory):
    return JwtIssuer(tmp_path_factory.mktemp("jwks") / "jwks.json")


@pytest.fixture(scope="module")
def jwt_server(server_factory, broker, issuer):
    """JWTs, no development mode, and small quotas split over two replicas: per replica 2 chats
    per user, 3 per client, 2 feedback posts per user, 3 per client, each a minute."""
    return server_factory(RLHF_KAFKA_BOOTSTRAP=broker, RLHF_DEV_MODE="false", RLHF_HMAC_KEY=secrets.token_hex(32),
                          **issuer.env(), RLHF_SERVING_REPLICAS=2, RLHF_CHAT_RATE_LIMIT=4,
                          RLHF_CLIENT_CHAT_RATE_LIMIT=6, RLHF_FEEDBACK_RATE_LIMIT=4,
                          RLHF_CLIENT_FEEDBACK_RATE_LIMIT=6)


@pytest.mark.parametrize("alg", ["HS256", "RS256", "ES256"])
def test_a_good_jwt_makes_sub_the_user_whatever_the_body_says(jwt_server, issuer, broker, alg):
    token = issuer.token(f"sub-{alg}", alg, azp=f"app-{alg}")
    client = OpenAI(base_url=jwt_server.url + "/v1", api_key=token, max_retries=0, timeout=120)
    r = client.chat.completions.create(model="tiny", messages=PROMPT, max_tokens=4, user="mallory")
    ev = interaction(broker, r.model_extra["rlhf"]["responses"][0]["response_id"])
    assert (ev.user, ev.client) == (f"sub-{alg}", f"app-{alg}")


def test_bad_jwts_get_401(jwt_server, issuer):
    past = 1_000_000_000
    bad = {"signature": issuer.token("x", key="a-different-secret-of-32-characters"),
           "audience": issuer.token("x", aud="another-service"),
           "issuer": issuer.token("x", iss="https://evil.test"),
           "expired": issuer.token("x", iat=past, exp=past + 60),
           "no expiry": issuer.token("x", exp=None),
           "unknown kid": issuer.token("x", "RS256", kid="rsa-9")}
    for why, token in bad.items():
        r = chat(jwt_server, token, "x")
        assert r.status_code == 401, (why, r.text)
        assert_401(r, "invalid_token")
    assert_401(chat(jwt_server, None, "x"), "missing_token")


def test_feedback_with_another_users_token_is_403(jwt_server, issuer):
    alice, bob = issuer.token("fb-alice", azp="fb-app"), issuer.token("fb-bob", azp="fb-app")
    ref = refs(chat(jwt_server, alice).json())[0]
    up = {"type": "thumbs", **ref, "value": "up"}
    r = feedback(jwt_server, bob, up)
    assert r.status_code == 403 and r.json()["error"]["param"] == "feedback_token", r.text
    assert feedback(jwt_server, bob, {**up, "user": "fb-alice"}).status_code == 403  # the body cannot say otherwise
    assert feedback(jwt_server, alice, up).status_code == 202


def assert_429(r: httpx.Response, scope: str, most_s: int) -> None:
    assert r.status_code == 429, r.text
    err = r.json()["error"]
    assert err["type"] == "rate_limit_error" and err["code"] == "rate_limit_exceeded"
    assert f"per minute from this {scope}" in err["message"] and "2 replicas" in err["message"]
    assert 1 <= int(r.headers["Retry-After"]) <= most_s


def test_chat_quota_per_user(jwt_server, issuer):
    token = issuer.token("q-chat-user", azp="q-app-1")
    assert [chat(jwt_server, token).status_code for _ in range(2)] == [200, 200]
    assert_429(chat(jwt_server, token), "user", 30)  # 4 a minute over 2 replicas: 2 here, one more per 30 s


def test_chat_quota_per_client_costs_the_refused_user_nothing(jwt_server, issuer):
    tokens = [issuer.token(f"q-client-user-{i}", azp="q-app-2") for i in range(4)]
    assert [chat(jwt_server, t).status_code for t in tokens[:3]] == [200] * 3
    assert_429(chat(jwt_server, tokens[3]), "client", 20)  # 6 a minute over 2 replicas: 3 here
    elsewhere = issuer.token("q-client-user-3", azp="q-app-3")  # the same user through another client
    assert [chat(jwt_server, elsewhere).status_code for _ in range(2)] == [200, 200]


def test_feedback_quotas_per_user_and_per_client(jwt_server, issuer):
    fa, fb = issuer.token("q-fb-a", azp="q-app-4"), issuer.token("q-fb-b", azp="q-app-4")
    a0, a1 = refs(chat(jwt_server, fa, n=2).json())
    (b0,) = refs(chat(jwt_server, fb).json())
    assert feedback(jwt_server, fa, {"type": "thumbs", **a0, "value": "up"}).status_code == 202
    assert feedback(jwt_server, fa, {"type": "thumbs", **a0, "value": "down"}).status_code == 202
    assert_429(feedback(jwt_server, fa, {"type": "thumbs", **a1, "value": "up"}), "user", 30)
    assert feedback(jwt_server, fb, {"type": "thumbs", **b0, "value": "up"}).status_code == 202
    assert_429(feedback(jwt_server, fb, {"type": "thumbs", **b0, "value": "down"}), "client", 20)
