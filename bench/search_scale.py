"""Exact top-k search at 1e5-1e7 reference functions: our Searcher against FAISS.

    .venv/bin/pip install -e '.[bench]'      # faiss-cpu
    nice -n 5 .venv/bin/python bench/search_scale.py [--sizes 100000,1000000,10000000]
        [--queries 512] [--k 32] [--out bench/search_scale.json]

Synthetic unit vectors of v1's width (128): rows in clusters, so that a query has true
near neighbours as real functions do, plus noise. Compared, on the same rows and
queries, each timed after a warm-up:
- ours: festive.attribution.search.Searcher over int8 rows with a scale per row (what
  the shipped index stores), dequantised in 64k-row chunks: bounded memory;
- ours-float32: the same Searcher over float32 rows (4x the memory);
- faiss-flat: faiss.IndexFlatIP over float32 rows (exact);
- faiss-sq8: faiss.IndexScalarQuantizer 8-bit (compressed, approximate): its recall@k
  against the exact float32 answer is reported, as the recall a compressed index costs.
Our int8 search is compared with the float32 answer too (quantisation is lossy).
Memory: bytes of the stored rows of each index.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path
from typing import Any

import numpy as np

from festive.attribution.search import Quantised, Searcher

D = 128


def synthetic(n: int, n_queries: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((max(n // 20, 1), D)).astype(np.float32)
    rows = np.empty((n, D), np.float32)
    for start in range(0, n, 1_000_000):  # bounded temporaries
        stop = min(start + 1_000_000, n)
        pick = rng.integers(0, len(centres), stop - start)
        block = centres[pick] + 0.6 * rng.standard_normal((stop - start, D)).astype(np.float32)
        block /= np.linalg.norm(block, axis=1, keepdims=True)
        rows[start:stop] = block
    twins = rows[rng.integers(0, n, n_queries)]
    queries = twins + 0.3 * rng.standard_normal(twins.shape).astype(np.float32)
    queries /= np.linalg.norm(queries, axis=1, keepdims=True)
    return rows, queries.astype(np.float32)


def recall(found: np.ndarray, truth: np.ndarray) -> float:
    hits = sum(len(set(f.tolist()) & set(t.tolist())) for f, t in zip(found, truth, strict=True))
    return round(hits / truth.size, 4)


def timed(fn: Any, repeat: int = 2) -> tuple[float, Any]:
    fn()  # warm-up
    best, out = float("inf"), None
    for _ in range(repeat):
        start = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - start)
    return best, out


def run(n: int, n_queries: int, k: int) -> dict[str, Any]:
    import faiss

    rows, queries = synthetic(n, n_queries)
    quantised = Quantised.of(rows)
    result: dict[str, Any] = {"rows": n, "queries": n_queries, "k": k}

    flat = faiss.IndexFlatIP(D)
    flat.add(rows)
    t, (sims, truth) = timed(lambda: flat.search(queries, k))
    result["faiss-flat"] = {"ms_per_query": round(1e3 * t / n_queries, 4),
                            "bytes": rows.nbytes, "recall_vs_float32": 1.0}

    ours = Searcher(quantised, device="cpu")
    t, (_s, found) = timed(lambda: ours.topk(queries, k))
    result["ours-int8"] = {"ms_per_query": round(1e3 * t / n_queries, 4),
                           "bytes": quantised.codes.nbytes + quantised.scale.nbytes,
                           "recall_vs_float32": recall(found, truth)}

    if n <= 1_000_000:  # a float32 copy beside FAISS's at 1e7 would not fit comfortably
        ours32 = Searcher(rows, device="cpu")
        t, (_s, found) = timed(lambda: ours32.topk(queries, k))
        result["ours-float32"] = {"ms_per_query": round(1e3 * t / n_queries, 4),
                                  "bytes": rows.nbytes, "recall_vs_float32": recall(found, truth)}
    flat.reset()  # frees its copy of the rows

    sq8 = faiss.IndexScalarQuantizer(D, faiss.ScalarQuantizer.QT_8bit,
                                     faiss.METRIC_INNER_PRODUCT)
    sq8.train(rows[: min(n, 200_000)])
    sq8.add(rows)
    t, (_s, found) = timed(lambda: sq8.search(queries, k))
    result["faiss-sq8"] = {"ms_per_query": round(1e3 * t / n_queries, 4),
                           "bytes": int(sq8.sa_code_size() * n),
                           "recall_vs_float32": recall(found, truth)}
    print(json.dumps(result), flush=True)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", default="100000,1000000,10000000")
    parser.add_argument("--queries", type=int, default=512)
    parser.add_argument("--k", type=int, default=32)
    parser.add_argument("--out", default="bench/search_scale.json")
    args = parser.parse_args()
    import faiss
    import torch

    meta = {"cpu_threads_torch": torch.get_num_threads(),
            "cpu_threads_faiss": faiss.omp_get_max_threads(), "cpus": os.cpu_count(),
            "machine": platform.machine(), "faiss": faiss.__version__,
            "torch": torch.__version__}
    runs = [run(int(n), args.queries, args.k) for n in args.sizes.split(",")]
    Path(args.out).write_text(json.dumps({"meta": meta, "runs": runs}, indent=1) + "\n")


if __name__ == "__main__":
    main()
