"""All database I/O, behind functions that say what they do.

SQLite through aiosqlite by default (WAL, busy timeout, so the API and the workers of one
machine can share one file); PostgreSQL through asyncpg (DATABASE_URL=
postgresql+asyncpg://user:password@host/db) when processes run on several machines. The
schema is Alembic's (store/migrate.py), for both.
"""

from __future__ import annotations

import functools
import json
import math
import os
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar, cast

from sqlalchemy import (
    ColumnElement,
    CursorResult,
    Result,
    Select,
    delete,
    event,
    exists,
    func,
    insert,
    literal,
    or_,
    select,
    update,
)
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import (
    AsyncEngine,
    AsyncSession,
    async_sessionmaker,
    create_async_engine,
)
from sqlalchemy.orm import Session, defer

from common.contracts import (
    FAILURE,
    PENDING,
    STARTED,
    SUCCESS,
    BatchFilter,
    BatchOutcome,
    ReferenceUpdate,
)
from store import migrate
from store.models import (
    Batch,
    BatchItem,
    FamilyEvidence,
    Prediction,
    Reference,
    Revocation,
    Sample,
    SampleFunctions,
    StoreInfo,
    UploadUsage,
)
from store.read_cache import CommitWatch

T = TypeVar("T")


def utcnow() -> datetime:
    return datetime.now(UTC).replace(tzinfo=None)


def _retry_on_conflict[**P, R](method: Callable[P, Awaitable[R]]) -> Callable[P, Awaitable[R]]:
    """Two writers inserting the same new row: the loser retries and sees the winner's row."""

    @functools.wraps(method)
    async def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return await method(*args, **kwargs)
        except IntegrityError:
            return await method(*args, **kwargs)

    return wrapper


