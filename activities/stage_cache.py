"""The stage caches the workflow consults before it queues unpack and lift work.

Both lookups run as local activities in the orchestration worker: a reanalysis whose
unpack and lifts are cached goes to the cpu queue not at all (each trip there and back
costs a workflow task, ~30-60 ms on this machine).
- the lift cache: a child binary's stored lift, by the child's sha256 (`lift_binary`
  looks there too before it lifts, and fills it through store_lift);
- the unpack cache: a sample's UnpackResult, by unpacking.cache.unpack_key (filled by
  `unpack_sample`).
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Callable
from typing import Any

from temporalio import activity

from activities.deps import Deps
from common import metrics
from common.contracts import (
    AnalyzeRequest,
    BinaryChild,
    CachedLifts,
    CachedUnpack,
    LiftResult,
    UnpackResult,
)
from festive.v1.packed import PACK_VERSION, summary_from_bytes
from lifting.angr_lift import LIFT_CACHE_KIND
from store.blobs import BlobStore
from unpacking.cache import UNPACK_CACHE_KIND, unpack_key
from unpacking.extract import UnpackLimits


def cached_lift(blobs: BlobStore, child: BinaryChild) -> LiftResult | None:
    """The stored lift of this child with its summary, or None when it was never lifted
    (or its blob is gone). Blocking: the blob store may be S3."""
    lift_sha = blobs.get_derived(LIFT_CACHE_KIND, child.sha256)
    if lift_sha is None:
        return None
    packed_sha = blobs.get_derived(PACK_VERSION, lift_sha)
    arch, count = summary(blobs.read_bytes(packed_sha) if packed_sha is not None else None,
                          lambda: blobs.read_json(lift_sha))
    return LiftResult(child, lift_sha, arch, count, cached=True)


def store_lift(blobs: BlobStore, child: BinaryChild, lift_sha256: str) -> None:
    """Record a finished lift for cached_lift. Blocking."""
    blobs.set_derived(LIFT_CACHE_KIND, child.sha256, lift_sha256)


def summary(packed: bytes | None, lift: Callable[[], dict[str, Any]]) -> tuple[str, int]:
    """(arch, function count) of a lift: from its packed graphs' small header when there
    are some (no graphs decoded, no VEX text parsed), else from the JSON lift itself."""
    if packed is not None:
        try:
            return summary_from_bytes(packed)
        except ValueError:
            pass  # damaged or foreign: the lift itself says
    lifted = lift()
    return lifted["binary"]["arch"], len(lifted["functions"])


def cached_unpack(blobs: BlobStore, request: AnalyzeRequest,
                  limits: UnpackLimits) -> UnpackResult | None:
    """The sample's stored UnpackResult, if it was unpacked before with this key and its
    report and every child are still in the store (a lift not cached needs its child).
    Blocking."""
    found = blobs.get_derived(UNPACK_CACHE_KIND,
                              unpack_key(request.sha256, request.filename, limits))
    if found is None:
        return None
    try:
        document = blobs.read_json(found)
        result = UnpackResult(children=[BinaryChild(**c) for c in document["children"]],
                              report_sha256=str(document["report_sha256"]))
    except (ValueError, KeyError, TypeError):
        return None  # damaged or foreign: unpacked again (and the key written anew)
    wanted = [result.report_sha256, *(c.sha256 for c in result.children)]
    return result if all(blobs.exists(sha) for sha in wanted) else None


def store_unpack(blobs: BlobStore, request: AnalyzeRequest, limits: UnpackLimits,
                 result: UnpackResult) -> None:
    """Record a finished unpack for cached_unpack. Blocking."""
    blobs.set_derived(UNPACK_CACHE_KIND, unpack_key(request.sha256, request.filename, limits),
                      blobs.put_json(dataclasses.asdict(result)))


class StageCache:
    def __init__(self, deps: Deps, limits: UnpackLimits | None = None) -> None:
        self.deps = deps
        self.limits = limits or UnpackLimits()  # as the cpu worker's Unpack has them

    @activity.defn(name="cached_unpack")
    async def cached_unpack(self, request: AnalyzeRequest) -> CachedUnpack:
        """The sample's cached unpack, or none where the cpu queue must unpack it."""
        return CachedUnpack(await asyncio.to_thread(cached_unpack, self.deps.blobs, request,
                                                    self.limits))

    @activity.defn(name="cached_lifts")
    async def cached_lifts(self, unpacked: UnpackResult) -> CachedLifts:
        """Each child's cached lift, or None where the cpu queue must lift it."""
        found = [await asyncio.to_thread(cached_lift, self.deps.blobs, child)
                 for child in unpacked.children]
        hits = sum(f is not None for f in found)
        if hits:
            metrics.count(activity.metric_meter(), metrics.LIFTS, hits, cached="true")
        return CachedLifts(found)
