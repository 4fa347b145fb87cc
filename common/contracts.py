"""What crosses Temporal: small dataclasses of hashes and names, never sample bytes.

Imported by workflows, so this module must stay free of heavy imports.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field

MODEL_NAME = "FESTIVE Func Sim"

# Celery's words, kept for old clients.
PENDING, STARTED, RETRY, SUCCESS, FAILURE, REVOKED = (
    "PENDING", "STARTED", "RETRY", "SUCCESS", "FAILURE", "REVOKED"
)
FINAL_STATES = frozenset({SUCCESS, FAILURE, REVOKED})

# Values of the Stage search attribute, in pipeline order.
STAGES = ("queued", "unpack", "lift", "embed", "explain", "persist", "done")
STAGE_FAILED, STAGE_REVOKED = "failed", "revoked"

# Non-retryable failure type names: bad input fails once, with a clear message.
BAD_SAMPLE = "BadSample"


def workflow_id(model_name: str, sha256: str) -> str:
    return f"analyze/{model_name}/{sha256}"


@dataclass
class AnalyzeRequest:
    sha256: str
    model_name: str
    model_version: str
    cpu_queue: str
    gpu_queue: str
    filename: str = ""


@dataclass
class BinaryChild:
    sha256: str
    name: str
    format: str
    depth: int
    size: int
    parent_sha256: str | None = None


@dataclass
class UnpackResult:
    children: list[BinaryChild]
    report_sha256: str  # blob: gzipped JSON of skipped entries and archives opened


@dataclass
class LiftRequest:
    child: BinaryChild


@dataclass
class LiftResult:
    child: BinaryChild
    lift_sha256: str  # blob: gzipped JSON from lifting.angr_lift.lift_binary
    arch: str
    functions: int
    cached: bool


@dataclass
class CachedUnpack:
    """cached_unpack's answer: the sample's cached UnpackResult, or None."""

    unpacked: UnpackResult | None


@dataclass
class CachedLifts:
    """cached_lifts' answer: per child of an UnpackResult, its cached lift or None."""

    lifts: list[LiftResult | None]


@dataclass
class EmbedRequest:
    sha256: str
    model_name: str
    lifted: list[LiftResult]
    unpack_report_sha256: str
    # blob: JSON list of the user references to search beside the shipped index
    # (activities/references.py); "" = the shipped index alone (runs started before).
    references_sha256: str = ""


@dataclass
class EmbedResult:
    results_sha256: str  # blob: gzipped JSON prediction_results
    model_version: str
    verdict: str
    device: str
    # blob: the sample's function vectors (festive/attribution/similar.py); "" for runs
    # made before the similar-sample index
    functions_sha256: str = ""


@dataclass
class ExplainRequest:
    sha256: str
    results_sha256: str


@dataclass
class ExplainResult:
    explanation_sha256: str


@dataclass
class PersistRequest:
    sha256: str
    model_name: str
    model_version: str
    run_id: str
    results_sha256: str
    explanation_sha256: str
    functions_sha256: str = ""  # EmbedResult's: stored with the results ("" = none)


@dataclass
class StatusUpdate:
    """A row change made by the workflow itself: started, failed or revoked."""

    sha256: str
    model_name: str
    model_version: str
    run_id: str
    status: str
    error_details: str | None = None


@dataclass
class AnalyzeSummary:
    sha256: str
    model_name: str
    verdict: str
    children: int
    functions: int
    stages_ms: dict[str, int] = field(default_factory=dict)
    lifts_reused: int = 0  # binaries whose lift was found in the cache, not lifted again
    unpack_reused: bool = False  # the sample's unpack was found in the cache


@dataclass
class ReanalyzeRequest:
    """One page of a batch reanalysis; the cursor moves on through continue-as-new."""

    model_name: str
    model_version: str
    cpu_queue: str
    gpu_queue: str
    include_failed: bool = False
    page_size: int = 50
    concurrency: int = 4
    after_sha256: str = ""
    started: int = 0
    joined: int = 0
    succeeded: int = 0
    failed: int = 0


@dataclass
class SamplePage:
    after_sha256: str
    model_name: str
    model_version: str
    include_failed: bool
    limit: int


@dataclass
class SampleRef:
    sha256: str
    filename: str


@dataclass
class ReanalyzeSummary:
    started: int
    joined: int
    succeeded: int
    failed: int


def reanalysis_id(model_name: str, model_version: str) -> str:
    return f"reanalyze/{model_name}/{model_version}"


# --- batch reanalysis (ReanalysisBatch) -------------------------------------------------
# Which samples a batch takes (BatchFilter.selection):
#   stale           lacking a SUCCESS of the current analysis version (failed ones only
#                   with include_failed): what Queue Reanalysis always did
#   all             every stored sample
#   outdated        those analysed (any outcome) by another analysis version (model or index)
#   outdated-model  those analysed by another model version
SELECTIONS = ("stale", "all", "outdated", "outdated-model")
# Final states of a batch member: the sample's own outcome, or SKIPPED when it already had
# a current result by the time its turn came (the cache rule; force=true redoes it).
SKIPPED = "SKIPPED"
BATCH_RUNNING, BATCH_DONE, BATCH_CANCELLED = "running", "done", "cancelled"


