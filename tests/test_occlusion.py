"""Occlusion (festive/occlusion.py) on the shipped model: a block's attribution is the
similarity lost when the model sees the function without that block's statements."""

from __future__ import annotations

from dataclasses import replace

import numpy as np

from api.report_render import MATCHES_DETAILED, OCCLUDED_GROUPS, OCCLUDED_MAX_BLOCKS
from festive.engine import load_engine
from festive.occlusion import GROUPS, MATCHES, MAX_BLOCKS, block_drops, block_groups
from festive.v1.graph import to_graph


def _function(blocks: int) -> dict:
    vex = [
        ["t0 = GET:I64(offset=16)", "t1 = Add64(t0,0x0000000000000001)", "PUT(offset=16) = t1",
         "NEXT Ijk_Boring 0x401010"],
        ["t2 = LDle:I32(t0)", "t3 = Xor32(t2,0xedb88320)", "t4 = Shr32(t3,0x08)",
         "STle(t0) = t4", "NEXT Ijk_Boring 0x401020"],
        ["t5 = CmpEQ64(t0,0x0000000000000000)", "if (t5) { PUT(offset=184) = 0x401040; "
         "Ijk_Boring }", "NEXT Ijk_Boring 0x401030"],
        [],  # a block without statements: removing them changes nothing
        ["t6 = GET:I64(offset=48)", "NEXT Ijk_Ret t6"],
    ]
    return {
        "addr": "0x401000", "name": "f", "calls": [], "strings": [], "runtime": False,
        "blocks": [{"addr": hex(0x401000 + 16 * i), "size": 16, "vex": vex[i % len(vex)]}
                   for i in range(blocks)],
        "edges": [[i, i + 1] for i in range(blocks - 1)],
    }


def _addrs(func: dict) -> np.ndarray:
    return np.asarray([int(b["addr"], 16) for b in func["blocks"]], dtype=np.int64)


def _hidden(func: dict, group: list[int]):  # noqa: ANN202 - a FunctionGraph
    """What the model should see without the group's blocks, built independently: the
    blocks' statements emptied (to_graph), the function-level tokens of the whole."""
    hidden = to_graph({**func, "blocks": [{**b, "vex": []} if i in group else b
                                          for i, b in enumerate(func["blocks"])]})
    whole = to_graph(func)
    return replace(hidden, ftok=whole.ftok, ftok_w=whole.ftok_w)


def test_drops_are_the_similarity_lost_without_each_block() -> None:
    model = load_engine().model
    func = _function(5)
    graph = to_graph(func)
    reference = model.embed_graphs([graph])[0]  # the function's own vector: similarity 1
    drops = block_drops(model, graph, _addrs(func), reference)
    assert list(drops) == [b["addr"] for b in func["blocks"]]
    variants = model.embed_graphs([_hidden(func, [i]) for i in range(5)])
    assert np.allclose([drops[b["addr"]] for b in func["blocks"]],
                       float(model.embed_graphs([graph])[0] @ reference) - variants @ reference,
                       atol=1e-5)
    assert all(d >= -1e-5 for d in drops.values())  # nothing is closer to itself than itself
    assert abs(drops["0x401030"]) < 1e-6  # the empty block
    assert max(drops.values()) > 0.01  # the code blocks matter


def test_a_long_function_is_occluded_in_runs_of_blocks() -> None:
    model = load_engine().model
    func = _function(100)
    groups = block_groups(100)
    assert len(groups) == GROUPS and sorted(i for g in groups for i in g) == list(range(100))
    assert all(g == list(range(g[0], g[-1] + 1)) for g in groups)  # consecutive runs
    graph = to_graph(func)
    reference = model.embed_graphs([graph])[0]
    drops = block_drops(model, graph, _addrs(func), reference)
    for group in (groups[0], groups[17]):
        expected = 1.0 - float(model.embed_graphs([_hidden(func, group)])[0] @ reference)
        for i in group:
            assert abs(drops[func["blocks"][i]["addr"]] - expected) < 1e-5


def test_large_functions_are_not_attributed() -> None:
    model = load_engine().model
    func = _function(MAX_BLOCKS + 1)
    graph = to_graph(func)
    assert block_drops(model, graph, _addrs(func), model.embed_graphs([graph])[0]) == {}


def test_the_report_says_what_the_worker_attributes() -> None:
    assert (MATCHES_DETAILED, OCCLUDED_MAX_BLOCKS, OCCLUDED_GROUPS) == (MATCHES, MAX_BLOCKS,
                                                                    GROUPS)
