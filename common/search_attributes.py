"""The custom search attributes operators filter on in the Temporal Web UI.

Registered on the dev server with the flags of deploy/temporal_dev.py (make up, the
benchmarks, the fault tests) and by the test fixtures.
"""

from __future__ import annotations

from temporalio.common import SearchAttributeKey, SearchAttributePair, TypedSearchAttributes

SHA256 = SearchAttributeKey.for_keyword("Sha256")
MODEL_NAME = SearchAttributeKey.for_keyword("ModelName")
STAGE = SearchAttributeKey.for_keyword("Stage")
ALL = (SHA256, MODEL_NAME, STAGE)


def for_new_analysis(sha256: str, model_name: str) -> TypedSearchAttributes:
    return TypedSearchAttributes([
        SearchAttributePair(SHA256, sha256),
        SearchAttributePair(MODEL_NAME, model_name),
        SearchAttributePair(STAGE, "queued"),
    ])
