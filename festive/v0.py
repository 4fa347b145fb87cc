"""FESTIVE v0: TF-IDF over VEX-op tokens + structure, cosine search against a reference index.

The honest baseline: no learning beyond document frequencies. A function becomes a
sparse vector (sublinear tf x idf x group weight, L2-normalised); similarity is a dot
product. The reference side is a CSR matrix stored as float16 in a compressed npz; the
search runs as one sparse x dense product per query batch (torch; CUDA when present).
"""

from __future__ import annotations

import io
import json
import math
import warnings
import zipfile
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

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
class Csr:
    """Minimal CSR matrix (numpy arrays), row per function."""

    indptr: np.ndarray  # int64, n_rows + 1
    indices: np.ndarray  # int32 column ids
    data: np.ndarray  # float32 values
    n_cols: int

    @property
    def n_rows(self) -> int:
        return len(self.indptr) - 1

    def row(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        lo, hi = self.indptr[i], self.indptr[i + 1]
        return self.indices[lo:hi], self.data[lo:hi]

    def to_dense(self, rows: slice | None = None) -> np.ndarray:
        rows = rows or slice(0, self.n_rows)
        start, stop, _ = rows.indices(self.n_rows)
        out = np.zeros((stop - start, self.n_cols), dtype=np.float32)
        for k, i in enumerate(range(start, stop)):
            idx, val = self.row(i)
            out[k, idx] = val
        return out

    def as_dense(self) -> np.ndarray | None:
        """(n_rows, n_cols) view when every row stores every column in order (v1's
        dense embeddings); None for a truly sparse matrix."""
        n, d = self.n_rows, self.n_cols
        if d == 0 or self.data.size != n * d:
            return None
        if not np.array_equal(self.indptr, np.arange(0, n * d + 1, d)):
            return None
        if not (self.indices.reshape(n, d) == np.arange(d)).all():
            return None
        return self.data.reshape(n, d)

    def take(self, rows: np.ndarray) -> Csr:
        """Sub-matrix of the given rows (in that order)."""
        parts_i, parts_d, indptr = [], [], [0]
        for i in rows:
            idx, val = self.row(int(i))
            parts_i.append(idx)
            parts_d.append(val)
            indptr.append(indptr[-1] + len(idx))
        return Csr(np.asarray(indptr, dtype=np.int64),
                   np.concatenate(parts_i) if parts_i else np.zeros(0, np.int32),
                   np.concatenate(parts_d) if parts_d else np.zeros(0, np.float32),
                   self.n_cols)


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


@dataclass
class ReferenceIndex:
    """Reference vectors + who they are. Rows are labelled reference functions."""

    vectoriser: Vectoriser
    matrix: Csr
    families: list[str]  # family id -> name
    builds: list[str]  # build id -> "zlib1g 1:1.2.13.dfsg-1 amd64"
    build_arch: list[str]  # build id -> "amd64"
    row_family: np.ndarray  # int16 per row
    row_build: np.ndarray  # int16 per row
    row_name: list[str]  # exported symbol name per row
    row_blocks: np.ndarray  # int32 per row
    meta: dict[str, Any] = field(default_factory=dict)

    # -- persistence -------------------------------------------------------------------
    def save(self, path: Path, value_dtype: str = "float16") -> None:
        """One compressed npz: CSR arrays + a JSON blob (vocab, idf order, labels)."""
        header = {
            "format": INDEX_FORMAT,
            "vocab": sorted(self.vectoriser.vocab, key=self.vectoriser.vocab.__getitem__),
            "config": self.vectoriser.config.to_dict(),
            "group_weights": self.vectoriser.group_weights,
            "families": self.families,
            "builds": self.builds,
            "build_arch": self.build_arch,
            "row_name": self.row_name,
            "meta": self.meta,
        }
        col_dtype = np.uint16 if self.matrix.n_cols <= 65536 else np.int32
        arrays = {
            "header": np.frombuffer(json.dumps(header, separators=(",", ":")).encode(),
                                    np.uint8),
            "idf": self.vectoriser.idf.astype(np.float32),
            "row_nnz": np.diff(self.matrix.indptr).astype(np.int32),
            "indices": self.matrix.indices.astype(col_dtype),
            "data": self.matrix.data.astype(value_dtype),
            "row_family": self.row_family.astype(np.int16),
            "row_build": self.row_build.astype(np.int16),
            "row_blocks": self.row_blocks.astype(np.int32),
        }
        # np.savez stamps the current time into the zip: write it by hand with a fixed
        # timestamp so that the same corpus gives the same bytes (and weights_sha256).
        buf = io.BytesIO()
        with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_DEFLATED) as zf:
            for name, array in arrays.items():
                member = io.BytesIO()
                np.lib.format.write_array(member, np.ascontiguousarray(array),
                                          allow_pickle=False)
                info = zipfile.ZipInfo(f"{name}.npy", date_time=(1980, 1, 1, 0, 0, 0))
                info.compress_type = zipfile.ZIP_DEFLATED
                zf.writestr(info, member.getvalue())
        path.write_bytes(buf.getvalue())

    @classmethod
    def load(cls, path: Path) -> ReferenceIndex:
        with np.load(path, allow_pickle=False) as z:
            header = json.loads(z["header"].tobytes().decode())
            if header.get("format") != INDEX_FORMAT:
                raise ValueError(f"{path}: not a {INDEX_FORMAT} file")
            vocab = {tok: i for i, tok in enumerate(header["vocab"])}
            vectoriser = Vectoriser(vocab, z["idf"], FeatureConfig(**header["config"]),
                                    header["group_weights"])
            indptr = np.zeros(len(z["row_nnz"]) + 1, dtype=np.int64)
            np.cumsum(z["row_nnz"], out=indptr[1:])
            matrix = Csr(indptr, z["indices"].astype(np.int32), z["data"].astype(np.float32),
                         len(vocab))
            return cls(vectoriser, matrix, header["families"], header["builds"],
                       header["build_arch"], z["row_family"], z["row_build"],
                       header["row_name"], z["row_blocks"], header.get("meta", {}))


