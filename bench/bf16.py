"""bfloat16 embedding against float32: what it changes and what it saves (issue 14).

    python bench/bf16.py --lifted DIR [--threads 1 2] [--repeat 3] [--out bench/bf16_cpu.json]

DIR/<project>/<build>.json.gz: lifts of several builds of each project (other versions,
other toolchains), as festive.data.build or `lifting.angr_lift.lift_binary` write them.
The embeddings of every function the engine considers are made twice with the served
weights, by the engine at AE_EMBED_PRECISION=float32 and =bfloat16 (load_engine's
precision: the model under bfloat16 autocast, unit length in float32; the search stays
float32), and compared by:
- the vectors themselves (cosine between the two);
- the served index: the same best reference row and family;
- cross-build retrieval: is a named function's nearest neighbour among the other builds of
  its project the function of the same name (recall@1, bootstrap CI over queries, and the
  paired count of queries that only one of the two gets right);
- whole attributions: each engine's Engine.attribute_packed on each build with its own
  vectors (verdict, families listed, functions matched);
and timed: functions per second through Engine.embed_packed (the embed stage's call), for
each torch thread count, best of --repeat.
bench/festive_gpu.py runs the same comparison on a GPU (bf16_effect).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from festive.card import PRECISIONS  # noqa: E402
from festive.data.corpus import read_lift  # noqa: E402
from festive.eval.metrics import bootstrap_ci  # noqa: E402


def read_lifts(root: Path) -> list[tuple[str, dict[str, Any]]]:
    """("project/build", lift) for DIR/<project>/<build>.json.gz, sorted."""
    return [(f"{path.parent.name}/{path.name.removesuffix('.json.gz')}", read_lift(path))
            for path in sorted(root.glob("*/*.json.gz"))]


def recall_at_1(vectors: np.ndarray, keys: list[tuple[str, str, str]]) -> np.ndarray:
    """Per named function (project, build, name): is its nearest function among the other
    builds of its project the one of the same name? One bool per query; a function whose
    name is in no other build is not a query."""
    hits = []
    by_project: dict[str, list[int]] = {}
    for i, (project, _build, _name) in enumerate(keys):
        by_project.setdefault(project, []).append(i)
    for members in by_project.values():
        sims = vectors[members] @ vectors[members].T
        builds = np.asarray([keys[i][1] for i in members])
        names = np.asarray([keys[i][2] for i in members])
        sims[builds[:, None] == builds[None, :]] = -np.inf  # only other builds
        for row, i in enumerate(members):
            name = keys[i][2]
            if name and np.any((names == name) & (builds != builds[row])):
                hits.append(bool(names[int(np.argmax(sims[row]))] == name))
    return np.asarray(hits, dtype=bool)


def compare(reference: np.ndarray, low: np.ndarray, keys: list[tuple[str, str, str]],
            searcher: Any, family: np.ndarray) -> dict[str, Any]:
    """How far the bf16 vectors are from the float32 ones, and what that changes in a
    search of the served index (its Searcher, and each row's family) and in cross-build
    retrieval."""
    cosine = (reference * low).sum(axis=1) / np.maximum(
        np.linalg.norm(reference, axis=1) * np.linalg.norm(low, axis=1), 1e-12)
    s32, r32 = searcher.topk(reference, 1)
    s16, r16 = searcher.topk(low, 1)
    out: dict[str, Any] = {
        "functions": len(reference),
        "cosine_min": float(cosine.min()), "cosine_p01": float(np.quantile(cosine, 0.01)),
        "cosine_mean": float(cosine.mean()),
        "index_same_best_row": float(np.mean(r32[:, 0] == r16[:, 0])),
        "index_same_best_family": float(np.mean(family[r32[:, 0]] == family[r16[:, 0]])),
        "index_best_similarity_mean_abs_diff": float(np.abs(s32[:, 0] - s16[:, 0]).mean()),
    }
    hit32, hit16 = recall_at_1(reference, keys), recall_at_1(low, keys)
    out["retrieval_queries"] = int(len(hit32))
    if len(hit32):
        for label, hits in (("float32", hit32), ("bf16", hit16)):
            mean, lo, hi = bootstrap_ci(hits.astype(np.float64))
            out[f"retrieval_recall_at_1_{label}"] = [round(mean, 4), round(lo, 4), round(hi, 4)]
        mean, lo, hi = bootstrap_ci(hit16.astype(np.float64) - hit32.astype(np.float64))
        out["retrieval_bf16_minus_float32"] = [round(mean, 4), round(lo, 4), round(hi, 4)]
        out["retrieval_only_float32_right"] = int(np.sum(hit32 & ~hit16))
        out["retrieval_only_bf16_right"] = int(np.sum(hit16 & ~hit32))
    return out


def attributions(engines: dict[str, Any], lifts: list[tuple[str, Any]],
                 packed: dict[str, Any], vectors: dict[str, dict[str, np.ndarray]]
                 ) -> dict[str, Any]:
    """Each engine's attribute_packed per build with its own vectors: the leaves a reader
    acts on (verdict, families, functions matched), and how many builds differ."""
    rows, differ = {}, 0
    for name, _lift in lifts:
        child = {"sha256": name.replace("/", "_").ljust(12, "_"), "name": name}
        seen = {}
        for precision, engine in engines.items():
            results, _functions = engine.attribute_packed(
                [(child, packed[name], vectors[precision][name])], None)
            seen[precision] = {key: results[key] for key in (
                "verdict", "families_present", "families_weak", "functions_matched")}
        rows[name] = seen
        differ += seen["float32"] != seen["bfloat16"]
    return {"builds": len(rows), "builds_differing": differ, "per_build": rows}


def timing(engines: dict[str, Any], packs: list[Any], threads: list[int],
           repeat: int) -> list[dict[str, Any]]:
    """Functions per second through Engine.embed_packed, per precision and thread count,
    the precisions alternated within each repeat."""
    functions = sum(len(p.graphs) for p in packs)
    rows = []
    for count in threads:
        torch.set_num_threads(count)
        best = dict.fromkeys(engines, float("inf"))
        for engine in engines.values():  # warm-up
            engine.embed_packed(packs[0])
        for _ in range(repeat):
            for precision, engine in engines.items():
                t0 = time.perf_counter()
                for pack in packs:
                    engine.embed_packed(pack)
                best[precision] = min(best[precision], time.perf_counter() - t0)
        row: dict[str, Any] = {"torch_threads": count, "functions": functions}
        for precision, seconds in best.items():
            row[f"{precision}_s"] = round(seconds, 3)
            row[f"{precision}_functions_per_s"] = round(functions / seconds, 1)
        row["bfloat16_speedup"] = round(best["float32"] / best["bfloat16"], 2)
        rows.append(row)
        print(row, flush=True)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--lifted", type=Path, required=True)
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "bf16_cpu.json")
    args = parser.parse_args()

    from festive.engine import MIN_BLOCKS, load_engine
    from festive.v1.packed import pack_lift

    lifts = read_lifts(args.lifted)
    if not lifts:
        raise SystemExit(f"bench/bf16.py: no <project>/<build>.json.gz under {args.lifted}")
    engines = {precision: load_engine(precision=precision) for precision in PRECISIONS}
    full = engines["float32"]
    packed = {name: pack_lift(lift, min_blocks=MIN_BLOCKS) for name, lift in lifts}
    keys = [(name.split("/")[0], name, str(f.get("name") or ""))
            for name, _lift in lifts for f in packed[name].functions()]
    vectors = {precision: {name: engine.embed_packed(packed[name]) for name, _lift in lifts}
               for precision, engine in engines.items()}
    stacked = {precision: np.concatenate([vectors[precision][name] for name, _ in lifts])
               for precision in vectors}
    report = {
        "command": " ".join(["python", *sys.argv]), "device": full.model.device,
        "cpu_flags_bf16": sorted({flag for flag in ("avx512_bf16", "amx_bf16")
                                  if flag in Path("/proc/cpuinfo").read_text()}),
        "engine": {"version": full.version, "index_version": full.index_version,
                   "reference_rows": int(full.searcher.n)},
        "builds": [name for name, _ in lifts],
        "agreement": compare(stacked["float32"], stacked["bfloat16"], keys, full.searcher,
                             full.index.row_family),
        "attribution": attributions(engines, lifts, packed, vectors),
        "speed": timing(engines, [packed[name] for name, _ in lifts], args.threads,
                        args.repeat),
        "load_at_end": os.getloadavg(),
    }
    args.out.write_text(json.dumps(report, indent=1) + "\n")
    print(json.dumps(report["agreement"], indent=1))
    print(f"attribution: {report['attribution']['builds_differing']} of "
          f"{report['attribution']['builds']} builds differ -> {args.out}")

if __name__ == "__main__":
    main()
