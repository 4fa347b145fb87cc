"""Load the shipped v1 weights once and embed lifted functions in batches.

CUDA when present, CPU otherwise. Functions are sorted by size before batching so a
batch holds graphs of similar size (less padding-free but uneven work per batch).
precision "bfloat16" runs the model under torch autocast (festive.card.PRECISIONS).
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any

import numpy as np
import torch

from festive.card import DEFAULT_PRECISION, PRECISIONS
from festive.v1.graph import MAX_BLOCKS, FunctionGraph, to_graph
from festive.v1.model import FestiveGNN, collate, load

WEIGHTS = Path(__file__).resolve().parents[1] / "weights" / "v1" / "model.pt"


class Embedder:
    """A loaded FestiveGNN plus batching; thread-unsafe by design (callers lock)."""

    def __init__(self, path: Path | str = WEIGHTS, device: str | None = None,
                 model: FestiveGNN | None = None, precision: str = DEFAULT_PRECISION):
        if precision not in PRECISIONS:
            raise ValueError(f"unknown precision {precision!r}: expected one of {PRECISIONS}")
        self.device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        self.precision = precision
        self.model = (model or load(str(path))).to(self.device)
        self.model.eval()

    def autocast(self) -> contextlib.AbstractContextManager[object]:
        """The context the model runs in: torch autocast for bfloat16, else none."""
        if self.precision == DEFAULT_PRECISION:
            return contextlib.nullcontext()
        return torch.autocast(device_type=torch.device(self.device).type, dtype=torch.bfloat16)

    @torch.no_grad()
    def embed_graphs(self, graphs: list[FunctionGraph], max_blocks: int = MAX_BLOCKS) -> np.ndarray:
        """(n, d) float32 unit vectors, in input order."""
        out = np.zeros((len(graphs), self.model.config.out_dim), dtype=np.float32)
        order = sorted(range(len(graphs)), key=lambda i: graphs[i].n_blocks)
        start = 0
        while start < len(order):
            stop, blocks = start, 0
            while stop < len(order) and (stop == start or blocks + graphs[order[stop]].n_blocks
                                         <= max_blocks):
                blocks += graphs[order[stop]].n_blocks
                stop += 1
            chunk = order[start:stop]
            batch = collate([graphs[i] for i in chunk]).to(self.device)
            with self.autocast():
                out[chunk] = self.model(batch).float().cpu().numpy()
            start = stop
        return out

    def embed(self, functions: list[dict[str, Any]]) -> np.ndarray:
        return self.embed_graphs([to_graph(f) for f in functions])