@dataclass
class Hit:
    """Best reference match of one query function, and the best other family."""

    similarity: float
    row: int  # reference row of the best match
    family: int
    runner_up_family: int  # -1 when the index has one family
    runner_up_similarity: float


class Searcher:
    """Cosine search of query vectors against a ReferenceIndex with torch."""

    def __init__(self, index: ReferenceIndex, device: str | None = None,
                 exclude_build: int | None = None, allow_dense: bool = True):
        import torch

        self.torch = torch
        self.index = index
        self.device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        m = index.matrix
        # Dense rows (v1) as a dense matrix: a third of the CSR's memory, and the product
        # a GPU is fast at (bench/search_layout.md). Sparse rows (v0) stay CSR, and so do
        # dense ones with allow_dense=False (the benchmark compares the two layouts).
        dense = m.as_dense() if allow_dense else None
        if dense is not None:
            self.ref = torch.from_numpy(dense).to(self.device, dtype=torch.float32)
        else:
            with warnings.catch_warnings():  # "sparse CSR support is in beta": known, fine
                warnings.simplefilter("ignore")
                self.ref = torch.sparse_csr_tensor(
                    torch.from_numpy(m.indptr), torch.from_numpy(m.indices.astype(np.int64)),
                    torch.from_numpy(m.data), size=(m.n_rows, m.n_cols), dtype=torch.float32,
                ).to(self.device)
        self.dense = dense is not None
        self.row_family = torch.from_numpy(index.row_family.astype(np.int64)).to(self.device)
        self.n_families = len(index.families)
        # Rows hidden from search (leave-one-out evaluation): a -inf bias per row.
        bias = np.zeros(m.n_rows, dtype=np.float32)
        if exclude_build is not None:
            bias[index.row_build == exclude_build] = -np.inf
        self.bias = torch.from_numpy(bias).to(self.device)

    def set_mask(self, hidden_rows: np.ndarray) -> None:
        """Hide the given reference rows (bool mask) from every later search."""
        bias = np.where(hidden_rows, -np.inf, 0.0).astype(np.float32)
        self.bias = self.torch.from_numpy(bias).to(self.device)

    def search(self, queries: Csr, batch: int = 512) -> list[Hit]:
        torch = self.torch
        hits: list[Hit] = []
        for start in range(0, queries.n_rows, batch):
            stop = min(start + batch, queries.n_rows)
            q = torch.from_numpy(queries.to_dense(slice(start, stop))).to(self.device)
            qt = q.T.contiguous()
            # float16 storage can overshoot 1.0 by ~1e-4: clamp to the cosine range.
            product = self.ref @ qt if self.dense else torch.sparse.mm(self.ref, qt)
            sims = product.clamp_(-1.0, 1.0) + self.bias[:, None]
            fam_best = torch.full((self.n_families, stop - start), -math.inf,
                                  device=self.device)
            fam_best = fam_best.scatter_reduce(
                0, self.row_family[:, None].expand_as(sims), sims, reduce="amax")
            best_sim, best_row = sims.max(dim=0)
            top = torch.topk(fam_best, k=min(2, self.n_families), dim=0)
            best_sim, best_row = best_sim.cpu().numpy(), best_row.cpu().numpy()
            top_val, top_idx = top.values.cpu().numpy(), top.indices.cpu().numpy()
            for k in range(stop - start):
                row = int(best_row[k])
                second = 1 if top_val.shape[0] > 1 else None
                hits.append(Hit(
                    similarity=float(best_sim[k]),
                    row=row,
                    family=int(self.index.row_family[row]),
                    runner_up_family=int(top_idx[second, k]) if second else -1,
                    runner_up_similarity=float(top_val[second, k]) if second else -math.inf,
                ))
        return hits
