"""Which model the workers serve, as a record in the shared blob store.

A GPU worker publishes the card of the model it loaded when it starts (`publish`); the
API and the orchestration worker read it (`read`, `ServedCard`) to know what "current" means,
instead of trusting their own copy of the weights, which on another machine may be
older or newer. The record is one derived reference per deployment (keyed by the GPU
task queue), pointing at an immutable JSON blob, so it works the same on a local
directory and on S3. While a rolling update runs two model versions, the worker that
started last is the one recorded. With no record yet (no GPU worker ever started
against this store), the installed card is used.

JSON only: no numpy or torch here.
"""

from __future__ import annotations

import asyncio
import hashlib
import time
from typing import Any

from festive.card import model_card
from store.blobs import BlobMissing, BlobStore

KIND = "served-model"
_FIELDS = ("name", "version", "index_version", "engine", "weights_sha256", "analysis_version")


def _key(gpu_queue: str) -> str:
    return hashlib.sha256(gpu_queue.encode()).hexdigest()


def publish(blobs: BlobStore, gpu_queue: str, card: dict[str, Any] | None = None) -> dict:
    """Record `card` (default: the installed model's) as the one this deployment serves."""
    card = card or model_card()
    record = {k: card[k] for k in _FIELDS if k in card}
    blobs.set_derived(KIND, _key(gpu_queue), blobs.put_json(record))
    return record


def read(blobs: BlobStore, gpu_queue: str) -> dict[str, Any] | None:
    """The published record, or None when no worker has published one."""
    sha = blobs.get_derived(KIND, _key(gpu_queue))
    if sha is None:
        return None
    try:
        return dict(blobs.read_json(sha))
    except BlobMissing:
        return None


class ServedCard:
    """`read` for async code: in a thread (S3 is blocking), cached for `ttl_s` seconds."""

    def __init__(self, blobs: BlobStore, gpu_queue: str, ttl_s: float = 5.0) -> None:
        self.blobs, self.gpu_queue, self.ttl_s = blobs, gpu_queue, ttl_s
        self._value: dict[str, Any] | None = None
        self._at = float("-inf")

    async def get(self) -> dict[str, Any]:
        if time.monotonic() - self._at > self.ttl_s:
            record = await asyncio.to_thread(read, self.blobs, self.gpu_queue)
            installed = model_card()
            self._value = {**installed, **record, "source": "workers"} if record else {
                **installed, "source": "installed"}
            self._at = time.monotonic()
        if self._value is None:
            raise RuntimeError("served card not loaded")
        return self._value
