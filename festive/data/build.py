"""Build Corpus A: fetch Debian sources, compile the matrix, strip, lift, label.

    nice -n 19 python -m festive.data.build [--projects zlib,lz4] [--configs gcc-x86_64-O2,...]
        [--suite sid] [--skip-lift]

Why this shape: labels come from the -g copy's symbol table (by address) while the
features come from lifting the *stripped* copy, so no name can leak into a feature.
Everything lands under data/festive/ (git-ignored; data/festive-<suite>/ for sources
from another Debian suite, e.g. sid's newer upstream versions for the reference
corpus); each step is skipped when its output exists, so the command can be re-run to
resume.
"""

from __future__ import annotations

import argparse
import functools
import glob
import gzip
import json
import multiprocessing
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from festive.data.projects import ARCHES, BY_NAME, DEFAULT_PROJECTS, Project, all_configs

DATA = Path(__file__).resolve().parents[2] / "data"
DEFAULT_SUITE = "bookworm"  # Corpus A (training) is bookworm's sources
FALLBACK_SUITES = {"sid": ["trixie"]}


def root_for(suite: str = DEFAULT_SUITE) -> Path:
    """data/festive for bookworm (Corpus A), data/festive-<suite> for another suite."""
    return DATA / ("festive" if suite == DEFAULT_SUITE else f"festive-{suite}")


ROOT = root_for()
SRC = ROOT / "src"
BUILDS = ROOT / "builds"
LIFTED = ROOT / "lifted"


def _unpack_orig(name: str, src: Path) -> Path | None:
    """The newest upstream tarball (NAME_VERSION.orig.tar.*) that apt-get fetched when the
    .dsc itself was missing from the pool: the same upstream code, without Debian's
    patches. Unpacked to NAME-VERSION; None if there is none."""
    tarballs = sorted(src.glob(f"{name}_*.orig.tar.*"),
                      key=lambda p: [int(x) if x.isdigit() else x
                                     for x in re.split(r"(\d+)", p.name)])
    tarballs = [t for t in tarballs if not t.name.endswith(".asc")]
    if not tarballs:
        return None
    version = tarballs[-1].name.removeprefix(f"{name}_").split(".orig.tar")[0]
    tree = src / f"{name}-{version}"
    scratch = src / f".unpack-{name}"
    shutil.rmtree(scratch, ignore_errors=True)
    scratch.mkdir()
    subprocess.run(["tar", "-xf", str(tarballs[-1]), "-C", str(scratch)], check=True)
    entries = list(scratch.iterdir())
    os.replace(entries[0] if len(entries) == 1 and entries[0].is_dir() else scratch, tree)
    shutil.rmtree(scratch, ignore_errors=True)
    print(f"fetch {name}: unpacked {tarballs[-1].name} (no .dsc in the pool)", flush=True)
    return tree


def fetch(project: Project, suite: str = DEFAULT_SUITE) -> Path:
    """apt-get source NAME/SUITE (needs a deb-src entry); returns the unpacked tree."""
    src = root_for(suite) / "src"
    src.mkdir(parents=True, exist_ok=True)
    found = sorted(p for p in src.glob(f"{project.name}-*") if p.is_dir())
    # sid's index can name a .dsc its pool no longer has (404): trixie's is the
    # next-newest version, and the tree's directory name records which one came
    for candidate in [suite, *FALLBACK_SUITES.get(suite, [])]:
        if found:
            break
        result = subprocess.run(["apt-get", "source", "-q", f"{project.name}/{candidate}"],
                                cwd=src, stdout=subprocess.DEVNULL)
        found = sorted(p for p in src.glob(f"{project.name}-*") if p.is_dir())
        if result.returncode != 0 and not found:
            print(f"fetch {project.name}/{candidate}: FAILED", flush=True)
    if not found:
        found = [tree] if (tree := _unpack_orig(project.name, src)) else []
    if not found and suite in FALLBACK_SUITES:
        found = [tree] if (tree := _newest_fetchable(project.name, src)) else []
    if not found:
        raise FileNotFoundError(f"no source of {project.name} in {suite}")
    tree = found[0]
    stamp = tree / ".ae-prepared"
    if project.prepare and not stamp.exists():
        subprocess.run(["sh", "-c", project.prepare], cwd=tree, check=True)
        stamp.touch()
    return tree


