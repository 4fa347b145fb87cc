"""Embed/compare stage: FESTIVE embeds every lifted function and searches the references.

Runs on the gpu task queue; the model is loaded once per worker process and uses CUDA
when the worker has it.
"""

from __future__ import annotations

from typing import Any

from temporalio import activity

from activities.deps import Deps
from activities.heartbeat import in_thread_with_heartbeat
from common import metrics
from common.contracts import EmbedRequest, EmbedResult
from festive.attribution.similar import SampleFunctions
from festive.attribution.similar import encode as encode_functions
from festive.user_references import ActiveReference, ReferenceSet
from store.blobs import BlobStore


class Embed:
    def __init__(self, deps: Deps) -> None:
        self.deps = deps

    @activity.defn(name="embed_compare")
    async def embed_compare(self, request: EmbedRequest) -> EmbedResult:
        results, functions = await in_thread_with_heartbeat(self._attribute, request,
                                                            detail="embedding")
        results_sha = self.deps.blobs.put_json(results)
        functions_sha = self.deps.blobs.put_bytes(encode_functions(functions))
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
        engine = load_engine()
        children = [
            {"sha256": item.child.sha256, "name": item.child.name,
             "lift": blobs.read_json(item.lift_sha256)}
            for item in request.lifted
        ]
        results, functions = engine.attribute_with_functions(
            children, _reference_set(blobs, request.references_sha256))
        results["device"] = engine.device
        report = blobs.read_json(request.unpack_report_sha256)
        if report.get("skipped"):
            results["skipped"] = _skipped_by_name(report["skipped"])
        return results, functions


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
