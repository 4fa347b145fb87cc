"""Scale-out end to end: the API and every worker kind as separate processes
(deploy.launch), each with its own data directory, sharing only PostgreSQL, the S3 store
and Temporal, analyse samples over HTTP, and one cpu worker killed with `kill -9`
mid-lift does not lose its sample. Nothing lands in the processes' data directories but
logs and scratch: every blob is in the bucket."""

from __future__ import annotations

import asyncio
import os
import signal
import time
import uuid
from pathlib import Path

import httpx
from temporalio.client import Client

from common.contracts import MODEL_NAME
from deploy.launch import Deployment
from tests.conftest import ZLIB_STATIC, compile_c, lift_children, submit, wait_for_final
from tests.postgres import LocalPostgres
from tests.s3 import LocalS3
from tests.test_faults import many_functions_source
from tests.test_pipeline_e2e import ZLIB_PROGRAM

KEY = "two-machines-internal-key"


async def test_processes_sharing_only_postgres_s3_and_temporal(
    postgres: LocalPostgres, s3_server: LocalS3, client: Client, tmp_path: Path
) -> None:
    bucket = s3_server.create_bucket()
    deployment = Deployment(tmp_path / "machines", env={
        **os.environ,
        "DATABASE_URL": await postgres.create_database(),
        "AE_BLOB_URL": f"s3://{bucket}/ae", "AE_S3_ENDPOINT_URL": s3_server.endpoint_url,
        "TEMPORAL_ADDRESS": client.service_client.config.target_host,
        "AE_QUEUE_PREFIX": f"two-{uuid.uuid4().hex[:8]}",
        "AE_API_KEYS": "two-machines-external-key", "AE_INTERNAL_API_KEYS": KEY,
        "AE_CPU_SLOTS": "1", "AE_LIFT_MEMORY_MB": "4096", "AE_GRACEFUL_SHUTDOWN_S": "2",
    })
    zlib_program = compile_c(tmp_path, ZLIB_PROGRAM, "-O2", str(ZLIB_STATIC), name="zpack")
    medium = compile_c(tmp_path, many_functions_source(400), "-O0", name="medium")
    try:
        api_process = deployment.start("api")
        orchestration = deployment.start("orchestration")
        gpu = deployment.start("gpu")
        cpu = [deployment.start("cpu"), deployment.start("cpu")]
        # The cpu and gpu workers run at a lower CPU priority (AE_WORKER_NICE, 10), the
        # API and the orchestration worker at ours.
        ours = os.getpriority(os.PRIO_PROCESS, 0)
        assert [niceness(p.pid) for p in (api_process, orchestration, gpu, *cpu)] == [
            ours, ours, min(ours + 10, 19), *[min(ours + 10, 19)] * 2]
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{api_process.port}",
                                     headers={"Authorization": f"Bearer {KEY}"},
                                     timeout=60) as api:
            zlib_sha = await submit(api, zlib_program, "zpack")
            medium_sha = await submit(api, medium.read_bytes() + uuid.uuid4().bytes, "medium")

            # kill -9 the first cpu worker seen lifting
            deadline = time.monotonic() + 180
            victim, angr = None, []
            while victim is None and time.monotonic() < deadline:
                victim = next((p for p in cpu if (angr := lift_children(p.pid))), None)
                if victim is None:
                    await asyncio.sleep(0.2)
            assert victim is not None, "no cpu worker started a lift"
            assert niceness(angr[0]) == min(ours + 10, 19)  # the angr child inherits it
            victim.stop(signal.SIGKILL)

            for sha in (zlib_sha, medium_sha):
                status = await wait_for_final(api, sha, timeout_s=600)
                assert status["status"][MODEL_NAME] == "SUCCESS", status
            body = (await api.get(f"/predictions/{zlib_sha}/{MODEL_NAME}/results")).json()
            assert body["prediction_results"]["verdict"] == "zlib"
            version = (await api.get("/internal/versions/prediction-store")).json()
            assert "postgresql" in version["prediction-store"]

        # Every blob is in the bucket; no process kept one in its own data directory.
        keys = {o["Key"] for page in s3_server.client().get_paginator("list_objects_v2")
                .paginate(Bucket=bucket) for o in page.get("Contents", [])}
        for sha in (zlib_sha, medium_sha):
            assert f"ae/sha256/{sha[:2]}/{sha[2:4]}/{sha}" in keys
            assert any(k.startswith("ae/derived/lift-") and k.endswith(sha) for k in keys)
        for process in deployment.processes:
            files = [p.relative_to(process.data_dir) for p in process.data_dir.rglob("*")
                     if p.is_file()]
            leftovers = [f for f in files if f.name != "process.log"]
            if process is not victim:
                assert leftovers == [], (process.name, leftovers)
    finally:
        deployment.stop_all()


def niceness(pid: int) -> int:
    return os.getpriority(os.PRIO_PROCESS, pid)