def _newest_fetchable(name: str, src: Path) -> Path | None:
    """The newest source version the archive's indexes name whose files the pool still
    has (e.g. expat: sid's and trixie's 2.9.0 are 404, trixie's older 2.8.3 is there)."""
    listing = subprocess.run(["apt-cache", "showsrc", name], capture_output=True, text=True)
    versions = sorted({line.split(":", 1)[1].strip() for line in listing.stdout.splitlines()
                       if line.startswith("Version:")},
                      key=functools.cmp_to_key(_compare_versions), reverse=True)
    for version in versions:
        result = subprocess.run(["apt-get", "source", "-q", f"{name}={version}"], cwd=src,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        trees = sorted(p for p in src.glob(f"{name}-*") if p.is_dir())
        if result.returncode == 0 and trees:
            print(f"fetch {name}: newest fetchable source is {version}", flush=True)
            return trees[0]
    return None


def _compare_versions(a: str, b: str) -> int:
    """Debian version order (dpkg --compare-versions)."""
    if a == b:
        return 0
    less = subprocess.run(["dpkg", "--compare-versions", a, "lt", b]).returncode == 0
    return -1 if less else 1


def _sources(project: Project, tree: Path, gen: Path) -> list[Path]:
    files: set[Path] = set()
    for pattern in project.sources:
        files.update(Path(p) for p in glob.glob(str(tree / pattern)))
    for pattern in project.exclude:
        files.difference_update(Path(p) for p in glob.glob(str(tree / pattern)))
    files.update(gen / name for name in project.copies if name.endswith(".c"))
    return sorted(files)


def compiler_command(compiler: str, arch: str) -> list[str]:
    triple, prefix = ARCHES[arch]
    if compiler == "gcc":
        return [f"{prefix}gcc" if prefix else "gcc"]
    return ["clang", f"--target={triple}"]


def compile_objects(project: Project, tree: Path, cc: list[str], flags: list[str],
                    objdir: Path) -> list[str]:
    """Compile the project's library sources with `cc` and `flags` plus the recipe's
    includes, defines and generated headers, into objdir. Files that do not compile
    for a target (e.g. another ISA's SIMD code) are left out."""
    gen = objdir / "gen"
    gen.mkdir(parents=True, exist_ok=True)
    for name, content in project.generated.items():
        (gen / name).write_text(content)
    for name, source in project.copies.items():
        shutil.copyfile(tree / source, gen / name)
    flags = [*flags, "-w", f"-I{gen}", *[f"-I{tree / inc}" for inc in project.includes],
             *[f"-D{d}" for d in project.defines]]
    objects = []
    for index, source_file in enumerate(_sources(project, tree, gen)):
        obj = objdir / f"{index:03d}_{source_file.stem}.o"
        result = subprocess.run([*cc, *flags, "-c", str(source_file), "-o", str(obj)],
                                capture_output=True, text=True)
        if result.returncode == 0:
            objects.append(str(obj))
    return objects


def build_one(project: Project, tree: Path, compiler: str, arch: str, opt: str,
              builds: Path = BUILDS) -> Path | None:
    """Compile, link a shared object with -g, and a stripped copy. None if it fails."""
    out = builds / project.name / f"{compiler}-{arch}-{opt}"
    debug, stripped = out / "lib.so", out / "lib.stripped.so"
    if stripped.exists():
        return out
    cc = compiler_command(compiler, arch)
    objdir = out / "obj"
    objects = compile_objects(project, tree, cc,
                              [f"-{opt}", "-g", "-fPIC", "-fvisibility=hidden"], objdir)
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

    build = Path(build_dir)  # <root>/builds/<project>/<config>
    project, config = build.parent.name, build.name
    target = build.parents[2] / "lifted" / project / f"{config}.json.gz"
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
    parser.add_argument("--suite", default=DEFAULT_SUITE,
                        help="Debian suite of the sources (bookworm, trixie, sid, bullseye)")
    parser.add_argument("--skip-lift", action="store_true")
    args = parser.parse_args(argv)
    relabel_old_lifts()
    builds = root_for(args.suite) / "builds"

    # angr keeps global state and grows: one worker process, recycled every few binaries.
    # Build and lift alternate (never two heavy processes at once).
    ctx = multiprocessing.get_context("spawn")
    with ctx.Pool(1, maxtasksperchild=8) as pool:
        for config in args.configs.split(","):
            compiler, arch, opt = config.split("-")
            for name in args.projects.split(","):
                project = BY_NAME[name]
                try:
                    tree = fetch(project, args.suite)
                except (subprocess.CalledProcessError, FileNotFoundError) as exc:
                    print(f"fetch {name}/{args.suite}: FAILED ({exc})", flush=True)
                    continue
                out = build_one(project, tree, compiler, arch, opt, builds)
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
