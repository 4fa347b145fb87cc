"""Lift stage: angr CFGFast on one binary, in a sandboxed child process (sandbox/) with
memory and time limits, started ahead of its job (sandbox/warm.py).

A child per binary (rather than a shared pool) means a crafted sample that crashes,
hangs or bloats angr takes down only its own process, and a revoke can kill it at once.
"""

from __future__ import annotations

import asyncio
import gzip
import json
import os
import shutil
import signal
from pathlib import Path

from temporalio import activity
from temporalio.exceptions import ApplicationError

from activities.deps import Deps
from activities.stage_cache import cached_lift, store_lift, summary
from common import metrics
from common.contracts import BAD_SAMPLE, LiftRequest, LiftResult
from common.failures import STORAGE_FULL
from festive.v1.packed import PACK_VERSION
from lifting.child import EXIT_MEMORY, EXIT_NO_SPACE, EXIT_OK, EXIT_UNSUPPORTED, FEATURES_SUFFIX
from sandbox import Limits, SandboxUnavailable
from sandbox.warm import CHILDREN_DIR, Child, Children


class Lift:
    def __init__(self, deps: Deps) -> None:
        self.deps = deps
        settings = deps.settings
        # lift children started ahead of their job (angr imported while the worker waits)
        self.children = Children(
            "lifting.child", deps.blobs.scratch / CHILDREN_DIR,
            Limits(memory_bytes=settings.lift_memory_mb * 1024 * 1024,
                   time_s=settings.lift_timeout_s),
            keep=settings.warm_children, prefix="lift-",
        )

    @activity.defn(name="lift_binary")
    async def lift_binary(self, request: LiftRequest) -> LiftResult:
        blobs = self.deps.blobs
        child = request.child
        # The cache lives in the blob store, so a lift done on one machine serves them
        # all. Blob I/O (S3 requests, downloads) runs in threads: heartbeats go on.
        cached = await asyncio.to_thread(cached_lift, blobs, child)
        meter = activity.metric_meter()
        if cached is not None:
            metrics.count(meter, metrics.LIFTS, cached="true")
            return cached

        try:
            contained = await self.children.take()
        except SandboxUnavailable as exc:  # the machine's problem: retried, maybe elsewhere
            raise ApplicationError(str(exc), type="SandboxUnavailable") from exc
        async with contained:
            sample = contained.inbox / "sample"
            async with blobs.local_copy_async(child.sha256) as stored:
                await asyncio.to_thread(_place, Path(stored), sample)
            out = contained.scratch / "lift.json.gz"
            await self._run_child(contained, str(sample), str(out), child.name)
            lift_sha, _ = await asyncio.to_thread(blobs.put_file, out)
            features = Path(str(out) + FEATURES_SUFFIX)
            packed = features.read_bytes() if features.exists() else None
            if packed is not None:  # the graphs the embed stage reads instead of the JSON
                features_sha, _ = await asyncio.to_thread(blobs.put_file, features)
                await asyncio.to_thread(blobs.set_derived, PACK_VERSION, lift_sha, features_sha)
            # from the files at hand, not read back from the (possibly remote) store
            arch, count = await asyncio.to_thread(
                summary, packed, lambda: json.loads(gzip.decompress(out.read_bytes())))
        await asyncio.to_thread(store_lift, blobs, child, lift_sha)
        metrics.count(meter, metrics.LIFTS, cached="false")
        metrics.count(meter, metrics.FUNCTIONS_LIFTED, count)
        return LiftResult(child, lift_sha, arch, count, cached=False)

    async def _run_child(self, contained: Child, sample: str, out: str, name: str) -> None:
        settings = self.deps.settings
        memory = contained.limits.memory_bytes  # the child's own limit
        try:
            done = await contained.run(
                [sample, out],
                tick=lambda line: activity.heartbeat(f"{name}: {line or 'starting angr'}"),
            )
        except SandboxUnavailable as exc:  # the machine's problem: retried, maybe elsewhere
            raise ApplicationError(str(exc), type="SandboxUnavailable") from exc
        if done.peak_rss_bytes:
            metrics.observe(activity.metric_meter(), metrics.LIFT_PEAK_RSS,
                            float(done.peak_rss_bytes), "By")
        if done.timed_out:
            raise ApplicationError(
                f"lifting {name} took longer than {settings.lift_timeout_s} s; "
                "the binary is too large or built to stall the analysis",
                type=BAD_SAMPLE, non_retryable=True,
            )
        activity.logger.info("lift child of %s exited with %s, peak RSS %d MiB", name,
                             done.code, done.peak_rss_bytes >> 20)
        if done.code != EXIT_OK:  # the child's own last words, with this activity's context
            for line in done.stderr.strip().splitlines()[-10:]:
                activity.logger.warning("lift child: %s", line)
        _raise_for_exit(done.code, done.stderr, name, settings.lift_memory_mb,
                        near_memory_limit=done.memory_exceeded
                        or done.peak_vm_bytes >= 0.8 * memory)


def _place(stored: Path, inbox_path: Path) -> None:
    """The sample into a child's inbox: a hard link to the stored copy where the two
    share a file system (no bytes copied), else a copy."""
    try:
        os.link(stored, inbox_path)
    except OSError:
        shutil.copyfile(stored, inbox_path)


def _raise_for_exit(
    code: int, stderr: str, name: str, memory_mb: int, near_memory_limit: bool = False
) -> None:
    if code == EXIT_OK:
        return
    if code == EXIT_NO_SPACE:
        raise ApplicationError(
            f"{name}: out of storage space on the worker while lifting; the analysis waits "
            "and retries once space is freed", type=STORAGE_FULL,
        )
    if code != EXIT_UNSUPPORTED and near_memory_limit:
        # Out of address space, native code aborts (SIGABRT on a failed allocation) or
        # fails oddly before Python sees a MemoryError: name the real cause.
        code = EXIT_MEMORY
    errors = [ln[6:] for ln in stderr.splitlines() if ln.startswith("ERROR ")]
    message = errors[-1] if errors else (stderr.strip().splitlines() or ["no output"])[-1]
    if code == EXIT_UNSUPPORTED:
        raise ApplicationError(f"{name}: {message}", type=BAD_SAMPLE, non_retryable=True)
    if code == EXIT_MEMORY:
        raise ApplicationError(
            f"{name}: lifting exceeded the memory limit of {memory_mb} MiB",
            type=BAD_SAMPLE, non_retryable=True,
        )
    if code < 0:
        # A signal: SIGSEGV/SIGABRT from angr's native parts on crafted input is
        # deterministic, so retrying would only repeat it.
        signame = signal.Signals(-code).name if -code in signal.Signals._value2member_map_ else code
        raise ApplicationError(
            f"{name}: the angr process died with {signame}", type=BAD_SAMPLE, non_retryable=True
        )
    raise ApplicationError(f"{name}: {message}", type=BAD_SAMPLE, non_retryable=True)
