"""The reference Searcher against a brute-force numpy search, for both index layouts.

v1 indexes hold dense unit rows (searched as a dense matrix), v0 indexes sparse TF-IDF
rows (searched as CSR); both must give the same best match, family and runner-up as the
plain definition: cosine = dot product of unit rows, best per family.
"""

from __future__ import annotations

import numpy as np
import pytest

from festive.v0 import Csr, ReferenceIndex, Searcher
from festive.v1.index import dense_to_csr


def unit_rows(m: np.ndarray) -> np.ndarray:
    return (m / np.linalg.norm(m, axis=1, keepdims=True)).astype(np.float32)


def sparse_csr(m: np.ndarray) -> Csr:
    indptr, indices, data = [0], [], []
    for row in m:
        nz = np.flatnonzero(row)
        indices.extend(nz)
        data.extend(row[nz])
        indptr.append(len(indices))
    return Csr(np.asarray(indptr, np.int64), np.asarray(indices, np.int32),
               np.asarray(data, np.float32), m.shape[1])


def index_of(matrix: Csr, families: np.ndarray) -> ReferenceIndex:
    n = matrix.n_rows
    return ReferenceIndex(None, matrix, ["a", "b", "c", "d"], ["b0"], ["amd64"],  # type: ignore[arg-type]
                          families.astype(np.int16), np.zeros(n, np.int16), [""] * n,
                          np.zeros(n, np.int32))


@pytest.mark.parametrize("layout", ["dense", "dense-as-csr", "sparse"])
def test_searcher_matches_brute_force(layout: str) -> None:
    rng = np.random.default_rng(7)
    ref = rng.standard_normal((300, 24))
    if layout == "sparse":
        ref[rng.random(ref.shape) < 0.7] = 0.0
        ref[:, 0] += 0.01  # no empty row
    ref = unit_rows(ref)
    queries = unit_rows(ref[rng.integers(0, 300, 50)] + 0.3 * rng.standard_normal((50, 24)))
    families = rng.integers(0, 4, 300)
    matrix = sparse_csr(ref) if layout == "sparse" else dense_to_csr(ref)
    assert (matrix.as_dense() is not None) == (layout != "sparse")

    searcher = Searcher(index_of(matrix, families), device="cpu",
                        allow_dense=layout != "dense-as-csr")
    assert searcher.dense == (layout == "dense")
    hits = searcher.search(dense_to_csr(queries), batch=16)

    sims = np.clip(ref @ queries.T, -1, 1)
    for k, hit in enumerate(hits):
        assert hit.row == int(np.argmax(sims[:, k]))
        assert hit.similarity == pytest.approx(sims[:, k].max(), abs=1e-5)
        per_family = [sims[families == f, k].max() for f in range(4)]
        order = np.argsort(per_family)[::-1]
        assert hit.family == order[0]
        assert hit.runner_up_family == order[1]
        assert hit.runner_up_similarity == pytest.approx(per_family[order[1]], abs=1e-5)


def test_hidden_rows_are_never_returned() -> None:
    rng = np.random.default_rng(3)
    ref = unit_rows(rng.standard_normal((40, 8)))
    searcher = Searcher(index_of(dense_to_csr(ref), rng.integers(0, 4, 40)), device="cpu")
    hidden = np.zeros(40, bool)
    hidden[:20] = True
    searcher.set_mask(hidden)
    hits = searcher.search(dense_to_csr(ref[:20]))  # each query's exact twin is hidden
    assert all(hit.row >= 20 for hit in hits)
