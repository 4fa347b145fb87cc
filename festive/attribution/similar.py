"""Similar samples: a function-level index over every analysed sample, searched like the
reference index (numpy only: the API holds it, and the API never loads torch).

Each analysed sample's considered functions are stored as int8 rows with one scale per
row (search.Quantised), with their addresses, names and basic-block counts, in an npz
(no pickles) that the persist stage writes into the database table `sample_functions`.
An API process keeps a `SimilarIndex` per (model, weights): it adds the rows newer than
those it holds, searches them with `numpy_topk`, and ranks the other samples by the
functions they share with the one asked about:

- each function of the sample (or the one function asked about) finds its `neighbours`
  nearest functions among every other sample's, those at or above `min_similarity`
  count;
- one-to-one per other sample: most similar pair first, a function on either side is
  paired once (many copies of one function count once);
- a sample's score is the sum of its pairs' similarities (the number of shared functions
  weighted by how alike they are); ties by the number of pairs, then sha256.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from festive import npz
from festive.attribution.search import Quantised, numpy_topk

FORMAT = "festive-sample-functions/1"
NEIGHBOURS = 64  # nearest functions looked at per query function
COMPACT_AFTER = 8  # segments held before they are merged into one


@dataclass
class Function:
    child_sha256: str  # the binary inside the sample (the sample itself unless an archive)
    address: str  # as in prediction_results' matches, e.g. 0x401136
    name: str
    blocks: int


@dataclass
class SampleFunctions:
    """One sample's considered functions and their vectors (int8 rows, a scale each)."""

    vectors: Quantised
    functions: list[Function]
    weights_sha256: str  # the model weights that made the vectors

    @classmethod
    def of(cls, vectors: np.ndarray, functions: list[Function],
           weights_sha256: str) -> SampleFunctions:
        if len(vectors) != len(functions):
            raise ValueError(f"{len(vectors)} vectors for {len(functions)} functions")
        return cls(Quantised.of(vectors), functions, weights_sha256)


def encode(sample: SampleFunctions) -> bytes:
    children = sorted({f.child_sha256 for f in sample.functions})
    position = {c: i for i, c in enumerate(children)}
    header = {"weights_sha256": sample.weights_sha256, "children": children,
              "functions": [[position[f.child_sha256], f.address, f.name]
                            for f in sample.functions]}
    return npz.pack(FORMAT, header, codes=sample.vectors.codes, scale=sample.vectors.scale,
                    blocks=np.asarray([f.blocks for f in sample.functions], np.int32))


def decode(data: bytes) -> SampleFunctions:
    header, arrays = npz.unpack(data, FORMAT)
    children = header["children"]
    blocks = arrays["blocks"].astype(np.int64)
    functions = [Function(children[c], str(addr), str(name), int(b))
                 for (c, addr, name), b in zip(header["functions"], blocks, strict=True)]
    vectors = Quantised(arrays["codes"].astype(np.int8), arrays["scale"].astype(np.float32))
    if vectors.codes.ndim != 2 or len(vectors.codes) != len(functions):
        raise ValueError("sample functions: vectors and functions differ in number")
    return SampleFunctions(vectors, functions, str(header["weights_sha256"]))


@dataclass
class Entry:
    """A sample the index holds: its database row id and functions."""

    row_id: int
    sha256: str
    functions: list[Function]
    alive: bool = True


@dataclass
class Segment:
    vectors: Quantised
    entry: np.ndarray  # int64 per row: index into SimilarIndex.entries
    function: np.ndarray  # int64 per row: index into that entry's functions


@dataclass
class SharedFunction:
    function: Function  # of the sample asked about
    other: Function  # of the similar sample
    similarity: float


@dataclass
class SimilarSample:
    sha256: str
    row_id: int
    score: float
    shared: list[SharedFunction]


