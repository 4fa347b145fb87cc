"""A lift reduced to what attribution reads: the v1 graphs of its considered functions.

Why: reanalysing a sample whose lift is cached used to re-read the gzipped JSON lift
and re-parse every VEX statement (festive.features' regexes) before embedding. The
packed form keeps, per lift, the FunctionGraph arrays of the functions that may drive a
verdict plus the few fields the results name (address, name, block count) and the
binary's summary, as one .npz (no pickle) that loads in milliseconds. numpy only.

    packed = pack_lift(lift)             # featurise once (festive.v1.graph.to_graph)
    data = to_bytes(packed)              # blob store
    packed == from_bytes(data)           # the same arrays, bit for bit
"""

from __future__ import annotations

import io
import json
import zipfile
from dataclasses import dataclass
from typing import Any

import numpy as np

from festive.features import FEATURE_VERSION, MIN_BLOCKS, is_considered
from festive.v1.graph import BLOCK_BUCKETS, FUNC_BUCKETS, MAX_BLOCKS, FunctionGraph, to_graph

# Changes whenever the packed arrays would differ for the same lift: the graph encoding
# (buckets, block cut, token normalisation) or this layout.
PACK_VERSION = (f"fgraph-2.{FEATURE_VERSION.replace('/', '-')}"
                f".{BLOCK_BUCKETS}.{FUNC_BUCKETS}.{MAX_BLOCKS}")


@dataclass
class PackedLift:
    """The considered functions of one lift as graphs, and what the results show of them."""

    binary: dict[str, str]  # format, arch (from the lift's "binary")
    functions_total: int  # all lifted functions, considered or not
    addrs: list[str]  # per considered function, in lift order
    names: list[str | None]
    blocks: list[int]  # real block count (a graph keeps at most MAX_BLOCKS)
    graphs: list[FunctionGraph]
    block_addrs: list[np.ndarray]  # per function, its graph's blocks' addresses (int64)

    def functions(self) -> list[dict[str, Any]]:
        """The considered functions as the results name them: addr, name, block count."""
        return [{"addr": a, "name": n, "n_blocks": b}
                for a, n, b in zip(self.addrs, self.names, self.blocks, strict=True)]


def considered_functions(lift: dict[str, Any],
                         min_blocks: int = MIN_BLOCKS) -> list[dict[str, Any]]:
    return [f for f in lift.get("functions", []) if is_considered(f, min_blocks)]


def pack_lift(lift: dict[str, Any], graphs: list[FunctionGraph] | None = None,
              min_blocks: int = MIN_BLOCKS) -> PackedLift:
    """Featurise a lift (or take `graphs`, already made from its considered functions)."""
    funcs = considered_functions(lift, min_blocks)
    if graphs is None:
        graphs = [to_graph(f) for f in funcs]
    if len(graphs) != len(funcs):
        raise ValueError(f"{len(graphs)} graphs for {len(funcs)} considered functions")
    binary = lift.get("binary", {})
    return PackedLift(
        binary={"format": str(binary.get("format", "")), "arch": str(binary.get("arch", ""))},
        functions_total=len(lift.get("functions", [])),
        addrs=[str(f["addr"]) for f in funcs],
        names=[f.get("name") for f in funcs],
        blocks=[len(f.get("blocks", [])) for f in funcs],
        graphs=graphs,
        block_addrs=[np.asarray([int(str(b["addr"]), 16) for b in f.get("blocks", [])[:MAX_BLOCKS]],
                                dtype=np.int64) for f in funcs],
    )


def graph_if_considered(func: dict[str, Any]) -> FunctionGraph | None:
    """The function's graph when it may drive a verdict (lifting.angr_lift's `extra`:
    featurised where it was lifted, in the lift's worker processes)."""
    return to_graph(func) if is_considered(func, MIN_BLOCKS) else None


def pack_with_graphs(lift: dict[str, Any], extras: list[FunctionGraph | None]) -> PackedLift:
    """pack_lift from graph_if_considered's results, one per lifted function."""
    if len(extras) != len(lift.get("functions", [])):
        raise ValueError(f"{len(extras)} extras for {len(lift.get('functions', []))} functions")
    return pack_lift(lift, graphs=[g for g in extras if g is not None])


def _offsets(lengths: list[int]) -> np.ndarray:
    out = np.zeros(len(lengths) + 1, dtype=np.int64)
    np.cumsum(lengths, out=out[1:])
    return out


def _cat(parts: list[np.ndarray], dtype: Any, shape: tuple[int, ...] = (0,)) -> np.ndarray:
    return np.concatenate(parts).astype(dtype, copy=False) if parts else np.zeros(shape, dtype)