class PredictionStore:
    def __init__(self, url: str, read_cache: bool = False) -> None:
        """read_cache: keep the rows of the API's polled reads while nothing is committed
        (store/read_cache.py; SQLite files only)."""
        self.url = url
        # pre-ping: a connection the server closed (a PostgreSQL restart) is replaced, not
        # used. A SQLite file has no server to lose, and the ping would cost every request
        # three more hops to aiosqlite's thread.
        sqlite = url.startswith("sqlite")
        self.engine: AsyncEngine = create_async_engine(url, pool_pre_ping=not sqlite)
        if sqlite:
            _tune_sqlite(self.engine, url)
        self.session = async_sessionmaker(self.engine, expire_on_commit=False)
        path = _sqlite_path(url) if sqlite else None
        self.commits = CommitWatch(path) if read_cache and path else None

    async def init_schema(self) -> None:
        """Bring the schema to the newest migration (a database made before Alembic is
        adopted, gaining the tables added since); one process at a time."""
        await migrate.upgrade(self.engine)

    async def close(self) -> None:
        if self.commits is not None:
            self.commits.close()
        await self.engine.dispose()

    async def _polled(self, key: tuple[str, ...], read: Callable[[Session], T],
                      size: Callable[[T], int]) -> T:
        """A read the API repeats on every poll: kept while nothing is committed, read
        on the event loop's own connection when it can be (SQLite, store/read_cache.py)."""
        async def load() -> T:
            async with self.session() as session:
                return await session.run_sync(read)

        if self.commits is None:
            return await load()
        return await self.commits.read(key, load, size, now=read)

    async def schema_version(self) -> str:
        async with self.session() as session:
            info = await session.get(StoreInfo, "schema_version")
            return info.value if info else "uninitialised"

    # --- samples ----------------------------------------------------------------------
    @_retry_on_conflict
    async def record_sample(self, sha256: str, size: int, filename: str) -> bool:
        """Remember a submission; returns True when the sample is new. The count is one
        UPDATE, so concurrent submissions of one file are all counted."""
        now = utcnow()
        async with self.session.begin() as session:
            seen = await session.execute(
                update(Sample).where(Sample.sha256 == sha256)
                .values(last_submitted=now, submissions=Sample.submissions + 1)
            )
            if _changed(seen):
                return False
            session.add(
                Sample(
                    sha256=sha256, size=size, filename=filename[:255], first_seen=now,
                    last_submitted=now, submissions=1,
                )
            )
            return True

    # --- upload quotas (api/quotas.py) --------------------------------------------------
    async def upload_bytes_used(self, key_id: str, window_start: int) -> int:
        """Bytes counted against a key in the window starting at window_start."""
        async with self.session() as session:
            row = await session.get(UploadUsage, (key_id, window_start))
            return row.bytes if row is not None else 0

    @_retry_on_conflict
    async def add_upload_bytes(self, key_id: str, window_start: int, size: int) -> None:
        """Count an upload against its key's window: one UPDATE, so concurrent uploads
        through any API process all count. The key's earlier windows are dropped."""
        async with self.session.begin() as session:
            counted = await session.execute(
                update(UploadUsage)
                .where(UploadUsage.key_id == key_id, UploadUsage.window_start == window_start)
                .values(bytes=UploadUsage.bytes + size)
            )
            if not _changed(counted):
                session.add(UploadUsage(key_id=key_id, window_start=window_start, bytes=size))
            await session.execute(
                delete(UploadUsage)
                .where(UploadUsage.key_id == key_id, UploadUsage.window_start < window_start)
            )

    async def samples_to_reanalyze(
        self, after_sha256: str, model: str, model_version: str, include_failed: bool, limit: int
    ) -> list[Sample]:
        """A page of samples, in sha256 order, lacking a current result for this model."""
        current = (
            (Prediction.status == SUCCESS) & (Prediction.model_version == model_version)
        )
        skip = current if include_failed else current | (Prediction.status == FAILURE)
        query = (
            select(Sample)
            .outerjoin(
                Prediction,
                (Prediction.sha256_hash == Sample.sha256) & (Prediction.model == model),
            )
            .where(Sample.sha256 > after_sha256)
            .where((Prediction.sha256_hash.is_(None)) | ~skip)
            .order_by(Sample.sha256)
            .limit(limit)
        )
        async with self.session() as session:
            return list(await session.scalars(query))

    async def get_sample(self, sha256: str) -> Sample | None:
        return await self._polled(("sample", sha256), lambda s: s.get(Sample, sha256),
                                  lambda _: 512)

    # --- predictions ------------------------------------------------------------------
    async def get_prediction(self, sha256: str, model: str) -> Prediction | None:
        return await self._polled(("prediction", sha256, model),
                                  lambda s: s.get(Prediction, (sha256, model)), _prediction_bytes)

    async def list_predictions(self, sha256: str) -> list[Prediction]:
        async with self.session() as session:
            query = select(Prediction).where(Prediction.sha256_hash == sha256)
            rows = await session.scalars(query.order_by(Prediction.model))
            return list(rows)

    async def list_prediction_states(self, sha256: str) -> list[Prediction]:
        """list_predictions without the results and explanation (large JSON and text that
        Get Status never reads: those attributes are not loaded)."""
        query = (select(Prediction).where(Prediction.sha256_hash == sha256)
                 .options(defer(Prediction.prediction_results, raiseload=True),
                          defer(Prediction.explanation_results, raiseload=True))
                 .order_by(Prediction.model))
        return await self._polled(("states", sha256), lambda s: list(s.scalars(query)),
                                  lambda rows: 1024 * (1 + len(rows)))

    @_retry_on_conflict
    async def create_prediction(self, sha256: str, model: str) -> bool:
        """Insert an empty row; False when one already exists."""
        async with self.session.begin() as session:
            if await session.get(Prediction, (sha256, model)) is not None:
                return False
            now = utcnow()
            session.add(
                Prediction(sha256_hash=sha256, model=model, status=PENDING, created_at=now,
                           updated_at=now)
            )
            return True

    @_retry_on_conflict
    async def begin_run(self, sha256: str, model: str, model_version: str, run_id: str) -> None:
        """Point the row at a new workflow run; results of an older run are cleared."""
        now = utcnow()
        async with self.session.begin() as session:
            row = await session.get(Prediction, (sha256, model), with_for_update=True)
            if row is None:
                row = Prediction(sha256_hash=sha256, model=model, created_at=now)
                session.add(row)
            elif row.celery_task_id == run_id:
                return
            row.model_version = model_version
            row.celery_task_id = run_id
            row.status = PENDING
            row.error_details = None
            row.prediction_results = None
            row.explanation_results = None
            row.predicted_at = None
            row.updated_at = now
            await _replace_findings(session, row, None)

    @_retry_on_conflict
    async def set_status(
        self, sha256: str, model: str, run_id: str, status: str, model_version: str,
        error_details: str | None = None,
    ) -> bool:
        """Record a run's state; a stale run (not the row's current one) changes nothing."""
        now = utcnow()
        async with self.session.begin() as session:
            row = await _row_for_run(session, sha256, model, run_id, now)
            if row is None:
                return False
            row.celery_task_id = run_id
            row.model_version = model_version
            row.status = status
            row.error_details = error_details
            row.updated_at = now
            if error_details is not None:
                row.predicted_at = now
            return True

    @_retry_on_conflict
    async def save_results(
        self, sha256: str, model: str, run_id: str, model_version: str,
        results: dict[str, Any], explanation: str, functions: StoredFunctions | None = None,
    ) -> bool:
        """The run's results, their per-family evidence and the sample's function
        vectors, in one transaction (older ones of this prediction are replaced)."""
        now = utcnow()
        async with self.session.begin() as session:
            row = await _row_for_run(session, sha256, model, run_id, now)
            if row is None:
                return False
            row.celery_task_id = run_id
            row.model_version = model_version
            row.status = SUCCESS
            row.error_details = None
            row.prediction_results = results
            row.explanation_results = explanation
            row.predicted_at = now
            row.updated_at = now
            await _replace_findings(session, row, functions)
            return True

    async def update_fields(self, sha256: str, model: str, **fields: Any) -> bool:
        """Operator edits (the internal CRUD operations); False when the row is missing."""
        async with self.session.begin() as session:
            row = await session.get(Prediction, (sha256, model), with_for_update=True)
            if row is None:
                return False
            for name, value in fields.items():
                setattr(row, name, value)
            row.updated_at = utcnow()
            if "prediction_results" in fields:  # the evidence follows the results
                await _replace_evidence(session, row)
            return True

    # --- revocations ------------------------------------------------------------------
    async def claim_revocation(self, run_id: str, sha256: str, model: str) -> bool:
        """True for the one caller that records the revoke of this run first; False for
        every other (the primary key decides, in whichever process they run)."""
        try:
            async with self.session.begin() as session:
                session.add(Revocation(run_id=run_id, sha256_hash=sha256, model=model,
                                       requested_at=utcnow()))
        except IntegrityError:
            return False
        return True

    async def release_revocation(self, run_id: str) -> None:
        """Forget a claim whose cancellation did not reach Temporal, so it can be retried."""
        async with self.session.begin() as session:
            row = await session.get(Revocation, run_id)
            if row is not None:
                await session.delete(row)

    async def delete_prediction(self, sha256: str, model: str) -> bool:
        async with self.session.begin() as session:
            row = await session.get(Prediction, (sha256, model))
            if row is None:
                return False
            await _delete_findings(session, sha256, model)
            await session.delete(row)
            return True

    # --- finding samples (List Samples, Similar Samples) ------------------------------
    async def list_samples(
        self, model: str, f: SampleFilter, after: tuple[datetime, str] | None, limit: int
    ) -> list[tuple[Sample, Prediction | None]]:
        """A page of samples in (first_seen, sha256) order after the cursor, each with
        its prediction of this model (None when it has none), matching the filter."""
        query = list_samples_query(model, f, after, limit)
        async with self.session() as session:
            return [(sample, prediction) for sample, prediction in await session.execute(query)]

    async def families_present(self, model: str, sha256s: list[str]) -> dict[str, list[str]]:
        """The families judged present in each of these samples' predictions of this
        model, most probable first."""
        if not sha256s:
            return {}
        query = (select(FamilyEvidence.sha256, FamilyEvidence.family)
                 .where(FamilyEvidence.model == model)
                 .where(FamilyEvidence.sha256.in_(sha256s))
                 .where(FamilyEvidence.state == "present")
                 .order_by(FamilyEvidence.sha256, FamilyEvidence.probability.desc(),
                           FamilyEvidence.family))
        found: dict[str, list[str]] = {}
        async with self.session() as session:
            for sha256, family in await session.execute(query):
                found.setdefault(sha256, []).append(family)
        return found

    async def family_evidence(self, sha256: str, model: str) -> list[FamilyEvidence]:
        query = (select(FamilyEvidence).where(FamilyEvidence.sha256 == sha256)
                 .where(FamilyEvidence.model == model)
                 .order_by(FamilyEvidence.probability.desc(), FamilyEvidence.family))
        async with self.session() as session:
            return list(await session.scalars(query))

    async def sample_functions(self, sha256: str, model: str) -> SampleFunctions | None:
        query = (select(SampleFunctions).where(SampleFunctions.sha256 == sha256)
                 .where(SampleFunctions.model == model))
        async with self.session() as session:
            return await session.scalar(query)

    async def sample_functions_after(
        self, model: str, weights_sha256: str, after_id: int, also_ids: list[int], limit: int
    ) -> list[tuple[int, str, bytes]]:
        """(id, sha256, vectors) of the rows of these weights with an id above
        `after_id` or among `also_ids`, in id order, at most `limit`."""
        newer = SampleFunctions.id > after_id
        if also_ids:
            newer = newer | SampleFunctions.id.in_(also_ids)
        query = (select(SampleFunctions.id, SampleFunctions.sha256, SampleFunctions.vectors)
                 .where(SampleFunctions.model == model)
                 .where(SampleFunctions.weights_sha256 == weights_sha256)
                 .where(newer).order_by(SampleFunctions.id).limit(limit))
        async with self.session() as session:
            return [(i, sha, bytes(data)) for i, sha, data in await session.execute(query)]

    async def sample_function_ids(self, model: str, sha256s: list[str]) -> dict[str, int]:
        """The current row id of each of these samples' function vectors (absent: none)."""
        if not sha256s:
            return {}
        query = (select(SampleFunctions.sha256, SampleFunctions.id)
                 .where(SampleFunctions.model == model)
                 .where(SampleFunctions.sha256.in_(sha256s)))
        async with self.session() as session:
            return {sha: i for sha, i in await session.execute(query)}

    async def samples_with_predictions(
        self, model: str, sha256s: list[str]
    ) -> dict[str, tuple[Sample, Prediction | None]]:
        if not sha256s:
            return {}
        query = (select(Sample, Prediction)
                 .outerjoin(Prediction, (Prediction.sha256_hash == Sample.sha256)
                            & (Prediction.model == model))
                 .where(Sample.sha256.in_(sha256s)))
        async with self.session() as session:
            return {s.sha256: (s, p) for s, p in await session.execute(query)}

    # --- references users add ---------------------------------------------------------
    @_retry_on_conflict
    async def add_reference(
        self, sha256: str, family: str, version: str, tags: list[str], filename: str
    ) -> tuple[Reference, bool]:
        """The reference with this sha256, and whether it is new (get or create)."""
        async with self.session.begin() as session:
            row = await session.get(Reference, sha256)
            if row is not None:
                return row, False
            now = utcnow()
            row = Reference(sha256=sha256, family=family, version=version, tags=tags,
                            filename=filename[:255], status=PENDING, created_at=now,
                            updated_at=now)
            session.add(row)
            return row, True

    async def get_reference(self, sha256: str) -> Reference | None:
        async with self.session() as session:
            return await session.get(Reference, sha256)

    async def references_with_prefix(self, prefix: str, limit: int = 2) -> list[Reference]:
        """References whose sha256 starts with `prefix` (hex), in sha256 order."""
        if not all(c in "0123456789abcdef" for c in prefix):
            return []
        query = (select(Reference).where(Reference.sha256.startswith(prefix))
                 .order_by(Reference.sha256).limit(limit))
        async with self.session() as session:
            return list(await session.scalars(query))

    async def list_references(self, after_sha256: str, limit: int) -> list[Reference]:
        """A page of references in sha256 order, after the cursor."""
        query = (select(Reference).where(Reference.sha256 > after_sha256)
                 .order_by(Reference.sha256).limit(limit))
        async with self.session() as session:
            return list(await session.scalars(query))

    async def relabel_reference(self, sha256: str, **labels: Any) -> Reference | None:
        """Change family, version and/or tags; None when the reference is missing."""
        async with self.session.begin() as session:
            row = await session.get(Reference, sha256, with_for_update=True)
            if row is None:
                return None
            for name, value in labels.items():
                setattr(row, name, value)
            row.updated_at = utcnow()
            return row

    async def remove_reference(self, sha256: str) -> bool:
        async with self.session.begin() as session:
            row = await session.get(Reference, sha256)
            if row is None:
                return False
            await session.delete(row)
            return True

    async def begin_reference_run(
        self, sha256: str, run_id: str, family: str, version: str, tags: list[str]
    ) -> None:
        """Point the row at a new AddReference run, with the labels it was added with."""
        async with self.session.begin() as session:
            row = await session.get(Reference, sha256, with_for_update=True)
            if row is None or row.run_id == run_id:
                return
            row.run_id, row.status, row.error_details = run_id, PENDING, None
            row.family, row.version, row.tags = family, version, tags
            row.updated_at = utcnow()

    async def update_reference(self, update: ReferenceUpdate) -> bool:
        """A workflow's change to its row. STARTED claims the row for the run; later
        changes of another run, or of a removed reference, change nothing."""
        async with self.session.begin() as session:
            row = await session.get(Reference, update.sha256, with_for_update=True)
            if row is None:
                return False
            if update.status != STARTED and row.run_id not in (None, update.run_id):
                return False
            row.run_id, row.status = update.run_id, update.status
            row.error_details = update.error_details
            if update.status == SUCCESS:
                row.vectors_sha256 = update.vectors_sha256
                row.functions = update.functions
                row.weights_sha256 = update.weights_sha256
            elif update.status == STARTED:
                row.vectors_sha256 = row.functions = row.weights_sha256 = None
            row.updated_at = utcnow()
            return True

    async def active_references(self, weights_sha256: str) -> list[Reference]:
        """The references searched: embedded by these weights, in sha256 order."""
        query = (select(Reference)
                 .where(Reference.status == SUCCESS)
                 .where(Reference.weights_sha256 == weights_sha256)
                 .order_by(Reference.sha256))
        async with self.session() as session:
            return list(await session.scalars(query))


    # --- batch reanalysis ------------------------------------------------------------
    async def open_batch(
        self, batch_id: str, workflow_id: str, model: str, model_version: str,
        batch_filter: BatchFilter,
    ) -> Batch:
        """Record a batch and choose its members (one INSERT ... SELECT, so no list of
        hashes ever leaves the database). Opening the same batch again changes nothing."""
        async with self.session.begin() as session:
            batch = await session.get(Batch, batch_id)
            if batch is not None:
                return batch
            now = utcnow()
            matched = _batch_selection(model, model_version, batch_filter)
            current = _current(model_version)
            chosen = matched if batch_filter.force else matched.where(~current)
            await session.execute(
                insert(BatchItem).from_select(
                    ["batch_id", "sha256", "status", "updated_at"],
                    chosen.with_only_columns(
                        literal(batch_id), Sample.sha256, literal(PENDING), literal(now)
                    ),
                )
            )
            total = await session.scalar(
                select(func.count()).select_from(BatchItem).where(BatchItem.batch_id == batch_id)
            )
            cached: int | None = 0
            if not batch_filter.force:
                cached = await session.scalar(
                    select(func.count()).select_from(matched.where(current).subquery())
                )
            batch = Batch(
                batch_id=batch_id, workflow_id=workflow_id, model=model,
                model_version=model_version, filter=_filter_json(batch_filter),
                total=total or 0, cached=cached or 0, state="running", created_at=now,
            )
            session.add(batch)
            return batch

    async def batch_page(
        self, batch_id: str, model: str, model_version: str, after_sha256: str, limit: int
    ) -> list[tuple[str, str, bool]]:
        """Members still PENDING after the cursor, in sha256 order: (sha256, filename,
        whether the sample has a result of the current analysis version by now)."""
        query = (
            select(BatchItem.sha256, Sample.filename, _current(model_version))
            .join(Sample, Sample.sha256 == BatchItem.sha256)
            .outerjoin(
                Prediction,
                (Prediction.sha256_hash == BatchItem.sha256) & (Prediction.model == model),
            )
            .where(BatchItem.batch_id == batch_id)
            .where(BatchItem.status == PENDING)
            .where(BatchItem.sha256 > after_sha256)
            .order_by(BatchItem.sha256)
            .limit(limit)
        )
        async with self.session() as session:
            return [(sha, name or "", bool(cur)) for sha, name, cur in await session.execute(query)]

    async def record_batch_outcome(self, outcome: BatchOutcome) -> bool:
        async with self.session.begin() as session:
            result = await session.execute(
                update(BatchItem)
                .where(BatchItem.batch_id == outcome.batch_id)
                .where(BatchItem.sha256 == outcome.sha256)
                .values(status=outcome.status, run_id=outcome.run_id or None,
                        error_details=outcome.error_details, updated_at=utcnow())
            )
            return bool(_changed(result))

    async def close_batch(self, batch_id: str, state: str) -> None:
        async with self.session.begin() as session:
            batch = await session.get(Batch, batch_id)
            if batch is not None:
                batch.state, batch.closed_at = state, utcnow()

    async def get_batch(self, batch_id: str) -> Batch | None:
        async with self.session() as session:
            return await session.get(Batch, batch_id)

    async def batch_counts(self, batch_id: str) -> dict[str, int]:
        """Members per status (PENDING until their outcome is recorded)."""
        query = (select(BatchItem.status, func.count()).where(BatchItem.batch_id == batch_id)
                 .group_by(BatchItem.status))
        async with self.session() as session:
            return {status: count for status, count in await session.execute(query)}

    async def batch_failures(self, batch_id: str, limit: int) -> list[BatchItem]:
        query = (select(BatchItem).where(BatchItem.batch_id == batch_id)
                 .where(BatchItem.status == FAILURE).order_by(BatchItem.sha256).limit(limit))
        async with self.session() as session:
            return list(await session.scalars(query))


