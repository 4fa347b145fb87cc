"""A minimal CSR matrix of numpy arrays: one row per function (v0's sparse TF-IDF rows)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass
class Csr:
    """Rows of (column, value) pairs; `n_cols` columns."""

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
        """(rows, n_cols) float32 array of the given row range (all rows by default)."""
        start, stop, _ = (rows or slice(0, self.n_rows)).indices(self.n_rows)
        lo, hi = int(self.indptr[start]), int(self.indptr[stop])
        out = np.zeros((stop - start, self.n_cols), dtype=np.float32)
        row_of = np.repeat(np.arange(stop - start), np.diff(self.indptr[start:stop + 1]))
        out[row_of, self.indices[lo:hi]] = self.data[lo:hi]
        return out

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


Vectors = Csr | np.ndarray  # what a model returns: sparse rows (v0) or dense unit rows (v1)


def n_rows(vectors: Vectors) -> int:
    return vectors.n_rows if isinstance(vectors, Csr) else int(vectors.shape[0])


def dense_rows(vectors: Vectors, start: int, stop: int) -> np.ndarray:
    """Rows [start, stop) as a dense float32 array."""
    if isinstance(vectors, Csr):
        return vectors.to_dense(slice(start, stop))
    return np.asarray(vectors[start:stop], dtype=np.float32)


def take_rows(vectors: Vectors, rows: np.ndarray) -> Vectors:
    return vectors.take(rows) if isinstance(vectors, Csr) else vectors[rows]
