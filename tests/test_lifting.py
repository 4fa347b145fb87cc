"""Lifting real binaries of every supported format and architecture with real angr."""

from __future__ import annotations

import gzip
import json
import subprocess
import sys
from pathlib import Path

import pytest

import sandbox
from lifting.angr_lift import LIFT_FORMAT, is_current_lift, lift_binary
from lifting.child import EXIT_OK, EXIT_UNSUPPORTED

SOURCE = r"""
unsigned checksum(const unsigned char *p, unsigned long n) {
    unsigned a = 1, b = 0;
    for (unsigned long i = 0; i < n; i++) { a = (a + p[i]) % 65521; b = (b + a) % 65521; }
    return (b << 16) | a;
}
int classify(int x) {
    if (x < 0) return -1;
    if (x == 0) return 0;
    if (x > 1000) return 2;
    return 1;
}
"""

# (clang target, linker invocation, expected format, expected angr arch)
TARGETS = {
    "elf-x86_64": ("x86_64-linux-gnu", "elf", "ELF", "AMD64"),
    "elf-i686": ("i686-linux-gnu", "elf", "ELF", "X86"),
    "elf-armhf": ("arm-linux-gnueabihf", "elf", "ELF", "ARMHF"),
    "elf-aarch64": ("aarch64-linux-gnu", "elf", "ELF", "AARCH64"),
    "elf-mipsel": ("mipsel-linux-gnu", "elf", "ELF", "MIPS32"),
    "pe-x86_64": ("x86_64-pc-windows-msvc", "x64", "PE", "AMD64"),
    "pe-i686": ("i686-pc-windows-msvc", "x86", "PE", "X86"),
    "pe-arm64": ("aarch64-pc-windows-msvc", "arm64", "PE", "AARCH64"),
}


def build(tmp: Path, target: str, link: str) -> Path:
    """Cross-build a freestanding shared library / DLL with clang and lld (no sysroot)."""
    src = tmp / "f.c"
    src.write_text(SOURCE)
    obj = tmp / "f.o"
    pic = ["-fPIC"] if link == "elf" else []  # Windows targets reject -fPIC
    subprocess.run(["clang", f"--target={target}", "-O1", *pic, "-c", str(src), "-o", str(obj)],
                   check=True, capture_output=True)
    if link == "elf":
        out = tmp / "libf.so"
        cmd = ["ld.lld", "-shared", "-o", str(out), str(obj)]
    else:
        out = tmp / "f.dll"
        cmd = ["lld-link", "/dll", "/noentry", f"/machine:{link}", "/export:checksum",
               "/export:classify", f"/out:{out}", str(obj)]
    subprocess.run(cmd, check=True, capture_output=True)
    return out


@pytest.mark.parametrize("name", sorted(TARGETS))
def test_lifts_functions_with_blocks_edges_and_vex(name: str, tmp_path: Path) -> None:
    target, link, fmt, arch = TARGETS[name]
    lifted = lift_binary(str(build(tmp_path, target, link)))
    assert lifted["format"] == LIFT_FORMAT
    assert lifted["binary"]["format"] == fmt and lifted["binary"]["arch"] == arch
    assert lifted["binary"]["stripped"] is (fmt == "PE")  # lld-link writes no COFF symbols
    functions = {f["name"]: f for f in lifted["functions"]}
    assert {"checksum", "classify"} <= set(functions)
    for func in (functions["checksum"], functions["classify"]):
        assert int(func["addr"], 16) > 0 and func["size"] > 0
        assert len(func["blocks"]) >= 3 and func["edges"]
        assert all(0 <= i < len(func["blocks"]) for edge in func["edges"] for i in edge)
        assert all(block["vex"] and block["vex"][-1].startswith("NEXT Ijk_")
                   for block in func["blocks"])
    # The loop in checksum shows up as a back edge.
    assert any(dst <= src for src, dst in functions["checksum"]["edges"])


def run_child(sample: Path, out: Path) -> sandbox.Finished:
    """The lift child as the worker starts it: sandboxed, sample read-only, out in scratch."""
    return sandbox.run_blocking([sys.executable, "-m", "lifting.child", str(sample), str(out)],
                                scratch=out.parent, inputs=[sample],
                                limits=sandbox.Limits(memory_bytes=8 << 30, time_s=300))


