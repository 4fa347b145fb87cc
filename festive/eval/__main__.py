"""Evaluate FESTIVE v1 against the baselines on Corpus A's test projects.

    nice -n 19 python -m festive.eval [--queries 1000] [--pool 10000] [--out bench/festive_eval]

Writes <out>.json (every number) and <out>.md (the report table). Fixed seeds.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import platform
import time
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import torch

from festive.data.corpus import Fn, OnlyConfigs, lifted_files, load, read_lift, split_projects
from festive.data.corpus_b import load_corpus_b, test_families
from festive.eval.baselines import (
    V0,
    Dense,
    ExactHash,
    Method,
    Ssdeep,
    Tlsh,
    eval_features,
    opcode_histograms,
)
from festive.eval.metrics import bootstrap_auc, bootstrap_ci, rank_stats
from festive.eval.tasks import TASKS, make_queries
from festive.v1.embed import WEIGHTS, Embedder
from festive.v1.graph import to_graph

ROOT = Path(__file__).resolve().parents[2]


def derive_b(func: dict[str, Any], lift: dict[str, Any]) -> dict[str, Any]:
    """Corpus B lifts carry no function bytes: only the IR-based methods run there."""
    from festive.features import FeatureConfig, function_tokens

    return {"graph": to_graph(func), "v0_bag": function_tokens(func, FeatureConfig())}


def corpus_b_results(embedder: Embedder, n_queries: int, seed: int) -> dict[str, Any]:
    """Debian's own release builds of the test families (4 architectures, gcc, Debian's
    flags): the realistic counterpart of XA/XB/XM, for v1 and v0."""
    families = test_families()
    fns = load_corpus_b(derive_b, families=families)
    emb = embedder.embed_graphs([f.data["graph"] for f in fns])
    methods: list[Method] = [Dense("FESTIVE v1", emb), V0(fns)]
    out: dict[str, Any] = {"families": families, "functions": len(fns),
                           "builds": sorted({f.build for f in fns}), "tasks": {}}
    for task in ("XA", "XB", "XM"):
        queries = make_queries(fns, task, n_queries, 100, seed)
        out["tasks"][task] = {}
        for m in methods:
            out["tasks"][task][m.name] = ranking(m, queries, seed)[0]
    return out


def ranking(method: Method, queries: list, seed: int) -> tuple[dict[str, Any], list[float]]:
    """Recall@1 and MRR@10 with CIs, and each query's Recall@1 (for breakdowns)."""
    r1, mrr = [], []
    for q in queries:
        cands = np.concatenate([[q.positive], q.negatives])
        scores = method.score(q.query, cands)
        a, b = rank_stats(scores[0], scores[1:])
        r1.append(a)
        mrr.append(b)
    return {"recall1": bootstrap_ci(np.asarray(r1), seed=seed),
            "mrr10": bootstrap_ci(np.asarray(mrr), seed=seed), "queries": len(queries)}, r1


def differs(a: Fn, b: Fn) -> str:
    """Which build dimensions differ between two functions, e.g. "arch+opt"."""
    dims = [d for d in ("compiler", "arch", "opt") if getattr(a, d) != getattr(b, d)]
    return "+".join(dims)


def xm_breakdown(fns: list[Fn], queries: list, hits: dict[str, list[float]]
                 ) -> dict[str, dict[str, Any]]:
    """XM Recall@1 split by what differs between query and positive (no CIs: context)."""
    kinds = [differs(fns[q.query], fns[q.positive]) for q in queries]
    out: dict[str, dict[str, Any]] = {}
    for kind in sorted(set(kinds)):
        sel = np.asarray([k == kind for k in kinds])
        out[kind] = {"queries": int(sel.sum()),
                     **{name: round(float(np.asarray(h)[sel].mean()), 3)
                        for name, h in hits.items()}}
    return out


def search(method: Method, fns: list[Fn], queries: list, pool: np.ndarray,
           seed: int) -> dict[str, Any]:
    ident = np.asarray([hash(f.identity) for f in fns])
    hits = []
    for q in queries:
        others = pool[(ident[pool] != ident[q.query])]
        cands = np.concatenate([[q.positive], others])
        scores = method.score(q.query, cands)
        hits.append(rank_stats(scores[0], scores[1:])[0])
    return {"recall1": bootstrap_ci(np.asarray(hits), seed=seed), "queries": len(queries)}


def pair_auc(method: Method, queries: list, seed: int) -> dict[str, Any]:
    pos = np.asarray([method.score(q.query, np.asarray([q.positive]))[0] for q in queries])
    neg = np.asarray([method.score(q.query, q.negatives[:1])[0] for q in queries])
    return {"auc": bootstrap_auc(pos, neg, seed=seed), "pairs": 2 * len(queries)}


def lift_timing(projects: list[str]) -> dict[str, float]:
    seconds = functions = 0.0
    for path in lifted_files(projects):
        lift = read_lift(path)
        seconds += lift["build"]["lift_seconds"]
        functions += len(lift["functions"])
    return {"seconds": seconds, "functions": functions,
            "ms_per_function": 1000 * seconds / max(functions, 1)}


