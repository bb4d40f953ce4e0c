"""A JWT issuer for the tests: an HS256 secret, an RSA and an EC key pair made at test time
(`cryptography`), the JWKS file of their public halves, and tokens signed by any of them.

    issuer = JwtIssuer(tmp_path / "jwks.json")
    issuer.token("alice", alg="RS256", azp="web-app")       # valid for a minute
    issuer.token("alice", aud="someone-else")               # claims overridden (None drops one)
"""

from __future__ import annotations

import json
import secrets
import time
from pathlib import Path

import jwt
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from jwt.algorithms import ECAlgorithm, RSAAlgorithm

AUDIENCE = "rlhf-tests"
ISSUER = "https://issuer.rlhf.test"


class JwtIssuer:
    def __init__(self, jwks_path: Path):
        self.secret = secrets.token_urlsafe(32)
        self.rsa = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        self.ec = ec.generate_private_key(ec.SECP256R1())
        self.jwks_path = Path(jwks_path)
        self.write_jwks()

    def write_jwks(self, extra: list[dict] | None = None) -> None:
        keys = [{**RSAAlgorithm.to_jwk(self.rsa.public_key(), as_dict=True), "kid": "rsa-1", "alg": "RS256",
                 "use": "sig"},
                {**ECAlgorithm.to_jwk(self.ec.public_key(), as_dict=True), "kid": "ec-1", "alg": "ES256", "use": "sig"}]
        self.jwks_path.write_text(json.dumps({"keys": keys + (extra or [])}))

    def env(self) -> dict[str, str]:
        """The serving settings that trust this issuer."""
        return {"RLHF_AUTH": "jwt", "RLHF_JWT_SECRET": self.secret, "RLHF_JWT_JWKS_FILE": str(self.jwks_path),
                "RLHF_JWT_AUDIENCE": AUDIENCE, "RLHF_JWT_ISSUER": ISSUER}

    def token(self, sub: str | None, alg: str = "HS256", *, key=None, kid: str | None = None, **claims) -> str:
        now = int(time.time())
        body = {"sub": sub, "aud": AUDIENCE, "iss": ISSUER, "iat": now, "exp": now + 60, **claims}
        body = {k: v for k, v in body.items() if v is not None}
        if key is None:
            key = {"HS256": self.secret, "RS256": self.rsa, "ES256": self.ec}[alg]
        kid = kid or {"RS256": "rsa-1", "ES256": "ec-1"}.get(alg)
        return jwt.encode(body, key, algorithm=alg, headers={"kid": kid} if kid else None)
