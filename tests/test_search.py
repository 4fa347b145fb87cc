"""The reference Searcher against a brute-force numpy search, and its memory bound.

Reference rows are stored dense (float32), quantised (int8 + a scale per row, what v1
indexes ship) or sparse (CSR); the top-k rows and similarities must be those of the
plain definition, cosine = dot product of the stored rows, in every layout and
whatever the chunk size.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap

import numpy as np
import pytest

from festive.attribution.csr import Csr
from festive.attribution.search import Quantised, Searcher, numpy_topk


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


@pytest.mark.parametrize("layout", ["dense", "quantised", "sparse"])
@pytest.mark.parametrize("chunk_rows", [64, 100_000])
def test_topk_equals_brute_force(layout: str, chunk_rows: int) -> None:
    rng = np.random.default_rng(7)
    ref = rng.standard_normal((500, 24))
    if layout == "sparse":
        ref[rng.random(ref.shape) < 0.7] = 0.0
        ref[:, 0] += 0.01  # no empty row
    ref = unit_rows(ref)
    queries = unit_rows(ref[rng.integers(0, 500, 60)] + 0.3 * rng.standard_normal((60, 24)))
    stored = {"dense": ref, "quantised": Quantised.of(ref), "sparse": sparse_csr(ref)}[layout]
    plain = stored.rows(0, 500) if isinstance(stored, Quantised) else ref
    searcher = Searcher(stored, device="cpu", chunk_rows=chunk_rows)
    sims, rows = searcher.topk(queries if layout != "sparse" else sparse_csr(queries), k=10,
                               batch=16)

    brute = np.clip(queries @ plain.T, -1, 1)
    expected = np.argsort(-brute, axis=1, kind="stable")[:, :10]
    np.testing.assert_array_equal(rows, expected)
    np.testing.assert_allclose(sims, np.take_along_axis(brute, expected, 1), atol=1e-5)


def test_quantised_rows_stay_close_to_the_originals() -> None:
    rng = np.random.default_rng(1)
    ref = unit_rows(rng.standard_normal((200, 128)))
    q = Quantised.of(ref)
    assert q.codes.dtype == np.int8
    cos = np.sum(q.rows(0, 200) * ref, axis=1) / np.linalg.norm(q.rows(0, 200), axis=1)
    assert cos.min() > 0.9999


def test_hidden_rows_are_never_returned() -> None:
    rng = np.random.default_rng(3)
    ref = unit_rows(rng.standard_normal((40, 8)))
    searcher = Searcher(ref, device="cpu", chunk_rows=16)
    hidden = np.zeros(40, bool)
    hidden[:20] = True
    searcher.set_hidden(hidden)
    sims, rows = searcher.topk(ref[:20], k=5)  # each query's exact twin is hidden
    assert (rows >= 20).all() and (sims < 0.999).all()
    searcher.set_hidden(None)
    _, rows = searcher.topk(ref[:20], k=1)
    assert rows[:, 0].tolist() == list(range(20))
    with pytest.raises(ValueError, match="shape"):
        searcher.set_hidden(np.zeros(3, bool))


def test_fewer_rows_than_k_pads_with_minus_one() -> None:
    ref = unit_rows(np.eye(3, 4) + 0.1)
    sims, rows = Searcher(ref, device="cpu").topk(ref, k=5)
    assert (rows[:, 3:] == -1).all() and np.isneginf(sims[:, 3:]).all()
    assert rows[:, 0].tolist() == [0, 1, 2]


def test_a_small_index_keeps_its_float_rows_and_answers_the_same() -> None:
    """Under CPU_CHUNK_CACHE_BYTES the dequantised rows are kept after the first search;
    the second search, from them, answers exactly as the first."""
    rng = np.random.default_rng(3)
    rows = unit_rows(rng.standard_normal((500, 32)))
    searcher = Searcher(Quantised.of(rows), device="cpu", chunk_rows=128)
    queries = rows[[1, 250, 499]]
    first = searcher.topk(queries, k=5)
    assert len(searcher._chunks) == 4  # 500 rows in chunks of 128, all kept
    second = searcher.topk(queries, k=5)
    assert np.array_equal(first[0], second[0]) and np.array_equal(first[1], second[1])
    assert first[1][:, 0].tolist() == [1, 250, 499]


def test_memory_stays_bounded_on_a_large_index() -> None:
    """3M int8 rows of 128 dims (384 MB) are searched in 64k-row chunks: the process
    grows by far less than a float32 copy of the index (1.5 GB) would take."""
    script = textwrap.dedent("""
        import resource, sys
        import numpy as np
        from festive.attribution.search import Quantised, Searcher
        rng = np.random.default_rng(0)
        n, d = 3_000_000, 128
        codes = rng.integers(-127, 128, size=(n, d), dtype=np.int8)
        index = Quantised(codes, np.full(n, 1 / 127 / np.sqrt(d), np.float32))
        searcher = Searcher(index, device="cpu", chunk_rows=65536)
        queries = np.asarray(codes[[5, 2_999_999]], np.float32)
        queries /= np.linalg.norm(queries, axis=1, keepdims=True)
        searcher.topk(queries[:1], k=4)  # warm-up: torch's own buffers
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        sims, rows = searcher.topk(queries, k=4)
        after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        assert rows[:, 0].tolist() == [5, 2_999_999], rows
        print((after - before) // 1024)
    """)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    grown_mib = int(done.stdout.strip().splitlines()[-1])
    assert grown_mib < 300, f"search grew the process by {grown_mib} MiB"


@pytest.mark.parametrize("chunk_rows", [7, 64, 100_000])
def test_numpy_topk_answers_as_the_searcher(chunk_rows: int) -> None:
    """The API's numpy search (similar samples, no torch) gives the Searcher's answer,
    hidden rows and padding included."""
    rng = np.random.default_rng(11)
    stored = Quantised.of(unit_rows(rng.standard_normal((300, 16))))
    queries = unit_rows(stored.rows(0, 300)[rng.integers(0, 300, 40)]
                        + 0.2 * rng.standard_normal((40, 16)))
    hidden = rng.random(300) < 0.3
    searcher = Searcher(stored, device="cpu", chunk_rows=chunk_rows)
    searcher.set_hidden(hidden)
    want_sims, want_rows = searcher.topk(queries, k=12)
    sims, rows = numpy_topk(stored, queries, 12, hidden=hidden, chunk_rows=chunk_rows, batch=16)
    np.testing.assert_array_equal(rows, want_rows)
    np.testing.assert_allclose(sims, want_sims, atol=1e-5)
    assert not hidden[rows[rows >= 0]].any()
    few = Quantised.of(unit_rows(rng.standard_normal((3, 16))))
    sims, rows = numpy_topk(few, queries[:2], 5)
    assert (rows[:, 3:] == -1).all() and np.isneginf(sims[:, 3:]).all()
