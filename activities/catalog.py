"""Reads the sample catalogue for batch reanalysis, a page at a time (a cursor, not a list)."""

from __future__ import annotations

from temporalio import activity

from activities.deps import Deps
from common.contracts import SamplePage, SampleRef


class Catalog:
    def __init__(self, deps: Deps) -> None:
        self.deps = deps

    @activity.defn(name="samples_to_reanalyze")
    async def samples_to_reanalyze(self, page: SamplePage) -> list[SampleRef]:
        if self.deps.store is None:  # set by build_workers on the orchestration worker
            raise RuntimeError("the catalogue lives in the database (orchestration worker)")
        samples = await self.deps.store.samples_to_reanalyze(
            page.after_sha256, page.model_name, page.model_version, page.include_failed,
            page.limit,
        )
        return [SampleRef(s.sha256, s.filename) for s in samples]
