"""Fit the verdict's parameters on held-out reference builds, and say how well they do.

Rows are the reference functions before near-duplicates are merged: one per labelled
function of every build. A build b of family F is "held out" by hiding F's rows of
every build that shares b's upstream version or b's toolchain configuration (F's
other versions built by other configurations stay: a sample of a version and a
toolchain the reference does not hold). Code of families hidden entirely behaves as
code no reference holds.

1. Neighbours: every row's top-k rows of other families and of its own family, once.
   Every later experiment filters these lists by its hidden rows instead of searching
   again (exact as long as fewer than k hidden rows outrank the best visible one).
2. Match curves: per size bucket, a logistic p(genuine | similarity) from held-out
   same-name matches (positives) against best matches of code from hidden families.
3. Rarity: 1 / (1 + the number of other families holding a row that matches it with
   p >= min_match_p): shared code weighs less.
4. Pseudo-samples: a held-out build of a family, alone or inside host code of 1 to 12
   builds of hidden families; and host code alone, up to 24 builds (the large
   negatives). The verdict's own `evidence` scores every family; a logistic on
   family_features(score, size) is fitted to "present or not".
5. Report: the same fit made on half of the families and tested on the other half
   (precision, recall, reliability table), then the final fit on all.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from festive.attribution.csr import Vectors, take_rows
from festive.attribution.search import Searcher
from festive.attribution.verdict import (
    SIZE_BUCKETS,
    ReferenceView,
    VerdictParams,
    bucket_of,
    evidence,
    family_features,
    sigmoid,
)
from festive.eval.metrics import reliability_table

K_OTHER = 96
K_OWN = 48


@dataclass
class Rows:
    """Unmerged reference rows with their labels."""

    vectors: Vectors
    family: np.ndarray  # int per row
    build: np.ndarray  # int per row
    name: list[str]
    blocks: np.ndarray
    families: list[str]
    build_version: list[str]  # build id -> upstream version
    build_config: list[str]  # build id -> "gcc-x86_64-O2"
    build_family: list[int]
    # family -> families whose code it contains (lz4 carries xxhash): not false alarms
    embeds: dict[str, list[str]] = field(default_factory=dict)

    def identities(self) -> np.ndarray:
        seen: dict[tuple[int, str], int] = {}
        return np.asarray([seen.setdefault((int(f), n), len(seen))
                           for f, n in zip(self.family, self.name, strict=True)], np.int64)


@dataclass
class Neighbours:
    sims: np.ndarray  # (n, K_OWN + K_OTHER) float32
    rows: np.ndarray  # (n, K_OWN + K_OTHER) int64, -1 = none


def neighbours(rows: Rows, device: str | None = None, log: Any = print) -> Neighbours:
    n = len(rows.family)
    sims = np.full((n, K_OWN + K_OTHER), -np.inf, np.float32)
    idx = np.full((n, K_OWN + K_OTHER), -1, np.int64)
    everything = Searcher(rows.vectors, device=device)
    for f in range(len(rows.families)):
        mine = np.flatnonzero(rows.family == f)
        if len(mine) == 0:
            continue
        queries = take_rows(rows.vectors, mine)
        own = Searcher(take_rows(rows.vectors, mine), device=device)
        s, r = own.topk(queries, K_OWN)
        sims[mine, :K_OWN] = s
        idx[mine, :K_OWN] = np.where(r >= 0, mine[np.maximum(r, 0)], -1)
        everything.set_hidden(rows.family == f)
        s, r = everything.topk(queries, K_OTHER)
        sims[mine, K_OWN:] = s
        idx[mine, K_OWN:] = r
        log(f"[calibrate] neighbours {rows.families[f]}: {len(mine)} rows")
    return Neighbours(sims, idx)


def held_out_rows(rows: Rows, build: int) -> np.ndarray:
    """Rows hidden when `build` is the sample. Its family's builds of another version
    by another configuration stay visible; where the family has none, those of another
    version (same configuration), else those of another configuration."""
    f = rows.build_family[build]
    mine = [b for b in range(len(rows.build_family)) if rows.build_family[b] == f]
    other_version = {b for b in mine if rows.build_version[b] != rows.build_version[build]}
    other_config = {b for b in mine if rows.build_config[b] != rows.build_config[build]}
    visible = (other_version & other_config) or other_version or other_config
    hide = np.zeros(len(rows.build_family), dtype=bool)
    hide[[b for b in mine if b not in visible]] = True
    return hide[rows.build]


def candidates(nb: Neighbours, query_rows: np.ndarray, hidden: np.ndarray, k: int
               ) -> tuple[np.ndarray, np.ndarray]:
    """The top-k visible rows of each query row, from its precomputed neighbours."""
    s = nb.sims[query_rows].copy()
    r = nb.rows[query_rows]
    s[(r < 0) | hidden[np.maximum(r, 0)]] = -np.inf
    order = np.argsort(-s, axis=1, kind="stable")[:, :k]
    s = np.take_along_axis(s, order, axis=1)
    r = np.take_along_axis(r, order, axis=1)
    return s, np.where(np.isfinite(s), r, -1)


def fit_logistic(x: np.ndarray, y: np.ndarray, weights: np.ndarray | None = None,
                 l2: float = 1e-3, steps: int = 50) -> np.ndarray:
    """Weighted logistic regression by Newton's method (x carries its intercept column)."""
    w_s = np.ones(len(y)) if weights is None else weights
    beta = np.zeros(x.shape[1])
    for _ in range(steps):
        p = sigmoid(x @ beta)
        grad = x.T @ (w_s * (p - y)) + l2 * beta
        hess = (x * (w_s * p * (1 - p))[:, None]).T @ x + l2 * np.eye(x.shape[1])
        step = np.linalg.solve(hess, grad)
        beta -= step
        if np.abs(step).max() < 1e-8:
            break
    return beta


