"""Quotas per API key: a request rate and an upload volume, each off unless set.

- Request rate (AE_RATE_LIMIT requests per second, bursts of AE_RATE_BURST): a token
  bucket per key in each API process, in memory. Behind a balancer over N API processes a
  key can make up to N times the rate; the limit protects each process, and nothing is
  stored for it.
- Upload volume (AE_UPLOAD_QUOTA bytes per AE_UPLOAD_QUOTA_WINDOW_S seconds, by default a
  day): counted in the database, so every API process shares one count per key. Windows
  are fixed (aligned to the Unix epoch), not sliding. An upload is admitted while the
  key's window has bytes left and is cut off (429) when it passes what is left; uploads
  of one key running at the same moment may together pass the quota by what they had in
  flight. The sample's bytes count, whether or not the sample was new.
- Over either limit: 429 with Retry-After (seconds) and a message saying which limit.
- Ping and the API documents are never limited. Every other operation is, for external
  and internal keys alike.

A key is known here by a digest of it (api/auth.py has checked it already), never by the
key itself: not in memory, not in the database. With AE_AUTH=disabled every caller
shares one key, "anonymous".
"""

from __future__ import annotations

import hashlib
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from fastapi import HTTPException, Request

from api.auth import AUTH_DISABLED
from api.state import ApiState, state_of

ANONYMOUS = "anonymous"


def key_id(request: Request, auth: str) -> str:
    """Who a request counts against: a digest of its bearer key."""
    if auth == AUTH_DISABLED:
        return ANONYMOUS
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        return ANONYMOUS  # unreachable behind the key guard, which answers 401 first
    return hashlib.sha256(token.strip().encode()).hexdigest()[:32]


@dataclass
class _Bucket:
    tokens: float
    updated: float


@dataclass
class RateLimiter:
    """A token bucket per key: `burst` requests at once, refilled at `rate` per second.
    The event loop runs one request's check at a time, so no lock is needed."""

    rate: float
    burst: int
    clock: Callable[[], float] = time.monotonic
    _buckets: dict[str, _Bucket] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.burst <= 0:
            self.burst = max(1, math.ceil(2 * self.rate))

    def take(self, key: str) -> float:
        """0 when the request may go ahead; otherwise the seconds until it may."""
        now = self.clock()
        bucket = self._buckets.setdefault(key, _Bucket(float(self.burst), now))
        bucket.tokens = min(float(self.burst), bucket.tokens + (now - bucket.updated) * self.rate)
        bucket.updated = now
        if bucket.tokens >= 1:
            bucket.tokens -= 1
            return 0.0
        return (1 - bucket.tokens) / self.rate


async def enforce_rate(request: Request) -> None:
    """Dependency of every operation but Ping, after the key guard: 429 over the rate."""
    state = state_of(request)
    settings = state.settings
    if settings.rate_limit <= 0 or state.limiter is None:
        return
    wait = state.limiter.take(key_id(request, settings.auth))
    if wait > 0:
        retry = max(1, math.ceil(wait))
        raise HTTPException(
            429, f"rate limit: at most {settings.rate_limit:g} requests per second per API "
                 f"key (bursts of {state.limiter.burst}); retry in {retry} s",
            headers={"Retry-After": str(retry)},
        )


@dataclass(frozen=True)
class UploadAllowance:
    """What a key may still upload in the current window."""

    key_id: str
    window_start: int
    window_s: int
    quota: int
    used: int
    retry_after_s: int

    @property
    def remaining(self) -> int:
        return self.quota - self.used


async def upload_allowance(request: Request, state: ApiState) -> UploadAllowance | None:
    """The key's allowance for an upload starting now (None when there is no quota);
    429 when its window has nothing left."""
    settings = state.settings
    if settings.upload_quota_bytes <= 0:
        return None
    now = time.time()
    window = settings.upload_quota_window_s
    start = int(now // window) * window
    key = key_id(request, settings.auth)
    used = await state.store.upload_bytes_used(key, start)
    allowance = UploadAllowance(key, start, window, settings.upload_quota_bytes, used,
                                max(1, math.ceil(start + window - now)))
    if allowance.remaining <= 0:
        raise quota_exceeded(allowance)
    return allowance


def quota_exceeded(allowance: UploadAllowance) -> HTTPException:
    return HTTPException(
        429, f"upload quota: at most {allowance.quota} bytes per {allowance.window_s} s per "
             f"API key, {allowance.used} already uploaded in this window and this upload "
             f"does not fit; retry in {allowance.retry_after_s} s",
        headers={"Retry-After": str(allowance.retry_after_s)},
    )


async def charge_upload(state: ApiState, allowance: UploadAllowance | None, size: int) -> None:
    """Count a stored upload against its key's window."""
    if allowance is not None:
        await state.store.add_upload_bytes(allowance.key_id, allowance.window_start, size)
