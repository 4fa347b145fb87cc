"""FESTIVE v1 network: gated graph message passing over the CFG -> L2-normalised embedding.

Why this shape (issue 3): the representation matters more than model size, so blocks
start from a weighted bag of hashed VEX-op / bigram / constant tokens; a few rounds of
GGSNN-style message passing (shared GRU cell, separate forward and backward edge
transforms) spread context along the CFG; a gated sum reads the graph out; a bag of
function-level tokens (imported callees, strings, CFG-size buckets) is added before
the final projection. ~0.65M parameters, CPU-trainable.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from festive.v1.graph import BLOCK_BUCKETS, FUNC_BUCKETS, FunctionGraph


@dataclass(frozen=True)
class ModelConfig:
    token_dim: int = 64
    hidden: int = 128
    out_dim: int = 128
    steps: int = 4  # message-passing rounds

    def to_dict(self) -> dict[str, int]:
        return asdict(self)


@dataclass
class Batch:
    """Many graphs flattened into one: block-level and graph-level index tensors."""

    tok: torch.Tensor  # (T,) bucket ids
    tok_w: torch.Tensor  # (T,)
    block_offsets: torch.Tensor  # (B,) start of each block's tokens in tok
    src: torch.Tensor  # (E,)
    dst: torch.Tensor  # (E,)
    block_graph: torch.Tensor  # (B,) graph index of each block
    ftok: torch.Tensor
    ftok_w: torch.Tensor
    ftok_offsets: torch.Tensor  # (G,)
    n_graphs: int

    def to(self, device: str | torch.device) -> Batch:
        moved: dict[str, Any] = {k: (v.to(device) if isinstance(v, torch.Tensor) else v)
                                 for k, v in self.__dict__.items()}
        return Batch(**moved)


def collate(graphs: list[FunctionGraph]) -> Batch:
    """Concatenate graphs; block/edge/graph ids are shifted into one index space."""
    tok, tok_w, block_offsets, src, dst, block_graph = [], [], [], [], [], []
    ftok, ftok_w, ftok_offsets = [], [], []
    n_tok = n_blocks = n_ftok = 0
    for g_index, g in enumerate(graphs):
        starts = np.searchsorted(g.tok_block, np.arange(g.n_blocks))  # tokens sorted by block
        block_offsets.append(starts + n_tok)
        tok.append(g.tok)
        tok_w.append(g.tok_w)
        src.append(g.edges[:, 0] + n_blocks)
        dst.append(g.edges[:, 1] + n_blocks)
        block_graph.append(np.full(g.n_blocks, g_index, dtype=np.int64))
        ftok_offsets.append(n_ftok)
        ftok.append(g.ftok)
        ftok_w.append(g.ftok_w)
        n_tok += len(g.tok)
        n_blocks += g.n_blocks
        n_ftok += len(g.ftok)

    def cat(parts: list[np.ndarray], dtype: torch.dtype) -> torch.Tensor:
        return torch.from_numpy(np.concatenate(parts)).to(dtype)

    return Batch(
        tok=cat(tok, torch.long), tok_w=cat(tok_w, torch.float32),
        block_offsets=cat(block_offsets, torch.long),
        src=cat(src, torch.long), dst=cat(dst, torch.long),
        block_graph=cat(block_graph, torch.long),
        ftok=cat(ftok, torch.long), ftok_w=cat(ftok_w, torch.float32),
        ftok_offsets=torch.tensor(ftok_offsets, dtype=torch.long), n_graphs=len(graphs),
    )


class FestiveGNN(nn.Module):
    """Graph -> 128-d unit vector."""

    def __init__(self, config: ModelConfig | None = None):
        super().__init__()
        c = config or ModelConfig()
        self.config = c
        self.block_tokens = nn.EmbeddingBag(BLOCK_BUCKETS, c.token_dim, mode="sum")
        self.func_tokens = nn.EmbeddingBag(FUNC_BUCKETS, c.token_dim, mode="sum")
        self.encode = nn.Sequential(nn.Linear(c.token_dim, c.hidden), nn.LayerNorm(c.hidden),
                                    nn.ReLU(), nn.Linear(c.hidden, c.hidden))
        self.forward_msg = nn.Linear(c.hidden, c.hidden)
        self.backward_msg = nn.Linear(c.hidden, c.hidden)
        self.msg_norm = nn.LayerNorm(2 * c.hidden)
        self.gru = nn.GRUCell(2 * c.hidden, c.hidden)
        self.gate = nn.Linear(c.hidden, 1)
        self.value = nn.Linear(c.hidden, c.hidden)
        self.head = nn.Sequential(nn.Linear(c.hidden + c.token_dim, c.hidden), nn.ReLU(),
                                  nn.Linear(c.hidden, c.out_dim))

    def forward(self, b: Batch) -> torch.Tensor:
        h = self.encode(self.block_tokens(b.tok, b.block_offsets, per_sample_weights=b.tok_w))
        n = h.shape[0]
        for _ in range(self.config.steps):
            fwd = torch.zeros_like(h).index_add_(0, b.dst, self.forward_msg(h)[b.src])
            bwd = torch.zeros_like(h).index_add_(0, b.src, self.backward_msg(h)[b.dst])
            h = self.gru(self.msg_norm(torch.cat([fwd, bwd], dim=1)), h)
        weighted = torch.sigmoid(self.gate(h)) * self.value(h)
        graph = torch.zeros(b.n_graphs, h.shape[1], device=h.device, dtype=h.dtype)
        graph = graph.index_add_(0, b.block_graph, weighted)
        counts = torch.zeros(b.n_graphs, device=h.device).index_add_(
            0, b.block_graph, torch.ones(n, device=h.device))
        graph = graph / counts.clamp(min=1).sqrt()[:, None]  # size-robust scale
        func = self.func_tokens(b.ftok, b.ftok_offsets, per_sample_weights=b.ftok_w)
        out = self.head(torch.cat([graph, func], dim=1))
        # unit length in float32 also under bfloat16 autocast: bfloat16's own rounding of
        # the norm (about 0.4%) scaled every similarity and cost retrieval accuracy
        # (bench/bf16.md); in float32 this is the same operation as before
        return nn.functional.normalize(out.float(), dim=1)


def n_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def save(model: FestiveGNN, path: str, extra: dict[str, Any] | None = None) -> None:
    torch.save({"config": model.config.to_dict(), "state": model.state_dict(),
                "extra": extra or {}}, path)


def load(path: str, device: str | None = None) -> FestiveGNN:
    blob = torch.load(path, map_location="cpu", weights_only=True)
    model = FestiveGNN(ModelConfig(**blob["config"]))
    model.load_state_dict(blob["state"])
    model.eval()
    return model.to(device) if device else model