@dataclass(frozen=True)
class StoredFunctions:
    """A sample's function vectors as the persist stage stores them."""

    vectors: bytes  # festive/attribution/similar.py's npz
    weights_sha256: str
    functions: int


@dataclass(frozen=True)
class SampleFilter:
    """List Samples' filters (None or empty: no condition)."""

    family: str | None = None
    family_state: str = "present"
    verdict: str | None = None
    status: str | None = None
    analysis_version: str | None = None
    submitted_after: datetime | None = None  # naive UTC, inclusive
    submitted_before: datetime | None = None  # naive UTC, exclusive
    filename_like: str | None = None  # a LIKE pattern (escape: backslash), lower case


def list_samples_query(
    model: str, f: SampleFilter, after: tuple[datetime, str] | None, limit: int
) -> Select[Sample, Prediction]:
    """List Samples' query (tests EXPLAIN it): keyset paging on (first_seen, sha256)."""
    query = (
        select(Sample, Prediction)
        .outerjoin(Prediction,
                   (Prediction.sha256_hash == Sample.sha256) & (Prediction.model == model))
        .order_by(Sample.first_seen, Sample.sha256)
        .limit(limit)
    )
    if after is not None:
        moment, sha256 = after
        query = query.where(Sample.first_seen >= moment).where(
            or_(Sample.first_seen > moment, Sample.sha256 > sha256))
    return _sample_filter(query, model, f)


