"""Corpus A loading: the issue's function filters, and parallel loading that cannot hang.

Lifted builds are written here in festive.data.build's format (gzip JSON with the build's
metadata and labelled functions), so these run without the data build.
"""

from __future__ import annotations

import gzip
import json
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path
from typing import Any

import pytest

from festive.data.corpus import filtered_functions, load
from festive.features import FeatureConfig, block_tokens

ADD = ["t1 = Add64(t0,0x0000000000000001)", "PUT(rax) = t1"]
SUB = ["t1 = Sub64(t0,0x0000000000000001)", "PUT(rax) = t1"]


def func(label: str | None, n_blocks: int = 5, body: list[str] = ADD,
         addr: str = "0x1000") -> dict[str, Any]:
    return {"label": label, "addr": addr, "blocks": [{"vex": body} for _ in range(n_blocks)],
            "edges": []}


def write_build(root: Path, project: str, config: str, functions: list[dict]) -> None:
    compiler, arch, opt = config.split("-")
    lift = {"build": {"project": project, "compiler": compiler, "arch": arch, "opt": opt},
            "functions": functions}
    (root / project).mkdir(parents=True, exist_ok=True)
    with gzip.open(root / project / f"{config}.json.gz", "wt") as handle:
        json.dump(lift, handle)


def block_count(func: dict[str, Any], _lift: dict[str, Any]) -> int:
    return len(func["blocks"])


class Unloadable:
    """Pickles fine, but unpickling it (in a worker process) raises."""

    def __reduce__(self) -> tuple[Any, tuple]:
        return (refuse, ())


def refuse() -> None:
    raise RuntimeError("this task cannot be unpickled")


def test_the_bodies_differ_under_normalisation() -> None:
    config = FeatureConfig()
    assert block_tokens(ADD, config) != block_tokens(SUB, config)


def test_filters_drop_small_runtime_unlabelled_and_ambiguous_functions() -> None:
    lift = {"functions": [
        func("kept"),
        func("too_small", n_blocks=4),
        func(None),
        func("frame_dummy"),  # CRT
        func("__x86.get_pc_thunk.bx"),  # thunk
        func("_init"),
        func("__helper"),
        func("parse.cold"),
        func("twin", addr="0x2000"), func("twin", addr="0x3000"),  # same body: one kept
        func("clash", body=ADD), func("clash", body=SUB),  # two bodies, one name: dropped
    ]}
    kept = filtered_functions(lift)
    assert sorted(f["label"] for f in kept) == ["kept", "twin"]


def test_parallel_load_equals_serial_load(tmp_path: Path) -> None:
    write_build(tmp_path, "proj", "gcc-x86_64-O0", [func("a", 5), func("b", 7)])
    write_build(tmp_path, "proj", "clang-armhf-O2", [func("a", 6), func("c", 9, SUB)])
    serial = load(["proj"], block_count, root=tmp_path)
    parallel = load(["proj"], block_count, workers=2, root=tmp_path)
    assert [(f.build, f.label, f.data) for f in serial] == [
        ("clang-armhf-O2", "a", 6), ("clang-armhf-O2", "c", 9),
        ("gcc-x86_64-O0", "a", 5), ("gcc-x86_64-O0", "b", 7)]
    assert [(f.build, f.label, f.data) for f in parallel] == [
        (f.build, f.label, f.data) for f in serial]


@pytest.mark.timeout(120)
def test_a_worker_that_cannot_load_its_task_raises_instead_of_hanging(tmp_path: Path) -> None:
    write_build(tmp_path, "proj", "gcc-x86_64-O0", [func("a")])
    with pytest.raises(BrokenProcessPool):
        load(["proj"], Unloadable(), workers=2, root=tmp_path)  # type: ignore[arg-type]
