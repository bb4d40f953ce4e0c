"""Who is calling: `Authorization: Bearer ...` -> a `Caller` (client, user), as a FastAPI dependency.

    @router.post("/v1/...")
    async def route(caller: Authenticated): ...

RLHF_AUTH chooses how (rlhf/settings.py checks the combination at start):
- `none`     development mode only. No credential; the client is "" and the user is the request's
             `user` field, as the caller says.
- `api-key`  a key from `rlhf keys add CLIENT` (serving/api_keys.py). The client is the key's
             name; the end user is `CLIENT:user` with the request's `user`, or `CLIENT` alone
             when the request names none. A client speaks for its own users only.
- `jwt`      a JWT (serving/jwt_auth.py). The user is its `sub`, the client its `azp` /
             `client_id` / issuer. A `user` in the request body is ignored: the token decides.

A missing, unknown, revoked, expired or forged credential gets 401 in OpenAI's error shape
with `WWW-Authenticate: Bearer`. Chat, feedback, models and the adapters listing (the chat
page's calls) use this dependency; health, readiness, metrics, the page itself and its static
files stay open; the admin routes keep their own token (RLHF_ADMIN_TOKEN).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Protocol

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from rlhf.settings import Settings
from serving import metrics
from serving.api_keys import ApiKeys
from serving.errors import APIError
from serving.jwt_auth import InvalidToken, JwtVerifier

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Caller:
    """An authenticated caller: `client` ("" without auth) and, when the credential proves one,
    the `user` (a JWT's `sub`); None lets the request name its user (within its client)."""

    client: str
    user: str | None = None

    def end_user(self, requested: str | None) -> str:
        """The user a request acts for, given the `user` the request names (None or "": none)."""
        if self.user is not None:
            return self.user
        if not self.client:
            return requested or ""
        return f"{self.client}:{requested}" if requested else self.client

    def speaks_for(self, user: str) -> bool:
        """Whether this caller may act as `user` (e.g. rate an answer served to them)."""
        if self.user is not None:
            return user == self.user
        if not self.client:
            return True
        return user == self.client or user.startswith(self.client + ":")


class Authenticator(Protocol):
    def caller(self, credential: str | None) -> Caller: ...


def _unauthorized(message: str, code: str) -> APIError:
    metrics.AUTH_REJECTED.labels(code).inc()
    return APIError(401, message, code=code, headers={"WWW-Authenticate": 'Bearer realm="rlhf"'})


class NoAuth:
    def caller(self, credential: str | None) -> Caller:
        return Caller(client="")


class ApiKeyAuth:
    def __init__(self, keys: ApiKeys):
        self.keys = keys

    def caller(self, credential: str | None) -> Caller:
        if not credential:
            raise _unauthorized("this server needs an API key: send `Authorization: Bearer KEY` (the openai client's "
                                "api_key); an operator creates one with `rlhf keys add NAME`", "missing_api_key")
        client = self.keys.client_for(credential)
        if client is None:
            raise _unauthorized("incorrect or revoked API key", "invalid_api_key")
        return Caller(client=client)


class JwtAuth:
    def __init__(self, verifier: JwtVerifier):
        self.verifier = verifier

    def caller(self, credential: str | None) -> Caller:
        if not credential:
            raise _unauthorized("this server needs a token: send `Authorization: Bearer JWT`", "missing_token")
        try:
            who = self.verifier.verify(credential)
        except InvalidToken as e:
            raise _unauthorized(str(e), "invalid_token") from None
        return Caller(client=who.client, user=who.user)


def build_authenticator(settings: Settings) -> Authenticator:
    """The authenticator RLHF_AUTH asks for; exits with a clear message if it cannot work."""
    settings.check_auth()
    if settings.auth == "api-key":
        path = Path(settings.api_keys_file)
        if not path.is_file():
            raise SystemExit(f"RLHF_API_KEYS_FILE={path} does not exist: create it with `rlhf keys add NAME` "
                             "(or as an empty file, to start with no clients)")
        return ApiKeyAuth(ApiKeys(path))
    if settings.auth == "jwt":
        return JwtAuth(JwtVerifier(audience=settings.jwt_audience, issuer=settings.jwt_issuer,
                                   secret=settings.jwt_secret, jwks_file=settings.jwt_jwks_file))
    log.warning("RLHF_AUTH=none: no caller is authenticated and any caller may claim any user. This is for "
                "development only; set RLHF_AUTH=api-key or jwt for anything else.")
    return NoAuth()


_bearer = HTTPBearer(auto_error=False, description="An API key (RLHF_AUTH=api-key) or a JWT (RLHF_AUTH=jwt).")


# `async def`: runs on the event loop, so the key file's reload state is never touched by two threads.
async def authenticate(request: Request,
                       credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)]) -> Caller:
    auth: Authenticator = request.app.state.auth
    return auth.caller(credentials.credentials if credentials is not None else None)


Authenticated = Annotated[Caller, Depends(authenticate)]
