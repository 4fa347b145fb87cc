"""The interface the pipeline calls: a model, its reference index and the verdict.

    engine = load_engine()             # once per worker process
    results = engine.attribute(children, references)   # references: users' (optional)

A model turns lifted functions into vectors (festive.v1); the search and the verdict
live in festive.attribution and know nothing of the model. Every leaf of the results
is a string (the seed's prediction_results type); README.md documents each key.
"""

from __future__ import annotations

import threading
from functools import cache
from typing import Any

import numpy as np

from festive.attribution.csr import dense_rows
from festive.attribution.index import ExtraBuild, ReferenceIndex
from festive.attribution.search import Quantised, Searcher
from festive.attribution.similar import Function, SampleFunctions
from festive.attribution.verdict import FamilyEvidence, ReferenceView, VerdictParams, capped, decide
from festive.card import (
    DEFAULT_ENGINE,
    DEFAULT_PRECISION,
    MODEL_NAME,
    WEIGHTS_DIR,
    analysis_version,
    index_version,
    read_card,
)
from festive.features import is_considered
from festive.occlusion import MATCHES as OCCLUDED_MATCHES
from festive.occlusion import block_drops
from festive.user_references import ReferenceSet, ReferenceVectors, decode
from festive.v1.packed import PackedLift, pack_lift

MAX_MATCHES = 500  # evidence rows in the results
MATCHES_PER_FAMILY = 25  # each listed family's best matches are always among them
MIN_BLOCKS = 5

_lock = threading.Lock()


def _fmt(value: float, digits: int = 4) -> str:
    return f"{value:.{digits}f}"