def balanced(y: np.ndarray) -> np.ndarray:
    pos = max(int(y.sum()), 1)
    neg = max(int(len(y) - y.sum()), 1)
    return np.where(y > 0, 0.5 / pos, 0.5 / neg) * len(y)


def match_curves(rows: Rows, nb: Neighbours, rng: np.random.Generator,
                 max_per_class: int = 20000) -> tuple[list[list[float]], dict[str, Any]]:
    names = np.asarray(rows.name)
    pos_s, pos_b, neg_s, neg_b = [], [], [], []
    for b in range(len(rows.build_family)):
        mine = np.flatnonzero(rows.build == b)
        if len(mine) == 0:
            continue
        hidden = held_out_rows(rows, b)
        s, r = candidates(nb, mine, hidden, 1)
        own = (r[:, 0] >= 0) & (rows.family[np.maximum(r[:, 0], 0)] == rows.build_family[b])
        same = own & (names[np.maximum(r[:, 0], 0)] == names[mine])
        pos_s.append(s[same, 0])
        pos_b.append(rows.blocks[mine][same])
        # the same functions as code of an unknown family: best of the other families
        other = nb.sims[mine, K_OWN]
        fin = np.isfinite(other)
        neg_s.append(other[fin])
        neg_b.append(rows.blocks[mine][fin])
    ps, pb = np.concatenate(pos_s), np.concatenate(pos_b)
    ns, nbk = np.concatenate(neg_s), np.concatenate(neg_b)
    curves, report = [], {}
    for k, lo in enumerate(SIZE_BUCKETS):
        sp, sn = ps[bucket_of(pb) == k], ns[bucket_of(nbk) == k]
        if len(sp) > max_per_class:
            sp = rng.choice(sp, max_per_class, replace=False)
        if len(sn) > max_per_class:
            sn = rng.choice(sn, max_per_class, replace=False)
        s = np.concatenate([sp, sn]).astype(np.float64)
        y = np.concatenate([np.ones(len(sp)), np.zeros(len(sn))])
        beta = fit_logistic(np.stack([np.ones_like(s), s], axis=1), y, balanced(y))
        curves.append([float(beta[0]), float(beta[1])])
        mid = -beta[0] / beta[1] if beta[1] else float("nan")
        report[f">={lo} blocks"] = {
            "positives": int(len(sp)), "negatives": int(len(sn)),
            "similarity_at_p_0.5": round(float(mid), 4),
            "positive_median": round(float(np.median(sp)), 4) if len(sp) else None,
            "negative_p99": round(float(np.quantile(sn, 0.99)), 4) if len(sn) else None,
        }
    return curves, report


