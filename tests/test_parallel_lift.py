"""The parallel lift (one CFG, functions lifted and featurised by forked workers in
chunks) gives the serial lift's functions and features, in the library and through the
lift child. Real angr on a real Debian binary; < 60 s."""

from __future__ import annotations

import gzip
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np

from festive.v1.graph import FunctionGraph
from festive.v1.packed import from_bytes, graph_if_considered, pack_lift
from lifting.angr_lift import lift_binary_extras
from lifting.child import EXIT_OK, FEATURES_SUFFIX

SAMPLE = Path("/usr/bin/true")  # coreutils: on every Debian machine, ~85 functions
ARRAYS = ("tok", "tok_w", "tok_block", "edges", "ftok", "ftok_w")


def same_graph(a: FunctionGraph | None, b: FunctionGraph | None) -> bool:
    if a is None or b is None:
        return a is b
    return a.n_blocks == b.n_blocks and all(
        getattr(a, k).dtype == getattr(b, k).dtype and np.array_equal(getattr(a, k), getattr(b, k))
        for k in ARRAYS)


def test_parallel_chunks_give_the_serial_functions_and_features() -> None:
    serial, serial_graphs = lift_binary_extras(str(SAMPLE), extra=graph_if_considered)
    said: list[str] = []
    parallel, parallel_graphs = lift_binary_extras(
        str(SAMPLE), progress=said.append, workers=2, chunk_size=4, extra=graph_if_considered)

    chunks = [m for m in said if "chunks, 2 workers" in m]
    assert len(chunks) >= 10, said  # the tiny chunk size really made many work items
    assert len(serial["functions"]) > 40
    assert [f["addr"] for f in parallel["functions"]] == [f["addr"] for f in serial["functions"]]
    assert parallel == serial  # every block, edge, VEX statement, call and string
    assert len(parallel_graphs) == len(serial_graphs) == len(serial["functions"])
    assert sum(g is not None for g in serial_graphs) > 10
    assert all(same_graph(a, b) for a, b in zip(serial_graphs, parallel_graphs, strict=True))


def test_lift_child_writes_the_features_of_its_lift(tmp_path: Path) -> None:
    out = tmp_path / "lift.json.gz"
    env = {**os.environ, "AE_LIFT_WORKERS": "2", "AE_LIFT_CHUNK": "8"}
    done = subprocess.run([sys.executable, "-m", "lifting.child", str(SAMPLE), str(out)],
                          capture_output=True, text=True, timeout=300, env=env,
                          cwd=Path(__file__).resolve().parents[1])
    assert done.returncode == EXIT_OK, done.stderr
    assert "chunks, 2 workers" in done.stdout
    lift = json.loads(gzip.decompress(out.read_bytes()))
    packed = from_bytes((tmp_path / ("lift.json.gz" + FEATURES_SUFFIX)).read_bytes())
    fresh = pack_lift(lift)  # featurised from the JSON lift, as the embed stage did
    assert packed.addrs == fresh.addrs and packed.names == fresh.names
    assert packed.blocks == fresh.blocks and packed.binary == fresh.binary
    assert packed.functions_total == len(lift["functions"])
    assert all(same_graph(a, b) for a, b in zip(packed.graphs, fresh.graphs, strict=True))


def test_a_bad_worker_count_is_a_clear_error(tmp_path: Path) -> None:
    env = {**os.environ, "AE_LIFT_WORKERS": "zero"}
    done = subprocess.run([sys.executable, "-m", "lifting.child", str(SAMPLE),
                           str(tmp_path / "out.gz")], capture_output=True, text=True,
                          timeout=120, env=env, cwd=Path(__file__).resolve().parents[1])
    assert done.returncode != EXIT_OK
    assert "AE_LIFT_WORKERS must be a positive integer" in done.stderr

