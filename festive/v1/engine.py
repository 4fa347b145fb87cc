"""FESTIVE v1 behind the pipeline's Engine interface (festive.engine).

Why a subclass: attribution, thresholds, summaries and the result format are v0's
(festive.engine.Engine.attribute, unchanged); only what turns functions into vectors
and the reference index differ. The index is a festive.v0.ReferenceIndex holding v1
embeddings, so v0's Searcher does the (CUDA when present) matrix-product search.
"""

from __future__ import annotations

from festive.engine import MODEL_NAME, WEIGHTS_DIR, Engine, _read_card

ENGINE_NAME = "v1"


class EngineV1(Engine):
    """v1 weights + v1 reference index, loaded once; `attribute(children)` as in v0."""

    def __init__(self, version: str = ENGINE_NAME):  # noqa: D107 - mirrors Engine.__init__
        from festive.v0 import Searcher
        from festive.v1.embed import Embedder
        from festive.v1.index import load_index

        card = _read_card(version)
        self.name = MODEL_NAME
        self.engine = version
        self.version = card["version"]
        self.card = card
        self.embedder = Embedder(WEIGHTS_DIR / version / card["weights_file"])
        self.index = load_index(WEIGHTS_DIR / version / card["index_file"], self.embedder)
        self.searcher = Searcher(self.index)
        self.device = self.searcher.device
        t = card["thresholds"]
        self.min_blocks = int(t["min_blocks"])
        self.match_similarity = float(t["match_similarity"])
        self.match_by_blocks = [(int(lo), float(sim)) for lo, sim in
                                t.get("match_similarity_by_blocks", [[0, self.match_similarity]])]
        self.min_family_matches = int(t["min_family_matches"])
        self.min_family_share = float(t.get("min_family_share", 0.0))
        self.precision_table = [(float(lo), float(p)) for lo, p in card["precision_table"]]
