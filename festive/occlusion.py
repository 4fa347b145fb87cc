"""Which basic blocks of a sample function drove its match with a reference function.

Occlusion: each block of the matched sample function in turn has its VEX statements
removed (the graph encoder then gives it the token bag of a block without statements;
the CFG keeps its shape and edges), the function is embedded again, and its cosine
similarity to the matched reference row is measured again. A block's attribution is the
similarity lost without it: `similarity - similarity_without_block`. Positive: the block
made the function look like the reference; negative: it made it look less alike.

The model sees nothing else of a block, so this measures exactly what the model used,
not a heuristic of what it might have used. Cost grows with blocks squared: functions
over MAX_BLOCKS are not attributed (their matches carry no block attribution).
"""

from __future__ import annotations

from typing import Any, Protocol

import numpy as np

MAX_BLOCKS = 256  # largest function attributed (256 re-embeddings of 256 blocks)
MATCHES = 10  # the best matches of a sample (by similarity) that are attributed


class Embeds(Protocol):
    def embed(self, functions: list[dict[str, Any]]) -> np.ndarray: ...


def without_block(func: dict[str, Any], index: int) -> dict[str, Any]:
    """The function with block `index`'s statements removed (addresses and edges kept)."""
    blocks = list(func.get("blocks", []))
    blocks[index] = {**blocks[index], "vex": []}
    return {**func, "blocks": blocks}


def block_drops(model: Embeds, func: dict[str, Any], reference: np.ndarray) -> dict[str, float]:
    """{block address: similarity lost without the block} for one function against one
    reference row (a unit vector); {} for a function over MAX_BLOCKS or without blocks."""
    blocks = func.get("blocks", [])
    if not blocks or len(blocks) > MAX_BLOCKS:
        return {}
    reference = np.asarray(reference, np.float32)
    variants = [func] + [without_block(func, i) for i in range(len(blocks))]
    vectors = model.embed(variants)
    sims = vectors @ reference
    base = float(sims[0])
    return {str(block["addr"]): base - float(sims[i + 1]) for i, block in enumerate(blocks)}