def rarity(rows: Rows, nb: Neighbours, params: VerdictParams) -> np.ndarray:
    """1 / (1 + other families holding a row that matches this one)."""
    s, r = nb.sims[:, K_OWN:], nb.rows[:, K_OWN:]
    blocks = np.repeat(rows.blocks[:, None], s.shape[1], axis=1)
    p = params.match_p(np.where(np.isfinite(s), s, -1.0), blocks)
    fam = np.where(r >= 0, rows.family[np.maximum(r, 0)], -1)
    out = np.ones(len(rows.family), np.float32)
    strong = (p >= params.min_match_p) & (fam >= 0)
    for i in np.flatnonzero(strong.any(axis=1)):
        out[i] = 1.0 / (1 + len(set(fam[i][strong[i]].tolist())))
    return out


@dataclass
class Trial:
    present: list[int]  # families present (held-out builds)
    features: np.ndarray  # (families with evidence, 4)
    families: np.ndarray  # their ids
    labels: np.ndarray  # 1 present, 0 absent
    size: int


SMALL_SAMPLE_SIZES = (2, 3, 5, 8, 13, 21)  # judged functions in the small pseudo-samples


def pseudo_samples(rows: Rows, nb: Neighbours, view: ReferenceView, params: VerdictParams,
                   rng: np.random.Generator, log: Any = print) -> list[Trial]:
    n_fam = len(rows.families)
    by_family: dict[int, list[int]] = {}
    for b, f in enumerate(rows.build_family):
        if (rows.build == b).any():
            by_family.setdefault(f, []).append(b)
    related = {f: {rows.families.index(e) for e in rows.embeds.get(name, [])
                   if e in rows.families} for f, name in enumerate(rows.families)}
    for f in range(n_fam):  # symmetric: hosts never carry a present family's code
        for e in list(related[f]):
            related.setdefault(e, set()).add(f)

    def run(present: list[int], hosts: list[int], size: int | None = None) -> Trial:
        hidden = np.zeros(len(rows.family), dtype=bool)
        for b in present:
            hidden |= held_out_rows(rows, b)
        for b in hosts:
            hidden |= rows.family == rows.build_family[b]
        query = np.flatnonzero(np.isin(rows.build, present + hosts))
        if size is not None and size < len(query):  # a small sample: a few functions
            query = np.sort(rng.choice(query, size, replace=False))
        s, r = candidates(nb, query, hidden, params.top_k)
        ev = evidence(s, r, rows.blocks[query], view, params)
        fams = np.asarray(sorted(ev), dtype=np.int64)
        scores = np.asarray([sum((m.weight for m in ev[int(f)]), 0.0) for f in fams])
        truth = {rows.build_family[b] for b in present}
        # code the present and host families carry of other families (lz4's xxhash) is
        # really there: neither a hit nor a false alarm
        carried = truth | {rows.build_family[b] for b in hosts}
        ignore = set().union(*[related.get(f, set()) for f in carried]) - truth
        keep = np.asarray([f not in ignore for f in fams], dtype=bool)
        fams, scores = fams[keep], scores[keep]
        return Trial(sorted(truth), family_features(scores, len(query)), fams,
                     np.asarray([f in truth for f in fams], dtype=np.float64), len(query))

    trials = []
    families = sorted(by_family)
    for f in families:
        others = [g for g in families if g != f and g not in related.get(f, set())]
        for b in by_family[f]:
            n_hosts = int(rng.choice([0, 1, 4, 12]))
            hosts = [int(rng.choice(by_family[g]))
                     for g in rng.choice(others, min(n_hosts, len(others)), replace=False)]
            trials.append(run([b], hosts))
    for n_hosts in [1, 2, 4, 8, 12, 16, 24] * 24:
        pick = rng.choice(families, min(n_hosts, len(families)), replace=False)
        hosts = [int(rng.choice(by_family[g])) for g in pick]
        trials.append(run([], hosts))
    # Small samples (a tool of a few functions, a program using a handful of a library's
    # functions): without them the fit extrapolates to N of 2 or 3 and one chance match
    # made a family present.
    for size in SMALL_SAMPLE_SIZES:
        for f in families:
            trials.append(run([int(rng.choice(by_family[f]))], [], size))
        for _ in range(len(families)):
            pick = rng.choice(families, 2, replace=False)
            trials.append(run([], [int(rng.choice(by_family[g])) for g in pick], size))
    log(f"[calibrate] {len(trials)} pseudo-samples")
    return trials