def to_bytes(packed: PackedLift) -> bytes:
    graphs = packed.graphs
    meta = {"version": PACK_VERSION, "binary": packed.binary,
            "functions_total": packed.functions_total, "addrs": packed.addrs,
            "names": packed.names, "blocks": packed.blocks}
    arrays: dict[str, np.ndarray] = {
        "meta": np.frombuffer(json.dumps(meta, separators=(",", ":")).encode(), dtype=np.uint8),
        "n_blocks": np.asarray([g.n_blocks for g in graphs], dtype=np.int64),
        "tok_off": _offsets([len(g.tok) for g in graphs]),
        "tok": _cat([g.tok for g in graphs], np.int32),
        "tok_w": _cat([g.tok_w for g in graphs], np.float32),
        "tok_block": _cat([g.tok_block for g in graphs], np.int32),
        "edge_off": _offsets([len(g.edges) for g in graphs]),
        "edges": _cat([g.edges for g in graphs], np.int32, (0, 2)).reshape(-1, 2),
        "ftok_off": _offsets([len(g.ftok) for g in graphs]),
        "ftok": _cat([g.ftok for g in graphs], np.int32),
        "ftok_w": _cat([g.ftok_w for g in graphs], np.float32),
        "baddr_off": _offsets([len(b) for b in packed.block_addrs]),
        "baddr": _cat(list(packed.block_addrs), np.int64),
    }
    buffer = io.BytesIO()
    np.savez_compressed(buffer, allow_pickle=False, **arrays)
    return buffer.getvalue()


def from_bytes(data: bytes) -> PackedLift:
    """The inverse of to_bytes; ValueError for another PACK_VERSION or a damaged blob."""
    a = _arrays(data, None)
    meta = _meta(a)
    graphs = []
    t, e, f = a["tok_off"], a["edge_off"], a["ftok_off"]
    for i, n in enumerate(a["n_blocks"].tolist()):
        graphs.append(FunctionGraph(
            tok=a["tok"][t[i]:t[i + 1]], tok_w=a["tok_w"][t[i]:t[i + 1]],
            tok_block=a["tok_block"][t[i]:t[i + 1]], n_blocks=int(n),
            edges=a["edges"][e[i]:e[i + 1]],
            ftok=a["ftok"][f[i]:f[i + 1]], ftok_w=a["ftok_w"][f[i]:f[i + 1]],
        ))
    b = a["baddr_off"]
    return PackedLift(binary=meta["binary"], functions_total=int(meta["functions_total"]),
                      addrs=meta["addrs"], names=meta["names"], blocks=meta["blocks"],
                      graphs=graphs,
                      block_addrs=[a["baddr"][b[i]:b[i + 1]] for i in range(len(graphs))])


def summary_from_bytes(data: bytes) -> tuple[str, int]:
    """(arch, functions_total) of a packed lift, read from its small "meta" part alone
    (the stage cache's lookup needs no graphs); ValueError as from_bytes."""
    meta = _meta(_arrays(data, ["meta"]))
    try:
        return str(meta["binary"]["arch"]), int(meta["functions_total"])
    except (KeyError, TypeError, ValueError) as exc:
        raise ValueError(f"not a packed lift: {exc}") from exc


def _arrays(data: bytes, keys: list[str] | None) -> dict[str, np.ndarray]:
    """The named arrays of a to_bytes blob (all when keys is None)."""
    try:
        with np.load(io.BytesIO(data), allow_pickle=False) as z:
            return {key: z[key] for key in (z.files if keys is None else keys)}
    except (OSError, KeyError, ValueError, EOFError, zipfile.BadZipFile) as exc:
        raise ValueError(f"not a packed lift: {exc}") from exc


def _meta(arrays: dict[str, np.ndarray]) -> dict[str, Any]:
    try:
        meta = json.loads(arrays["meta"].tobytes())
    except (KeyError, ValueError) as exc:  # json.JSONDecodeError is a ValueError
        raise ValueError(f"not a packed lift: {exc}") from exc
    if not isinstance(meta, dict) or meta.get("version") != PACK_VERSION:
        version = meta.get("version") if isinstance(meta, dict) else None
        raise ValueError(f"packed lift of version {version!r}, wanted {PACK_VERSION!r}")
    return meta


def vectors_to_bytes(vectors: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, np.ascontiguousarray(vectors, dtype=np.float32), allow_pickle=False)
    return buffer.getvalue()


def vectors_from_bytes(data: bytes) -> np.ndarray:
    try:
        return np.load(io.BytesIO(data), allow_pickle=False)
    except (OSError, ValueError) as exc:
        raise ValueError(f"not a vector array: {exc}") from exc