def _changed(result: Result[Any]) -> int:
    """Rows an UPDATE changed (an UPDATE's result is a CursorResult, which has rowcount)."""
    return cast(CursorResult[Any], result).rowcount


def _sample_filter[*Row](query: Select[*Row], model: str, f: SampleFilter) -> Select[*Row]:
    if f.family:
        query = query.where(exists().where(
            (FamilyEvidence.family == f.family) & (FamilyEvidence.model == model)
            & (FamilyEvidence.state == f.family_state)
            & (FamilyEvidence.sha256 == Sample.sha256)))
    if f.verdict:
        query = query.where(Prediction.verdict == f.verdict)
    if f.status:
        query = query.where(Prediction.status == f.status)
    if f.analysis_version:
        query = query.where(Prediction.model_version == f.analysis_version)
    if f.submitted_after is not None:
        query = query.where(Sample.first_seen >= f.submitted_after)
    if f.submitted_before is not None:
        query = query.where(Sample.first_seen < f.submitted_before)
    if f.filename_like:
        query = query.where(func.lower(Sample.filename).like(f.filename_like, escape="\\"))
    return query


EVIDENCE_STATES = ("present", "weak")


def _number(value: Any) -> float | None:
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


def evidence_of(
    sha256: str, model: str, model_version: str | None, results: Any
) -> tuple[list[dict[str, Any]], str | None, float | None]:
    """What a prediction's results give the queryable columns: its family_evidence rows
    (the "families" entries present or weak), its verdict and its confidence. Entries
    that are not the engine's shape (an operator's edit) are left out, not guessed.
    Migration 0005 backfills with it too."""
    results = results if isinstance(results, dict) else {}
    verdict = results.get("verdict")
    verdict = verdict if isinstance(verdict, str) and 0 < len(verdict) <= 64 else None
    confidence = _number(results.get("confidence"))
    families = results.get("families")
    if not isinstance(families, dict):
        return [], verdict, confidence
    version = str(results.get("analysis_version") or model_version or "")[:128]
    rows = []
    for family, entry in families.items():
        if not isinstance(entry, dict) or not 0 < len(str(family)) <= 64:
            continue
        state = entry.get("status")
        probability, score = _number(entry.get("probability")), _number(entry.get("score"))
        matched = _number(entry.get("functions_matched"))
        if state not in EVIDENCE_STATES or probability is None or score is None:
            continue
        rows.append({"sha256": sha256, "model": model, "analysis_version": version,
                     "family": str(family), "state": state, "probability": probability,
                     "score": score,
                     "functions_matched": int(min(max(matched or 0, 0), 2**31 - 1))})
    return rows, verdict, confidence


