"""What activities share inside one worker process: settings, blob store, database."""

from __future__ import annotations

from dataclasses import dataclass

from temporalio.client import Client

from common.config import Settings
from store.blobs import BlobStore
from store.db import PredictionStore


@dataclass
class Deps:
    settings: Settings
    blobs: BlobStore
    store: PredictionStore | None = None  # only the orchestration worker touches the database
    client: Client | None = None  # the worker's Temporal client (batch: await_analysis)