def fmt(ci: tuple[float, float, float]) -> str:
    return f"{ci[0]:.3f} [{ci[1]:.3f}, {ci[2]:.3f}]"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--queries", type=int, default=1000)
    parser.add_argument("--pool", type=int, default=10000)
    parser.add_argument("--slow-search-queries", type=int, default=200,
                        help="search queries for the pure-Python fuzzy hashes (ssdeep, tlsh)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--workers", type=int, default=2, help="processes reading the lifts")
    parser.add_argument("--configs", help="only these builds (compiler-arch-opt, comma list)")
    parser.add_argument("--out", default=str(ROOT / "bench" / "festive_eval"))
    parser.add_argument("--weights", type=Path, default=WEIGHTS,
                        help="v1 weights to evaluate (default: the shipped ones)")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    t0 = time.time()
    projects = split_projects("test")
    only = OnlyConfigs(args.configs.split(",")) if args.configs else None
    fns = load(projects, eval_features, builds=only, workers=args.workers)
    load_seconds = time.time() - t0
    builds = sorted({f.build for f in fns})
    print(f"{len(fns)} test functions, {len(builds)} builds, loaded in {load_seconds:.0f}s",
          flush=True)

    embedder = Embedder(args.weights, device="cpu")
    t = time.time()
    emb = embedder.embed_graphs([f.data["graph"] for f in fns])
    embed_ms = 1000 * (time.time() - t) / len(fns)
    methods: list[Method] = [Dense("FESTIVE v1", emb), V0(fns), ExactHash(fns),
                             opcode_histograms(fns), Tlsh(fns), Ssdeep(fns)]

    rng = np.random.default_rng(args.seed)
    pool = rng.permutation(len(fns))[: args.pool]
    results: dict[str, Any] = {"tasks": {}, "search": {}, "auc": {}}
    task_queries = {task: make_queries(fns, task, args.queries, 100, args.seed) for task in TASKS}
    hits: dict[str, dict[str, list[float]]] = {task: {} for task in TASKS}
    for task, queries in task_queries.items():
        print(f"{task}: {len(queries)} queries", flush=True)
        results["tasks"][task] = {}
        for m in methods:
            results["tasks"][task][m.name], hits[task][m.name] = ranking(m, queries, args.seed)
    xm = task_queries["XM"]
    results["xm_by_difference"] = xm_breakdown(fns, xm, hits["XM"])
    for m in methods:
        t = time.time()
        n = args.slow_search_queries if m.name in ("ssdeep", "tlsh") else len(xm)
        results["search"][m.name] = search(m, fns, xm[:n], pool, args.seed)
        results["auc"][m.name] = pair_auc(m, xm, args.seed)
        print(f"{m.name}: search+auc {time.time() - t:.0f}s", flush=True)

    results["corpus_b"] = corpus_b_results(embedder, args.queries, args.seed)

    results["meta"] = {
        "test_projects": projects,
        "builds": builds,
        "functions": len(fns),
        "identities": len({f.identity for f in fns}),
        "per_project": dict(Counter(f.project for f in fns)),
        "pool_size": int(len(pool)),
        "configs_filter": args.configs,
        "seed": args.seed,
        "lift": lift_timing(projects),
        "embed_ms_per_function_cpu": embed_ms,
        "cpu": platform.processor() or platform.machine(),
        "torch_threads": 1,
        "weights_sha256": hashlib.sha256(args.weights.read_bytes()).hexdigest(),
        "seconds": time.time() - t0,
    }
    Path(args.out + ".json").write_text(json.dumps(results, indent=1))
    write_markdown(results, Path(args.out + ".table.md"))
    print((Path(args.out + ".table.md")).read_text())


def write_markdown(results: dict[str, Any], path: Path) -> None:
    """The numbers only: bench/festive_eval.md quotes and discusses them."""
    names = list(results["search"])
    lines = ["| method | " + " | ".join(f"{t} R@1" for t in TASKS) + " | XM MRR@10 | "
             "XM search R@1 | XM AUC |",
             "|---" * (len(TASKS) + 4) + "|"]
    for name in names:
        cells = [fmt(results["tasks"][t][name]["recall1"]) for t in TASKS]
        cells.append(fmt(results["tasks"]["XM"][name]["mrr10"]))
        cells.append(fmt(results["search"][name]["recall1"]) +
                     f" (n={results['search'][name]['queries']})")
        cells.append(fmt(results["auc"][name]["auc"]))
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    mrr = ["", "| method | " + " | ".join(f"{t} MRR@10" for t in TASKS) + " |",
           "|---" * (len(TASKS) + 1) + "|"]
    for name in names:
        mrr.append(f"| {name} | " + " | ".join(fmt(results["tasks"][t][name]["mrr10"])
                                               for t in TASKS) + " |")
    queries = ", ".join(f"{t}: {results['tasks'][t][names[0]]['queries']}" for t in TASKS)
    split = ["", "XM Recall@1 by what differs between query and positive:", "",
             "| differs | queries | " + " | ".join(names) + " |",
             "|---" * (len(names) + 2) + "|"]
    for kind, row in results["xm_by_difference"].items():
        split.append(f"| {kind} | {row['queries']} | "
                     + " | ".join(f"{row[n]:.3f}" for n in names) + " |")
    b = results["corpus_b"]
    b_names = list(next(iter(b["tasks"].values())))
    corpus_b = ["", f"Corpus B (Debian's builds of {', '.join(b['families'])}; "
                f"{b['functions']} functions), Recall@1:", "",
                "| method | " + " | ".join(f"{t} R@1 (n={b['tasks'][t][b_names[0]]['queries']})"
                                        for t in b["tasks"]) + " |",
                "|---" * (len(b["tasks"]) + 1) + "|"]
    for name in b_names:
        corpus_b.append(f"| {name} | " + " | ".join(fmt(b["tasks"][t][name]["recall1"])
                                                   for t in b["tasks"]) + " |")
    path.write_text("\n".join(lines + mrr) + f"\n\nQueries per task: {queries}.\n"
                    + "\n".join(split + corpus_b) + "\n")


if __name__ == "__main__":
    main()
