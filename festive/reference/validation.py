"""A held-out, statically linked build of every reference library (calibration data).

The reference index holds the Debian *shared* objects. Samples usually carry the
library *statically linked* (non-PIC code from the -dev package's .a, same source
version). So for each family and architecture the pinned `-dev` package is fetched and
its archive linked whole into an executable (no libc, unresolved symbols allowed),
which is lifted like a sample. Every function defined by the archive is known to be
that family, exported or not: this measures recall and calibrates the precision table.

Cache: data/reference-cache/validation/<family>/<arch>/<archive>.{elf,json.gz,names.json}
"""

from __future__ import annotations

import gzip
import json
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from festive.reference.fetch import FetchError, download, extract_deb
from festive.reference.packages import PACKAGES, Package
from lifting.angr_lift import is_current_lift

# Family -> (-dev package, archive file name). Versions are the library's (same source).
DEV_PACKAGES: dict[str, tuple[str, str]] = {
    "zlib": ("zlib1g-dev", "libz.a"),
    "bzip2": ("libbz2-dev", "libbz2.a"),
    "lz4": ("liblz4-dev", "liblz4.a"),
    "expat": ("libexpat1-dev", "libexpat.a"),
    "xz": ("liblzma-dev", "liblzma.a"),
    "libpng": ("libpng-dev", "libpng16.a"),
    "pcre2": ("libpcre2-dev", "libpcre2-8.a"),
    "zstd": ("libzstd-dev", "libzstd.a"),
    "sqlite3": ("libsqlite3-dev", "libsqlite3.a"),
    "libxml2": ("libxml2-dev", "libxml2.a"),
}
# Linkers that exist here (gcc + the aarch64 cross gcc); other architectures are skipped.
LINKERS: dict[str, tuple[str, str]] = {
    "amd64": ("gcc", "nm"),
    "arm64": ("aarch64-linux-gnu-gcc", "aarch64-linux-gnu-nm"),
}


@dataclass
class ValidationBuild:
    family: str
    arch: str
    archive: str
    names: set[str]  # functions the archive defines
    lift: dict[str, Any]


def _link(cache: Path, pkg: Package, arch: str, archive_name: str) -> tuple[Path, Path]:
    dev = Package(pkg.family, DEV_PACKAGES[pkg.family][0], pkg.version)
    deb = download(cache, dev, arch)
    root = extract_deb(cache, deb, dev.name, arch)
    archives = [p for p in root.rglob(archive_name) if p.is_file()]
    if not archives:
        raise FetchError(f"{dev.name}:{arch} has no {archive_name}")
    out_dir = cache / "validation" / pkg.family / arch
    out_dir.mkdir(parents=True, exist_ok=True)
    elf = out_dir / f"{archive_name}.elf"
    names_path = out_dir / f"{archive_name}.names.json"
    gcc, nm = LINKERS[arch]
    if not elf.exists():
        subprocess.run([gcc, "-nostdlib", "-o", str(elf), "-Wl,--whole-archive",
                        str(archives[0]), "-Wl,--no-whole-archive",
                        "-Wl,--unresolved-symbols=ignore-all", "-Wl,-e,0"],
                       check=True, capture_output=True, timeout=300)
    if not names_path.exists():
        proc = subprocess.run([nm, "--defined-only", str(archives[0])], check=True,
                              capture_output=True, text=True, timeout=120)
        names = sorted({line.split()[-1] for line in proc.stdout.splitlines()
                        if len(line.split()) == 3 and line.split()[1] in "TtWi"})
        names_path.write_text(json.dumps(names))
    return elf, names_path


def prepare(cache: Path, lift: Any, timeout: int,
            families: list[str] | None = None) -> list[dict[str, Any]]:
    """Fetch, link and lift every validation build; `lift(elf, out, timeout)` lifts."""
    records = []
    for arch in LINKERS:
        if shutil.which(LINKERS[arch][0]) is None:
            records.append({"arch": arch, "status": f"no {LINKERS[arch][0]}"})
            continue
        for pkg in PACKAGES:
            if families and pkg.family not in families:
                continue
            archive = DEV_PACKAGES[pkg.family][1]
            rec: dict[str, Any] = {"family": pkg.family, "arch": arch, "archive": archive,
                                   "package": DEV_PACKAGES[pkg.family][0],
                                   "version": pkg.version, "status": "ok"}
            records.append(rec)
            try:
                elf, _names = _link(cache, pkg, arch, archive)
                out = elf.with_name(archive + ".json.gz")
                if not is_current_lift(out):
                    summary = lift(elf, out, timeout)
                    rec.update(summary)
                    print(f"[valid] {pkg.family:8s} {arch:6s} {archive:20s} "
                          f"{summary['functions']:6d} functions {summary['seconds']:8.1f} s",
                          flush=True)
            except (FetchError, subprocess.SubprocessError, TimeoutError, RuntimeError) as exc:
                rec["status"] = f"failed: {exc}"
                print(f"[valid-skip] {pkg.family}:{arch}: {exc}", flush=True)
    return records


def iter_validation(cache: Path, families: list[str] | None = None):
    """Yield the lifted validation builds present in the cache."""
    for pkg in PACKAGES:
        if families and pkg.family not in families:
            continue
        for arch in LINKERS:
            archive = DEV_PACKAGES[pkg.family][1]
            base = cache / "validation" / pkg.family / arch
            lift_path, names_path = base / f"{archive}.json.gz", base / f"{archive}.names.json"
            if not (lift_path.exists() and names_path.exists()):
                continue
            with gzip.open(lift_path, "rt", encoding="utf-8") as fh:
                lift = json.load(fh)
            yield ValidationBuild(pkg.family, arch, archive,
                                  set(json.loads(names_path.read_text())), lift)
