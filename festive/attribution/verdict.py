"""Decide each family on its own evidence: which families does a sample contain?

For every considered sample function the search gives its top-k reference rows. Then,
family by family:
1. the function's best row of that family counts only if that family is (within
   `margin`) the function's best family at all: one function supports one family, or a
   few when their reference code is the same;
2. the similarity becomes a match probability p(similarity, size), a logistic curve per
   function-size bucket fitted on held-out builds (calibrate.py): small functions look
   alike by chance, big ones rarely do;
3. one-to-one: a reference function (family, name) is claimed by at most one sample
   function, the most similar; many fragments or copies of one function count once;
4. each match weighs p x rarity of the reference function (1 / the number of families
   that hold near-identical code), so code that many families share, and generic
   scaffolding that looks alike everywhere, drives nothing;
5. the family's score S is the sum of those weights, and its probability of being
   present is a logistic function of (S, log(1 + S), log(1 + functions considered)),
   fitted on held-out pseudo-samples of every size (calibrate.py).

Families at or above `present` probability are present; between `weak` and `present`
they are listed as weak evidence. The verdict is the most probable present family.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

SIZE_BUCKETS = (5, 8, 16, 32, 64)  # lower bounds, in basic blocks


def sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-np.clip(x, -60.0, 60.0)))


def bucket_of(blocks: np.ndarray) -> np.ndarray:
    return np.searchsorted(np.asarray(SIZE_BUCKETS), blocks, side="right") - 1


@dataclass
class VerdictParams:
    """What calibrate.py measured; stored in the engine's card.json under "verdict"."""

    match_curves: list[list[float]]  # per size bucket: [intercept, slope] on similarity
    family_weights: list[float]  # logistic weights on family_features()
    margin: float = 0.03
    min_match_p: float = 0.5
    present: float = 0.5
    weak: float = 0.1
    top_k: int = 32
    trials: int = 0  # held-out pseudo-samples the calibration ran
    extra: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_card(cls, data: dict[str, Any]) -> VerdictParams:
        known = {k: data[k] for k in ("match_curves", "family_weights", "margin",
                                      "min_match_p", "present", "weak", "top_k", "trials")
                 if k in data}
        return cls(**known)

    def to_card(self) -> dict[str, Any]:
        return {"match_curves": self.match_curves, "family_weights": self.family_weights,
                "margin": self.margin, "min_match_p": self.min_match_p,
                "present": self.present, "weak": self.weak, "top_k": self.top_k,
                "trials": self.trials, **self.extra}

    def match_p(self, sims: np.ndarray, blocks: np.ndarray) -> np.ndarray:
        curves = np.asarray(self.match_curves, dtype=np.float64)
        b = bucket_of(blocks)
        return sigmoid(curves[b, 0] + curves[b, 1] * sims)


def family_features(score: np.ndarray, considered: int | np.ndarray) -> np.ndarray:
    """(n, 4): the inputs of the family-level logistic (intercept first)."""
    score = np.asarray(score, dtype=np.float64)
    n = np.broadcast_to(np.log1p(np.asarray(considered, dtype=np.float64)), score.shape)
    return np.stack([np.ones_like(score), score, np.log1p(score), n], axis=-1)


@dataclass
class Match:
    query: int  # index into the sample's considered functions
    row: int  # reference row
    similarity: float
    p: float  # match probability
    weight: float  # p x rarity


@dataclass
class FamilyEvidence:
    family: int
    score: float
    probability: float
    matches: list[Match]


@dataclass
class ReferenceView:
    """The arrays of the index the verdict needs (kept apart from how they are stored)."""

    row_family: np.ndarray
    row_identity: np.ndarray
    row_rarity: np.ndarray
    n_families: int


def evidence(sims: np.ndarray, rows: np.ndarray, blocks: np.ndarray, ref: ReferenceView,
             params: VerdictParams) -> dict[int, list[Match]]:
    """Matches per family after the margin rule, match probabilities and one-to-one."""
    n, k = rows.shape
    if n == 0:
        return {}
    valid = rows >= 0
    fam = np.where(valid, ref.row_family[np.maximum(rows, 0)], -1)
    best_any = np.where(valid[:, 0], sims[:, 0], -np.inf)
    # first (= best) occurrence of each family in each query's top-k
    q = np.repeat(np.arange(n), k)
    f_flat, s_flat, r_flat = fam.ravel(), sims.ravel(), rows.ravel()
    keep = f_flat >= 0
    key = q[keep] * (ref.n_families + 1) + f_flat[keep]
    _, first = np.unique(key, return_index=True)
    idx = np.flatnonzero(keep)[first]
    q_c, f_c, s_c, r_c = q[idx], f_flat[idx], s_flat[idx], r_flat[idx]
    near_best = s_c >= best_any[q_c] - params.margin
    p_c = params.match_p(s_c, blocks[q_c])
    ok = near_best & (p_c >= params.min_match_p)
    q_c, f_c, s_c, r_c, p_c = q_c[ok], f_c[ok], s_c[ok], r_c[ok], p_c[ok]
    # one-to-one: most similar first; a reference identity is claimed once
    order = np.lexsort((q_c, -s_c))
    q_c, f_c, s_c, r_c, p_c = q_c[order], f_c[order], s_c[order], r_c[order], p_c[order]
    _, first_claim = np.unique(ref.row_identity[r_c], return_index=True)
    claimed = np.zeros(len(r_c), dtype=bool)
    claimed[first_claim] = True
    out: dict[int, list[Match]] = {}
    for i in np.flatnonzero(claimed):
        w = float(p_c[i] * ref.row_rarity[r_c[i]])
        out.setdefault(int(f_c[i]), []).append(
            Match(int(q_c[i]), int(r_c[i]), float(s_c[i]), float(p_c[i]), w))
    for matches in out.values():
        matches.sort(key=lambda m: -m.similarity)
    return out


def decide(sims: np.ndarray, rows: np.ndarray, blocks: np.ndarray, ref: ReferenceView,
           params: VerdictParams) -> list[FamilyEvidence]:
    """Every family with at least one match, most probable first."""
    per_family = evidence(sims, rows, blocks, ref, params)
    if not per_family:
        return []
    fams = sorted(per_family)
    scores = np.asarray([sum(m.weight for m in per_family[f]) for f in fams])
    x = family_features(scores, len(blocks))
    probs = sigmoid(x @ np.asarray(params.family_weights, dtype=np.float64))
    out = [FamilyEvidence(f, float(s), float(p), per_family[f])
           for f, s, p in zip(fams, scores, probs, strict=True)]
    out.sort(key=lambda e: (-e.probability, -e.score, e.family))
    return out


def capped(probability: float, params: VerdictParams) -> float:
    """No more certain than the calibration's held-out trials could show (Laplace)."""
    if params.trials <= 0:
        return probability
    cap = 1.0 - 1.0 / (params.trials + 2)
    return min(probability, cap) if math.isfinite(probability) else 0.0
