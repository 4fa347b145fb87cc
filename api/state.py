"""What the API process holds: settings, blob store, database, and a Temporal client."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from fastapi import HTTPException, Request
from temporalio.client import Client
from temporalio.service import RPCError

from api.finished import FinishedRuns
from api.running import RecentViews
from api.similar import SimilarIndexes
from common.config import Settings
from common.temporal import connect
from festive.served import ServedCard
from store.blobs import BlobStore
from store.db import PredictionStore

if TYPE_CHECKING:
    from api.quotas import RateLimiter


class TemporalUnreachable(HTTPException):
    """503: no client for the Temporal server could be made."""


@dataclass
class ApiState:
    settings: Settings
    blobs: BlobStore
    store: PredictionStore
    served: ServedCard  # the model the workers serve (api/versions.py)
    client: Client | None = None
    limiter: RateLimiter | None = None  # AE_RATE_LIMIT (api/quotas.py)
    similar: SimilarIndexes = field(default_factory=SimilarIndexes)
    finished: FinishedRuns = field(default_factory=FinishedRuns)  # Get Status of ended runs
    running: RecentViews = field(init=False)  # Get Status of open runs (AE_STATUS_REFRESH_S)
    _connect_lock: asyncio.Lock = field(default_factory=asyncio.Lock)

    def __post_init__(self) -> None:
        self.running = RecentViews(self.settings.status_refresh_s,
                                   self.settings.status_wait_s,
                                   self.settings.status_describes,
                                   unavailable=(RPCError, TemporalUnreachable))

    async def temporal(self) -> Client:
        """Connect on first use, so the API starts (and serves stored results) without Temporal."""
        if self.client is not None:
            return self.client
        async with self._connect_lock:
            if self.client is None:
                try:
                    self.client = await asyncio.wait_for(connect(self.settings), timeout=10)
                except Exception as exc:
                    raise TemporalUnreachable(
                        503,
                        f"the Temporal server at {self.settings.temporal_address} is not "
                        f"reachable: {exc}",
                    ) from exc
        return self.client


def state_of(request: Request) -> ApiState:
    return request.app.state.ae


async def get_state(request: Request) -> ApiState:
    """The `State` dependency. Async: FastAPI runs a plain `def` dependency in a worker
    thread, a hop there and back on every request."""
    return state_of(request)
