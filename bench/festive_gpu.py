"""FESTIVE v1 on CUDA against the CPU: the same answers, and how fast each is.

    python bench/festive_gpu.py --lifted DIR [--out results.json]

Why: the embed stage and the reference search pick CUDA when torch sees a GPU, and CI
never has one. This runs both paths on a GPU machine over real lifted test builds
(DIR/<project>/<config>.json.gz, as festive.data.build writes them) and records:
- parity: embeddings (max abs difference, min cosine) and whole attributions
  (Engine.attribute in a child process with CUDA hidden, compared leaf by leaf);
- embedding throughput per function: one CPU thread, all CPU threads, CUDA;
- search time per query: the Searcher's exact top-32 (int8 rows, as shipped) on the
  shipped index and on a synthetic index of 1M rows, and a dense float16 matmul up to
  10M rows (the scale-out case the brief names). The recorded run (bench/festive_gpu.md)
  predates the int8 layout: it measured the CSR and dense-float32 layouts of the time;
- bf16 (`bf16_effect`): the Embedder at precision bfloat16 against float32, their
  speed, and what they change: the best reference row and family in the shipped index,
  and cross-build retrieval (recall@1 of a function's own name among the other builds of
  its project) with a paired count of the queries that flip: bench/bf16.py's comparison;
- a streamed top-k (`streamed_search`) at 1e7 rows against the memory floor measured on
  the device: rows kept as float16 (or int8 codes), chunks multiplied and cut to k, one
  merge at the end; its time per query batch over the time one read of the rows takes.
Write-up: bench/festive_gpu.md.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from festive.attribution.index import ReferenceIndex  # noqa: E402
from festive.attribution.search import Quantised, Reference, Searcher  # noqa: E402
from festive.v1.embed import Embedder  # noqa: E402
from festive.v1.graph import to_graph  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bf16 import read_lifts  # noqa: E402

GPU = "cuda"  # --dry-run-on-cpu swaps in "cpu"


def sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def timed(fn: Any, repeat: int = 1) -> float:
    """Best wall time of `repeat` runs (after the caller's warm-up)."""
    best = float("inf")
    for _ in range(repeat):
        sync()
        t = time.perf_counter()
        fn()
        sync()
        best = min(best, time.perf_counter() - t)
    return best


def attribute_all(lifted: Path) -> dict[str, Any]:
    """EngineV1 prediction_results per lifted build, on whatever device torch picks."""
    from festive.engine import load_engine

    engine = load_engine("v1")
    results = {"device": engine.device}
    for name, lift in read_lifts(lifted):
        child = {"sha256": name.replace("/", "_").ljust(12, "_"), "name": name, "lift": lift}
        results[name] = engine.attribute([child])
    return results


def compare_leaves(a: Any, b: Any, path: str, out: list[str]) -> int:
    """Count leaves; note those that differ (numbers by more than 2e-3)."""
    if isinstance(a, dict) and isinstance(b, dict):
        n = 0
        for key in sorted(set(a) | set(b)):
            if key not in a or key not in b:
                out.append(f"{path}/{key}: only on one side")
                n += 1
            else:
                n += compare_leaves(a[key], b[key], f"{path}/{key}", out)
        return n
    if a != b:
        try:
            if abs(float(a) - float(b)) <= 2e-3:
                return 1
        except (TypeError, ValueError):
            pass
        out.append(f"{path}: {a!r} vs {b!r}")
    return 1


def engine_parity(lifted: Path) -> dict[str, Any]:
    cmd = [sys.executable, __file__, "--lifted", str(lifted), "--attribute-only"]
    runs = {}
    for label, env in (("cuda", {}), ("cpu", {"CUDA_VISIBLE_DEVICES": ""})):
        t = time.perf_counter()
        proc = subprocess.run(cmd, env={**os.environ, **env}, capture_output=True, text=True,
                              check=True)
        runs[label] = json.loads(proc.stdout.splitlines()[-1])
        runs[label]["_seconds"] = round(time.perf_counter() - t, 1)
    cuda, cpu = runs["cuda"], runs["cpu"]
    diffs: list[str] = []
    samples = [k for k in cpu if k not in ("device", "_seconds")]
    leaves = sum(compare_leaves(cuda[k], cpu[k], k, diffs) for k in samples)
    return {
        "devices": [cuda["device"], cpu["device"]],
        "samples": len(samples),
        "leaves_compared": leaves,
        "leaves_differing": len(diffs),
        "differences": diffs[:20],
        "verdicts": {k: [cuda[k]["verdict"], cpu[k]["verdict"]] for k in samples},
        "functions_matched": {k: [cuda[k]["functions_matched"], cpu[k]["functions_matched"]]
                              for k in samples},
        "process_seconds": {"cuda": cuda["_seconds"], "cpu": cpu["_seconds"]},
    }


def embedding_bench(graphs: list, n_target: int) -> dict[str, Any]:
    reps = (n_target + len(graphs) - 1) // len(graphs)
    many = (graphs * reps)[:n_target]
    cpu = Embedder(device="cpu")
    gpu = Embedder(device=GPU)
    ref = cpu.embed_graphs(graphs)
    got = gpu.embed_graphs(graphs)
    cosine = (ref * got).sum(axis=1)
    out: dict[str, Any] = {
        "functions_distinct": len(graphs),
        "parity_max_abs_diff": float(np.abs(ref - got).max()),
        "parity_min_cosine": float(cosine.min()),
        "norms_cuda": [float(np.linalg.norm(got, axis=1).min()),
                       float(np.linalg.norm(got, axis=1).max())],
    }
    threads = torch.get_num_threads()
    small = many[:4000]
    torch.set_num_threads(1)
    out["cpu_1_thread_ms_per_fn"] = 1e3 * timed(lambda: cpu.embed_graphs(small)) / len(small)
    torch.set_num_threads(threads)
    mid = many[:20000]
    out[f"cpu_{threads}_threads_ms_per_fn"] = 1e3 * timed(lambda: cpu.embed_graphs(mid)) / len(mid)
    for max_blocks in (20000, 200000):
        gpu.embed_graphs(many[:2000], max_blocks=max_blocks)  # warm-up
        sec = timed(lambda mb=max_blocks: gpu.embed_graphs(many, max_blocks=mb), repeat=2)
        out[f"cuda_ms_per_fn_batch_{max_blocks}_blocks"] = 1e3 * sec / len(many)
    # Where CUDA time goes: host-side collate vs the model on the device.
    from festive.v1.model import collate
    batch = many[:5000]
    collate_s = timed(lambda: collate(batch))
    dev = collate(batch).to(GPU)
    with torch.no_grad():
        gpu.model(dev)
        forward_s = timed(lambda: gpu.model(dev), repeat=3)
    out["cuda_5000_fns_collate_ms"] = 1e3 * collate_s
    out["cuda_5000_fns_forward_ms"] = 1e3 * forward_s
    out["functions_timed_cuda"] = len(many)
    out["cpu_threads"] = threads
    return out


def synthetic_index(n_rows: int, dim: int, rng: np.random.Generator) -> Quantised:
    m = rng.standard_normal((n_rows, dim), dtype=np.float32)
    m /= np.linalg.norm(m, axis=1, keepdims=True)
    return Quantised.of(m)


def search_bench(queries: np.ndarray, shipped: ReferenceIndex, synthetic_rows: int,
                 dense_rows: list[int], k: int = 32) -> dict[str, Any]:
    out: dict[str, Any] = {}
    rng = np.random.default_rng(0)
    indexes: list[tuple[str, Reference]] = [
        ("shipped", shipped.vectors),
        ("synthetic", synthetic_index(synthetic_rows, queries.shape[1], rng))]
    for label, ref in indexes:
        for device in (GPU, "cpu"):
            searcher = Searcher(ref, device=device)
            nq = len(queries) if device == "cuda" or label == "shipped" else 512
            sub = queries[:nq]
            searcher.topk(sub[:64], k)  # warm-up
            sec = timed(lambda s=searcher, sub=sub: s.topk(sub, k))
            out[f"searcher_{label}_{searcher.n}_rows_{device}_ms_per_query"] = 1e3 * sec / nq
        if label == "shipped":
            _s, rows_gpu = Searcher(ref, device=GPU).topk(queries, k)
            _s, rows_cpu = Searcher(ref, device="cpu").topk(queries, k)
            same_best = rows_gpu[:, 0] == rows_cpu[:, 0]
            out["searcher_shipped_same_best_row"] = float(np.mean(same_best))
            out["searcher_shipped_same_topk"] = float(np.mean(rows_gpu == rows_cpu))
    # Dense float16 reference on the GPU: top-1 over N rows for 4,096 queries.
    qt = torch.from_numpy(np.ascontiguousarray(queries[:4096])).to(GPU).half()
    for n in dense_rows:
        ref = torch.randn(n, queries.shape[1], device=GPU, dtype=torch.float16)
        ref /= ref.norm(dim=1, keepdim=True)

        def top1(ref: torch.Tensor = ref) -> None:
            for start in range(0, qt.shape[0], 1024):
                (ref @ qt[start:start + 1024].T).max(dim=0)

        top1()
        out[f"dense_fp16_{n}_rows_cuda_ms_per_query"] = 1e3 * timed(top1, repeat=3) / qt.shape[0]
        del ref
    return out


def bf16_effect(graphs: list, keys: list[tuple[str, str, str]], shipped: ReferenceIndex,
                n_target: int) -> dict[str, Any]:
    """The Embedder at precision bfloat16 against float32 on the device: agreement and
    accuracy (bench/bf16.py's comparison), and speed."""
    from bf16 import compare

    models = {precision: Embedder(device=GPU, precision=precision)
              for precision in ("float32", "bfloat16")}
    ref = models["float32"].embed_graphs(graphs)
    low = models["bfloat16"].embed_graphs(graphs)
    out = compare(ref, low, keys, Searcher(shipped.vectors, device=GPU), shipped.row_family)
    reps = (n_target + len(graphs) - 1) // len(graphs)
    many = (graphs * reps)[:n_target]
    from festive.v1.model import collate
    dev = collate(many[:5000]).to(GPU)
    for precision, model in models.items():
        model.embed_graphs(many[:2000], max_blocks=200000)  # warm-up
        sec = timed(lambda m=model: m.embed_graphs(many, max_blocks=200000), repeat=2)
        out[f"{precision}_ms_per_fn_batch_200000_blocks"] = 1e3 * sec / len(many)
        with torch.no_grad(), model.autocast():
            model.model(dev)
            out[f"{precision}_5000_fns_forward_ms"] = 1e3 * timed(
                lambda m=model: m.model(dev), 3)
    return out


def read_floor_ms(rows: torch.Tensor) -> float:
    """The device's own floor for one pass over `rows`: the best time of a reduction that
    reads every byte once (measured, not the data sheet's bandwidth)."""
    flat = rows.view(-1)
    flat.amax()  # warm-up
    return 1e3 * timed(lambda: flat.amax(), repeat=5)


def streamed_topk(rows: torch.Tensor, scale: torch.Tensor | None, queries: torch.Tensor,
                  k: int, chunk: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Top-k rows per query: each chunk of rows multiplied (float16; int8 codes are
    turned to float16 per chunk, exactly, and scaled per row after the product) and cut
    to its k best; one top-k over the kept candidates at the end. (sims, rows)."""
    kept_s, kept_r = [], []
    for start in range(0, rows.shape[0], chunk):
        part = rows[start:start + chunk]
        sims = queries @ (part if part.dtype == queries.dtype else part.to(queries.dtype)).T
        if scale is not None:
            sims = sims * scale[start:start + chunk]
        s, r = torch.topk(sims, min(k, part.shape[0]), dim=1)
        kept_s.append(s)
        kept_r.append(r + start)
    s_all, r_all = torch.cat(kept_s, dim=1), torch.cat(kept_r, dim=1)
    best, where = torch.topk(s_all.float(), min(k, s_all.shape[1]), dim=1)
    return best, r_all.gather(1, where)


def streamed_search(dim: int, n_rows: int, batches: list[int], chunks: list[int],
                    k: int = 32) -> dict[str, Any]:
    """The streamed top-k on n_rows synthetic unit rows, float16 and int8 layouts, for
    query batches of each size, over the measured read floor; the best row checked
    against an exact float32 product on the first query batch and up to 2M rows."""
    out: dict[str, Any] = {"rows": n_rows, "dim": dim, "k": k}
    gen = torch.Generator(device=GPU).manual_seed(0)
    dense = torch.randn(n_rows, dim, device=GPU, generator=gen, dtype=torch.float32)
    dense /= dense.norm(dim=1, keepdim=True)
    peak = dense.abs().amax(dim=1).clamp_min(1e-12)
    scale = (peak / 127.0).float()
    codes = (dense / scale[:, None]).round().clamp(-127, 127).to(torch.int8)
    # queries: noisy copies of rows, so that each has a true best row to find
    pick = torch.randint(0, n_rows, (max(batches),), device=GPU, generator=gen)
    noise = torch.randn(len(pick), dim, device=GPU, generator=gen) / dim ** 0.5
    queries = dense[pick] + 0.3 * noise
    queries /= queries.norm(dim=1, keepdim=True)
    half = dense.half()
    del dense
    layouts = {"float16": (half, None), "int8": (codes, scale)}
    probe = queries[:min(batches)]
    checked = min(n_rows, 2_000_000)  # the exact product's memory stays bounded
    exact_best = (probe.float() @ half[:checked].float().T).argmax(dim=1)
    for label, (rows, row_scale) in layouts.items():
        floor = read_floor_ms(rows)
        out[f"{label}_bytes"] = rows.numel() * rows.element_size()
        out[f"{label}_read_floor_ms"] = floor
        out[f"{label}_read_gb_per_s"] = out[f"{label}_bytes"] / floor / 1e6
        _s, got = streamed_topk(rows[:checked], None if row_scale is None
                                else row_scale[:checked], probe.half(), k, chunks[0])
        out[f"{label}_same_best_row_as_float32_first_{checked}_rows"] = float(
            (got[:, 0] == exact_best).float().mean())
        for batch in batches:
            q = queries[:batch].half()
            for chunk in chunks:
                streamed_topk(rows, row_scale, q, k, chunk)  # warm-up
                ms = 1e3 * timed(lambda r=rows, s=row_scale, q=q, c=chunk:
                                 streamed_topk(r, s, q, k, c), repeat=3)
                key = f"{label}_batch_{batch}_chunk_{chunk}"
                out[f"{key}_ms"] = ms
                out[f"{key}_over_floor"] = ms / floor
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--lifted", type=Path, required=True)
    parser.add_argument("--out", type=Path)
    parser.add_argument("--functions", type=int, default=50000)
    parser.add_argument("--synthetic-rows", type=int, default=1_000_000)
    parser.add_argument("--dense-rows", default="1000000,10000000")
    parser.add_argument("--stream-rows", type=int, default=10_000_000)
    parser.add_argument("--stream-batches", default="16,64,256,1024")
    parser.add_argument("--stream-chunks", default="1048576,4194304")
    parser.add_argument("--only", default="parity,embedding,bf16,search,stream",
                        help="parts to run, comma-separated")
    parser.add_argument("--attribute-only", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--dry-run-on-cpu", action="store_true",
                        help="stand the CPU in for CUDA (a smoke run of this script)")
    args = parser.parse_args()
    global GPU
    if args.dry_run_on_cpu:
        GPU = "cpu"
    if args.attribute_only:
        print(json.dumps(attribute_all(args.lifted)))
        return
    if GPU == "cuda" and not torch.cuda.is_available():
        sys.exit("festive_gpu: torch sees no CUDA device; run this on a GPU machine")
    report: dict[str, Any] = {
        "gpu": torch.cuda.get_device_name(0) if GPU == "cuda" else "none (dry run)",
        "torch": torch.__version__,
        "cpu_count": os.cpu_count(), "python": platform.python_version(),
    }
    lifts = read_lifts(args.lifted)
    named = [(n, f) for n, lift in lifts for f in lift["functions"]
             if len(f.get("blocks", [])) >= 5]
    t = time.perf_counter()
    graphs = [to_graph(f) for _n, f in named]
    keys = [(n.split("/")[0], n, str(f.get("name") or "")) for n, f in named]
    report["builds"] = [n for n, _ in lifts]
    report["features_ms_per_fn"] = 1e3 * (time.perf_counter() - t) / len(graphs)
    print(json.dumps(report), flush=True)
    parts = set(args.only.split(","))

    def done(part: str, result: dict[str, Any]) -> None:
        """Each part is written as it ends: a run cut short keeps what it measured."""
        report[part] = result
        print(json.dumps({part: result})[:3000], flush=True)
        if args.out:
            args.out.write_text(json.dumps(report, indent=1))

    if "parity" in parts:
        done("engine_parity", engine_parity(args.lifted))
    if "embedding" in parts:
        done("embedding", embedding_bench(graphs, args.functions))
    from festive.engine import load_engine
    shipped = load_engine("v1").index
    if "bf16" in parts:
        done("bf16", bf16_effect(graphs, keys, shipped, args.functions))
    if "search" in parts:
        queries = Embedder(device=GPU).embed_graphs(graphs)
        done("search", search_bench(queries, shipped, args.synthetic_rows,
                                    [int(n) for n in args.dense_rows.split(",")]))
    if "stream" in parts:
        done("stream", streamed_search(shipped.vectors.shape[1], args.stream_rows,
                                       [int(n) for n in args.stream_batches.split(",")],
                                       [int(n) for n in args.stream_chunks.split(",")]))

if __name__ == "__main__":
    main()
