"""Fetch and lift Debian's own shared objects of the reference families:

    python -m festive.reference.build [--arch amd64] [--family zlib]

Stages (each cached, so a re-run only does what is missing):
  1. fetch  : apt-get download PKG:ARCH=VERSION, dpkg-deb -x   -> data/reference-cache/
  2. lift   : one nice'd subprocess per shared object, with a timeout -> lift/*.json.gz
festive.attribution.build then adds their exported functions to the reference index.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from festive.reference.fetch import FetchError, download, extract_shared_objects, sha256_file
from festive.reference.packages import ARCHITECTURES, PACKAGES, Package
from lifting.angr_lift import is_current_lift

REPO = Path(__file__).resolve().parents[2]
DEFAULT_CACHE = REPO / "data" / "reference-cache"


def lift_path(cache: Path, pkg: Package, arch: str, so: Path) -> Path:
    return cache / "lift" / pkg.family / arch / f"{so.name}.json.gz"


def lift_library(so: Path, out: Path, timeout: int) -> dict:
    """Run lift_one in a nice'd child with a wall-clock limit; return its summary line."""
    out.parent.mkdir(parents=True, exist_ok=True)
    cmd = ["nice", "-n", "10", sys.executable, "-m", "festive.reference.lift_one",
           str(so), str(out)]
    started = time.monotonic()
    proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, start_new_session=True)
    try:
        stdout, stderr = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, 9)
        proc.communicate()
        raise TimeoutError(f"lift of {so.name} exceeded {timeout}s") from None
    if proc.returncode != 0:
        tail = stderr.strip().splitlines()[-3:]
        raise RuntimeError(f"lift of {so.name} failed ({proc.returncode}): {tail}")
    summary = json.loads(stdout.strip().splitlines()[-1])
    summary["wall_seconds"] = round(time.monotonic() - started, 1)
    return summary


def fetch_and_lift(cache: Path, archs: list[str], families: list[str] | None,
                   timeout: int) -> list[dict]:
    """Stages 1+2. Returns one record per (package, arch) with what happened."""
    records: list[dict] = []
    # Arch-major order: every family on amd64/arm64 before the optional architectures.
    for arch in archs:
        for pkg in PACKAGES:
            if families and pkg.family not in families:
                continue
            rec: dict[str, Any] = {"family": pkg.family, "package": pkg.name,
                                   "version": pkg.version, "arch": arch, "status": "ok",
                                   "libraries": []}
            records.append(rec)
            try:
                deb = download(cache, pkg, arch)
                rec["deb_sha256"] = sha256_file(deb)
                shared = extract_shared_objects(cache, deb, pkg, arch)
            except (FetchError, subprocess.SubprocessError) as exc:
                rec["status"] = f"fetch failed: {exc}"
                print(f"[skip] {pkg.name}:{arch}: {exc}", flush=True)
                continue
            for so in shared:
                out = lift_path(cache, pkg, arch, so)
                lib: dict[str, Any] = {"file": so.name, "sha256": sha256_file(so),
                                       "lift": str(out.relative_to(cache))}
                rec["libraries"].append(lib)
                if is_current_lift(out):
                    lib["cached"] = True
                    continue
                try:
                    summary = lift_library(so, out, timeout)
                except (TimeoutError, RuntimeError) as exc:
                    lib["error"] = str(exc)
                    print(f"[fail] {pkg.name}:{arch} {so.name}: {exc}", flush=True)
                    continue
                lib.update(summary)
                print(f"[lift] {pkg.family:8s} {arch:6s} {so.name:28s} "
                      f"{summary['functions']:6d} functions {summary['seconds']:8.1f} s",
                      flush=True)
    manifest = cache / "manifest.json"
    manifest.write_text(json.dumps(records, indent=1))
    return records


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cache", type=Path, default=DEFAULT_CACHE)
    parser.add_argument("--arch", action="append", help="architecture (repeatable)")
    parser.add_argument("--family", action="append", help="only these families (repeatable)")
    parser.add_argument("--lift-timeout", type=int, default=1800, help="seconds per library")
    args = parser.parse_args(argv)
    args.cache.mkdir(parents=True, exist_ok=True)
    fetch_and_lift(args.cache, args.arch or list(ARCHITECTURES), args.family, args.lift_timeout)


if __name__ == "__main__":
    main()