async def _replace_evidence(session: AsyncSession, row: Prediction) -> None:
    """The prediction's family_evidence rows, verdict and confidence, from its results."""
    await session.execute(delete(FamilyEvidence).where(
        (FamilyEvidence.sha256 == row.sha256_hash) & (FamilyEvidence.model == row.model)))
    rows, row.verdict, row.confidence = evidence_of(
        row.sha256_hash, row.model, row.model_version, row.prediction_results)
    session.add_all(FamilyEvidence(**values) for values in rows)


async def _delete_findings(session: AsyncSession, sha256: str, model: str) -> None:
    await session.execute(delete(FamilyEvidence).where(
        (FamilyEvidence.sha256 == sha256) & (FamilyEvidence.model == model)))
    await session.execute(delete(SampleFunctions).where(
        (SampleFunctions.sha256 == sha256) & (SampleFunctions.model == model)))


async def _replace_findings(
    session: AsyncSession, row: Prediction, functions: StoredFunctions | None
) -> None:
    """What the prediction's results say, for queries: its evidence rows, and the
    sample's function vectors (replaced by `functions`, or removed when None)."""
    await _delete_findings(session, row.sha256_hash, row.model)
    rows, row.verdict, row.confidence = evidence_of(
        row.sha256_hash, row.model, row.model_version, row.prediction_results)
    session.add_all(FamilyEvidence(**values) for values in rows)
    if functions is not None:
        session.add(SampleFunctions(
            sha256=row.sha256_hash, model=row.model,
            analysis_version=str(row.model_version or "")[:128],
            weights_sha256=functions.weights_sha256, functions=functions.functions,
            vectors=functions.vectors, created_at=utcnow()))


