"""Two v1 weights side by side on the held-out test projects, same queries, one run.

    nice -n 10 python -m festive.eval.compare --previous W_OLD [--current W_NEW]
        [--queries 1000] [--out bench/festive_eval_compare]

Tasks XO/XC/XA/XB/XM (builds of one upstream version: bookworm's) and XV/XVM (the
same function in bookworm's and sid's upstream versions), Recall@1 among 1 positive +
100 negatives with 95% bootstrap CIs, plus the v0 TF-IDF baseline. Both models score
exactly the same query triples (fixed seed), so their difference is the model's.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
from pathlib import Path
from typing import Any

import torch

from festive.data.corpus import Fn, split_projects
from festive.data.corpus import load_versions as load_suites
from festive.eval.__main__ import fmt, ranking
from festive.eval.baselines import V0, Dense, Method
from festive.eval.tasks import TASKS, VERSION_TASKS, make_queries
from festive.eval.versions import SUITES, derive
from festive.v1.embed import WEIGHTS, Embedder


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()[:16]


def _methods(fns: list[Fn], weights: dict[str, Path]) -> list[Method]:
    graphs = [f.data["graph"] for f in fns]
    methods: list[Method] = [Dense(name, Embedder(path, device="cpu").embed_graphs(graphs))
                             for name, path in weights.items()]
    return methods + [V0(fns)]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--previous", type=Path, required=True, help="the previous weights")
    parser.add_argument("--previous-name", default="previous")
    parser.add_argument("--current", type=Path, default=WEIGHTS)
    parser.add_argument("--current-name", default="current")
    parser.add_argument("--queries", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="bench/festive_eval_compare")
    argv = list(argv) if argv is not None else sys.argv[1:]
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    weights = {args.previous_name: args.previous, args.current_name: args.current}
    projects = split_projects("test")
    fns = load_suites(projects, derive, SUITES)
    # XO..XM stay inside one upstream version (bookworm's, the first suite's)
    by_project_first = {f.project: f.version for f in reversed(fns)}
    same_version = [f for f in fns if f.version == by_project_first[f.project]]
    out: dict[str, Any] = {
        "projects": projects, "suites": list(SUITES), "seed": args.seed,
        "weights": {name: {"path": str(p), "sha256_16": _sha(p)} for name, p in weights.items()},
        "functions": len(fns), "builds": sorted({f.build for f in fns}), "tasks": {},
        "command": "python -m festive.eval.compare " + " ".join(argv or []),
    }
    for task_set, pool in ((TASKS, same_version), (VERSION_TASKS, fns)):
        methods = _methods(pool, weights)
        for task in task_set:
            queries = make_queries(pool, task, args.queries, 100, args.seed)
            out["tasks"][task] = {m.name: ranking(m, queries, args.seed)[0] for m in methods}
            print(task, {m: fmt(r["recall1"]) for m, r in out["tasks"][task].items()},
                  flush=True)
    Path(f"{args.out}.json").write_text(json.dumps(out, indent=1) + "\n")
    tasks = list(TASKS) + list(VERSION_TASKS)
    names = list(out["tasks"][tasks[0]])
    lines = ["| Recall@1 (1 positive + 100 negatives), 95% CI | " + " | ".join(tasks) + " |",
             "|---" * (len(tasks) + 1) + "|"]
    for name in names:
        cells = [f"{fmt(out['tasks'][t][name]['recall1'])} (n={out['tasks'][t][name]['queries']})"
                 for t in tasks]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    Path(f"{args.out}.table.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
