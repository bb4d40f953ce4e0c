"""Pure tests of JWT verification (serving/jwt_auth.py) with keys made at test time: HS256 with
the shared secret, RS256 and ES256 from a JWKS file chosen by `kid`; everything else refused."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from serving.jwt_auth import InvalidToken, JwtVerifier
from tests.serving.jwt_issuer import AUDIENCE, ISSUER, JwtIssuer


@pytest.fixture
def issuer(tmp_path):
    return JwtIssuer(tmp_path / "jwks.json")


@pytest.fixture
def verifier(issuer):
    return JwtVerifier(audience=AUDIENCE, issuer=ISSUER, secret=issuer.secret, jwks_file=issuer.jwks_path, every_s=0)


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode().rstrip("=")


@pytest.mark.parametrize("alg", ["HS256", "RS256", "ES256"])
def test_a_good_token_names_its_user_and_client(issuer, verifier, alg):
    who = verifier.verify(issuer.token("alice", alg, azp="web-app"))
    assert (who.user, who.client) == ("alice", "web-app")
    assert verifier.verify(issuer.token("bob", alg, client_id="cli")).client == "cli"
    assert verifier.verify(issuer.token("carol", alg)).client == ISSUER


def test_bad_tokens_are_refused_with_a_reason(issuer, verifier):
    other_rsa = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    past = int(time.time()) - 3600
    cases = {
        "signature does not verify": [issuer.token("a", key="another-secret-of-32-characters!!"),
                                      issuer.token("a", "RS256", key=other_rsa)],
        "another audience": [issuer.token("a", aud="someone-else")],
        "another issuer": [issuer.token("a", iss="https://evil.test")],
        "expired": [issuer.token("a", iat=past - 60, exp=past)],
        "lacks the 'exp' claim": [issuer.token("a", exp=None)],
        "lacks the 'sub' claim": [issuer.token(None)],
        "unknown signing key": [issuer.token("a", "RS256", kid="rsa-2")],
        "not accepted": [jwt.encode({"sub": "a", "aud": AUDIENCE, "iss": ISSUER, "exp": int(time.time()) + 60}, None,
                                    algorithm="none"),
                         issuer.token("a", "HS512", key=issuer.secret)],
        "malformed": ["not-a-jwt", ""],
    }
    for reason, tokens in cases.items():
        for token in tokens:
            with pytest.raises(InvalidToken, match=reason):
                verifier.verify(token)


def test_the_rsa_public_key_cannot_be_used_as_an_hmac_secret(issuer, verifier):
    """The classic algorithm confusion: HS256 "signed" with the public key the server holds."""
    pem = issuer.rsa.public_key().public_bytes(serialization.Encoding.PEM,
                                               serialization.PublicFormat.SubjectPublicKeyInfo)
    header = b64(json.dumps({"alg": "HS256", "typ": "JWT", "kid": "rsa-1"}).encode())
    body = b64(json.dumps({"sub": "mallory", "aud": AUDIENCE, "iss": ISSUER,
                           "exp": int(time.time()) + 60}).encode())
    sig = b64(hmac.new(pem, f"{header}.{body}".encode(), hashlib.sha256).digest())
    with pytest.raises(InvalidToken, match="signature does not verify"):
        verifier.verify(f"{header}.{body}.{sig}")
    rs_only = JwtVerifier(audience=AUDIENCE, issuer=ISSUER, jwks_file=issuer.jwks_path)
    with pytest.raises(InvalidToken, match="not accepted"):
        rs_only.verify(f"{header}.{body}.{sig}")


def test_keys_rotate_through_the_jwks_file_without_a_restart(issuer, verifier):
    new = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    token = issuer.token("alice", "RS256", key=new, kid="rsa-2")
    with pytest.raises(InvalidToken, match="unknown signing key"):
        verifier.verify(token)
    issuer.write_jwks(extra=[{**jwt.algorithms.RSAAlgorithm.to_jwk(new.public_key(), as_dict=True), "kid": "rsa-2"}])
    assert verifier.verify(token).user == "alice"


def test_private_and_symmetric_keys_in_the_jwks_file_are_not_used(issuer, tmp_path):
    private = {**jwt.algorithms.RSAAlgorithm.to_jwk(issuer.rsa, as_dict=True), "kid": "rsa-1"}
    oct_key = {"kty": "oct", "kid": "hs", "k": b64(b"shared-secret-in-a-public-file!!")}
    path = tmp_path / "bad-jwks.json"
    path.write_text(json.dumps({"keys": [private, oct_key]}))
    with pytest.raises(SystemExit, match="holds no RS256 or ES256 public key"):
        JwtVerifier(audience=AUDIENCE, issuer=ISSUER, jwks_file=path)


def test_a_token_must_use_the_algorithm_of_the_key_it_names(issuer, verifier):
    with pytest.raises(InvalidToken, match="not the algorithm of key 'ec-1'"):
        verifier.verify(issuer.token("a", "RS256", kid="ec-1"))
