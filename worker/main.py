"""Worker entry point: `python -m worker --role orchestration|cpu|gpu|all`.

orchestration: the workflow and light I/O activities (explain, database writes);
cpu: unpack and lift (angr in child processes); gpu: FESTIVE embed/compare.
Run several of each against one Temporal cluster to scale out.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import faulthandler
import logging
import os
import signal
import sys
import threading
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta

from temporalio.client import Client
from temporalio.runtime import PrometheusConfig, Runtime, TelemetryConfig
from temporalio.worker import Worker

import sandbox
from activities.batch import BatchActivities
from activities.catalog import Catalog
from activities.deps import Deps
from activities.embed import Embed
from activities.embed_reference import EmbedReference
from activities.explain import Explain
from activities.lift import Lift
from activities.persist import Persist
from activities.references import References
from activities.stage_cache import StageCache
from activities.unpack import Unpack
from common import logs, metrics, tracing
from common.config import Settings, load_or_exit, load_settings
from common.temporal import connect
from festive import served
from sandbox.warm import Children
from store.blobs import open_blobs
from store.db import PredictionStore
from worker.storage import StorageFullInterceptor
from workflows.analyze import AnalyzeSample
from workflows.batch import ReanalysisBatch
from workflows.reanalyze import ReanalyzeAll
from workflows.reference import AddReference

ROLES = ("orchestration", "cpu", "gpu")
log = logging.getLogger("worker")


@contextlib.asynccontextmanager
async def serving(client: Client, settings: Settings, roles: list[str]
                  ) -> AsyncIterator[list[Worker]]:
    """The workers for the given roles, running until the block ends (each then shuts
    down gracefully); the children the cpu worker started ahead of their jobs end last."""
    workers, children = await build_workers(client, settings, roles)
    async with contextlib.AsyncExitStack() as stack:
        for pool in children:
            stack.push_async_callback(pool.close)
        for worker in workers:
            await stack.enter_async_context(worker)
        for pool in children:
            pool.fill()
        yield workers


async def build_workers(client: Client, settings: Settings, roles: list[str]
                        ) -> tuple[list[Worker], list[Children]]:
    """The workers for the given roles, sharing one blob store and database handle, and
    the pools of children started ahead of their jobs (sandbox/warm.py) they take from."""
    blobs = open_blobs(settings.blob_url, settings.scratch_dir, settings.s3_endpoint_url,
                       settings.s3_region)
    deps = Deps(settings=settings, blobs=blobs, client=client)
    workers: list[Worker] = []
    children: list[Children] = []
    # On SIGTERM, in-flight activities get this long to finish; then they are cancelled
    # and retried on another worker of their kind.
    grace = timedelta(seconds=settings.graceful_shutdown_s)
    # Disk full fails an activity as StorageFull, which is retried (worker/storage.py).
    interceptors = [StorageFullInterceptor()]
    if "orchestration" in roles:
        deps.store = PredictionStore(settings.database_url)
        await deps.store.init_schema()
        persist, explain, catalog = Persist(deps), Explain(deps), Catalog(deps)
        stage_cache = StageCache(deps)
        references, batch = References(deps), BatchActivities(deps)
        workers.append(
            Worker(
                client, task_queue=settings.orchestration_queue,
                # ReanalyzeAll: the batch before ReanalysisBatch, kept for runs in flight
                workflows=[AnalyzeSample, ReanalysisBatch, ReanalyzeAll, AddReference],
                activities=[persist.persist_results, persist.record_status,
                            explain.explain_results, stage_cache.cached_unpack,
                            stage_cache.cached_lifts,
                            catalog.samples_to_reanalyze,
                            references.reference_set, references.record_reference,
                            batch.open_batch, batch.batch_page, batch.record_batch_outcome,
                            batch.close_batch, batch.await_analysis],
                max_concurrent_activities=settings.orchestration_slots,
                graceful_shutdown_timeout=grace, interceptors=interceptors,
            )
        )
    if "cpu" in roles:
        # Unpack and lift children run sandboxed (sandbox/): a start-up error here when
        # AE_SANDBOX=bwrap and bubblewrap does not work, a warning when there is none.
        log.info("children that parse samples run with AE_SANDBOX=%s", sandbox.mode())
        unpack, lift = Unpack(deps), Lift(deps)
        children += [unpack.children, lift.children]
        workers.append(
            Worker(
                client, task_queue=settings.cpu_queue,
                activities=[unpack.unpack_sample, lift.lift_binary],
                # Each lift is one angr child process: as many at once as there are slots.
                max_concurrent_activities=settings.cpu_slots,
                graceful_shutdown_timeout=grace, interceptors=interceptors,
            )
        )
    if "gpu" in roles:
        # the model this worker serves, for the API and the other workers (festive/served.py)
        try:
            record = await asyncio.to_thread(served.publish, blobs, settings.gpu_queue)
            log.info("serving %s %s (index %s)", record.get("name"), record.get("version"),
                     record.get("index_version"))
        except Exception as exc:  # noqa: BLE001 - a full disk or an S3 outage at start:
            # serve anyway; the API goes on with the record it has (or its own card)
            log.warning("could not publish the served model's card: %s", exc)
        embed, embed_reference = Embed(deps), EmbedReference(deps)
        workers.append(
            Worker(
                client, task_queue=settings.gpu_queue,
                activities=[embed.embed_compare, embed_reference.embed_reference],
                max_concurrent_activities=settings.gpu_slots,
                activity_executor=ThreadPoolExecutor(max_workers=settings.gpu_slots + 1),
                graceful_shutdown_timeout=grace, interceptors=interceptors,
            )
        )
    return workers, children


def metrics_runtime(settings: Settings, roles: list[str]) -> Runtime | None:
    """The Temporal runtime with this process's Prometheus endpoint: the SDK's metrics and
    the pipeline's (common/metrics.py) on one port. None when AE_METRICS_PORT is unset."""
    if not settings.metrics_port:
        return None
    return Runtime(telemetry=TelemetryConfig(
        metrics=PrometheusConfig(
            bind_address=f"{settings.metrics_host}:{settings.metrics_port}",
            durations_as_seconds=True, histogram_bucket_overrides=metrics.BUCKETS,
        ),
        global_tags={"ae_role": "+".join(roles)},
    ))


