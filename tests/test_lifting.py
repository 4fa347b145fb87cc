"""Lifting real binaries of every supported format and architecture with real angr."""

from __future__ import annotations

import gzip
import json
import subprocess
import sys
from pathlib import Path

import pytest

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


def run_child(sample: Path, out: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "lifting.child", str(sample), str(out)],
                          capture_output=True, text=True, timeout=300,
                          cwd=Path(__file__).resolve().parent.parent)


def test_child_process_reports_unloadable_files(tmp_path: Path) -> None:
    junk = tmp_path / "junk"
    junk.write_bytes(b"\x7fELF\x02\x01\x01" + b"\xff" * 57)
    result = run_child(junk, tmp_path / "out.json.gz")
    assert result.returncode == EXIT_UNSUPPORTED
    assert result.stderr.strip().splitlines()[-1].startswith("ERROR ")
    assert not (tmp_path / "out.json.gz").exists()


def test_child_process_writes_the_lift(tmp_path: Path) -> None:
    out = tmp_path / "out.json.gz"
    result = run_child(Path("/bin/true"), out)
    assert result.returncode == EXIT_OK, result.stderr
    assert out.stat().st_size > 1000 and "done" in result.stdout


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
        json.dump({**lifted, "format": "ae-lift/1"}, handle)
    broken.write_bytes(b"not gzip at all")
    assert is_current_lift(current)
    assert not is_current_lift(older)
    assert not is_current_lift(broken)
    assert not is_current_lift(tmp_path / "missing.json.gz")

