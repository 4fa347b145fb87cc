"""Bearer API keys: one set for external operations, a separate one for internal ones.

- External operations (submit, status, results, revoke, versions) accept an external key
  (AE_API_KEYS) or an internal key: the internal credential is the operator's and opens
  everything.
- Internal operations (everything under /internal/: CRUD, queue, component versions)
  accept only an internal key (AE_INTERNAL_API_KEYS); an external key gets 403.
- Ping (the health check) and the API documents stay open, so that load balancers and
  readers of /docs need no key.
- A missing or unknown key gets 401 with `WWW-Authenticate: Bearer`.
- AE_AUTH=disabled turns all of this off, for local development only; the app logs a
  warning at startup.

A presented key is compared with every configured key using hmac.compare_digest, with
no early exit, so the time taken says nothing about which key, or how much of one,
matched.
"""

from __future__ import annotations

import hmac
import logging
from collections.abc import Callable, Coroutine
from typing import Annotated, Any

from fastapi import Depends, HTTPException, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from pydantic import SecretStr

from common.config import Settings

log = logging.getLogger("api.auth")

AUTH_ENABLED, AUTH_DISABLED = "enabled", "disabled"

external_bearer = HTTPBearer(
    scheme_name="ApiKey", auto_error=False,
    description="External API key (AE_API_KEYS); an internal key is accepted too.",
)
internal_bearer = HTTPBearer(
    scheme_name="InternalApiKey", auto_error=False,
    description="Internal API key (AE_INTERNAL_API_KEYS) for the operations under /internal/.",
)
Credentials = HTTPAuthorizationCredentials | None


def check_settings(settings: Settings) -> None:
    """Refuse to serve with a misspelt mode or no keys at all, rather than fail open."""
    if settings.auth not in (AUTH_ENABLED, AUTH_DISABLED):
        raise ValueError(f"AE_AUTH must be '{AUTH_ENABLED}' or '{AUTH_DISABLED}', "
                         f"not {settings.auth!r}")
    if settings.auth == AUTH_DISABLED:
        log.warning("AE_AUTH=disabled: every operation is open to anyone who can reach "
                    "this port. Use this for local development only.")
        return
    if not settings.api_keys and not settings.internal_api_keys:
        raise ValueError("authentication is enabled but no keys are configured: set "
                         "AE_API_KEYS and AE_INTERNAL_API_KEYS (comma-separated), or "
                         "AE_AUTH=disabled for local development")


def key_matches(presented: str, keys: tuple[SecretStr, ...]) -> bool:
    """Constant-time membership: every configured key is compared, no early exit."""
    token = presented.encode()
    matched = False
    for key in keys:
        matched |= hmac.compare_digest(token, key.get_secret_value().encode())
    return matched


def _settings(request: Request) -> Settings:
    return request.app.state.ae.settings


def _unauthorized(message: str) -> HTTPException:
    return HTTPException(401, message, headers={"WWW-Authenticate": "Bearer"})


def _token(credentials: Credentials) -> str:
    if credentials is None:
        raise _unauthorized("missing API key: send the header 'Authorization: Bearer <key>'")
    return credentials.credentials


async def require_external_key(
    request: Request, credentials: Annotated[Credentials, Depends(external_bearer)]
) -> None:
    settings = _settings(request)
    if settings.auth == AUTH_DISABLED:
        return
    token = _token(credentials)
    # Both sets are always checked, so timing does not reveal which kind of key it is.
    external = key_matches(token, settings.api_keys)
    internal = key_matches(token, settings.internal_api_keys)
    if not (external or internal):
        raise _unauthorized("invalid API key")


async def require_internal_key(
    request: Request, credentials: Annotated[Credentials, Depends(internal_bearer)]
) -> None:
    settings = _settings(request)
    if settings.auth == AUTH_DISABLED:
        return
    token = _token(credentials)
    internal = key_matches(token, settings.internal_api_keys)
    external = key_matches(token, settings.api_keys)
    if internal:
        return
    if external:
        raise HTTPException(403, "this operation is internal: it needs an internal API key "
                                 "(AE_INTERNAL_API_KEYS), not an external one")
    raise _unauthorized("invalid API key")


Guard = Callable[..., Coroutine[Any, Any, None]]


def guard_for(path: str) -> Guard | None:
    """Which key a path needs: none for the health check, internal under /internal/."""
    if path in OPEN_PATHS:
        return None
    if path.startswith("/internal/"):
        return require_internal_key
    return require_external_key


OPEN_PATHS = frozenset({"/ping"})