def _current(model_version: str) -> ColumnElement[bool]:
    """The sample's row for the model is a SUCCESS of this analysis version (the cache
    rule: it is not redone unless forced). False, not NULL, when there is no row."""
    return (
        Prediction.sha256_hash.is_not(None)
        & (Prediction.status == SUCCESS)
        & (func.coalesce(Prediction.model_version, "") == model_version)
    )


def _batch_selection(model: str, model_version: str, f: BatchFilter) -> Select[Any]:
    """The samples a batch filter matches, current ones included."""
    query = select(Sample.sha256).outerjoin(
        Prediction, (Prediction.sha256_hash == Sample.sha256) & (Prediction.model == model)
    )
    has_row = Prediction.sha256_hash.is_not(None)
    stored_version = func.coalesce(Prediction.model_version, "")
    if f.retry_of:
        query = query.join(
            BatchItem,
            (BatchItem.sha256 == Sample.sha256) & (BatchItem.batch_id == f.retry_of)
            & (BatchItem.status == FAILURE),
        )
    if f.selection == "stale":
        query = query.where(~_current(model_version))
        if not f.include_failed:
            query = query.where(~(has_row & (Prediction.status == FAILURE)))
    elif f.selection == "outdated":
        query = query.where(has_row & (stored_version != "") & (stored_version != model_version))
    elif f.selection == "outdated-model":
        model_part = model_version.split("+", 1)[0]
        query = query.where(
            has_row & (stored_version != "") & (stored_version != model_part)
            & ~stored_version.startswith(f"{model_part}+", autoescape=True)
        )
    elif f.selection != "all":
        raise ValueError(f"unknown selection {f.selection!r}")
    if f.statuses:
        query = query.where(has_row & Prediction.status.in_(f.statuses))
    if f.submitted_after:
        query = query.where(Sample.first_seen >= _naive_utc(f.submitted_after))
    if f.submitted_before:
        query = query.where(Sample.first_seen < _naive_utc(f.submitted_before))
    if f.verdict:
        query = query.where(has_row & (
            Prediction.prediction_results["verdict"].as_string() == f.verdict))
    if f.family:
        present = func.coalesce(Prediction.prediction_results["families_present"].as_string(), "")
        query = query.where(
            has_row & (" " + present + " ").contains(f" {f.family} ", autoescape=True)
        )
    return query


