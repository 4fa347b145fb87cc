"""Performance of the service (issue 14), one sub-command per question; results -> JSON.

    python bench/service.py parallel SAMPLE [--workers 1 2] [--chunk 64]
        the lift (lifting.angr_lift.lift_binary_extras with the child's featurisation)
        with 1 and N workers: wall and CPU seconds per phase
    python bench/service.py overhead SAMPLE... [--cpu-slots 1] [--warm 0 1]
        end to end through a started stack (first analysis), per stage, vs a bare angr
        script (CFGFast + VEX of every block) on the same bytes; then the reanalysis of
        the same sample with its lift cached (prediction deleted, queued again); one
        stack per AE_WARM_CHILDREN value
    python bench/service.py status [--rate 500] [--seconds 10] [--in-flight 100] [--settle 5]
                                   [--api-workers 1] [--keep-logs DIR]
        Get Status / Get Results latency at a fixed request rate while analyses run
    python bench/service.py throughput [--count 100] [--cpu-workers 1 2] [--warm 0 1]
        samples per minute for a batch of small binaries

Each sub-command starts what it needs on this machine (Temporal dev server, API, one
worker per role as separate processes via deploy.launch) in a temporary directory, and
writes bench/service_<command>[_<details>].json. Run from the repository root.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from deploy.launch import Deployment, free_port  # noqa: E402
from deploy.temporal_dev import SQLITE_PRAGMAS, dev_server_flags  # noqa: E402

MODEL = "FESTIVE Func Sim"
MODEL_URL = "FESTIVE%20Func%20Sim"
BARE_SCRIPT = r"""
import logging, sys, time
for name in ("angr", "cle", "pyvex", "claripy"):
    logging.getLogger(name).setLevel(logging.ERROR)
start = time.perf_counter()
import angr
project = angr.Project(sys.argv[1], auto_load_libs=False, load_debug_info=False)
cfg = project.analyses.CFGFast(normalize=True, data_references=True, show_progressbar=False)
cfg_s = time.perf_counter() - start
statements = 0
for func in cfg.kb.functions.values():
    for block in func.blocks:
        try:
            statements += len(block.vex.statements)
        except Exception:
            pass
print(len(cfg.kb.functions), statements, round(cfg_s, 3), round(time.perf_counter() - start, 3))
"""


def python() -> str:
    return sys.executable


def write(name: str, result: dict[str, Any]) -> None:
    out = ROOT / "bench" / f"service_{name}.json"
    result = {"command": " ".join(["python", *sys.argv]), "cpus": os.cpu_count(),
              "load_at_end": os.getloadavg(), **result}
    out.write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps(result, indent=1))
    print(f"-> {out}")


def add_pragma_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--sqlite-pragma", action="append", dest="pragmas", metavar="P=V",
                        help="the dev server's SQLite pragmas instead of make up's "
                             f"({' '.join(SQLITE_PRAGMAS)}); 'none' for its own default")


def chosen_pragmas(args: argparse.Namespace) -> list[str]:
    """--sqlite-pragma's choice: make up's pragmas when none was given."""
    if args.pragmas is None:
        return list(SQLITE_PRAGMAS)
    return [pragma for pragma in args.pragmas if pragma != "none"]


# --- parallel lift ------------------------------------------------------------------------
PHASES_SCRIPT = r"""
import json, os, sys, time
from festive.v1.packed import graph_if_considered
from lifting.angr_lift import lift_binary_extras
marks = {"start": (time.perf_counter(), os.times())}
def say(message):
    marks.setdefault(message.split(" ")[0].rstrip(":"), (time.perf_counter(), os.times()))
lift, graphs = lift_binary_extras(sys.argv[1], progress=say, workers=int(sys.argv[2]),
                                  chunk_size=int(sys.argv[3]), extra=graph_if_considered,
                                  slice_bytes=1 << 62)  # one CFG (bench/lift_slices.py: slices)
marks["end"] = (time.perf_counter(), os.times())
cpu = lambda t: t.user + t.system + t.children_user + t.children_system
def phase(a, b):
    return {"wall_s": round(marks[b][0] - marks[a][0], 3),
            "cpu_s": round(cpu(marks[b][1]) - cpu(marks[a][1]), 3)}
