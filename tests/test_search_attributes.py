"""worker.search_attributes on a Temporal server started without the attributes (the
CLI's dev server, standing in for a cluster), run as the operator would run it."""

from __future__ import annotations

import os
import subprocess
import sys

from temporalio.api.operatorservice.v1 import ListSearchAttributesRequest
from temporalio.testing import WorkflowEnvironment

from common.search_attributes import ALL
from tests.conftest import TEMPORAL_CLI

NAMES = {key.name for key in ALL}


def run_script(address: str, namespace: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "TEMPORAL_ADDRESS": address, "TEMPORAL_NAMESPACE": namespace}
    return subprocess.run([sys.executable, "-m", "worker.search_attributes"], env=env,
                          capture_output=True, text=True, timeout=120)


async def test_the_script_registers_missing_attributes_once() -> None:
    env = await WorkflowEnvironment.start_local(dev_server_existing_path=str(TEMPORAL_CLI))
    try:
        address = env.client.service_client.config.target_host
        listed = await env.client.operator_service.list_search_attributes(
            ListSearchAttributesRequest(namespace="default"))
        assert not NAMES & set(listed.custom_attributes)

        first = run_script(address, "default")
        assert first.returncode == 0, first.stderr
        assert "added ModelName, Sha256, Stage" in first.stdout
        again = run_script(address, "default")
        assert again.returncode == 0 and "all were there" in again.stdout, again.stderr

        listed = await env.client.operator_service.list_search_attributes(
            ListSearchAttributesRequest(namespace="default"))
        assert NAMES <= set(listed.custom_attributes)
        unknown = run_script(address, "no-such-namespace")
        assert unknown.returncode == 1 and unknown.stderr.startswith("error: ")
    finally:
        await env.shutdown()
