"""Reference search with v1's dense rows: dense matrix product vs the full-CSR product.

    python bench/search_layout.py [--rows 100000,1000000] [--queries 256] [--device cpu]

Why: v1 indexes hold dense 128-d unit rows in v0's CSR container. The Searcher now
multiplies such rows as a dense matrix; this measures what that changed, on the shipped
v1 index (queries = its own rows) and on synthetic indexes of random unit rows, and
checks both layouts return the same best rows. Write-up: bench/search_layout.md.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from festive_gpu import synthetic_index  # bench/ is the script's own folder on sys.path

from festive.engine import WEIGHTS_DIR
from festive.v0 import ReferenceIndex, Searcher
from festive.v1.embed import Embedder
from festive.v1.index import dense_to_csr, load_index


def compare(index: ReferenceIndex, queries: np.ndarray, device: str) -> dict[str, Any]:
    q = dense_to_csr(queries)
    out: dict[str, Any] = {"rows": index.matrix.n_rows, "queries": len(queries)}
    hits = {}
    for layout, allow_dense in (("dense", True), ("csr", False)):
        searcher = Searcher(index, device=device, allow_dense=allow_dense)
        searcher.search(q.take(np.arange(min(16, q.n_rows))))  # warm-up
        best = float("inf")
        for _ in range(3):  # best of three: the machine is shared
            if device == "cuda":
                torch.cuda.synchronize()
            start = time.perf_counter()
            hits[layout] = searcher.search(q)
            if device == "cuda":
                torch.cuda.synchronize()
            best = min(best, time.perf_counter() - start)
        out[f"{layout}_ms_per_query"] = 1e3 * best / len(queries)
        del searcher
    out["csr_over_dense"] = out["csr_ms_per_query"] / out["dense_ms_per_query"]
    out["same_best_row"] = float(np.mean([a.row == b.row for a, b in
                                          zip(hits["dense"], hits["csr"], strict=True)]))
    out["max_similarity_difference"] = float(max(abs(a.similarity - b.similarity) for a, b in
                                                 zip(hits["dense"], hits["csr"], strict=True)))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rows", default="100000,1000000")
    parser.add_argument("--queries", type=int, default=256)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--out", type=Path, default=Path(__file__).with_name("search_layout.json"))
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    shipped = load_index(WEIGHTS_DIR / "v1" / "reference.npz", Embedder(device="cpu"))
    own = shipped.matrix.take(rng.choice(shipped.matrix.n_rows, args.queries, replace=False))
    report = {"device": args.device, "torch_threads": torch.get_num_threads(),
              "shipped": compare(shipped, own.to_dense(), args.device)}
    print(json.dumps(report["shipped"]), flush=True)
    for n in (int(r) for r in args.rows.split(",")):
        queries = synthetic_index(args.queries, 128, 100, rng).matrix.to_dense()
        report[f"synthetic_{n}"] = compare(synthetic_index(n, 128, 100, rng), queries,
                                           args.device)
        print(json.dumps(report[f"synthetic_{n}"]), flush=True)
    args.out.write_text(json.dumps(report, indent=1) + "\n")


if __name__ == "__main__":
    main()