class Engine:
    """Model + reference index + verdict parameters, loaded once."""

    def __init__(self, engine: str = DEFAULT_ENGINE, precision: str = DEFAULT_PRECISION):
        if engine != "v1":
            raise ValueError(f"unknown FESTIVE engine {engine!r} (installed: v1)")
        from festive.v1.embed import Embedder  # torch: only when an engine is loaded

        card = read_card(engine)
        self.card = card
        self.engine = engine
        self.version = card["version"]
        self.model = Embedder(WEIGHTS_DIR / engine / card["weights_file"], precision=precision)
        self.dim = self.model.model.config.out_dim  # of every vector, the index's too
        self.shipped = ReferenceIndex.load(WEIGHTS_DIR / engine / card["index_file"])
        if self.shipped.meta.get("weights_sha256") != card["weights_sha256"]:
            raise ValueError("the reference index was built with other weights: run make index")
        self.params = VerdictParams.from_card(card["verdict"])
        self._use(self.shipped)
        self.device = self.searcher.device

    @property
    def precision(self) -> str:
        """How the model embeds (festive.card.PRECISIONS)."""
        return self.model.precision

    def _use(self, index: ReferenceIndex) -> None:
        """Search this index from now on (the shipped one, or it plus users' references)."""
        self.index = index
        self.index_version = index.version
        self.searcher = Searcher(index.vectors)
        self.view = ReferenceView(index.row_family.astype(np.int64), index.identities(),
                                  index.row_rarity, len(index.families))
        self._row_build = index.row_build()

    def _load_references(self, references: ReferenceSet | None) -> None:
        """Search the shipped index plus this set of user references; loaded only when
        the set's index version differs from the one searched now."""
        wanted = index_version(self.shipped.version, references.labels() if references else [])
        if wanted == self.index_version:
            return
        if references is None or not references.references:
            self._use(self.shipped)
            return
        extra = []
        for ref in references.references:
            vectors = decode(references.read_blob(ref.vectors_sha256))
            if vectors.weights_sha256 != self.card["weights_sha256"]:
                raise ValueError(f"user reference {ref.sha256} was embedded by other weights "
                                 f"({vectors.weights_sha256[:12]}); add it again")
            extra.append(ExtraBuild(f"{ref.family} {ref.version} user:{ref.sha256[:12]}",
                                    ref.family, ref.version, vectors.arch, vectors.vectors,
                                    vectors.names, vectors.blocks))
        self._use(self.shipped.with_builds(extra, wanted))

    def embed_reference(self, children: list[dict[str, Any]]) -> ReferenceVectors:
        """Vectors of the functions of a user's reference binaries that may drive a
        verdict (the same ones a sample is judged on)."""
        funcs = [f for child in children for f in child["lift"].get("functions", [])
                 if is_considered(f, MIN_BLOCKS)]
        archs = sorted({str(c["lift"].get("binary", {}).get("arch", "")) for c in children})
        with _lock:
            vectors = (self.model.embed(funcs) if funcs
                       else np.zeros((0, self.dim), np.float32))
        return ReferenceVectors(vectors, [f.get("name") or f["addr"] for f in funcs],
                                np.asarray([len(f["blocks"]) for f in funcs], np.int32),
                                " ".join(a for a in archs if a), self.card["weights_sha256"])

    def status_of(self, probability: float) -> str:
        if probability >= self.params.present:
            return "present"
        return "weak" if probability >= self.params.weak else "trace"

    def embed_packed(self, packed: PackedLift) -> np.ndarray:
        """Vectors of a packed lift's considered functions, in its order (one batch run
        per lift, so a lift's vectors do not depend on the other lifts of a sample)."""
        if not packed.graphs:
            return np.zeros((0, self.dim), np.float32)
        with _lock:
            return self.model.embed_graphs(packed.graphs)

    def attribute(self, children: list[dict[str, Any]],
                  references: ReferenceSet | None = None) -> dict[str, Any]:
        """prediction_results for one sample (the binaries found in it, each with its
        "lift"), searched against the shipped index plus `references` (None: the shipped
        index alone)."""
        prepared = []
        for child in children:
            packed = pack_lift(child["lift"], min_blocks=MIN_BLOCKS)
            prepared.append((child, packed, self.embed_packed(packed)))
        return self.attribute_packed(prepared, references)[0]

    def attribute_packed(self, children: list[tuple[dict[str, Any], PackedLift, np.ndarray]],
                         references: ReferenceSet | None = None
                         ) -> tuple[dict[str, Any], SampleFunctions]:
        """attribute() from lifts already featurised and embedded: (child with "sha256"
        and "name", its PackedLift, the vectors of its considered functions); and those
        vectors as the similar-sample index holds them (festive/attribution/similar.py)."""
        with _lock:  # one sample at a time per process: the index searched may change
            self._load_references(references)
            return self._attribute(children)

    def _attribute(self, children: list[tuple[dict[str, Any], PackedLift, np.ndarray]]
                   ) -> tuple[dict[str, Any], SampleFunctions]:
        considered: list[tuple[dict[str, Any], dict[str, Any]]] = []
        children_out: dict[str, dict[str, str]] = {}
        total = 0
        parts = []
        for child, packed, vectors in children:
            if len(vectors) != len(packed.addrs):
                raise ValueError(f"{len(vectors)} vectors for {len(packed.addrs)} functions")
            mine = packed.functions()
            for func, graph, addrs in zip(mine, packed.graphs, packed.block_addrs, strict=True):
                func["graph"], func["block_addrs"] = graph, addrs  # for occlusion
            total += packed.functions_total
            considered.extend((child, f) for f in mine)
            parts.append(vectors)
            children_out[child["sha256"]] = {
                "name": str(child.get("name", "")),
                "format": packed.binary.get("format", ""),
                "arch": packed.binary.get("arch", ""),
                "functions": str(packed.functions_total),
                "functions_considered": str(len(mine)),
            }
        blocks = np.asarray([f["n_blocks"] for _c, f in considered], np.int64)
        if considered:
            vectors = np.concatenate(parts)
            sims, rows = self.searcher.topk(vectors, self.params.top_k)
        else:
            vectors = np.zeros((0, self.dim), np.float32)
            sims = np.zeros((0, self.params.top_k), np.float32)
            rows = np.zeros((0, self.params.top_k), np.int64)
        decided = [e for e in decide(sims, rows, blocks, self.view, self.params)
                   if e.probability >= self.params.weak]
        present = [e for e in decided if e.probability >= self.params.present]
        verdict = self.index.families[present[0].family] if present else "unknown"
        confidence = capped(present[0].probability, self.params) if present else 0.0
        matched_queries = {m.query for e in decided for m in e.matches}
        chosen = self._chosen(decided)
        functions = SampleFunctions.of(
            vectors, [Function(c["sha256"], f["addr"], f.get("name") or "", f["n_blocks"])
                      for c, f in considered], self.card["weights_sha256"])
        return {
            "model": MODEL_NAME,
            "model_version": self.version,
            "index_version": self.index_version,
            "analysis_version": analysis_version(self.card, self.index_version),
            "engine": self.engine,
            "precision": self.precision,
            "verdict": verdict,
            "confidence": _fmt(confidence),
            "families_present": " ".join(self.index.families[e.family] for e in present),
            "families_weak": " ".join(self.index.families[e.family] for e in decided
                                      if e.probability < self.params.present),
            "functions_total": str(total),
            "functions_considered": str(len(considered)),
            "functions_matched": str(len(matched_queries)),
            "families": {self.index.families[e.family]: self._family(e, considered)
                         for e in decided},
            "matches": self._matches(chosen, considered, sims, rows),
            "block_attribution": self._block_attribution(chosen, considered),
            "children": children_out,
        }, functions

    def _block_attribution(self, chosen: list[Any],
                           considered: list[Any]) -> dict[str, dict[str, str]]:
        """Per best match (OCCLUDED_MATCHES of them, by similarity): {block address:
        similarity lost without the block} (festive/occlusion.py)."""
        out: dict[str, dict[str, str]] = {}
        for m in chosen[:OCCLUDED_MATCHES]:
            child, func = considered[m.query]
            drops = block_drops(self.model, func["graph"], func["block_addrs"],
                                self._row_vector(m.row))
            if drops:
                out[self._key(child, func)] = {addr: _fmt(d) for addr, d in drops.items()}
        return out

    def _row_vector(self, row: int) -> np.ndarray:
        vectors = self.index.vectors
        if isinstance(vectors, Quantised):
            return vectors.rows(row, row + 1)[0]
        return dense_rows(vectors, row, row + 1)[0]

    def _key(self, child: dict[str, Any], func: dict[str, Any]) -> str:
        return f"{child['sha256'][:12]}:{func['addr']}"

    def _family(self, e: FamilyEvidence, considered: list[Any]) -> dict[str, str]:
        sims = [m.similarity for m in e.matches]
        versions = sorted({self.index.build_version[int(self._row_build[m.row])]
                           for m in e.matches})
        archs = sorted({self.index.build_arch[int(b)] for m in e.matches
                        for b in self.index.row_builds[m.row]})
        best = [self._key(*considered[m.query]) for m in e.matches[:MATCHES_PER_FAMILY]]
        return {
            "status": self.status_of(e.probability),
            "probability": _fmt(capped(e.probability, self.params)),
            "score": _fmt(e.score, 2),
            "functions_matched": str(len(e.matches)),
            "share_of_considered": _fmt(len(e.matches) / max(len(considered), 1), 3),
            "mean_similarity": _fmt(sum(sims) / len(sims)),
            "best_similarity": _fmt(max(sims)),
            "reference_versions": " ".join(versions),
            "reference_builds": " ".join(archs),
            "best_matches": " ".join(best),
        }

    def _chosen(self, decided: list[FamilyEvidence]) -> list[Any]:
        """The matches listed as evidence, best first: each family's best ones, then the
        rest by similarity up to MAX_MATCHES."""
        chosen = [m for e in decided for m in e.matches[:MATCHES_PER_FAMILY]]
        rest = sorted((m for e in decided for m in e.matches[MATCHES_PER_FAMILY:]),
                      key=lambda m: -m.similarity)
        chosen = sorted(chosen, key=lambda m: -m.similarity)
        return chosen + rest[: max(0, MAX_MATCHES - len(chosen))]

    def _matches(self, chosen: list[Any], considered: list[Any],
                 sims: np.ndarray, rows: np.ndarray) -> dict[str, dict[str, str]]:
        out: dict[str, dict[str, str]] = {}
        idx = self.index
        for m in chosen:
            child, func = considered[m.query]
            family = int(idx.row_family[m.row])
            runner, runner_sim = "", ""
            for s, r in zip(sims[m.query], rows[m.query], strict=True):
                if r >= 0 and int(idx.row_family[r]) != family:
                    runner, runner_sim = idx.families[int(idx.row_family[r])], _fmt(float(s))
                    break
            build = int(self._row_build[m.row])
            out[self._key(child, func)] = {
                "child_sha256": child["sha256"],
                "address": func["addr"],
                "name": func.get("name") or "",
                "blocks": str(func["n_blocks"]),
                "family": idx.families[family],
                "reference_function": idx.row_name[m.row],
                "reference_build": idx.builds[build],
                "reference_version": idx.build_version[build],
                "similarity": _fmt(m.similarity),
                "match_probability": _fmt(m.p),
                "rarity": _fmt(float(idx.row_rarity[m.row]), 2),
                "runner_up_family": runner,
                "runner_up_similarity": runner_sim,
            }
        return out


@cache
def _load(engine: str, precision: str) -> Engine:
    return Engine(engine, precision)


def load_engine(engine: str | None = None, precision: str = DEFAULT_PRECISION) -> Engine:
    """The process-wide engine (None = the default) at this precision, loaded once."""
    with _lock:
        return _load(engine or DEFAULT_ENGINE, precision)