digest = __import__("hashlib").sha256(json.dumps(lift, sort_keys=True).encode()).hexdigest()
print(json.dumps({"load": phase("start", "loaded"), "cfg": phase("loaded", "cfg"),
                  "merge": phase("cfg", "merged"), "functions_phase": phase("merged", "end"),
                  "total": phase("start", "end"), "functions": len(lift["functions"]),
                  "graphs": sum(g is not None for g in graphs), "lift_sha256": digest}))
"""


def lift_phases(sample: str, workers: int, chunk: int) -> dict[str, Any]:
    """One fresh process: load, CFG, merge, then the per-function phase (lift and
    featurise) with `workers` forked workers; wall and CPU seconds (workers included)."""
    done = subprocess.run([python(), "-c", PHASES_SCRIPT, sample, str(workers), str(chunk)],
                          capture_output=True, text=True, cwd=ROOT,
                          env={**os.environ, "PYTHONPATH": str(ROOT)})
    if done.returncode != 0:
        raise RuntimeError(done.stderr[-3000:])
    return {"workers": workers, "chunk": chunk, **json.loads(done.stdout.splitlines()[-1])}


def cmd_parallel(args: argparse.Namespace) -> None:
    runs = []
    for workers in args.workers:
        runs.append(lift_phases(args.sample, workers, args.chunk))
        print(runs[-1], flush=True)
    first = runs[0]
    write(f"parallel_{Path(args.sample).name}", {
        "sample": args.sample, "runs": runs,
        "total_ratio": [round(r["total"]["wall_s"] / first["total"]["wall_s"], 3) for r in runs],
        "functions_phase_ratio": [round(r["functions_phase"]["wall_s"]
                                        / first["functions_phase"]["wall_s"], 3) for r in runs],
        "cfg_share_of_serial_cpu": round(
            (first["load"]["cpu_s"] + first["cfg"]["cpu_s"] + first["merge"]["cpu_s"])
            / first["total"]["cpu_s"], 3),
        "same_output": len({r["lift_sha256"] for r in runs}) == 1,
    })


# --- a started stack ----------------------------------------------------------------------
@contextlib.contextmanager
def stack(base: Path, cpu_workers: int = 1, env: dict[str, str] | None = None,
          api_workers: int = 1, temporal_port: int | None = None,
          sqlite_pragmas: Sequence[str] = SQLITE_PRAGMAS) -> Iterator[list[str]]:
    """Temporal dev server + orchestration, cpu (xN), gpu workers + API(s); yields API URLs.
    The dev server listens on `temporal_port` (default: a free port) and keeps its state
    as `make up`'s does (deploy/temporal_dev.py; `sqlite_pragmas` to compare others)."""
    temporal_port = temporal_port or free_port()
    base.mkdir(parents=True, exist_ok=True)
    cli = Path(python()).parent / "temporal"
    log = open(base / "temporal.log", "wb")  # noqa: SIM115 - closed below
    server = subprocess.Popen(
        [str(cli), "server", "start-dev", "--ip", "127.0.0.1", "--port", str(temporal_port),
         "--headless", "--log-level", "warn",
         *dev_server_flags(base / "temporal.db", sqlite_pragmas)],
        stdout=log, stderr=subprocess.STDOUT)
    deployment = Deployment(base, env={
        **os.environ, "TEMPORAL_ADDRESS": f"127.0.0.1:{temporal_port}", "AE_AUTH": "disabled",
        "AE_BLOB_URL": str(base / "blobs"),
        "DATABASE_URL": f"sqlite+aiosqlite:///{base / 'ae.db'}",
        "AE_QUEUE_PREFIX": f"bench{temporal_port}", **(env or {}),
    })
    try:
        _wait_port(temporal_port)
        urls = [f"http://127.0.0.1:{deployment.start('api').port}" for _ in range(api_workers)]
        deployment.start("orchestration")
        for _ in range(cpu_workers):
            deployment.start("cpu")
        deployment.start("gpu")
        yield urls
    finally:
        deployment.stop_all()
        server.terminate()
        server.wait(30)
        log.close()


def _wait_port(port: int, timeout_s: float = 60) -> None:
    import socket

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 1):
            return
        time.sleep(0.2)
    raise RuntimeError(f"nothing listens on {port}")


async def submit(http: Any, path: Path, name: str | None = None) -> str:
    response = await http.post("/samples", files={"sample": (name or path.name,
                                                             path.read_bytes())})
    response.raise_for_status()
    return str(response.json()["sample_id"])


