"""Bearer JWTs (RLHF_AUTH=jwt): verify a token and say who it names.

Keys, and the one algorithm each may verify (pinned; `none` is never accepted):
- HS256 with RLHF_JWT_SECRET, when set;
- RS256 or ES256 with the public key of the token's `kid` in the JWKS file RLHF_JWT_JWKS_FILE
  (`{"keys": [{"kty": "RSA", "kid": "...", "alg": "RS256", "n": "...", "e": "..."}, ...]}`), re-read
  when the file changes, so keys rotate without a restart. A key's algorithm is its `alg`, or
  follows from its type (RSA: RS256; EC P-256: ES256); keys of other types are skipped.

The algorithm in the token's header only selects which of these keys to try; a token signed
with the HS256 secret can never pass as RS256 or the reverse (PyJWT also checks the header's
`alg` against the key's). Every token must carry `exp`, `aud` = RLHF_JWT_AUDIENCE,
`iss` = RLHF_JWT_ISSUER and a `sub`; all are checked (with LEEWAY_S for clock skew).
The user is `sub`; the client is `azp`, else `client_id`, else the issuer.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path

import jwt

from serving.watched_file import WatchedFile

log = logging.getLogger(__name__)

LEEWAY_S = 10  # clock skew allowed on exp, nbf, iat
MAX_SUB = 256  # longest `sub` accepted (it becomes the user id in events and feedback tokens)
PUBLIC_KEY_ALGORITHMS = ("RS256", "ES256")
_KEY_TYPES = {"RS256": "RSA", "ES256": "EC"}


class InvalidToken(ValueError):
    """The token does not prove who it names; the message says why (safe to show the caller)."""


@dataclass(frozen=True)
class TokenIdentity:
    user: str
    client: str


def _public_keys(text: str, path: Path) -> dict[str, jwt.PyJWK]:
    """kid -> key, for the RS256/ES256 public keys in a JWKS document; the rest skipped with a warning."""
    keys: dict[str, jwt.PyJWK] = {}
    doc = json.loads(text)
    for i, jwk in enumerate(doc.get("keys", []) if isinstance(doc, dict) else []):
        where = f"JWKS file {path}, key {i}"
        if not isinstance(jwk, dict) or not isinstance(jwk.get("kid"), str):
            log.warning("%s skipped: not a key with a `kid`", where)
            continue
        if "d" in jwk:
            log.warning("%s (kid %s) skipped: it holds a private key; serving needs only public keys",
                        where, jwk["kid"])
            continue
        try:
            key = jwt.PyJWK(jwk)
        except jwt.PyJWTError as e:
            log.warning("%s (kid %s) skipped: %s", where, jwk["kid"], e)
            continue
        if key.algorithm_name not in PUBLIC_KEY_ALGORITHMS or _KEY_TYPES[key.algorithm_name] != key.key_type:
            log.warning("%s (kid %s) skipped: algorithm %s; only %s keys are used", where, jwk["kid"],
                        key.algorithm_name, " and ".join(PUBLIC_KEY_ALGORITHMS))
            continue
        keys[jwk["kid"]] = key
    return keys


class JwtVerifier:
    def __init__(self, *, audience: str, issuer: str, secret: str = "", jwks_file: str | Path = "",
                 every_s: float = 1.0):
        self.audience, self.issuer, self.secret = audience, issuer, secret
        self.jwks_path = Path(jwks_file) if jwks_file else None
        self._watched = WatchedFile(self.jwks_path, every_s) if self.jwks_path else None
        self._keys: dict[str, jwt.PyJWK] = {}
        if self.jwks_path is not None:
            if not self.jwks_path.is_file():
                raise SystemExit(f"RLHF_JWT_JWKS_FILE={self.jwks_path} does not exist")
            self._reload()
            self._watched.changed()  # the state just read
            if not self._keys:
                raise SystemExit(f"RLHF_JWT_JWKS_FILE={self.jwks_path} holds no RS256 or ES256 public key "
                                 "with a `kid`")

    def _reload(self) -> None:
        try:
            self._keys = _public_keys(self.jwks_path.read_text(), self.jwks_path)
        except (OSError, ValueError) as e:
            # Keep the keys last read: a JWKS being rewritten must not lock everyone out.
            log.error("JWKS file %s unreadable (%s); keeping the %d keys read before", self.jwks_path, e,
                      len(self._keys))
            return
        log.info("JWKS file %s read: %d keys (%s)", self.jwks_path, len(self._keys), ", ".join(sorted(self._keys)))

    def _key_for(self, header: dict) -> tuple[str | bytes | jwt.PyJWK, str]:
        alg = header.get("alg")
        if alg == "HS256" and self.secret:
            return self.secret, alg
        if alg in PUBLIC_KEY_ALGORITHMS and self.jwks_path is not None:
            if self._watched.changed():
                self._reload()
            kid = header.get("kid")
            key = self._keys.get(kid) if isinstance(kid, str) else None
            if key is None:
                raise InvalidToken(f"unknown signing key (kid {kid!r})")
            if key.algorithm_name != alg:
                raise InvalidToken(f"token algorithm {alg!r} is not the algorithm of key {kid!r}")
            return key, alg
        accepted = (["HS256"] if self.secret else []) + (list(PUBLIC_KEY_ALGORITHMS) if self.jwks_path else [])
        raise InvalidToken(f"token algorithm {alg!r} is not accepted (accepted: {', '.join(accepted)})")

    def verify(self, token: str) -> TokenIdentity:
        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError:
            raise InvalidToken("malformed token") from None
        key, alg = self._key_for(header)
        try:
            claims = jwt.decode(token, key, algorithms=[alg], audience=self.audience, issuer=self.issuer,
                                leeway=LEEWAY_S, options={"require": ["exp", "aud", "iss", "sub"]})
        except jwt.ExpiredSignatureError:
            raise InvalidToken("token has expired") from None
        except jwt.InvalidAudienceError:
            raise InvalidToken("token is for another audience") from None
        except jwt.InvalidIssuerError:
            raise InvalidToken("token is from another issuer") from None
        except jwt.MissingRequiredClaimError as e:
            raise InvalidToken(f"token lacks the {e.claim!r} claim") from None
        except jwt.InvalidSignatureError:
            raise InvalidToken("token signature does not verify") from None
        except jwt.PyJWTError as e:
            raise InvalidToken(f"invalid token: {e}") from None
        sub = claims["sub"]
        if not isinstance(sub, str) or not sub or len(sub) > MAX_SUB:
            raise InvalidToken(f"token `sub` must be a non-empty string of at most {MAX_SUB} characters")
        client = claims.get("azp") or claims.get("client_id") or claims["iss"]
        return TokenIdentity(user=sub, client=str(client))
