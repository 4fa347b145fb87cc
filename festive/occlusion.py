"""Which basic blocks of a sample function drove its match with a reference function.

Occlusion: each block of the matched sample function in turn has its VEX statements
removed (the graph encoder then gives it the token bag of a block without statements;
the CFG keeps its shape and edges), the function is embedded again, and its cosine
similarity to the matched reference row is measured again. A block's attribution is the
similarity lost without it: `similarity - similarity_without_block`. Positive: the block
made the function look like the reference; negative: it made it look less alike.

The model sees nothing else of a block, so this measures exactly what the model used,
not a heuristic of what it might have used. Cost grows with blocks times variants, so a
function of more than GROUPS blocks is occluded GROUPS times, a run of consecutive
blocks (by address) at a time, and each block carries its run's drop; functions over
MAX_BLOCKS are not attributed (their matches carry no block attribution).
"""

from __future__ import annotations

from typing import Any, Protocol

import numpy as np

MAX_BLOCKS = 256  # largest function attributed
GROUPS = 32  # at most this many re-embeddings per function: runs of blocks beyond it
MATCHES = 10  # the best matches of a sample (by similarity) that are attributed


class Embeds(Protocol):
    def embed_occluded(self, function: dict[str, Any], groups: list[list[int]]
                       ) -> np.ndarray: ...


def block_groups(n: int) -> list[list[int]]:
    """Block indices occluded together: each alone up to GROUPS blocks, else GROUPS runs
    of consecutive blocks of (nearly) equal length."""
    if n <= GROUPS:
        return [[i] for i in range(n)]
    bounds = np.linspace(0, n, GROUPS + 1).round().astype(int)
    return [list(range(a, b)) for a, b in zip(bounds[:-1], bounds[1:], strict=True) if b > a]


def without_block(func: dict[str, Any], index: int) -> dict[str, Any]:
    """The function with block `index`'s statements removed (addresses and edges kept)."""
    blocks = list(func.get("blocks", []))
    blocks[index] = {**blocks[index], "vex": []}
    return {**func, "blocks": blocks}


def block_drops(model: Embeds, func: dict[str, Any], reference: np.ndarray) -> dict[str, float]:
    """{block address: similarity lost without the block (or without its run of blocks,
    block_groups)} for one function against one reference row (a unit vector); {} for a
    function over MAX_BLOCKS or without blocks."""
    blocks = func.get("blocks", [])
    if not blocks or len(blocks) > MAX_BLOCKS:
        return {}
    reference = np.asarray(reference, np.float32)
    groups = block_groups(len(blocks))
    sims = model.embed_occluded(func, groups) @ reference  # the function, then each group
    base = float(sims[0])
    return {str(blocks[i]["addr"]): base - float(sims[g + 1])
            for g, group in enumerate(groups) for i in group}
