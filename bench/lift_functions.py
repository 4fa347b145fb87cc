"""Functions per architecture for one source: angr's split vs ae-lift/3's merged result.

    nice -n 5 python bench/lift_functions.py [--src /tmp/cmark] [--out bench/lift_functions.json]

Why: CFGFast leaves some jump tables unresolved (AArch64, i686 PIC, ARM), and its
complete scan then makes every case block a function of its own. lift_binary merges
such fragments back (lifting/angr_lift.py, _fragments). This builds Debian's cmark
(`apt-get source cmark` into --src) with gcc and clang for x86_64, aarch64, i686 and
armhf at -O2 as a -g shared object plus a stripped copy, lifts the stripped copy and
reports, per build: functions before the merge (angr's split, lifted with
merge_fragments=False), after, the blocks of the case-folding function, how many of the -g twin's
function symbols start no function in angr's split, which ones the merge swallowed
(none should), and whether every lifted function that
the -g twin names sits at the symbol's own address (`nm`). Then it times the v1
embedder (CPU, 2 threads) on gcc-x86_64's case-folding function whole and on a
function made of copies of it, for the MAX_BLOCKS rule (festive/v1/graph.py).
Write-up: bench/lift_functions.md.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from elftools.elf.elffile import ELFFile

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from lifting.angr_lift import RUNTIME_FUNCTIONS, lift_binary  # noqa: E402

TRIPLES = {"x86_64": "x86_64-linux-gnu", "aarch64": "aarch64-linux-gnu",
           "i686": "i686-linux-gnu", "armhf": "arm-linux-gnueabihf"}
CASE_FOLD = "cmark_utf8proc_case_fold"
GENERATED = {
    "cmark_export.h": '#define CMARK_EXPORT __attribute__((visibility("default")))\n'
                      '#define CMARK_NO_EXPORT __attribute__((visibility("hidden")))\n'
                      "#define CMARK_DEPRECATED\n",
    "cmark_version.h": '#define CMARK_VERSION ((0 << 16) | (30 << 8) | 2)\n'
                       '#define CMARK_VERSION_STRING "0.30.2"\n',
    "config.h": "#include <stdbool.h>\n#define HAVE___BUILTIN_EXPECT 1\n"
                "#define HAVE___ATTRIBUTE__ 1\n#define CMARK_ATTRIBUTE(list) __attribute__ (list)\n"
                "#define CMARK_INLINE inline\n",
}


def build(src: Path, out: Path, compiler: str, arch: str) -> tuple[Path, Path]:
    """-g shared object and its stripped copy."""
    tree = next(p for p in sorted(src.glob("cmark-*")) if p.is_dir())
    gen = out / "gen"
    gen.mkdir(parents=True, exist_ok=True)
    for name, text in GENERATED.items():
        (gen / name).write_text(text)
    triple = TRIPLES[arch]
    if compiler == "gcc":
        cc = ["gcc" if arch == "x86_64" else f"{triple}-gcc"]
    else:
        cc = ["clang", f"--target={triple}", "-fuse-ld=lld"]
    sources = [str(p) for p in sorted((tree / "src").glob("*.c")) if p.name != "main.c"]
    debug = out / f"{compiler}-{arch}.so"
    stripped = out / f"{compiler}-{arch}.stripped.so"
    subprocess.run([*cc, "-O2", "-g", "-fPIC", "-shared", "-fvisibility=hidden", "-w",
                    f"-I{gen}", f"-I{tree / 'src'}", *sources, "-o", str(debug)], check=True)
    strip = "strip" if arch == "x86_64" else f"{triple}-strip"
    subprocess.run([strip, "--strip-all", "-o", str(stripped), str(debug)], check=True)
    return debug, stripped


def function_symbols(path: Path) -> dict[str, int]:
    """STT_FUNC symbols of the -g copy's .symtab: name -> address as `nm` prints it
    (st_value; on ARM with the Thumb bit cleared, as GNU nm does)."""
    with open(path, "rb") as handle:
        elf = ELFFile(handle)
        mask = ~1 if elf["e_machine"] == "EM_ARM" else ~0
        symtab = elf.get_section_by_name(".symtab")
        return {s.name: s["st_value"] & mask for s in symtab.iter_symbols()
                if s["st_info"]["type"] == "STT_FUNC" and s["st_value"]
                and s["st_shndx"] != "SHN_UNDEF"}


def missing_symbols(lifted: dict[str, Any], symbols: dict[str, int]) -> list[str]:
    """Function symbols (runtime scaffolding and .cold parts aside) no function starts at."""
    starts = {int(f["addr"], 16) for f in lifted["functions"]}
    return sorted(n for n, a in symbols.items()
                  if a not in starts and n not in RUNTIME_FUNCTIONS and ".cold" not in n)


def measure(debug: Path, stripped: Path) -> dict[str, Any]:
    symbols = function_symbols(debug)
    unmerged = lift_binary(str(stripped), merge_fragments=False)
    started = time.monotonic()
    lifted = lift_binary(str(stripped))
    seconds = time.monotonic() - started
    by_addr = {int(f["addr"], 16): f for f in lifted["functions"]}
    case_fold = by_addr.get(symbols.get(CASE_FOLD, -1))
    before_missing = missing_symbols(unmerged, symbols)
    named = [f for f in lifted["functions"] if f.get("name") in symbols]
    return {
        "functions_before": len(unmerged["functions"]),
        "functions_after": len(lifted["functions"]),
        "function_symbols": len(symbols),
        "case_fold_blocks": len(case_fold["blocks"]) if case_fold else None,
        "symbols_missed_before_merge": len(before_missing),
        "symbols_swallowed_by_merge": sorted(set(missing_symbols(lifted, symbols))
                                             - set(before_missing)),
        "named_functions": len(named),
        "named_at_nm_address": sum(int(f["addr"], 16) == symbols[f["name"]] for f in named),
        "stripped": lifted["binary"]["stripped"],
        "lift_seconds": round(seconds, 1),
    }


def embed_timing(lifted_function: dict[str, Any]) -> list[dict[str, Any]]:
    """Best of three embeddings on the CPU (after one warm-up) per function size."""
    import resource

    import torch

    from festive.v1.embed import Embedder
    from festive.v1.graph import to_graph

    torch.set_num_threads(2)
    embedder = Embedder(device="cpu")
    n = len(lifted_function["blocks"])
    rows = []
    for copies in (1, 6):
        func = {**lifted_function, "blocks": lifted_function["blocks"] * copies,
                "edges": [[s + k * n, d + k * n] for k in range(copies)
                          for s, d in lifted_function["edges"]]}
        graph = to_graph(func)
        embedder.embed_graphs([graph])
        times = []
        for _ in range(3):
            started = time.perf_counter()
            embedder.embed_graphs([graph])
            times.append(time.perf_counter() - started)
        rows.append({"blocks": graph.n_blocks, "seconds": round(min(times), 3),
                     "max_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
                                          / 1024)})
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--src", type=Path, default=Path("/tmp/cmark"),
                        help="folder holding the unpacked `apt-get source cmark`")
    parser.add_argument("--work", type=Path, default=Path("/tmp/cmark-builds"))
    parser.add_argument("--out", type=Path,
                        default=Path(__file__).resolve().parent / "lift_functions.json")
    args = parser.parse_args()
    results = {}
    for compiler in ("gcc", "clang"):
        for arch in TRIPLES:
            debug, stripped = build(args.src, args.work, compiler, arch)
            row = measure(debug, stripped)
            results[f"{compiler}-{arch}-O2"] = row
            print(f"{compiler}-{arch}-O2", json.dumps(row), flush=True)
    lifted = lift_binary(str(args.work / "gcc-x86_64.stripped.so"))
    case_fold = function_symbols(args.work / "gcc-x86_64.so")[CASE_FOLD]
    (func,) = [f for f in lifted["functions"] if int(f["addr"], 16) == case_fold]
    timing = embed_timing(func)
    print("embed", json.dumps(timing), flush=True)
    args.out.write_text(json.dumps({"builds": results, "embed_cpu": timing}, indent=1) + "\n")


if __name__ == "__main__":
    main()
