"""Ranking and pair metrics with bootstrap confidence intervals (numpy only).

Ties are resolved as their expectation under random tie-breaking, so a method that
gives many candidates the same score (an exact hash) is not flattered by candidate order.
"""

from __future__ import annotations

import numpy as np


def rank_stats(pos_score: float, neg_scores: np.ndarray, k: int = 10) -> tuple[float, float]:
    """(expected Recall@1, expected reciprocal rank cut at k) of the positive."""
    greater = int(np.sum(neg_scores > pos_score))
    equal = int(np.sum(neg_scores == pos_score))
    ranks = np.arange(greater + 1, greater + equal + 2)  # equally likely positions
    recall1 = float(np.mean(ranks == 1))
    mrr = float(np.mean(np.where(ranks <= k, 1.0 / ranks, 0.0)))
    return recall1, mrr


def auc(pos: np.ndarray, neg: np.ndarray) -> float:
    """P(score of a positive pair > score of a negative pair), ties count 1/2."""
    scores = np.concatenate([pos, neg])
    order = scores.argsort(kind="mergesort")
    ranks = np.empty(len(scores), dtype=np.float64)
    sorted_scores = scores[order]
    # average ranks for ties
    _, first, counts = np.unique(sorted_scores, return_index=True, return_counts=True)
    avg = first + (counts - 1) / 2.0 + 1.0
    ranks[order] = np.repeat(avg, counts)
    n_pos, n_neg = len(pos), len(neg)
    return float((ranks[:n_pos].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def bootstrap_ci(values: np.ndarray, reps: int = 1000, seed: int = 0,
                 level: float = 0.95) -> tuple[float, float, float]:
    """(mean, low, high): percentile bootstrap of the mean over queries."""
    values = np.asarray(values, dtype=np.float64)
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, len(values), size=(reps, len(values)))
    means = values[idx].mean(axis=1)
    alpha = (1.0 - level) / 2
    low, high = np.quantile(means, alpha), np.quantile(means, 1 - alpha)
    return float(values.mean()), float(low), float(high)


def bootstrap_auc(pos: np.ndarray, neg: np.ndarray, reps: int = 1000, seed: int = 0,
                  level: float = 0.95) -> tuple[float, float, float]:
    """(AUC, low, high), resampling positive and negative pairs independently."""
    rng = np.random.default_rng(seed)
    stats = [auc(pos[rng.integers(0, len(pos), len(pos))], neg[rng.integers(0, len(neg), len(neg))])
             for _ in range(reps)]
    alpha = (1.0 - level) / 2
    return auc(pos, neg), float(np.quantile(stats, alpha)), float(np.quantile(stats, 1 - alpha))


RELIABILITY_EDGES = (0.0, 0.1, 0.3, 0.5, 0.7, 0.9, 0.97, 1.0001)


def reliability_table(probs: np.ndarray, present: np.ndarray) -> list[dict[str, object]]:
    """Reported probabilities in bins against how often the thing was present."""
    probs, present = np.asarray(probs, dtype=np.float64), np.asarray(present, dtype=np.float64)
    table: list[dict[str, object]] = []
    for lo, hi in zip(RELIABILITY_EDGES[:-1], RELIABILITY_EDGES[1:], strict=True):
        sel = (probs >= lo) & (probs < hi)
        if sel.any():
            table.append({"bin": f"[{lo:.2f}, {min(hi, 1.0):.2f})", "n": int(sel.sum()),
                          "mean_probability": round(float(probs[sel].mean()), 4),
                          "observed_present": round(float(present[sel].mean()), 4)})
    return table