def fit_families(trials: list[Trial]) -> np.ndarray:
    """Unweighted: the probabilities then match how often a family with such evidence
    was present in the pseudo-samples (the reliability tables check it)."""
    x = np.concatenate([t.features for t in trials])
    y = np.concatenate([t.labels for t in trials])
    return fit_logistic(x, y)


def assess(trials: list[Trial], weights: np.ndarray, present: float) -> dict[str, Any]:
    """Family-present precision/recall per trial, and a reliability table."""
    tp = fp = fn = 0
    neg_unknown, negatives = 0, 0
    probs: list[float] = []
    labels: list[int] = []
    for t in trials:
        p = sigmoid(t.features @ weights) if len(t.families) else np.zeros(0)
        said = {int(f) for f, q in zip(t.families, p, strict=True) if q >= present}
        truth = set(t.present)
        tp += len(said & truth)
        fp += len(said - truth)
        fn += len(truth - said)
        if not truth:
            negatives += 1
            neg_unknown += not said
        probs.extend(p.tolist())
        labels.extend(t.labels.tolist())
    return {
        "samples": len(trials),
        "precision": round(tp / (tp + fp), 4) if tp + fp else None,
        "recall": round(tp / (tp + fn), 4) if tp + fn else None,
        "negatives_unknown": round(neg_unknown / negatives, 4) if negatives else None,
        "reliability": reliability_table(np.asarray(probs), np.asarray(labels)),
    }


def choose_present(trials: list[Trial], weights: np.ndarray,
                   target_precision: float = 0.95) -> float:
    """The lowest probability cut (>= 0.5) whose held-out precision reaches the target."""
    for cut in [0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 0.98]:
        precision = assess(trials, weights, cut)["precision"]
        if precision is None or precision >= target_precision:
            return cut
    return 0.99


def calibrate(rows: Rows, seed: int = 0, device: str | None = None,
              log: Any = print) -> tuple[VerdictParams, np.ndarray, dict[str, Any]]:
    """Verdict parameters, the rarity of every (unmerged) row, and the report."""
    rng = np.random.default_rng(seed)
    nb = neighbours(rows, device, log)
    params = VerdictParams(match_curves=[], family_weights=[0.0, 0.0, 0.0, 0.0])
    params.match_curves, curve_report = match_curves(rows, nb, rng)
    row_rarity = rarity(rows, nb, params)
    view = ReferenceView(rows.family, rows.identities(), row_rarity, len(rows.families))
    trials = pseudo_samples(rows, nb, view, params, rng, log)
    # half of the families fitted, the other half tested (and the other way round)
    fams = np.asarray(sorted({f for t in trials for f in t.present}))
    half = set(rng.permutation(fams)[: len(fams) // 2].tolist())
    fold_a = [t for t in trials if t.present and t.present[0] in half]
    fold_b = [t for t in trials if t.present and t.present[0] not in half]
    negs = [t for t in trials if not t.present]
    neg_a, neg_b = negs[::2], negs[1::2]
    held_out = []
    for train, test in ((fold_a + neg_a, fold_b + neg_b), (fold_b + neg_b, fold_a + neg_a)):
        held_out.append((fit_families(train), test))
    weights = fit_families(trials)
    params.family_weights = [float(w) for w in weights]
    params.present = max(choose_present(t, w) for w, t in held_out)
    params.trials = len(trials)
    report = {
        "rows": int(len(rows.family)),
        "match_curves": curve_report,
        "shared_rows": int((row_rarity < 1).sum()),
        "cross_validated": [assess(t, w, params.present) for w, t in held_out],
        "fit_on_all": assess(trials, weights, params.present),
        "present_threshold": params.present,
        "method": "families split in two halves: fit on one half's pseudo-samples, "
                  "tested on the other's (both ways); then fit on all",
    }
    return params, row_rarity, report
