"""FESTIVE v1 behind the pipeline's Engine interface (festive.engine).

Why a subclass: attribution, thresholds, summaries and the result format are v0's
(festive.engine.Engine.attribute, unchanged); only what turns functions into vectors
and the reference index differ. The index is a festive.v0.ReferenceIndex holding v1
embeddings, so v0's Searcher does the (CUDA when present) matrix-product search.
"""

from __future__ import annotations

from festive.engine import WEIGHTS_DIR, Engine

ENGINE_NAME = "v1"


class EngineV1(Engine):
    """v1 weights + v1 reference index, loaded once; `attribute(children)` as in v0."""

    def __init__(self, version: str = ENGINE_NAME):  # noqa: D107 - mirrors Engine.__init__
        from festive.v0 import Searcher
        from festive.v1.embed import Embedder
        from festive.v1.index import load_index

        self._load_card(version)
        self.embedder = Embedder(WEIGHTS_DIR / version / self.card["weights_file"])
        self.index = load_index(WEIGHTS_DIR / version / self.card["index_file"], self.embedder)
        self.searcher = Searcher(self.index)
        self.device = self.searcher.device