async def wait_final(http: Any, sha: str, timeout_s: float = 3600,
                     poll_s: float = 0.1) -> dict[str, Any]:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        response = await http.get(f"/predictions/{sha}/status")
        if response.status_code == 200:
            body = response.json()
            word = body["status"].get(MODEL)
            if word in ("SUCCESS", "FAILURE", "REVOKED"):
                if word != "SUCCESS":
                    raise RuntimeError(f"{sha}: {word}: {body['detailed_status']}")
                return dict(body["detailed_status"][MODEL])
        await asyncio.sleep(poll_s)
    raise RuntimeError(f"{sha} did not finish in {timeout_s} s")


def run_duration(detail: dict[str, Any]) -> float:
    """Workflow start to close, as Temporal recorded them."""
    from datetime import datetime

    return (datetime.fromisoformat(detail["closed_at"])
            - datetime.fromisoformat(detail["started_at"])).total_seconds()


def bare_angr(sample: str) -> dict[str, Any]:
    start = time.perf_counter()
    done = subprocess.run([python(), "-c", BARE_SCRIPT, sample], capture_output=True,
                          text=True, check=True, cwd=ROOT)
    wall = time.perf_counter() - start
    functions, statements, cfg_s, _inner = done.stdout.split()
    return {"wall_s": round(wall, 3), "cfg_s": float(cfg_s), "functions": int(functions),
            "statements": int(statements)}


def cmd_overhead(args: argparse.Namespace) -> None:
    rows: list[dict[str, Any]] = []
    warmup: dict[str, float] = {}
    for warm in args.warm:  # one stack per setting, the same samples, in one run
        with tempfile.TemporaryDirectory(prefix="bench-svc-") as tmp, \
                stack(Path(tmp), env={"AE_CPU_SLOTS": str(args.cpu_slots),
                                      "AE_WARM_CHILDREN": str(warm)}) as urls:
            asyncio.run(_overhead(urls[0], Path(tmp), args, warm, rows, warmup))
    write("overhead", {"warm_up_analysis": warmup, "rows": rows})


async def _overhead(url: str, tmp: Path, args: argparse.Namespace, warm: int,
                    rows: list[dict[str, Any]], warmup: dict[str, float]) -> None:
    import httpx

    async with httpx.AsyncClient(base_url=url, timeout=120) as http:
        # one small analysis first: workers warm (engine loaded), as in service
        (first_sample,) = small_binaries(1, tmp / "warm")
        t0 = time.perf_counter()
        await wait_final(http, await submit(http, first_sample, "warm-up"), poll_s=0.2)
        warmup[f"warm_children_{warm}_wall_s"] = round(time.perf_counter() - t0, 3)
        for sample in args.sample:
            path = Path(sample)
            bare = bare_angr(sample)
            print("bare", sample, bare, flush=True)
            await asyncio.sleep(args.idle)  # as between two samples: children started
            t0 = time.perf_counter()
            sha = await submit(http, path)
            first = await wait_final(http, sha)
            first_wall = time.perf_counter() - t0
            results = (await http.get(f"/predictions/{sha}/{MODEL_URL}/results")).json()
            lifted = results["prediction_results"]["functions_total"]
            print("first", warm, sample, first["stages_ms"], round(first_wall, 2), flush=True)
            again = []
            for _ in range(args.repeat):
                await asyncio.sleep(args.idle)
                response = await http.delete(f"/internal/predictions/{sha}/{MODEL_URL}")
                response.raise_for_status()
                t1 = time.perf_counter()
                (await http.post(f"/internal/queue/{sha}/festive")).raise_for_status()
                detail = await wait_final(http, sha, poll_s=0.02)
                again.append({"wall_s": round(time.perf_counter() - t1, 3),
                              "workflow_s": run_duration(detail),
                              "stages_ms": detail["stages_ms"]})
                print("again", warm, sample, again[-1], flush=True)
            best = min(again, key=lambda r: r["workflow_s"])
            rows.append({
                "warm_children": warm,
                "sample": sample, "functions_lifted": int(lifted), "bare_angr": bare,
                "first": {"wall_s": round(first_wall, 3),
                          "workflow_s": run_duration(first),
                          "stages_ms": first["stages_ms"]},
                "overhead_ratio": round(run_duration(first) / bare["wall_s"], 3),
                "reanalysis": again,
                "reanalysis_speedup": round(run_duration(first) / best["workflow_s"], 1),
            })