async def count_in_flight(client: Client, runtime: Runtime, settings: Settings,
                          interval_s: float = 15.0) -> None:
    """ae_samples_in_flight: running AnalyzeSample runs of this deployment, from visibility."""
    query = ("WorkflowType = 'AnalyzeSample' AND ExecutionStatus = 'Running' "
             f"AND TaskQueue = '{settings.orchestration_queue}'")
    while True:
        try:
            running = (await client.count_workflows(query)).count
            metrics.set_gauge(runtime.metric_meter, metrics.SAMPLES_IN_FLIGHT, running,
                              "AnalyzeSample runs not yet closed")
        except Exception as exc:  # noqa: BLE001 - Temporal away for a while: try again later
            log.warning("could not count the samples in flight: %s", exc)
        await asyncio.sleep(interval_s)


def _warm_engine(precision: str) -> None:
    """Load FESTIVE (torch, weights, reference index) in the background; a failure is
    only logged here: the embed activity meets it again and reports it."""
    try:
        from festive.engine import load_engine

        load_engine(precision=precision)
        log.info("FESTIVE engine loaded")
    except Exception as exc:  # noqa: BLE001 - reported by the first embed_compare instead
        log.warning("FESTIVE engine not loaded at start: %s", exc)


async def run(roles: list[str]) -> None:
    settings = load_settings()
    runtime = metrics_runtime(settings, roles)
    tracing.setup(f"worker-{'+'.join(roles)}", secrets=logs.secrets_of(settings))
    client = await connect(settings, runtime)
    gauges = None
    if runtime is not None and "orchestration" in roles:
        gauges = asyncio.create_task(count_in_flight(client, runtime, settings))
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    # each worker exits with a graceful shutdown of in-flight work
    async with serving(client, settings, roles) as workers:
        if "gpu" in roles:  # load the model and index now, not in the first sample's embed
            threading.Thread(target=_warm_engine, args=(settings.embed_precision,),
                             name="warm-engine", daemon=True).start()
        log.info("worker up: roles=%s queues=%s metrics=%s", roles,
                 [w.task_queue for w in workers],
                 f"http://{settings.metrics_host}:{settings.metrics_port}/metrics"
                 if runtime else "off")
        await stop.wait()
        log.info("shutting down: finishing in-flight work for up to %s s",
                 settings.graceful_shutdown_s)
        if gauges is not None:
            gauges.cancel()
    log.info("workers stopped")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--role", default="all", choices=[*ROLES, "all"],
                        help="which task queues to serve (default: all)")
    args = parser.parse_args()
    settings = load_or_exit("worker")
    logs.configure(f"worker-{args.role}",
                   secrets=logs.secrets_of(settings))
    faulthandler.enable()  # a native crash (Temporal core, torch) leaves a traceback in the log
    roles = list(ROLES) if args.role == "all" else [args.role]
    if settings.worker_nice and {"cpu", "gpu"} & set(roles):
        niceness = os.nice(settings.worker_nice)  # inherited by the unpack and lift children
        log.info("CPU priority lowered by %d (AE_WORKER_NICE): nice %d", settings.worker_nice,
                 niceness)
    if "cpu" in roles:
        try:
            sandbox.mode()
        except sandbox.SandboxUnavailable as exc:
            sys.exit(f"worker: {exc}")
    asyncio.run(run(roles))
    # Every worker has shut down. The Temporal core's native threads can still touch the
    # interpreter while it finalizes (seen here: SIGSEGV / "PyGILState_Release ...
    # finalizing" after a clean shutdown), so leave without finalizing.
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


if __name__ == "__main__":
    main()