def _naive_utc(text: str) -> datetime:
    moment = datetime.fromisoformat(text)
    if moment.tzinfo is not None:
        moment = moment.astimezone(UTC).replace(tzinfo=None)
    return moment


def _filter_json(f: BatchFilter) -> dict[str, Any]:
    return asdict(f)


async def _row_for_run(
    session: AsyncSession, sha256: str, model: str, run_id: str, now: datetime
) -> Prediction | None:
    """The row a run may write: its own, or a new one; None when another run owns it."""
    row = await session.get(Prediction, (sha256, model), with_for_update=True)
    if row is None:
        row = Prediction(sha256_hash=sha256, model=model, created_at=now, celery_task_id=run_id)
        session.add(row)
    elif row.celery_task_id not in (None, run_id):
        return None
    return row


def _sqlite_path(url: str) -> str | None:
    """The file of a SQLite URL; None for an in-memory database."""
    path = url.split(":///", 1)[-1].split("?", 1)[0]
    return path if path and path != ":memory:" else None


def _prediction_bytes(row: Prediction | None) -> int:
    """About what a row holds in memory: its JSON results and explanation dominate."""
    if row is None:
        return 256
    results = json.dumps(row.prediction_results, default=str) if row.prediction_results else ""
    return 1024 + len(results) + len(row.explanation_results or "") + len(row.error_details or "")


def _tune_sqlite(engine: AsyncEngine, url: str) -> None:
    # How long a write waits for another writer's lock before failing (and being retried
    # by the workflow); AE_SQLITE_BUSY_TIMEOUT_MS lets the fault tests shorten it.
    busy_timeout_ms = int(os.environ.get("AE_SQLITE_BUSY_TIMEOUT_MS") or 30000)
    path = _sqlite_path(url)
    if path:
        Path(path).parent.mkdir(parents=True, exist_ok=True)

    @event.listens_for(engine.sync_engine, "connect")
    def _on_connect(dbapi_conn: Any, _record: Any) -> None:
        cursor = dbapi_conn.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute(f"PRAGMA busy_timeout={busy_timeout_ms}")
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.close()