# --- status under load --------------------------------------------------------------------
def _load(urls: list[str], shas: list[str], rate: float, seconds: float, path: str,
          scratch: Path) -> dict[str, Any]:
    """bench/http_load.py in a process of its own (raw sockets, open loop), with the CPU
    seconds each part of the stack used meanwhile (cpu_s)."""
    paths = scratch / "paths.txt"
    paths.write_text("".join(path.format(sha=sha, model=MODEL_URL) + "\n" for sha in shas))
    before = _stack_cpu()
    done = subprocess.run(
        [python(), str(ROOT / "bench" / "http_load.py"), "--paths", str(paths),
         "--rate", str(rate), "--seconds", str(seconds), *urls],
        check=True, capture_output=True, text=True)
    after = _stack_cpu()
    cpu = {part: round(after[part] - before.get(part, 0.0), 2) for part in after}
    return {"path": path, **json.loads(done.stdout), "cpu_s": cpu}


_PARTS = (("api.server", "api"), ("--role orchestration", "orchestration"),
          ("--role cpu", "cpu worker + children"), ("--role gpu", "gpu worker"),
          ("server start-dev", "temporal"))


def _stack_cpu() -> dict[str, float]:
    """CPU seconds (user + system, reaped children included) of this machine's processes
    by part of the stack; a lift child still running counts once it has been reaped."""
    tick = os.sysconf("SC_CLK_TCK")
    found: dict[str, float] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            command = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        part = next((name for marker, name in _PARTS if marker in command), None)
        if part is not None:
            found[part] = found.get(part, 0.0) + sum(int(f) for f in fields[11:15]) / tick
    return found


def small_binaries(count: int, out: Path) -> list[Path]:
    """`count` distinct small real programs: one C file built with a different constant."""
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(count):
        src = out / f"p{i}.c"
        src.write_text(SMALL_C.replace("SEED", str(1000 + i)))
        exe = out / f"p{i}"
        subprocess.run(["gcc", "-O2", str(src), "-o", str(exe)], check=True)
        paths.append(exe)
    return paths


SMALL_C = r"""
#include <stdio.h>
#include <string.h>
static unsigned mix(unsigned x) {
    x ^= x >> 13; x *= 0x5bd1e995u + SEED; return x ^ (x >> 15);
}
int parse(const char *s) {
    int n = 0;
    while (*s >= '0' && *s <= '9') n = n * 10 + *s++ - '0';
    return n;
}
unsigned table(unsigned n) {
    unsigned h = SEED;
    for (unsigned i = 0; i < n; i++) { if (i % 3) h = mix(h + i); else h ^= i; }
    return h;
}
int main(int argc, char **argv) {
    unsigned total = 0;
    for (int i = 1; i < argc; i++) {
        if (strlen(argv[i]) > 4) total += table(parse(argv[i])); else total ^= mix(i);
    }
    printf("%u\n", total);
    return total == SEED;
}
"""


def cmd_status(args: argparse.Namespace) -> None:
    import httpx

    with tempfile.TemporaryDirectory(prefix="bench-status-") as tmp, \
            stack(Path(tmp), env={"AE_CPU_SLOTS": "1", "AE_LIFT_WORKERS": "1"},
                  api_workers=args.api_workers, sqlite_pragmas=chosen_pragmas(args)) as urls:
        samples = small_binaries(args.in_flight + 5, Path(tmp) / "src")

        async def measure() -> dict[str, Any]:
            async with httpx.AsyncClient(base_url=urls[0], timeout=120) as http:
                done = [await submit(http, p) for p in samples[:5]]
                for sha in done:
                    await wait_final(http, sha, poll_s=0.5)
                running = [await submit(http, p) for p in samples[5:]]
                # the burst of starting them (100 first workflow tasks) is over; they stay
                # in flight for minutes (one lift at a time)
                await asyncio.sleep(args.settle)
                out = {}
                for name, path in (("status_finished", "/predictions/{sha}/status"),
                                   ("results_finished",
                                    "/predictions/{sha}/{model}/results")):
                    out[name] = _load(urls, done, args.rate, args.seconds, path, Path(tmp))
                    print(name, out[name], flush=True)
                out["status_in_flight"] = _load(urls, running, args.rate, args.seconds,
                                                "/predictions/{sha}/status", Path(tmp))
                print(out["status_in_flight"], flush=True)
                body = (await http.get(f"/predictions/{running[-1]}/status")).json()
                out["last_in_flight_status"] = body["status"]
                return out

        result = asyncio.run(measure())
        if args.keep_logs is not None:
            for log in Path(tmp).glob("**/*.log"):
                kept = args.keep_logs / log.relative_to(tmp)
                kept.parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(log, kept)
    write(f"status_api{args.api_workers}_rate{int(args.rate)}",
          {"api_workers": args.api_workers, "in_flight": args.in_flight, "settle_s": args.settle,
           "status_wait_s": os.environ.get("AE_STATUS_WAIT_S", "0.025 (default)"),
           "status_refresh_s": os.environ.get("AE_STATUS_REFRESH_S", "1 (default)"), **result})


