"""Property-based: whatever schemathesis generates from the OpenAPI document, fitting the
schema or deliberately not, no operation answers with a 5xx (with a valid key).

Bounded: MAX_EXAMPLES cases per operation and mode, no stateful phase. The schemathesis
pytest plugin does not run under pytest 9, so its Python API drives Hypothesis here.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import schemathesis
from fastapi import FastAPI
from hypothesis import HealthCheck, given, settings
from schemathesis.generation.modes import GenerationMode
from schemathesis.python import asgi
from temporalio.testing import WorkflowEnvironment

from api.app import ROUTES, create_app
from common.config import Settings

KEY = "schemathesis-internal-key"
AUTH = {"Authorization": f"Bearer {KEY}"}
MAX_EXAMPLES = 25


def fuzz_settings(data_dir: Path, temporal_address: str = "127.0.0.1:1") -> Settings:
    return Settings(
        data_dir=data_dir, database_url_override=None, temporal_address=temporal_address,
        queue_prefix="schemathesis-no-workers", max_upload_bytes=64 * 1024,
        auth="enabled", api_keys=("schemathesis-external-key",), internal_api_keys=(KEY,),
    )


# The document, read once at collection: the operations to parametrize over.
SCHEMA = schemathesis.openapi.from_dict(create_app(fuzz_settings(Path("unused"))).openapi())
OPERATIONS = {op.ok().label: op.ok() for op in SCHEMA.get_all_operations()}
# Negative cases need something to get wrong: a parameter or a body.
CASES = [
    (label, mode) for label, op in sorted(OPERATIONS.items())
    for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE)
    if mode == GenerationMode.POSITIVE or op.path_parameters or op.query or op.body
]


@pytest.fixture(scope="module")
def fuzzed_app(
    temporal_env: WorkflowEnvironment, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[FastAPI]:
    """An app of its own (database, blobs, a queue no worker serves), on the test Temporal."""
    address = temporal_env.client.service_client.config.target_host
    app = create_app(fuzz_settings(tmp_path_factory.mktemp("schemathesis"), address))
    yield app
    asgi.shutdown_lifespans()  # schemathesis runs the app's lifespan on its own event loop


def test_every_operation_is_fuzzed() -> None:
    assert len(OPERATIONS) == len(ROUTES)
    submit = OPERATIONS["POST /samples"]
    assert "multipart/form-data" in {body.media_type for body in submit.body}


@pytest.mark.parametrize(("label", "mode"), CASES)
def test_no_operation_answers_5xx(label: str, mode: GenerationMode, fuzzed_app: FastAPI) -> None:
    operation = OPERATIONS[label]

    @given(case=operation.as_strategy(generation_mode=mode))
    @settings(max_examples=MAX_EXAMPLES, deadline=None, database=None,
              suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])
    def no_5xx(case: schemathesis.Case) -> None:
        response = case.call(app=fuzzed_app, headers=AUTH)
        assert response.status_code < 500, (
            f"{label} -> {response.status_code}: {response.text[:500]}\n"
            f"reproduce: {case.as_curl_command(headers=AUTH)}"
        )

    no_5xx()
