"""What crosses Temporal: small dataclasses of hashes and names, never sample bytes.

Imported by workflows, so this module must stay free of heavy imports.
"""

from __future__ import annotations

from dataclasses import dataclass, field

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
