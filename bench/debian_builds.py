"""Two Debian builds of each library the model never trained on, lifted (bench/bf16.py's set).

    nice -n 10 python bench/debian_builds.py OUT_DIR

Debian's own binary packages (amd64) of bullseye and bookworm: other library versions
built by other compilers (gcc 10 and gcc 12). The projects are Corpus A's test and
validation projects and two of its reference projects (festive.data.projects: none is
trained on). Each shared object is fetched with `apt-get download PKG=VERSION`, unpacked
with dpkg-deb, and lifted with lifting.angr_lift into OUT_DIR/<project>/<version>.json.gz
(the <project>/<build>.json.gz layout bench/bf16.py and bench/festive_gpu.py read). A
lift already there is kept: re-run to resume.
"""

from __future__ import annotations

import argparse
import gzip
import json
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

# project: (package, bullseye version, bookworm version, shared object's name)
BUILDS = {
    "zlib": ("zlib1g", "1:1.2.11.dfsg-2+deb11u2", "1:1.2.13.dfsg-1+deb12u1", "libz.so.1"),
    "expat": ("libexpat1", "2.2.10-2+deb11u5", "2.5.0-1+deb12u5", "libexpat.so.1"),
    "lz4": ("liblz4-1", "1.9.3-2", "1.9.4-1", "liblz4.so.1"),
    "libyaml": ("libyaml-0-2", "0.2.2-1", "0.2.5-1", "libyaml-0.so.2"),
    "utf8proc": ("libutf8proc2", "2.5.0-1", "2.8.0-1", "libutf8proc.so.2"),
    "bzip2": ("libbz2-1.0", "1.0.8-4", "1.0.8-5+b1", "libbz2.so.1.0"),
    "xz-utils": ("liblzma5", "5.2.5-2.1~deb11u1", "5.4.1-1+deb12u1", "liblzma.so.5"),
    "libpng1.6": ("libpng16-16", "1.6.37-3", "1.6.39-2+deb12u5", "libpng16.so.16"),
}


def fetch(package: str, version: str, soname: str, work: Path) -> Path:
    """The shared object of PACKAGE=VERSION (amd64), unpacked under `work`."""
    subprocess.run(["apt-get", "download", f"{package}={version}"], cwd=work, check=True,
                   capture_output=True)
    (deb,) = work.glob(f"{package}_*.deb")
    tree = work / "tree"
    subprocess.run(["dpkg-deb", "-x", str(deb), str(tree)], check=True)
    found = [p for p in tree.rglob(f"{soname}*") if p.is_file() and not p.is_symlink()]
    if len(found) != 1:
        raise SystemExit(f"debian_builds: {package}={version}: expected one {soname}, "
                         f"found {[str(p) for p in found]}")
    return found[0]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("out", type=Path)
    args = parser.parse_args()

    from lifting.angr_lift import lift_binary

    for project, (package, *versions, soname) in BUILDS.items():
        for version in versions:
            target = args.out / project / f"{version.split(':')[-1]}.json.gz"
            if target.exists():
                continue
            with tempfile.TemporaryDirectory(prefix="debian-build-") as tmp:
                lift = lift_binary(str(fetch(package, version, soname, Path(tmp))))
            target.parent.mkdir(parents=True, exist_ok=True)
            partial = target.with_name(target.name + ".tmp")  # a cut run leaves no lift
            with gzip.open(partial, "wt") as handle:
                json.dump(lift, handle)
            partial.replace(target)
            print(project, version, len(lift["functions"]), "functions", flush=True)


if __name__ == "__main__":
    main()
