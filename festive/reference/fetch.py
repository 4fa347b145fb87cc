"""Download and unpack pinned Debian packages (apt-get download + dpkg-deb -x)."""

from __future__ import annotations

import hashlib
import shutil
import subprocess
from pathlib import Path

from festive.reference.packages import Package

ELF_MAGIC = b"\x7fELF"


class FetchError(Exception):
    """A package could not be downloaded or unpacked for this architecture."""


def deb_path(cache: Path, pkg: Package, arch: str) -> Path:
    return cache / "debs" / f"{pkg.name}_{pkg.version.replace(':', '%3a')}_{arch}.deb"


def download(cache: Path, pkg: Package, arch: str) -> Path:
    """Fetch PKG:ARCH=VERSION into cache/debs (skipped when already there)."""
    target = deb_path(cache, pkg, arch)
    if target.exists():
        return target
    work = cache / "debs" / f".dl-{pkg.name}-{arch}"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    proc = subprocess.run(
        ["apt-get", "download", f"{pkg.name}:{arch}={pkg.version}"],
        cwd=work, capture_output=True, text=True, timeout=300,
    )
    debs = list(work.glob("*.deb"))
    if proc.returncode != 0 or len(debs) != 1:
        shutil.rmtree(work, ignore_errors=True)
        raise FetchError(f"apt-get download {pkg.name}:{arch}={pkg.version}: "
                         f"{proc.stderr.strip().splitlines()[-1:] or proc.returncode}")
    debs[0].rename(target)
    shutil.rmtree(work, ignore_errors=True)
    return target


def extract_deb(cache: Path, deb: Path, name: str, arch: str) -> Path:
    """Unpack a .deb once into the cache (atomically, via a temporary folder)."""
    root = cache / "extract" / f"{name}_{arch}"
    if not root.exists():
        tmp = root.with_name(root.name + ".tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        subprocess.run(["dpkg-deb", "-x", str(deb), str(tmp)], check=True, timeout=120)
        tmp.rename(root)
    return root


def extract_shared_objects(cache: Path, deb: Path, pkg: Package, arch: str) -> list[Path]:
    """Unpack the .deb and return its real (non-symlink) ELF shared objects."""
    root = extract_deb(cache, deb, pkg.name, arch)
    found = []
    for path in sorted(root.rglob("*.so*")):
        if path.is_symlink() or not path.is_file():
            continue
        with path.open("rb") as fh:
            if fh.read(4) == ELF_MAGIC:
                found.append(path)
    return found


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()
