"""Lift stage: angr CFGFast on one binary, in a child process with memory and time limits.

A child per binary (rather than a shared pool) means a crafted sample that crashes,
hangs or bloats angr takes down only its own process, and a revoke can kill it at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import os
import resource
import signal
import sys
import tempfile
from pathlib import Path

from temporalio import activity
from temporalio.exceptions import ApplicationError

from activities.deps import Deps
from common import metrics
from common.config import PROJECT_ROOT
from common.contracts import BAD_SAMPLE, LiftRequest, LiftResult
from festive.v1.packed import PACK_VERSION, from_bytes
from lifting.angr_lift import LIFT_FORMAT
from lifting.child import EXIT_MEMORY, EXIT_OK, EXIT_UNSUPPORTED, FEATURES_SUFFIX
from store.blobs import BlobStore

HEARTBEAT_S = 2.0
PR_SET_PDEATHSIG = 1


def _limit_child(memory_bytes: int) -> None:
    """Runs in the child before exec: own process group, memory cap, die with the parent."""
    os.setsid()
    resource.setrlimit(resource.RLIMIT_AS, (memory_bytes, memory_bytes))
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)


class Lift:
    def __init__(self, deps: Deps) -> None:
        self.deps = deps

    @activity.defn(name="lift_binary")
    async def lift_binary(self, request: LiftRequest) -> LiftResult:
        blobs = self.deps.blobs
        child = request.child
        cache_kind = f"lift-{LIFT_FORMAT.replace('/', '-')}"
        # The cache lives in the blob store, so a lift done on one machine serves them
        # all. Blob I/O (S3 requests, downloads) runs in threads: heartbeats go on.
        cached = await asyncio.to_thread(blobs.get_derived, cache_kind, child.sha256)
        meter = activity.metric_meter()
        if cached is not None:
            arch, count = await asyncio.to_thread(_lift_summary, blobs, cached)
            metrics.count(meter, metrics.LIFTS, cached="true")
            return LiftResult(child, cached, arch, count, cached=True)

        with tempfile.TemporaryDirectory(dir=blobs.scratch, prefix="lift-") as work:
            out = Path(work) / "lift.json.gz"
            async with blobs.local_copy_async(child.sha256) as sample:
                await self._run_child(str(sample), str(out), child.name)
            lift_sha, _ = await asyncio.to_thread(blobs.put_file, out)
            features = Path(str(out) + FEATURES_SUFFIX)
            if features.exists():  # the graphs the embed stage reads instead of the JSON
                features_sha, _ = await asyncio.to_thread(blobs.put_file, features)
                await asyncio.to_thread(blobs.set_derived, PACK_VERSION, lift_sha, features_sha)
        await asyncio.to_thread(blobs.set_derived, cache_kind, child.sha256, lift_sha)
        arch, count = await asyncio.to_thread(_lift_summary, blobs, lift_sha)
        metrics.count(meter, metrics.LIFTS, cached="false")
        metrics.count(meter, metrics.FUNCTIONS_LIFTED, count)
        return LiftResult(child, lift_sha, arch, count, cached=False)

    async def _run_child(self, sample: str, out: str, name: str) -> None:
        settings = self.deps.settings
        memory = settings.lift_memory_mb * 1024 * 1024
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "lifting.child", sample, out,
            cwd=PROJECT_ROOT,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            preexec_fn=lambda: _limit_child(memory),
        )
        last_line = "starting angr"
        peak_bytes = peak_rss = 0
        stderr_task = asyncio.ensure_future(proc.stderr.read())  # type: ignore[union-attr]
        loop = asyncio.get_running_loop()
        deadline = loop.time() + settings.lift_timeout_s
        try:
            while True:
                try:
                    line = await asyncio.wait_for(proc.stdout.readline(), HEARTBEAT_S)  # type: ignore[union-attr]
                except TimeoutError:
                    line = None
                if line == b"":
                    break
                if line:
                    last_line = line.decode(errors="replace").strip()
                peak_bytes = max(peak_bytes, _vm_peak_bytes(proc.pid))
                peak_rss = max(peak_rss, _vm_peak_bytes(proc.pid, "VmHWM:"))
                activity.heartbeat(f"{name}: {last_line}")
                if loop.time() > deadline:
                    raise ApplicationError(
                        f"lifting {name} took longer than {settings.lift_timeout_s} s; "
                        "the binary is too large or built to stall the analysis",
                        type=BAD_SAMPLE, non_retryable=True,
                    )
            code = await proc.wait()
        finally:
            if proc.returncode is None:  # cancelled, timed out or failed: never leave angr running
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                await proc.wait()
            if peak_rss:
                metrics.observe(activity.metric_meter(), metrics.LIFT_PEAK_RSS, float(peak_rss),
                                "By")
        stderr = (await stderr_task).decode(errors="replace")
        activity.logger.info("lift child of %s exited with %s, peak RSS %d MiB", name, code,
                             peak_rss >> 20)
        if code != EXIT_OK:  # the child's own last words, with this activity's context
            for line in stderr.strip().splitlines()[-10:]:
                activity.logger.warning("lift child: %s", line)
        _raise_for_exit(code, stderr, name, settings.lift_memory_mb,
                        near_memory_limit=peak_bytes >= 0.8 * memory)


def _lift_summary(blobs: BlobStore, lift_sha256: str) -> tuple[str, int]:
    """(arch, function count) of a lift: from its packed graphs when there are some (a
    fraction of the size, no VEX text to parse), else from the gzipped JSON lift itself."""
    packed_sha = blobs.get_derived(PACK_VERSION, lift_sha256)
    if packed_sha is not None:
        try:
            packed = from_bytes(blobs.read_bytes(packed_sha))
            return packed.binary["arch"], packed.functions_total
        except (ValueError, KeyError):
            pass  # damaged or foreign: the lift itself says
    lifted = blobs.read_json(lift_sha256)
    return lifted["binary"]["arch"], len(lifted["functions"])


def _vm_peak_bytes(pid: int, field: str = "VmPeak:") -> int:
    """Peak address space of a running child (VmHWM: its peak resident memory); 0 once it
    is gone."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(field):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError):
        pass
    return 0


def _raise_for_exit(
    code: int, stderr: str, name: str, memory_mb: int, near_memory_limit: bool = False
) -> None:
    if code == EXIT_OK:
        return
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