@dataclass
class BatchFilter:
    """Which samples a batch reanalyses: a filter, never a list of hashes."""

    selection: str = "stale"
    include_failed: bool = False  # stale: also samples whose last analysis failed
    statuses: list[str] = field(default_factory=list)  # the prediction row's status
    submitted_after: str = ""  # ISO 8601 UTC: samples first submitted at or after
    submitted_before: str = ""  # ... and before
    verdict: str = ""  # prediction_results["verdict"]
    family: str = ""  # one of prediction_results["families_present"]
    force: bool = False  # also redo samples whose result is already current
    retry_of: str = ""  # a batch id: only the samples that failed in that batch

    def is_default(self) -> bool:
        return self == BatchFilter()

    def digest(self) -> str:
        canonical = json.dumps(asdict(self), sort_keys=True)
        return hashlib.sha256(canonical.encode()).hexdigest()[:12]


def batch_workflow_id(model_name: str, model_version: str, batch_filter: BatchFilter) -> str:
    """One running batch per (model, analysis version, filter): asking again joins it."""
    base = reanalysis_id(model_name, model_version)
    return base if batch_filter.is_default() else f"{base}/{batch_filter.digest()}"


@dataclass
class BatchSample:
    sha256: str
    filename: str
    current: bool = False  # has a SUCCESS of the current analysis version already


@dataclass
class RunningSample:
    """A member being analysed; carried through continue-as-new while it runs."""

    sha256: str
    run_id: str  # the AnalyzeSample run; "" for one joined before its run id was known
    own: bool  # started by this batch (cancelled with it) or joined (a submission's run)


@dataclass
class BatchFailure:
    sha256: str
    run_id: str
    error_details: str


@dataclass
class BatchProgress:
    """Counters and cursor of a batch, carried through continue-as-new."""

    batch_id: str
    started_at: str  # ISO 8601
    total: int = 0  # members chosen when the batch opened
    cached: int = 0  # matched the filter with a current result: left out (force redoes)
    done: int = 0
    failed: int = 0
    revoked: int = 0
    skipped: int = 0  # became current before their turn
    joined: int = 0  # already being analysed (a submission): awaited, not started again
    lifts_new: int = 0
    lifts_reused: int = 0
    after_sha256: str = ""  # cursor: every member up to here has been started or skipped
    exhausted: bool = False
    runs: int = 1  # continue-as-new generations
    running: list[RunningSample] = field(default_factory=list)
    recent_failures: list[BatchFailure] = field(default_factory=list)  # the last few


@dataclass
class BatchRequest:
    model_name: str
    model_version: str  # the analysis version the batch brings samples to
    cpu_queue: str
    gpu_queue: str
    filter: BatchFilter = field(default_factory=BatchFilter)
    concurrency: int = 4
    page_size: int = 100
    children_per_run: int = 200  # then continue as new (history stays small)
    progress: BatchProgress | None = None  # None on the first run


@dataclass
class BatchOpen:
    batch_id: str
    workflow_id: str
    model_name: str
    model_version: str
    filter: BatchFilter


@dataclass
class BatchOpened:
    total: int
    cached: int


@dataclass
class BatchPageRequest:
    batch_id: str
    model_name: str
    model_version: str
    after_sha256: str
    limit: int


@dataclass
class BatchPage:
    samples: list[BatchSample]  # members still PENDING after the cursor, in sha256 order


@dataclass
class BatchOutcome:
    batch_id: str
    sha256: str
    status: str  # SUCCESS FAILURE REVOKED SKIPPED
    run_id: str = ""
    error_details: str | None = None


@dataclass
class AwaitAnalysis:
    """Wait for an AnalyzeSample run this workflow cannot await as its child."""

    workflow_id: str
    run_id: str = ""  # "" = the current run of that id


@dataclass
class AnalysisOutcome:
    status: str  # SUCCESS FAILURE REVOKED
    run_id: str
    error_details: str | None = None
    lifts_new: int = 0
    lifts_reused: int = 0


@dataclass
class BatchClose:
    batch_id: str
    state: str  # done | cancelled


@dataclass
class BatchSummary:
    batch_id: str
    state: str
    total: int
    done: int
    failed: int
    revoked: int
    skipped: int
    joined: int
    cached: int


# --- references users add ---------------------------------------------------------------
def reference_workflow_id(sha256: str) -> str:
    return f"reference/{sha256}"


@dataclass
class ReferenceRequest:
    """AddReference: lift and embed one reference binary (its labels live in the database)."""

    sha256: str
    cpu_queue: str
    gpu_queue: str
    filename: str = ""


@dataclass
class ReferenceEmbedRequest:
    sha256: str
    lifted: list[LiftResult]


@dataclass
class ReferenceEmbedResult:
    vectors_sha256: str  # blob: npz of festive.user_references
    functions: int
    weights_sha256: str


@dataclass
class ReferenceUpdate:
    """A reference row change made by its workflow: started, failed, or done."""

    sha256: str
    run_id: str
    status: str
    error_details: str | None = None
    vectors_sha256: str | None = None
    functions: int | None = None
    weights_sha256: str | None = None


@dataclass
class ReferenceSetRef:
    """The user references an analysis searches: a blob (JSON list) and its index version."""

    references_sha256: str
    index_version: str
