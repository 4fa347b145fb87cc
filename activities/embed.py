"""Embed/compare stage: FESTIVE embeds every lifted function and searches the references.

Runs on the gpu task queue; the model is loaded once per worker process and uses CUDA
when the worker has it.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any

import numpy as np
from temporalio import activity

from activities.deps import Deps
from activities.heartbeat import in_thread_with_heartbeat
from common import metrics
from common.contracts import EmbedRequest, EmbedResult
from festive.attribution.similar import SampleFunctions
from festive.attribution.similar import encode as encode_functions
from festive.card import DEFAULT_PRECISION
from festive.user_references import ActiveReference, ReferenceSet
from store.blobs import BlobStore

if TYPE_CHECKING:
    from festive.engine import Engine
    from festive.v1.packed import PackedLift


class Embed:
    def __init__(self, deps: Deps) -> None:
        self.deps = deps

    @activity.defn(name="embed_compare")
    async def embed_compare(self, request: EmbedRequest) -> EmbedResult:
        results, functions = await in_thread_with_heartbeat(self._attribute, request,
                                                            detail="embedding")
        blobs = self.deps.blobs  # S3 calls block: in a thread, off the event loop
        results_sha = await asyncio.to_thread(blobs.put_json, results)
        functions_sha = await asyncio.to_thread(blobs.put_bytes, encode_functions(functions))
        meter = activity.metric_meter()
        metrics.count(meter, metrics.FUNCTIONS_JUDGED,
                      _int(results.get("functions_considered")))
        metrics.count(meter, metrics.VERDICTS, family=str(results.get("verdict") or "unknown"))
        return EmbedResult(
            results_sha256=results_sha,
            model_version=str(results.get("analysis_version", "")),
            verdict=str(results.get("verdict", "")),
            device=str(results.get("device", "")),
            functions_sha256=functions_sha,
        )

    def _attribute(self, request: EmbedRequest) -> tuple[dict[str, Any], SampleFunctions]:
        from festive.engine import load_engine  # heavy (numpy/torch): loaded in the worker only

        blobs = self.deps.blobs
        engine = load_engine(precision=self.deps.settings.embed_precision)
        children = []
        for item in request.lifted:
            packed_sha, packed = packed_lift(blobs, item.lift_sha256)
            children.append(({"sha256": item.child.sha256, "name": item.child.name}, packed,
                             lift_vectors(blobs, engine, packed_sha, packed)))
        results, functions = engine.attribute_packed(
            children, _reference_set(blobs, request.references_sha256))
        results["device"] = engine.device
        report = blobs.read_json(request.unpack_report_sha256)
        if report.get("skipped"):
            results["skipped"] = _skipped_by_name(report["skipped"])
        return results, functions


def packed_lift(blobs: BlobStore, lift_sha256: str) -> tuple[str, PackedLift]:
    """The lift's considered functions as v1 graphs: from the blob store when this lift was
    featurised before (the lift child stores them beside the lift), else featurised from
    the JSON lift now and stored. (blob sha256, packed lift)."""
    from festive.v1.packed import PACK_VERSION, from_bytes, pack_lift, to_bytes

    found = blobs.get_derived(PACK_VERSION, lift_sha256)
    if found is not None:
        try:
            return found, from_bytes(blobs.read_bytes(found))
        except ValueError as exc:  # damaged: featurise again (and overwrite the reference)
            activity.logger.warning("packed lift %s unreadable (%s): featurising again",
                                    found, exc)
    packed = pack_lift(blobs.read_json(lift_sha256))
    packed_sha = blobs.put_bytes(to_bytes(packed))
    blobs.set_derived(PACK_VERSION, lift_sha256, packed_sha)
    return packed_sha, packed


def lift_vectors(blobs: BlobStore, engine: Engine, packed_sha256: str,
                 packed: PackedLift) -> np.ndarray:
    """The packed lift's embeddings by the engine's weights: cached in the blob store,
    keyed by the packed lift, the weights and the precision (new weights, or another
    precision, embed again)."""
    from festive.v1.packed import vectors_from_bytes, vectors_to_bytes

    kind = f"fvec-{engine.card['weights_sha256'][:24]}"
    if engine.precision != DEFAULT_PRECISION:  # float32's entries keep the name they had
        kind += f"-{engine.precision}"
    found = blobs.get_derived(kind, packed_sha256)
    if found is not None:
        try:
            vectors = vectors_from_bytes(blobs.read_bytes(found))
            if vectors.shape[0] == len(packed.addrs):
                return vectors
        except ValueError:
            pass
        activity.logger.warning("cached vectors %s do not fit: embedding again", found)
    vectors = engine.embed_packed(packed)
    blobs.set_derived(kind, packed_sha256, blobs.put_bytes(vectors_to_bytes(vectors)))
    return vectors


def _int(value: Any) -> int:
    try:
        return int(value)
    except (TypeError, ValueError):
        return 0


def _reference_set(blobs: BlobStore, references_sha256: str) -> ReferenceSet | None:
    """The user references the workflow read from the database (activities/references.py)."""
    if not references_sha256:
        return None
    entries = blobs.read_json(references_sha256)
    return ReferenceSet([ActiveReference(**e) for e in entries], blobs.read_bytes)


def _skipped_by_name(entries: list[dict[str, str]], limit: int = 200) -> dict[str, dict[str, str]]:
    """One entry per archive member; several reasons for one member are joined."""
    skipped: dict[str, dict[str, str]] = {}
    for entry in entries[:limit]:
        name = str(entry.get("name", ""))
        reason = str(entry.get("reason", "skipped"))
        if name in skipped:
            skipped[name]["reason"] += f"; {reason}"
        else:
            skipped[name] = {"name": name, "reason": reason}
    return skipped
