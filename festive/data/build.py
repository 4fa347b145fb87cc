"""Build Corpus A: fetch Debian sources, compile the matrix, strip, lift, label.

    nice -n 19 python -m festive.data.build [--projects zlib,lz4] [--configs gcc-x86_64-O2,...]
        [--skip-lift]

Why this shape: labels come from the -g copy's symbol table (by address) while the
features come from lifting the *stripped* copy, so no name can leak into a feature.
Everything lands under data/festive/ (git-ignored); each step is skipped when its
output exists, so the command can be re-run to resume.
"""

from __future__ import annotations

import argparse
import glob
import gzip
import json
import multiprocessing
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from festive.data.projects import ARCHES, BY_NAME, DEFAULT_PROJECTS, Project, all_configs

ROOT = Path(__file__).resolve().parents[2] / "data" / "festive"
SRC = ROOT / "src"
BUILDS = ROOT / "builds"
LIFTED = ROOT / "lifted"


def fetch(project: Project) -> Path:
    """apt-get source (needs a deb-src entry); returns the unpacked tree."""
    SRC.mkdir(parents=True, exist_ok=True)
    found = sorted(p for p in SRC.glob(f"{project.name}-*") if p.is_dir())
    if not found:
        subprocess.run(["apt-get", "source", "-q", project.name], cwd=SRC, check=True,
                       stdout=subprocess.DEVNULL)
        found = sorted(p for p in SRC.glob(f"{project.name}-*") if p.is_dir())
    return found[0]


def _sources(project: Project, tree: Path, gen: Path) -> list[Path]:
    files: set[Path] = set()
    for pattern in project.sources:
        files.update(Path(p) for p in glob.glob(str(tree / pattern)))
    for pattern in project.exclude:
        files.difference_update(Path(p) for p in glob.glob(str(tree / pattern)))
    files.update(gen / name for name in project.copies if name.endswith(".c"))
    return sorted(files)


def _compiler(compiler: str, arch: str) -> list[str]:
    triple, prefix = ARCHES[arch]
    if compiler == "gcc":
        return [f"{prefix}gcc" if prefix else "gcc"]
    return ["clang", f"--target={triple}"]


def build_one(project: Project, tree: Path, compiler: str, arch: str, opt: str) -> Path | None:
    """Compile, link a shared object with -g, and a stripped copy. None if it fails."""
    out = BUILDS / project.name / f"{compiler}-{arch}-{opt}"
    debug, stripped = out / "lib.so", out / "lib.stripped.so"
    if stripped.exists():
        return out
    gen = BUILDS / project.name / "gen"
    gen.mkdir(parents=True, exist_ok=True)
    for name, content in project.generated.items():
        (gen / name).write_text(content)
    for name, source in project.copies.items():
        shutil.copyfile(tree / source, gen / name)
    cc = _compiler(compiler, arch)
    flags = [f"-{opt}", "-g", "-fPIC", "-fvisibility=hidden", "-w", f"-I{gen}"]
    flags += [f"-I{tree / inc}" for inc in project.includes] + [f"-D{d}" for d in project.defines]
    objdir = out / "obj"
    objdir.mkdir(parents=True, exist_ok=True)
    objects = []
    for index, source in enumerate(_sources(project, tree, gen)):
        obj = objdir / f"{index:03d}_{source.stem}.o"
        result = subprocess.run([*cc, *flags, "-c", str(source), "-o", str(obj)],
                                capture_output=True, text=True)
        if result.returncode == 0:
            objects.append(str(obj))
    if not objects:
        return None
    link = [*cc, "-shared", "-g", "-o", str(debug), *objects, "-lm"]
    if compiler == "clang":
        link.insert(2, "-fuse-ld=lld")
        if arch == "mipsel":  # libgcc's 64-bit division helpers are not PIC on mipsel
            link.insert(3, "-Wl,-z,notext")
    result = subprocess.run(link, capture_output=True, text=True)
    if result.returncode != 0:
        print(f"  link failed {project.name} {out.name}: {result.stderr[-300:]}", file=sys.stderr)
        return None
    prefix = ARCHES[arch][1]
    subprocess.run([f"{prefix}strip" if prefix else "strip", "--strip-all", "-o", str(stripped),
                    str(debug)], check=True)
    shutil.rmtree(objdir)
    return out


def debug_names(path: Path) -> dict[int, str]:
    """Function symbols of the -g copy, by address (Thumb bit cleared)."""
    from elftools.elf.elffile import ELFFile
    from elftools.elf.sections import SymbolTableSection

    names: dict[int, str] = {}
    with open(path, "rb") as handle:
        elf = ELFFile(handle)
        for section in elf.iter_sections():
            if not isinstance(section, SymbolTableSection):
                continue
            for sym in section.iter_symbols():
                if sym["st_info"]["type"] == "STT_FUNC" and sym["st_value"] and sym.name:
                    names.setdefault(sym["st_value"] & ~1, sym.name)
    return names