@dataclass
class SimilarIndex:
    """Every held sample's function rows, in segments added as rows arrive."""

    entries: list[Entry] = field(default_factory=list)
    segments: list[Segment] = field(default_factory=list)
    newest_id: int = 0  # the highest row id held
    by_sha: dict[str, int] = field(default_factory=dict)

    @property
    def rows(self) -> int:
        return sum(s.vectors.shape[0] for s in self.segments)

    def add(self, rows: list[tuple[int, str, SampleFunctions]]) -> None:
        """Hold these (row id, sha256, functions); a sample held before is replaced."""
        codes, scales, entry_of, function_of = [], [], [], []
        for row_id, sha256, sample in rows:
            self.newest_id = max(self.newest_id, row_id)
            old = self.by_sha.get(sha256)
            if old is not None and self.entries[old].row_id >= row_id:
                continue  # this row is not newer than the one held
            if old is not None:
                self.entries[old].alive = False
            self.by_sha[sha256] = len(self.entries)
            n = len(sample.functions)
            entry_of.append(np.full(n, len(self.entries), np.int64))
            function_of.append(np.arange(n, dtype=np.int64))
            self.entries.append(Entry(row_id, sha256, sample.functions))
            codes.append(sample.vectors.codes)
            scales.append(sample.vectors.scale)
        if not codes or not sum(len(c) for c in codes):
            return
        self.segments.append(Segment(
            Quantised(np.concatenate(codes), np.concatenate(scales)),
            np.concatenate(entry_of), np.concatenate(function_of)))
        if len(self.segments) > COMPACT_AFTER:
            self._compact()

    def forget(self, sha256: str) -> None:
        """The sample's row is gone (its prediction deleted or analysed again)."""
        held = self.by_sha.pop(sha256, None)
        if held is not None:
            self.entries[held].alive = False

    def held_id(self, sha256: str) -> int | None:
        held = self.by_sha.get(sha256)
        return self.entries[held].row_id if held is not None else None

    def _compact(self) -> None:
        live = [s for s in self.segments if s.vectors.shape[0]]
        self.segments = [Segment(
            Quantised(np.concatenate([s.vectors.codes for s in live]),
                      np.concatenate([s.vectors.scale for s in live])),
            np.concatenate([s.entry for s in live]), np.concatenate([s.function for s in live]))]

    def search(self, sha256: str, sample: SampleFunctions, query_rows: np.ndarray,
               limit: int, min_similarity: float,
               neighbours: int = NEIGHBOURS) -> list[SimilarSample]:
        """The held samples (other than `sha256`) sharing functions with `sample`'s rows
        `query_rows`, best first, at most `limit`."""
        if not len(query_rows) or not self.segments:
            return []
        queries = sample.vectors.rows(0, sample.vectors.shape[0])[query_rows]
        alive = np.asarray([e.alive and e.sha256 != sha256 for e in self.entries], bool)
        sims_parts, entry_parts, func_parts = [], [], []
        for seg in self.segments:
            sims, rows = numpy_topk(seg.vectors, queries, neighbours, hidden=~alive[seg.entry])
            found = rows >= 0
            sims_parts.append(np.where(found, sims, -np.inf))
            entry_parts.append(np.where(found, seg.entry[np.maximum(rows, 0)], -1))
            func_parts.append(np.where(found, seg.function[np.maximum(rows, 0)], -1))
        sims = np.concatenate(sims_parts, axis=1)
        entry = np.concatenate(entry_parts, axis=1)
        func = np.concatenate(func_parts, axis=1)
        q_idx = np.broadcast_to(np.arange(len(query_rows))[:, None], sims.shape)
        keep = (entry >= 0) & (sims >= min_similarity)
        return self._rank(sample, query_rows, q_idx[keep], entry[keep], func[keep],
                          sims[keep], limit)

    def _rank(self, sample: SampleFunctions, query_rows: np.ndarray, q: np.ndarray,
              entry: np.ndarray, func: np.ndarray, sims: np.ndarray,
              limit: int) -> list[SimilarSample]:
        order = np.lexsort((func, q, entry, -sims))  # most similar pair first
        pairs: dict[int, list[SharedFunction]] = {}
        used_q: set[tuple[int, int]] = set()
        used_f: set[tuple[int, int]] = set()
        for i in order:
            e, qi, fi = int(entry[i]), int(q[i]), int(func[i])
            if (e, qi) in used_q or (e, fi) in used_f:
                continue
            used_q.add((e, qi))
            used_f.add((e, fi))
            pairs.setdefault(e, []).append(SharedFunction(
                sample.functions[int(query_rows[qi])], self.entries[e].functions[fi],
                float(sims[i])))
        found = [SimilarSample(self.entries[e].sha256, self.entries[e].row_id,
                               sum(p.similarity for p in shared), shared)
                 for e, shared in pairs.items()]
        found.sort(key=lambda s: (-s.score, -len(s.shared), s.sha256))
        return found[:limit]
