"""FESTIVE v0: TF-IDF over VEX-op tokens + structure: the evaluation baseline.

The honest baseline: no learning beyond document frequencies. A function becomes a
sparse vector (sublinear tf x idf x group weight, L2-normalised); similarity is a dot
product. festive.eval fits it on the evaluation's own reference side and scores it
beside v1 (bench/festive_eval.md); it is no longer served (v1 beat it on every task).
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from festive.attribution.csr import Csr
from festive.features import FeatureConfig, function_tokens

INDEX_FORMAT = "festive-v0-index/1"

# Relative weight of each token group before normalisation. Chosen by measurement
# (static-link hold-out recall at 1% out-of-corpus match rate, see card.json): op
# bigrams carry order and are worth twice a unigram; immediates and strings survive
# recompilation; callee names exist only for dynamic imports, so 1.0. (Strings were
# empty in the ae-lift/1 lifts the shipped index was built from, so string tokens are
# not in its vocabulary yet: rebuild the index from ae-lift/2 lifts to use them.)
DEFAULT_GROUP_WEIGHTS: dict[str, float] = {"op": 1.0, "bigram": 2.0, "#": 1.0,
                                           "call": 1.0, "str": 2.0, "k": 2.0}


def token_group(token: str) -> str:
    if token.startswith("#"):
        return "#"
    if token.startswith("call:"):
        return "call"
    if token.startswith("str:"):
        return "str"
    if token.startswith("k:"):
        return "k"
    return "bigram" if ">" in token else "op"


@dataclass
class Vectoriser:
    """Vocabulary + idf fitted on the reference corpus; turns token bags into vectors."""

    vocab: dict[str, int]
    idf: np.ndarray  # float32, len(vocab)
    config: FeatureConfig = field(default_factory=FeatureConfig)
    group_weights: dict[str, float] = field(default_factory=lambda: dict(DEFAULT_GROUP_WEIGHTS))

    @classmethod
    def fit(cls, bags: list[Counter[str]], config: FeatureConfig, min_df: int = 2,
            max_vocab: int = 200_000, group_weights: dict[str, float] | None = None) -> Vectoriser:
        df: Counter[str] = Counter()
        for bag in bags:
            df.update(bag.keys())
        kept = [(tok, n) for tok, n in df.items() if n >= min_df]
        kept.sort(key=lambda item: (-item[1], item[0]))
        kept = kept[:max_vocab]
        n_docs = len(bags)
        vocab = {tok: i for i, (tok, _n) in enumerate(kept)}
        # No "+1": a token present in every function carries no weight at all (measured:
        # with +1 the ubiquitous IR ops make unrelated functions look ~0.7 similar).
        idf = np.array([math.log((1 + n_docs) / (1 + n)) for _tok, n in kept],
                       dtype=np.float32)
        return cls(vocab, idf, config, dict(group_weights or DEFAULT_GROUP_WEIGHTS))

    def bag(self, func: dict[str, Any]) -> Counter[str]:
        return function_tokens(func, self.config)

    def transform(self, bags: list[Counter[str]]) -> Csr:
        """Sublinear tf x idf x group weight, L2-normalised rows (empty rows stay zero)."""
        weights = {g: np.float32(w) for g, w in self.group_weights.items()}
        indptr, indices, data = [0], [], []
        for bag in bags:
            cols, vals = [], []
            for tok, count in bag.items():
                col = self.vocab.get(tok)
                if col is None:
                    continue
                cols.append(col)
                vals.append((1.0 + math.log(count)) * self.idf[col] * weights[token_group(tok)])
            order = np.argsort(cols)
            col_arr = np.asarray(cols, dtype=np.int32)[order]
            val_arr = np.asarray(vals, dtype=np.float32)[order]
            norm = float(np.linalg.norm(val_arr))
            if norm > 0:
                val_arr /= norm
            indices.append(col_arr)
            data.append(val_arr)
            indptr.append(indptr[-1] + len(col_arr))
        return Csr(np.asarray(indptr, dtype=np.int64),
                   np.concatenate(indices) if indices else np.zeros(0, np.int32),
                   np.concatenate(data) if data else np.zeros(0, np.float32),
                   len(self.vocab))

    def vectors(self, functions: list[dict[str, Any]]) -> Csr:
        return self.transform([self.bag(f) for f in functions])
