"""Embed stage of AddReference: FESTIVE vectors of a reference's lifted functions, stored
as one blob (festive.user_references). Runs on the gpu task queue, like embed_compare."""

from __future__ import annotations

from temporalio import activity
from temporalio.exceptions import ApplicationError

from activities.deps import Deps
from activities.heartbeat import in_thread_with_heartbeat
from common.contracts import BAD_SAMPLE, ReferenceEmbedRequest, ReferenceEmbedResult


class EmbedReference:
    def __init__(self, deps: Deps) -> None:
        self.deps = deps

    @activity.defn(name="embed_reference")
    async def embed_reference(self, request: ReferenceEmbedRequest) -> ReferenceEmbedResult:
        return await in_thread_with_heartbeat(self._embed, request, detail="embedding")

    def _embed(self, request: ReferenceEmbedRequest) -> ReferenceEmbedResult:
        from festive.engine import MIN_BLOCKS, load_engine  # heavy: in the worker only
        from festive.user_references import encode

        blobs = self.deps.blobs
        children = [{"lift": blobs.read_json(item.lift_sha256)} for item in request.lifted]
        vectors = load_engine(precision=self.deps.settings.embed_precision
                              ).embed_reference(children)
        if not vectors.names:
            total = sum(item.functions for item in request.lifted)
            raise ApplicationError(
                f"no function of the reference is large enough to use ({total} functions "
                f"found, none with at least {MIN_BLOCKS} basic blocks outside compiler and "
                "runtime scaffolding)", type=BAD_SAMPLE, non_retryable=True,
            )
        return ReferenceEmbedResult(blobs.put_bytes(encode(vectors)), len(vectors.names),
                                    vectors.weights_sha256)
