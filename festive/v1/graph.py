"""Lifted function (ae-lift/1..3) -> compact graph sample for the v1 GNN.

Why: the GNN needs, per basic block, a small bag of token ids (normalised VEX ops,
op bigrams, distinctive constants) and the CFG edges; per function, a bag of cheap
global tokens (imported callee names, referenced strings, CFG size buckets). Token
strings come from festive.features (v0's normalisation, shared so both models see the
same IR); they are hashed into fixed buckets, so there is no vocabulary file to ship
and unseen tokens still land somewhere. numpy only.
"""

from __future__ import annotations

import math
import zlib
from collections import Counter
from dataclasses import dataclass
from typing import Any

import numpy as np

from festive.features import FeatureConfig, block_tokens, constant_tokens, structural_counts

BLOCK_BUCKETS = 4096
FUNC_BUCKETS = 2048
# A function is embedded whole up to MAX_BLOCKS blocks, the Embedder's per-batch block
# budget (one such function is one batch); a larger one keeps its first MAX_BLOCKS
# blocks by address and the edges among them. Measured on 2 CPU cores
# (bench/lift_functions.md, two runs on a shared machine): a 3,235-block function
# embeds in 0.35-1.1 s, a 19,410-block one in 1.3-3.4 s and about 0.2 GB more memory.
# Until ae-lift/3 the cut was 400 blocks, which embedded a switch-heavy function from
# its head only.
MAX_BLOCKS = 20000
_CONFIG = FeatureConfig()  # strip widths, drop PUT: the cross-arch friendly setting


def _hash(token: str, buckets: int) -> int:
    return zlib.crc32(token.encode("utf-8", "replace")) % buckets


@dataclass
class FunctionGraph:
    """One function as arrays: block token bags (CSR-like), edges, global token bag."""

    tok: np.ndarray  # int32 token bucket ids, all blocks concatenated
    tok_w: np.ndarray  # float32 weights (1 + log count)
    tok_block: np.ndarray  # int32 block index of each token
    n_blocks: int
    edges: np.ndarray  # int32 (E, 2) src, dst
    ftok: np.ndarray  # int32 function-level bucket ids
    ftok_w: np.ndarray  # float32


def block_bag(vex: list[str], func_addr: int) -> Counter[str]:
    """Tokens of one block: ops, op bigrams, constants."""
    ops = block_tokens(vex, _CONFIG)
    bag: Counter[str] = Counter(ops)
    bag.update(f"{a}>{b}" for a, b in zip(ops, ops[1:], strict=False))
    bag.update(constant_tokens(vex, func_addr))
    return bag


def _bucket(value: int) -> int:
    return int(math.log2(value + 1))


def function_bag(func: dict[str, Any]) -> Counter[str]:
    """Function-level tokens: callee names, strings, CFG size buckets."""
    bag: Counter[str] = Counter()
    bag.update(f"call:{name}" for name in func.get("calls", []) if name)
    bag.update(f"str:{text[:48]}" for text in func.get("strings", []) if text)
    for key, value in structural_counts(func).items():
        if key != "size":  # byte size differs wildly between ISAs
            bag[f"#{key}:{_bucket(value)}"] += 1
    return bag


def to_graph(func: dict[str, Any]) -> FunctionGraph:
    """Encode one lifted function (blocks are already sorted by address)."""
    func_addr = int(func.get("addr", "0x0"), 16)
    blocks = func.get("blocks", [])[:MAX_BLOCKS]
    tok, tok_w, tok_block = [], [], []
    for i, block in enumerate(blocks):
        bag = block_bag(block.get("vex", []), func_addr)
        if not bag:
            bag = Counter({"EMPTY": 1})
        for token, count in bag.items():
            tok.append(_hash(token, BLOCK_BUCKETS))
            tok_w.append(1.0 + math.log(count))
            tok_block.append(i)
    n = len(blocks)
    edges = [(s, d) for s, d in func.get("edges", []) if s < n and d < n]
    fbag = function_bag(func)
    return FunctionGraph(
        tok=np.asarray(tok, dtype=np.int32),
        tok_w=np.asarray(tok_w, dtype=np.float32),
        tok_block=np.asarray(tok_block, dtype=np.int32),
        n_blocks=n,
        edges=np.asarray(edges, dtype=np.int32).reshape(-1, 2),
        ftok=np.asarray([_hash(t, FUNC_BUCKETS) for t in fbag], dtype=np.int32),
        ftok_w=np.asarray([1.0 + math.log(c) for c in fbag.values()], dtype=np.float32),
    )


EMPTY_TOKEN = _hash("EMPTY", BLOCK_BUCKETS)  # the bag of a block without statements