def cmd_throughput(args: argparse.Namespace) -> None:
    import httpx

    rows = []
    with tempfile.TemporaryDirectory(prefix="bench-tp-") as tmp:
        samples = small_binaries(args.count, Path(tmp) / "src")
        for warm in args.warm:
            for workers in args.cpu_workers:
                base = Path(tmp) / f"stack{warm}-{workers}"
                with stack(base, cpu_workers=workers,
                           env={"AE_CPU_SLOTS": "1", "AE_LIFT_WORKERS": "1",
                                "AE_WARM_CHILDREN": str(warm)}) as urls:

                    async def measure(url: str = urls[0]) -> float:
                        async with httpx.AsyncClient(base_url=url, timeout=120) as http:
                            await asyncio.sleep(args.idle)  # the workers' children started
                            start = time.perf_counter()
                            shas = [await submit(http, p) for p in samples]
                            for sha in shas:
                                await wait_final(http, sha, poll_s=0.5)
                            return time.perf_counter() - start

                    wall = asyncio.run(measure())
                rows.append({"warm_children": warm, "cpu_workers": workers,
                             "samples": len(samples), "wall_s": round(wall, 1),
                             "samples_per_minute": round(60 * len(samples) / wall, 1)})
                print(rows[-1], flush=True)
    per_minute = {(r["warm_children"], r["cpu_workers"]): r["samples_per_minute"] for r in rows}
    write("throughput", {
        "rows": rows,
        "scaling": {f"warm_children_{w}": round(per_minute[w, args.cpu_workers[-1]]
                                                / per_minute[w, args.cpu_workers[0]], 2)
                    for w in args.warm},
    })


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("parallel")
    p.add_argument("sample")
    p.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    p.add_argument("--chunk", type=int, default=64)
    p = sub.add_parser("overhead")
    p.add_argument("sample", nargs="+")
    p.add_argument("--cpu-slots", type=int, default=1)
    p.add_argument("--repeat", type=int, default=2)
    p.add_argument("--warm", type=int, nargs="+", default=[0, 1],
                   help="AE_WARM_CHILDREN of each stack, one after the other (default 0 1)")
    p.add_argument("--idle", type=float, default=5,
                   help="seconds between two analyses, as between two users' samples")
    p = sub.add_parser("status")
    p.add_argument("--rate", type=float, default=500)
    p.add_argument("--seconds", type=float, default=10)
    p.add_argument("--in-flight", type=int, default=100)
    p.add_argument("--settle", type=float, default=5,
                   help="seconds between starting the in-flight analyses and measuring")
    p.add_argument("--api-workers", type=int, default=1)
    p.add_argument("--keep-logs", type=Path, default=None,
                   help="copy the stack's logs here at the end (each API request is a line)")
    add_pragma_option(p)
    p = sub.add_parser("throughput")
    p.add_argument("--count", type=int, default=100)
    p.add_argument("--cpu-workers", type=int, nargs="+", default=[1, 2])
    p.add_argument("--warm", type=int, nargs="+", default=[0, 1],
                   help="AE_WARM_CHILDREN of each stack (default 0 1)")
    p.add_argument("--idle", type=float, default=10,
                   help="seconds between a stack's start and the first submission")
    args = parser.parse_args()
    if shutil.which("gcc") is None and args.command in ("status", "throughput"):
        sys.exit("gcc is needed to build the small samples")
    {"parallel": cmd_parallel, "overhead": cmd_overhead, "status": cmd_status,
     "throughput": cmd_throughput}[args.command](args)


if __name__ == "__main__":
    main()
