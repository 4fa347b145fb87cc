"""Cross-version retrieval (XV, XVM) on the held-out test projects.

    nice -n 10 python -m festive.eval.versions [--queries 1000] [--out bench/festive_eval_xv]

The same function of a test project in two upstream versions (Debian bookworm's and
sid's, or trixie's where sid's pool lacks it: data/festive/ and data/festive-sid/, built
by festive.data.build with the same recipes), Recall@1 among 1 positive + 100 negatives
with 95% bootstrap CIs, for FESTIVE v1 and the v0 TF-IDF baseline. XV keeps the
toolchain, XVM changes it too. Functions whose body changed between versions stay in:
the task is recognising the function an analyst would name, changed or not.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from festive.data.build import DATA
from festive.data.corpus import load_versions, split_projects
from festive.eval.__main__ import fmt, ranking
from festive.eval.baselines import V0, Dense, Method
from festive.eval.tasks import VERSION_TASKS, make_queries
from festive.v1.card import VERSION
from festive.v1.embed import WEIGHTS, Embedder
from festive.v1.graph import to_graph

SUITES = ("bookworm", "sid")


def derive(func: dict[str, Any], lift: dict[str, Any]) -> dict[str, Any]:
    from festive.features import FeatureConfig, function_tokens

    return {"graph": to_graph(func), "v0_bag": function_tokens(func, FeatureConfig())}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--queries", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="bench/festive_eval_xv")
    args = parser.parse_args(argv)
    projects = split_projects("test")
    fns = load_versions(projects, derive, SUITES)
    embedder = Embedder(WEIGHTS)
    methods: list[Method] = [Dense(f"FESTIVE v1 {VERSION}",
                                   embedder.embed_graphs([f.data["graph"] for f in fns])),
                             V0(fns)]
    versions = sorted({(f.project, f.version) for f in fns})
    out: dict[str, Any] = {"projects": projects, "functions": len(fns),
                           "versions": [f"{p} {v}" for p, v in versions],
                           "builds": sorted({f.build for f in fns}), "tasks": {},
                           "data": str(DATA), "seed": args.seed}
    for task in VERSION_TASKS:
        queries = make_queries(fns, task, args.queries, 100, args.seed)
        out["tasks"][task] = {m.name: ranking(m, queries, args.seed)[0] for m in methods}
    Path(f"{args.out}.json").write_text(json.dumps(out, indent=1) + "\n")
    lines = ["| Recall@1 (1 positive + 100 negatives), 95% CI | " + " | ".join(VERSION_TASKS)
             + " |", "|---" * (len(VERSION_TASKS) + 1) + "|"]
    for m in methods:
        per_task = [out["tasks"][t][m.name] for t in VERSION_TASKS]
        cells = [f"{fmt(r['recall1'])} (n={r['queries']})" for r in per_task]
        lines.append(f"| {m.name} | " + " | ".join(cells) + " |")
    Path(f"{args.out}.table.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    print(", ".join(out["versions"]))


if __name__ == "__main__":
    main()
