"""The evaluation tasks: which (query, positive, negatives) triples each one asks about.

XO: same compiler and architecture, different optimisation level.
XC: same architecture and optimisation level, different compiler.
XA: same compiler and level, different architecture of the same bitness.
XB: same compiler and level, different bitness (32 vs 64 bit).
XM: any two different builds; negatives from any build.
XV: same compiler, architecture and level, another upstream version of the project.
XVM: another upstream version and another compiler, architecture or level.
For XO..XB the negatives come from the positive's build configuration (across all
projects of the split), so a method cannot win by recognising the configuration.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass

import numpy as np

from festive.data.corpus import Fn

TASKS = ("XO", "XC", "XA", "XB", "XM")
VERSION_TASKS = ("XV", "XVM")
BITS = {"x86_64": 64, "aarch64": 64, "i686": 32, "armhf": 32, "mipsel": 32}


def pair_ok(task: str, a: Fn, b: Fn) -> bool:
    same_c, same_a, same_o = a.compiler == b.compiler, a.arch == b.arch, a.opt == b.opt
    if task == "XO":
        return same_c and same_a and not same_o
    if task == "XC":
        return not same_c and same_a and same_o
    if task == "XA":
        return same_c and same_o and not same_a and BITS[a.arch] == BITS[b.arch]
    if task == "XB":
        return same_c and same_o and BITS[a.arch] != BITS[b.arch]
    if task == "XM":
        return a.build != b.build
    if task == "XV":
        return same_c and same_a and same_o and a.version != b.version
    if task == "XVM":
        return a.version != b.version and not (same_c and same_a and same_o)
    raise ValueError(task)


@dataclass
class Query:
    query: int
    positive: int
    negatives: np.ndarray  # indices into the function list


def make_queries(fns: list[Fn], task: str, n_queries: int = 1000, n_negatives: int = 100,
                 seed: int = 0) -> list[Query]:
    """Up to n_queries triples; identities are used round-robin (one pair per visit)."""
    rng = np.random.default_rng(seed)
    by_identity: dict[str, list[int]] = defaultdict(list)
    by_config: dict[str, list[int]] = defaultdict(list)
    for i, fn in enumerate(fns):
        by_identity[fn.identity].append(i)
        by_config[fn.build].append(i)
    pairs_of: dict[str, list[tuple[int, int]]] = {}
    for identity in sorted(by_identity):
        members = by_identity[identity]
        pairs = [(a, b) for a in members for b in members
                 if a != b and pair_ok(task, fns[a], fns[b])]
        if pairs:
            pairs_of[identity] = [pairs[k] for k in rng.permutation(len(pairs))]
    identities = sorted(pairs_of)
    identities = [identities[k] for k in rng.permutation(len(identities))]
    all_idx = np.arange(len(fns))
    names = sorted(by_identity)
    ident = np.empty(len(fns), dtype=np.int64)
    for k, name in enumerate(names):
        ident[by_identity[name]] = k
    config_pool = {c: np.asarray(v) for c, v in by_config.items()}
    queries: list[Query] = []
    visit = 0
    while len(queries) < n_queries and identities:
        round_idx, slot = divmod(visit, len(identities))
        visit += 1
        pairs = pairs_of[identities[slot]]
        if round_idx >= len(pairs):
            if all(round_idx >= len(pairs_of[i]) for i in identities):
                break
            continue
        q, p = pairs[round_idx]
        pool = config_pool[fns[p].build] if task != "XM" else all_idx
        pool = pool[ident[pool] != ident[q]]
        if len(pool) < n_negatives:
            continue
        negs = rng.choice(pool, size=n_negatives, replace=False)
        queries.append(Query(q, p, negs))
    return queries
