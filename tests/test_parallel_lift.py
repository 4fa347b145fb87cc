"""The parallel lift gives the serial lift's functions and features, in the library and
through the lift child: one CFG with functions lifted and featurised by forked workers
in chunks, and a CFG recovered in slices (lifting/cfg_slices.py). Real angr on a real
Debian binary; < 60 s."""

from __future__ import annotations

import gzip
import io
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from elftools.elf.elffile import ELFFile

from festive.v1.graph import FunctionGraph
from festive.v1.packed import from_bytes, graph_if_considered, pack_lift, summary_from_bytes
from lifting import cfg_slices
from lifting.angr_lift import import_angr, lift_binary_extras
from lifting.child import EXIT_OK, FEATURES_SUFFIX
from tests.conftest import compile_c

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
    data = (tmp_path / ("lift.json.gz" + FEATURES_SUFFIX)).read_bytes()
    packed = from_bytes(data)
    fresh = pack_lift(lift)  # featurised from the JSON lift, as the embed stage did
    assert packed.addrs == fresh.addrs and packed.names == fresh.names
    assert packed.blocks == fresh.blocks and packed.binary == fresh.binary
    assert packed.functions_total == len(lift["functions"])
    assert all(same_graph(a, b) for a, b in zip(packed.graphs, fresh.graphs, strict=True))
    # the stage cache's summary reads the header alone, and says the same
    assert summary_from_bytes(data) == (lift["binary"]["arch"], len(lift["functions"]))
    for damaged in (data[: len(data) // 2], b"not a packed lift"):
        with pytest.raises(ValueError, match="not a packed lift"):
            summary_from_bytes(damaged)


def test_a_bad_worker_count_is_a_clear_error(tmp_path: Path) -> None:
    env = {**os.environ, "AE_LIFT_WORKERS": "zero"}
    done = subprocess.run([sys.executable, "-m", "lifting.child", str(SAMPLE),
                           str(tmp_path / "out.gz")], capture_output=True, text=True,
                          timeout=120, env=env, cwd=Path(__file__).resolve().parents[1])
    assert done.returncode != EXIT_OK
    assert "AE_LIFT_WORKERS must be a positive integer" in done.stderr


# --- the sliced CFG (lifting/cfg_slices.py) ------------------------------------------------
# /usr/bin/true's .text is ~14 KB: slices of 4 KB cut it the way a big binary is cut.
SLICE_BYTES = 4096


def test_sliced_lift_is_the_same_for_any_number_of_workers() -> None:
    said: list[str] = []
    alone, alone_graphs = lift_binary_extras(str(SAMPLE), progress=said.append,
                                             slice_bytes=SLICE_BYTES, extra=graph_if_considered)
    shared, shared_graphs = lift_binary_extras(str(SAMPLE), workers=2, slice_bytes=SLICE_BYTES,
                                               extra=graph_if_considered)

    slices = [int(m.group(1)) for m in map(re.compile(r"\((\d+)/\1 slices").search, said) if m]
    assert slices and slices[0] >= 3, said  # cut into several slices (cuts at function starts)
    assert len(alone["functions"]) > 40
    assert shared == alone  # every block, edge, VEX statement, call and string
    assert all(same_graph(a, b) for a, b in zip(alone_graphs, shared_graphs, strict=True))
    addrs = [int(f["addr"], 16) for f in alone["functions"]]
    assert addrs == sorted(set(addrs))  # address order, no function twice
    # the stubs standing for other slices' functions are not calls to imports
    calls = {c for f in alone["functions"] for c in f["calls"]}
    assert "free" in calls and not {c for c in calls if c.startswith("OtherSlice")}


def _calls_across_slices() -> str:
    """C in which functions call, across slices, a function that never returns (`die`,
    last in the file) and one that does (`late`); gcc -O2 moves their unlikely paths to
    cold parts at the start of .text."""
    parts = ["#include <stdio.h>", "#include <stdlib.h>", "#include <string.h>",
             "void die(const char *m) __attribute__((noreturn, noinline));",
             "int late(int x) __attribute__((noinline));"]
    for i in range(48):
        parts.append(f"""
__attribute__((noinline)) int f{i}(int x, const char *s) {{
    if (__builtin_expect(x == {1000 + i}, 0)) {{ fprintf(stderr, "odd {i} %s", s); abort(); }}
    if (x < {i}) die("f{i}: too small");
    int acc = (int)strlen(s);
    for (int k = 0; k < x % {i + 3}; k++) acc = acc * {i + 7} + (s[k % 4] ^ k);
    if (acc == {i * 31}) return late(acc);
    return acc + x;
}}""")
    calls = "\n".join(f"    t += f{i}(argc + {i}, argv[0]);" for i in range(48))
    parts.append(f"""
__attribute__((noinline)) int late(int x) {{ if (x > 1000000) die("late"); return x / 3; }}
int main(int argc, char **argv) {{
    int t = 0;
{calls}
    return t & 1;
}}
void die(const char *m) {{ fprintf(stderr, "fatal: %s", m); exit(2); }}
""")
    return "\n".join(parts)


def test_sliced_lift_agrees_with_one_whole_binary_cfg(tmp_path: Path) -> None:
    # ~11 KB of .text in slices of 2 KB: most callers of `die` are in another slice
    program = str(compile_c(tmp_path, _calls_across_slices(), "-O2", name="across"))
    whole, _ = lift_binary_extras(program, slice_bytes=1 << 62)
    said: list[str] = []
    sliced, _ = lift_binary_extras(program, progress=said.append, slice_bytes=2048)

    assert any(" slices, slice " in m for m in said), said
    assert len(whole["functions"]) > 50
    a = {f["addr"]: f for f in whole["functions"]}
    b = {f["addr"]: f for f in sliced["functions"]}
    assert a.keys() == b.keys()
    # every block, edge, VEX statement, call and string: without the stubs, or with
    # `die` taken to return, the callers in other slices come out different
    assert sorted(k for k in a if a[k] != b[k]) == []
    assert sliced["binary"] == whole["binary"]


def test_a_big_binary_is_planned_in_slices_and_damaged_tables_mean_one_cfg(
        tmp_path: Path) -> None:
    # planning only (no CFG): tar has ~360 KB of .text, above the default threshold
    angr = import_angr()
    tar = Path("/usr/bin/tar")
    plan = cfg_slices.plan(angr.Project(str(tar), auto_load_libs=False), str(tar))
    assert plan is not None and len(plan) == 2
    assert all(plan.foreign(i) for i in range(len(plan)))  # each reaches the other slice
    assert plan.no_return  # e.g. the functions that end in `usage` or `abort`

    damaged = tmp_path / "tar"
    data = bytearray(tar.read_bytes())
    section = ELFFile(io.BytesIO(bytes(data))).get_section_by_name(".eh_frame")
    offset, size = section["sh_offset"], section["sh_size"]
    data[offset:offset + size] = bytes(range(256)) * (size // 256) + bytes(size % 256)
    damaged.write_bytes(bytes(data))
    assert cfg_slices.plan(angr.Project(str(damaged), auto_load_libs=False), str(damaged)) is None