def function_bytes(path: Path, blocks: list[dict[str, Any]], base: int) -> bytes:
    """Raw bytes of a function's blocks in address order (for the byte-level baselines)."""
    from elftools.elf.elffile import ELFFile

    with open(path, "rb") as handle:
        data = handle.read()
        handle.seek(0)
        segments = [(s["p_vaddr"], s["p_offset"], s["p_filesz"])
                    for s in ELFFile(handle).iter_segments() if s["p_type"] == "PT_LOAD"]
    out = bytearray()
    for block in blocks:
        addr = (int(block["addr"], 16) - base) & ~1
        for vaddr, offset, size in segments:
            if vaddr <= addr < vaddr + size:
                start = offset + addr - vaddr
                out += data[start:start + block["size"]]
                break
    return bytes(out)


def load_base(lifted: dict[str, Any], debug: Path) -> int:
    """lifted addr - base = ELF vaddr. 0 for ae-lift/3 (the file's own addresses);
    ae-lift/2 and older carry angr's base for a shared object (0x400000)."""
    from elftools.elf.elffile import ELFFile

    with open(debug, "rb") as handle:
        e_entry = ELFFile(handle).header["e_entry"]
    return int(lifted["binary"]["entry"], 16) - e_entry


def annotate(lifted: dict[str, Any], build: Path) -> None:
    """Attach ground-truth labels (debug symbols) and function bytes to a lift, in place."""
    base = load_base(lifted, build / "lib.so")
    names = debug_names(build / "lib.so")
    for func in lifted["functions"]:
        if func.get("name"):  # would mean the stripped copy still carries a name
            func["leaked_name"] = func["name"]
        func["name"] = None
        vaddr = (int(func["addr"], 16) - base) & ~1
        func["label"] = names.get(vaddr)
        func["bytes"] = function_bytes(build / "lib.stripped.so", func["blocks"], base).hex()
    lifted["load_base"] = base


def lift_one(build_dir: str) -> tuple[str, int, float]:
    """Lift the stripped copy, attach names from the debug copy; returns (out, n, seconds)."""
    from lifting.angr_lift import is_current_lift, lift_binary

    build = Path(build_dir)
    project, config = build.parent.name, build.name
    target = LIFTED / project / f"{config}.json.gz"
    if is_current_lift(target):
        return str(target), -1, 0.0
    start = time.time()
    lifted = lift_binary(str(build / "lib.stripped.so"))
    seconds = time.time() - start
    annotate(lifted, build)
    compiler, arch, opt = config.split("-")
    lifted["build"] = {"project": project, "compiler": compiler, "arch": arch, "opt": opt,
                       "lift_seconds": round(seconds, 2)}
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_suffix(".tmp")
    with gzip.open(tmp, "wt") as handle:
        json.dump(lifted, handle)
    os.replace(tmp, target)
    return str(target), len(lifted["functions"]), seconds


def relabel_old_lifts() -> None:
    """Lifts written before labels were rebased (no load_base): re-annotate in place."""
    for target in sorted(LIFTED.glob("*/*.json.gz")):
        with gzip.open(target, "rt") as handle:
            lifted = json.load(handle)
        if "load_base" in lifted:
            continue
        annotate(lifted, BUILDS / target.parent.name / target.name.removesuffix(".json.gz"))
        with gzip.open(target, "wt") as handle:
            json.dump(lifted, handle)
        print(f"relabelled {target}", flush=True)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--projects", default=",".join(DEFAULT_PROJECTS))
    parser.add_argument("--configs", default=",".join(all_configs()),
                        help="compiler-arch-opt list, built in this order")
    parser.add_argument("--skip-lift", action="store_true")
    args = parser.parse_args(argv)
    relabel_old_lifts()

    # angr keeps global state and grows: one worker process, recycled every few binaries.
    # Build and lift alternate (never two heavy processes at once).
    ctx = multiprocessing.get_context("spawn")
    with ctx.Pool(1, maxtasksperchild=8) as pool:
        for config in args.configs.split(","):
            compiler, arch, opt = config.split("-")
            for name in args.projects.split(","):
                project = BY_NAME[name]
                out = build_one(project, fetch(project), compiler, arch, opt)
                if out is None:
                    print(f"build {name} {config}: FAILED", flush=True)
                    continue
                if args.skip_lift:
                    continue
                try:
                    target, count, seconds = pool.apply(lift_one, (str(out),))
                except Exception as exc:  # angr's own bugs, e.g. a KeyError in CFGFast on ARM
                    print(f"lift {name} {config}: FAILED ({type(exc).__name__}: {exc})",
                          flush=True)
                    continue
                if count >= 0:
                    print(f"lift {name} {config}: {count} functions in {seconds:.1f}s", flush=True)

if __name__ == "__main__":
    main()