def test_child_process_reports_unloadable_files(tmp_path: Path) -> None:
    junk = tmp_path / "junk"
    junk.write_bytes(b"\x7fELF\x02\x01\x01" + b"\xff" * 57)
    result = run_child(junk, tmp_path / "out.json.gz")
    assert result.code == EXIT_UNSUPPORTED
    assert result.stderr.strip().splitlines()[-1].startswith("ERROR ")
    assert not (tmp_path / "out.json.gz").exists()


def test_child_process_writes_the_lift(tmp_path: Path) -> None:
    out = tmp_path / "out.json.gz"
    result = run_child(Path("/bin/true"), out)
    assert result.code == EXIT_OK, result.stderr
    assert out.stat().st_size > 1000 and result.last_line.startswith("done")


def test_referenced_strings_are_recorded(tmp_path: Path) -> None:
    src = tmp_path / "s.c"
    src.write_text('#include <stdio.h>\nint main(int c, char **v) {\n'
                   '  if (c > 2) puts("attribution-engine-marker");\n'
                   '  printf("%s and %s\\n", v[0], "second-marker");\n  return 0;\n}\n')
    subprocess.run(["gcc", "-O1", str(src), "-o", str(tmp_path / "s")], check=True)
    lifted = lift_binary(str(tmp_path / "s"))
    (main,) = [f for f in lifted["functions"] if f["name"] == "main"]
    assert "attribution-engine-marker" in main["strings"]
    assert "second-marker" in main["strings"]
    assert len(main["strings"]) == len(set(main["strings"]))


def test_only_lifts_of_the_current_format_count_as_cached(tmp_path: Path) -> None:
    lifted = lift_binary("/bin/true", max_functions=3)
    current, older, broken = (tmp_path / f"{n}.json.gz" for n in ("current", "older", "broken"))
    with gzip.open(current, "wt") as handle:
        json.dump(lifted, handle)
    with gzip.open(older, "wt") as handle:
        json.dump({**lifted, "format": "ae-lift/2"}, handle)
    broken.write_bytes(b"not gzip at all")
    assert is_current_lift(current)
    assert not is_current_lift(older)
    assert not is_current_lift(broken)
    assert not is_current_lift(tmp_path / "missing.json.gz")



# --- Functions as a disassembler shows them: switch-heavy code cross-built for several
# architectures, each as a -g shared object and a stripped copy (the copy is lifted).

SWITCH_CASES = 300  # `fold` gets about 920 blocks on every target below


def switch_source() -> str:
    """A dense switch (a jump table on every target) plus a few ordinary functions."""
    lines = ["#include <stddef.h>",
             "static void put(unsigned char *b, size_t *n, int c) { b[(*n)++] = c & 255; }",
             "int fold(unsigned char *buf, size_t *len, int c, int flags) {", "  switch (c) {"]
    for i in range(SWITCH_CASES):
        k = i * 3 + 7
        lines.append(f"  case {i}: if (flags & {1 << (i % 5)}) {{ put(buf, len, {k}); "
                     f"put(buf, len, {k + 1}); }} else put(buf, len, {k ^ 0x55}); return {i % 17};")
    lines += ["  default: return -1;", "  }", "}"]
    for j in range(12):
        lines.append(f"int helper{j}(const int *p, int n) {{ int s = {j}; "
                     f"for (int i = 0; i < n; i++) {{ if (p[i] > {j}) s += p[i] * {j + 1}; "
                     "else s ^= p[i]; } return s; }")
    lines.append("int dispatch(int op, int a, int b) { switch (op) { case 0: return a + b; "
                 "case 1: return a - b; case 2: return a * b; case 3: return b ? a / b : 0; "
                 "case 4: return a & b; case 5: return a | b; case 6: return a ^ b; "
                 "case 7: return a << (b & 31); case 8: return a >> (b & 31); "
                 "case 9: return -a; default: return 0; } }")
    return "\n".join(lines) + "\n"


