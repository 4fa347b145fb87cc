"""The sliced lift (lifting/cfg_slices.py) against one whole-binary CFGFast, in one run.

    python bench/lift_slices.py SAMPLE [--workers 1 2] [--baseline-root DIR] [--repeat N]

Each variant runs in a fresh process, one after another, in this order per round:
- `whole`: one CFGFast, then functions in chunks (this code, slicing switched off);
- `sliced`: the CFG recovered in slices (this code, as the service runs it);
- `baseline` (with --baseline-root, a checkout of an earlier commit, e.g. a git
  worktree): that code's lift_binary_extras, as it ran then.
Each with every count in --workers. Wall and CPU seconds (forked workers included),
peak RSS of the process and of its largest worker, and the functions.

Agreement: the sliced lift with one worker against the whole-binary lift with one
worker, function by function (same start address): identical records (blocks, edges,
VEX, calls, strings) and identical block sets. Also: whether every worker count gave
the same lift as one worker, for each variant.

Writes bench/lift_slices_<sample name>.json.
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
NO_SLICES = 1 << 62

SCRIPT = r"""
import gzip, hashlib, json, os, resource, sys, time
root, sample, workers, slice_bytes, out = sys.argv[1:6]
sys.path.insert(0, root)
from festive.v1.packed import graph_if_considered
from lifting.angr_lift import lift_binary_extras
kwargs = {"slice_bytes": int(slice_bytes)} if int(slice_bytes) else {}
said = []
start, times = time.perf_counter(), os.times()
lift, graphs = lift_binary_extras(sample, progress=said.append, workers=int(workers),
                                  extra=graph_if_considered, **kwargs)
wall, end = time.perf_counter() - start, os.times()
cpu = lambda t: t.user + t.system + t.children_user + t.children_system
raw = json.dumps(lift, sort_keys=True).encode()
with open(out, "wb") as handle:
    handle.write(gzip.compress(raw, mtime=0))
print(json.dumps({
    "wall_s": round(wall, 3), "cpu_s": round(cpu(end) - cpu(times), 3),
    "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024,
    "worker_peak_rss_mb": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss // 1024,
    "functions": len(lift["functions"]), "graphs": sum(g is not None for g in graphs),
    "slices": next((m.split("/")[1].split()[0] for m in said if " slices, slice " in m), None),
    "lift_sha256": hashlib.sha256(raw).hexdigest()}))
"""


def run(root: Path, sample: str, workers: int, slice_bytes: int, out: Path) -> dict[str, Any]:
    done = subprocess.run([sys.executable, "-c", SCRIPT, str(root), sample, str(workers),
                           str(slice_bytes), str(out)], capture_output=True, text=True,
                          cwd=root, env={**os.environ, "PYTHONPATH": str(root)})
    if done.returncode != 0:
        raise RuntimeError(done.stderr[-3000:])
    return json.loads(done.stdout.splitlines()[-1])


def agreement(whole: Path, sliced: Path) -> dict[str, Any]:
    a = {f["addr"]: f for f in json.loads(gzip.decompress(whole.read_bytes()))["functions"]}
    b = {f["addr"]: f for f in json.loads(gzip.decompress(sliced.read_bytes()))["functions"]}
    common = a.keys() & b.keys()
    same = sum(a[k] == b[k] for k in common)
    same_blocks = sum({x["addr"] for x in a[k]["blocks"]} == {x["addr"] for x in b[k]["blocks"]}
                      for k in common)
    differ = sorted(k for k in common if a[k] != b[k])
    return {
        "whole_functions": len(a), "sliced_functions": len(b), "common": len(common),
        "identical_records": same, "identical_share": round(same / max(len(a), 1), 4),
        "same_block_sets": same_blocks,
        "only_whole": sorted(a.keys() - b.keys(), key=lambda x: int(x, 16))[:50],
        "only_sliced": sorted(b.keys() - a.keys(), key=lambda x: int(x, 16))[:50],
        "differing": sorted(differ, key=lambda x: int(x, 16))[:50],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("sample")
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--baseline-root", type=Path)
    parser.add_argument("--repeat", type=int, default=1)
    args = parser.parse_args()
    variants = [("whole", ROOT, NO_SLICES), ("sliced", ROOT, 0)]
    if args.baseline_root:
        variants.append(("baseline", args.baseline_root.resolve(), 0))
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as tmp:
        lifts: dict[tuple[str, int], Path] = {}
        for round_ in range(args.repeat):
            for name, root, slice_bytes in variants:
                for workers in args.workers:
                    out = Path(tmp) / f"{name}-{workers}-{round_}.json.gz"
                    row = {"variant": name, "workers": workers, "round": round_,
                           **run(root, args.sample, workers, slice_bytes, out)}
                    print(json.dumps(row), flush=True)
                    rows.append(row)
                    lifts.setdefault((name, workers), out)
        first = min(args.workers)
        agree = agreement(lifts[("whole", first)], lifts[("sliced", first)])
    same_for_all = {name: len({r["lift_sha256"] for r in rows if r["variant"] == name}) == 1
                    for name, _root, _bytes in variants}

    def best(name: str, workers: int) -> float:
        return min(r["wall_s"] for r in rows if r["variant"] == name and r["workers"] == workers)

    top = max(args.workers)
    ratios = {
        f"sliced_{top}_vs_whole_{first}": round(best("sliced", top) / best("whole", first), 3),
        f"sliced_{top}_vs_sliced_{first}": round(best("sliced", top) / best("sliced", first), 3),
        f"whole_{top}_vs_whole_{first}": round(best("whole", top) / best("whole", first), 3),
    }
    if args.baseline_root:
        ratios[f"sliced_{top}_vs_baseline_{first}"] = round(
            best("sliced", top) / best("baseline", first), 3)
        ratios[f"whole_{first}_vs_baseline_{first}"] = round(
            best("whole", first) / best("baseline", first), 3)
    result = {
        "command": "python bench/lift_slices.py " + " ".join(sys.argv[1:]),
        "cpus": len(os.sched_getaffinity(0)), "load_at_end": list(os.getloadavg()),
        "sample": args.sample, "rows": rows, "ratios_of_best_wall": ratios,
        "same_lift_for_every_worker_count": same_for_all, "sliced_vs_whole": agree,
    }
    path = ROOT / "bench" / f"lift_slices_{Path(args.sample).name}.json"
    path.write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps({k: result[k] for k in ("ratios_of_best_wall",
                                             "same_lift_for_every_worker_count")}))
    print(json.dumps({k: v for k, v in agree.items() if not isinstance(v, list)}))


if __name__ == "__main__":
    main()
