"""Which basic blocks of a sample function drove its match with a reference function.

Occlusion: each block of the matched sample function in turn loses its tokens (the
graph encoder then sees it as a block without statements: the one EMPTY token; the CFG
keeps its shape and edges, the function-level tokens stay), the function is embedded
again, and its cosine similarity to the matched reference row is measured again. A
block's attribution is the similarity lost without it: `similarity -
similarity_without_block`. Positive: the block made the function look like the
reference; negative: it made it look less alike.

It works on the function's graph (festive/v1/graph.py, as the packed lift keeps it), so
it needs no VEX text. Cost grows with blocks times variants, so a function of more than
GROUPS blocks is occluded GROUPS times, a run of consecutive blocks (by address) at a
time, and each block carries its run's drop; functions over MAX_BLOCKS are not
attributed (their matches carry no block attribution).
"""

from __future__ import annotations

from dataclasses import replace
from typing import Protocol

import numpy as np

from festive.v1.graph import EMPTY_TOKEN, FunctionGraph

MAX_BLOCKS = 256  # largest function attributed
GROUPS = 32  # at most this many re-embeddings per function: runs of blocks beyond it
MATCHES = 10  # the best matches of a sample (by similarity) that are attributed


class Embeds(Protocol):
    def embed_graphs(self, graphs: list[FunctionGraph]) -> np.ndarray: ...


def block_groups(n: int) -> list[list[int]]:
    """Block indices occluded together: each alone up to GROUPS blocks, else GROUPS runs
    of consecutive blocks of (nearly) equal length."""
    if n <= GROUPS:
        return [[i] for i in range(n)]
    bounds = np.linspace(0, n, GROUPS + 1).round().astype(int)
    return [list(range(a, b)) for a, b in zip(bounds[:-1], bounds[1:], strict=True) if b > a]


def without_blocks(graph: FunctionGraph, group: list[int]) -> FunctionGraph:
    """The graph with the blocks of `group` reduced to the EMPTY token."""
    drop = np.isin(graph.tok_block, np.asarray(group, dtype=np.int32))
    tok = np.concatenate([graph.tok[~drop], np.full(len(group), EMPTY_TOKEN, np.int32)])
    tok_w = np.concatenate([graph.tok_w[~drop], np.ones(len(group), np.float32)])
    tok_block = np.concatenate([graph.tok_block[~drop], np.asarray(group, np.int32)])
    order = np.argsort(tok_block, kind="stable")  # tokens stay grouped by block, in order
    return replace(graph, tok=tok[order], tok_w=tok_w[order], tok_block=tok_block[order])


def block_drops(model: Embeds, graph: FunctionGraph, block_addrs: np.ndarray,
                reference: np.ndarray) -> dict[str, float]:
    """{block address (hex): similarity lost without the block (or without its run of
    blocks, block_groups)} for one function's graph against one reference row (a unit
    vector); {} for a function over MAX_BLOCKS or without blocks."""
    n = graph.n_blocks
    if n == 0 or n > MAX_BLOCKS or len(block_addrs) != n:
        return {}
    groups = block_groups(n)
    variants = [graph] + [without_blocks(graph, g) for g in groups]
    sims = model.embed_graphs(variants) @ np.asarray(reference, np.float32)
    base = float(sims[0])
    return {hex(int(block_addrs[i])): base - float(sims[k + 1])
            for k, group in enumerate(groups) for i in group}