SOURCE_FUNCTIONS = {"fold", "dispatch", *(f"helper{j}" for j in range(12))}
# build name -> (compile command, binutils prefix)
CROSS_BUILDS = {
    "gcc-x86_64": (["gcc"], ""),
    "gcc-aarch64": (["aarch64-linux-gnu-gcc"], "aarch64-linux-gnu-"),
    "clang-aarch64": (["clang", "--target=aarch64-linux-gnu", "-fuse-ld=lld"],
                      "aarch64-linux-gnu-"),
    "gcc-i686": (["i686-linux-gnu-gcc"], "i686-linux-gnu-"),
    "gcc-armhf": (["arm-linux-gnueabihf-gcc"], "arm-linux-gnueabihf-"),  # Thumb-2 code
}


class SwitchBuilds:
    """Builds and lifts on first use, shared by the tests of this module."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.source = root / "switch.c"
        self.source.write_text(switch_source())
        self._lifts: dict[tuple[str, bool, bool], dict] = {}

    def paths(self, name: str) -> tuple[Path, Path]:
        debug, stripped = self.root / f"{name}.so", self.root / f"{name}.stripped.so"
        if not stripped.exists():
            compiler, prefix = CROSS_BUILDS[name]
            subprocess.run([*compiler, "-O2", "-g", "-fPIC", "-shared", str(self.source),
                            "-o", str(debug)], check=True, capture_output=True)
            subprocess.run([f"{prefix}strip", "--strip-all", "-o", str(stripped), str(debug)],
                           check=True, capture_output=True)
        return debug, stripped

    def lift(self, name: str, stripped: bool = True, merge: bool = True) -> dict:
        key = (name, stripped, merge)
        if key not in self._lifts:
            path = self.paths(name)[1 if stripped else 0]
            self._lifts[key] = lift_binary(str(path), merge_fragments=merge)
        return self._lifts[key]

    def nm(self, name: str) -> dict[str, int]:
        """Text symbols of the -g copy as `nm` prints them (Thumb functions odd)."""
        prefix = CROSS_BUILDS[name][1]
        out = subprocess.run([f"{prefix}nm", "--defined-only", str(self.paths(name)[0])],
                             check=True, capture_output=True, text=True).stdout
        symbols = {}
        for line in out.splitlines():
            value, kind, symbol = line.split()
            if kind in "Tt":
                symbols[symbol] = int(value, 16)
        return symbols


@pytest.fixture(scope="module")
def switch_builds(tmp_path_factory: pytest.TempPathFactory) -> SwitchBuilds:
    return SwitchBuilds(tmp_path_factory.mktemp("switch"))


def symbol_size(path: Path, name: str) -> int:
    from elftools.elf.elffile import ELFFile

    with open(path, "rb") as handle:
        (symbol,) = ELFFile(handle).get_section_by_name(".symtab").get_symbol_by_name(name)
        return int(symbol["st_size"])


def by_address(lifted: dict) -> dict[int, dict]:
    return {int(f["addr"], 16): f for f in lifted["functions"]}


@pytest.mark.parametrize("name", ["gcc-aarch64", "clang-aarch64", "gcc-i686"])
def test_jump_table_cases_stay_in_their_function(switch_builds: SwitchBuilds, name: str) -> None:
    reference = len(switch_builds.lift("gcc-x86_64")["functions"])  # angr resolves x86-64's table
    split = switch_builds.lift(name, merge=False)
    lifted = switch_builds.lift(name)
    nm = switch_builds.nm(name)
    # angr leaves these tables unresolved and makes every case a function of its own ...
    assert len(split["functions"]) > reference + SWITCH_CASES // 2
    # ... which lift_binary merges back: about as many functions as on x86-64.
    assert abs(len(lifted["functions"]) - reference) <= 4
    merged = len(split["functions"]) - len(lifted["functions"])
    assert lifted["binary"]["fragments_merged"] == merged
    functions = by_address(lifted)
    fold = functions[nm["fold"]]
    assert len(fold["blocks"]) >= 900
    debug = switch_builds.paths(name)[0]
    fold_end = nm["fold"] + symbol_size(debug, "fold")
    assert not [a for a in functions if nm["fold"] < a < fold_end]  # no case block left outside
    # Its blocks are its own (gcc's fold.cold, the unlikely path split off, counts as fold's).
    pieces = [(nm[p], nm[p] + symbol_size(debug, p)) for p in ("fold", "fold.cold") if p in nm]
    assert all(any(lo <= int(b["addr"], 16) < hi for lo, hi in pieces) for b in fold["blocks"])
    # The case blocks are wired to the dispatch: every block is reachable from the entry.
    entry = next(i for i, b in enumerate(fold["blocks"]) if int(b["addr"], 16) == nm["fold"])
    reached, todo = {entry}, [entry]
    successors: dict[int, list[int]] = {}
    for src, dst in fold["edges"]:
        successors.setdefault(src, []).append(dst)
    while todo:
        for nxt in successors.get(todo.pop(), []):
            if nxt not in reached:
                reached.add(nxt)
                todo.append(nxt)
    assert len(reached) >= 0.95 * len(fold["blocks"])
    # No real function was swallowed: every function of the source still starts one.
    assert all(nm[f] in functions for f in SOURCE_FUNCTIONS if f in nm)


def test_a_900_block_function_is_embedded_whole(switch_builds: SwitchBuilds) -> None:
    from festive.v1.embed import Embedder
    from festive.v1.graph import MAX_BLOCKS, to_graph

    nm = switch_builds.nm("gcc-aarch64")
    fold = by_address(switch_builds.lift("gcc-aarch64"))[nm["fold"]]
    n = len(fold["blocks"])
    assert n >= 900
    graph = to_graph(fold)
    assert graph.n_blocks == n and len(graph.edges) == len(fold["edges"])
    assert set(graph.tok_block.tolist()) == set(range(n))
    head = {**fold, "blocks": fold["blocks"][:400],
            "edges": [e for e in fold["edges"] if max(e) < 400]}
    weights = Path(__file__).resolve().parents[1] / "festive" / "weights" / "v1" / "model.pt"
    whole, head_only = Embedder(weights, device="cpu").embed([fold, head])
    assert abs(float(whole @ whole) - 1) < 1e-4
    assert float(whole @ head_only) < 0.9999  # the blocks past 400 count
    # The documented rule beyond MAX_BLOCKS: the first MAX_BLOCKS blocks by address.
    copies = MAX_BLOCKS // n + 1
    huge = {**fold, "blocks": fold["blocks"] * copies,
            "edges": [[s + k * n, d + k * n] for k in range(copies) for s, d in fold["edges"]]}
    cut = to_graph(huge)
    assert cut.n_blocks == MAX_BLOCKS and int(cut.edges.max()) < MAX_BLOCKS


@pytest.mark.parametrize("name", ["gcc-aarch64", "gcc-i686", "gcc-armhf"])
def test_addresses_are_the_files_own(switch_builds: SwitchBuilds, name: str) -> None:
    nm = switch_builds.nm(name)
    debug = switch_builds.lift(name, stripped=False)
    named = [f for f in debug["functions"] if f.get("name") in nm]
    assert {f["name"] for f in named} >= SOURCE_FUNCTIONS
    for func in named:
        assert int(func["addr"], 16) == nm[func["name"]], func["name"]
    assert int(debug["binary"]["entry"], 16) == 0  # a shared object's e_entry, not angr's base
    stripped = switch_builds.lift(name)
    exported = [f for f in stripped["functions"] if f.get("name")]
    assert {f["name"] for f in exported} >= SOURCE_FUNCTIONS
    assert all(int(f["addr"], 16) == nm[f["name"]] for f in exported)
    # Thumb code (gcc's default on armhf): nm clears the low bit, so do the lifts, and
    # the mode is kept in the "thumb" flag.
    assert all(f["thumb"] == (name == "gcc-armhf") for f in named if f["name"] in SOURCE_FUNCTIONS)
    if name == "gcc-armhf":
        assert all(int(b["addr"], 16) % 2 == 0 for f in named for b in f["blocks"])


def test_stripped_means_no_static_symbol_table(switch_builds: SwitchBuilds) -> None:
    stripped = switch_builds.lift("gcc-aarch64")
    assert any(f.get("name") for f in stripped["functions"])  # .dynsym still names exports
    assert stripped["binary"]["stripped"] is True
    assert switch_builds.lift("gcc-aarch64", stripped=False)["binary"]["stripped"] is False
