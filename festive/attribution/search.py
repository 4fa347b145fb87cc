"""Exact top-k cosine search of query vectors against reference rows (torch; CUDA if present).

Memory stays bounded whatever the index size: reference rows are kept as stored (int8
with a per-row scale, or CSR for sparse models), and only one chunk of `chunk_rows`
rows at a time is turned into float32 and multiplied with one batch of queries; a
running top-k is merged chunk by chunk. The result equals a brute-force search
(tests/test_search.py); ties are broken towards the lower row number.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np

from festive.attribution.csr import Csr, Vectors, dense_rows, n_rows


@dataclass
class Quantised:
    """Dense unit rows stored as int8 codes with one float scale per row."""

    codes: np.ndarray  # int8 (n, d)
    scale: np.ndarray  # float32 (n,)

    @classmethod
    def of(cls, rows: np.ndarray) -> Quantised:
        rows = np.asarray(rows, dtype=np.float32)
        peak = np.abs(rows).max(axis=1) if len(rows) else np.zeros(0, np.float32)
        scale = np.where(peak > 0, peak / 127.0, 1.0).astype(np.float32)
        codes = np.clip(np.rint(rows / scale[:, None]), -127, 127).astype(np.int8)
        return cls(codes, scale)

    @property
    def shape(self) -> tuple[int, int]:
        return self.codes.shape  # type: ignore[return-value]

    def rows(self, start: int, stop: int) -> np.ndarray:
        return self.codes[start:stop].astype(np.float32) * self.scale[start:stop, None]


Reference = Quantised | Csr | np.ndarray


def reference_rows(ref: Reference) -> int:
    return ref.shape[0] if isinstance(ref, Quantised) else n_rows(ref)


CPU_CHUNK_CACHE_BYTES = 512 * 1024 * 1024


class Searcher:
    """top-k over a fixed set of reference rows; rows can be hidden (held-out tests)."""

    def __init__(self, ref: Reference, device: str | None = None, chunk_rows: int = 65536):
        import torch

        self.torch = torch
        self.device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        self.ref = ref
        self.n = reference_rows(ref)
        self.chunk_rows = max(1, chunk_rows)
        self.hidden: np.ndarray | None = None
        self._chunks: dict[int, object] = {}
        # A GPU holds the whole reference (int8 rows are small). On the CPU the float32
        # rows are kept too while they fit in CPU_CHUNK_CACHE_BYTES (the shipped index:
        # 55,093 x 128, 28 MB); dequantising them for every search was most of a search.
        # Beyond that, chunks are made on the fly so that memory stays bounded.
        self._cache_chunks = (self.device != "cpu" or (
            not isinstance(ref, Csr) and self.n * ref.shape[1] * 4 <= CPU_CHUNK_CACHE_BYTES))

    def set_hidden(self, hidden: np.ndarray | None) -> None:
        """Rows (bool mask) never returned by later searches; None shows all rows."""
        if hidden is not None and hidden.shape != (self.n,):
            raise ValueError(f"mask has shape {hidden.shape}, expected ({self.n},)")
        self.hidden = hidden if hidden is not None and hidden.any() else None

    def _chunk(self, start: int, stop: int) -> object:
        torch = self.torch
        cached = self._chunks.get(start)
        if cached is not None:
            return cached
        if isinstance(self.ref, Csr):
            sub = self.ref.take(np.arange(start, stop))
            with warnings.catch_warnings():  # "sparse CSR support is in beta": known
                warnings.simplefilter("ignore")
                chunk = torch.sparse_csr_tensor(
                    torch.from_numpy(sub.indptr), torch.from_numpy(sub.indices.astype(np.int64)),
                    torch.from_numpy(sub.data.astype(np.float32)), size=(stop - start, sub.n_cols),
                    dtype=torch.float32).to(self.device)
        elif isinstance(self.ref, Quantised):
            chunk = torch.from_numpy(self.ref.rows(start, stop)).to(self.device)
        else:
            chunk = torch.from_numpy(np.asarray(self.ref[start:stop], np.float32)).to(self.device)
        if self._cache_chunks:
            self._chunks[start] = chunk
        return chunk

    def topk(self, queries: Vectors, k: int, batch: int = 1024) -> tuple[np.ndarray, np.ndarray]:
        """(similarities float32 (q, k), rows int64 (q, k)), best first; -inf/-1 pad."""
        torch = self.torch
        total = n_rows(queries)
        k = max(1, k)
        out_sims = np.full((total, k), -np.inf, dtype=np.float32)
        out_rows = np.full((total, k), -1, dtype=np.int64)
        for qs in range(0, total, batch):
            qe = min(qs + batch, total)
            q = torch.from_numpy(dense_rows(queries, qs, qe)).to(self.device)
            best_s = torch.full((qe - qs, 0), -float("inf"), device=self.device)
            best_r = torch.zeros((qe - qs, 0), dtype=torch.int64, device=self.device)
            for rs in range(0, self.n, self.chunk_rows):
                re_ = min(rs + self.chunk_rows, self.n)
                chunk = self._chunk(rs, re_)
                if isinstance(self.ref, Csr):
                    sims = torch.sparse.mm(chunk, q.T.contiguous()).T  # type: ignore[arg-type]
                else:
                    sims = q @ chunk.T  # type: ignore[attr-defined]
                sims = sims.clamp(-1.0, 1.0)  # float16/int8 storage can overshoot 1
                if self.hidden is not None:
                    mask = torch.from_numpy(self.hidden[rs:re_]).to(self.device)
                    sims = sims.masked_fill(mask[None, :], -float("inf"))
                kk = min(k, re_ - rs)
                s, r = torch.topk(sims, kk, dim=1)
                best_s = torch.cat([best_s, s], dim=1)
                best_r = torch.cat([best_r, r + rs], dim=1)
                if best_s.shape[1] > k:
                    # stable merge: equal similarities keep the lower row first
                    order = torch.argsort(best_r, dim=1)
                    best_s, best_r = best_s.gather(1, order), best_r.gather(1, order)
                    s2, idx = torch.sort(best_s, dim=1, descending=True, stable=True)
                    best_s, best_r = s2[:, :k], best_r.gather(1, idx)[:, :k]
            width = best_s.shape[1]
            s_np, r_np = best_s.cpu().numpy(), best_r.cpu().numpy()
            r_np[~np.isfinite(s_np)] = -1
            out_sims[qs:qe, :width] = s_np
            out_rows[qs:qe, :width] = r_np
        return out_sims, out_rows


def numpy_topk(ref: Quantised, queries: np.ndarray, k: int, hidden: np.ndarray | None = None,
               chunk_rows: int = 65536, batch: int = 256) -> tuple[np.ndarray, np.ndarray]:
    """Searcher.topk's answer in numpy alone, for processes that never load torch (the
    API's similar-sample index): the same definition, cosine = dot product of the
    dequantised rows clamped to [-1, 1], best first, -inf/-1 pad, rows in `hidden` (bool
    mask) never returned (rows tied exactly at the k-th place may be either of them).
    Memory: one chunk of rows times one batch of queries at a time."""
    queries = np.asarray(queries, dtype=np.float32)
    total, n = len(queries), ref.shape[0]
    k = max(1, k)
    out_s = np.full((total, k), -np.inf, dtype=np.float32)
    out_r = np.full((total, k), -1, dtype=np.int64)
    step = max(1, chunk_rows)
    for qs in range(0, total, max(1, batch)):
        q = queries[qs:qs + max(1, batch)]
        best_s = np.full((len(q), 0), -np.inf, dtype=np.float32)
        best_r = np.zeros((len(q), 0), dtype=np.int64)
        for rs in range(0, n, step):
            re_ = min(rs + step, n)
            sims = np.clip(q @ ref.rows(rs, re_).T, -1.0, 1.0)
            if hidden is not None:
                sims[:, hidden[rs:re_]] = -np.inf
            kk = min(k, re_ - rs)
            if kk < re_ - rs:  # the kk best of the chunk, in row order
                part = np.sort(np.argpartition(-sims, kk - 1, axis=1)[:, :kk], axis=1)
            else:
                part = np.broadcast_to(np.arange(re_ - rs), sims.shape)
            best_s = np.concatenate([best_s, np.take_along_axis(sims, part, 1)], axis=1)
            best_r = np.concatenate([best_r, part + rs], axis=1)
            order = np.argsort(-best_s, axis=1, kind="stable")[:, :k]  # lower row first on ties
            best_s = np.take_along_axis(best_s, order, 1)
            best_r = np.take_along_axis(best_r, order, 1)
        width = best_s.shape[1]
        out_s[qs:qs + len(q), :width] = best_s
        out_r[qs:qs + len(q), :width] = best_r
    out_r[~np.isfinite(out_s)] = -1
    return out_s, out_r
