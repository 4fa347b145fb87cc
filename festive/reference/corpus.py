"""Read the lifted reference corpus from the cache and label its functions.

Shared by the v0 index builder and the v1 trainer: one place decides which functions
carry a trustworthy family/name label (see README.md for the cache layout).
"""

from __future__ import annotations

import gzip
import json
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from festive.features import is_considered
from festive.reference.packages import PACKAGES, Package

PACKAGE_BY_FAMILY: dict[str, Package] = {p.family: p for p in PACKAGES}


@dataclass
class ReferenceBuild:
    """One lifted shared object of one package on one architecture."""

    family: str
    package: str
    version: str
    arch: str
    library: str  # file name of the .so
    lift: dict[str, Any]  # lift_binary output (+ reference_exports, reference_lift_seconds)
    _exports: dict[str, list[str]] | None = field(default=None, repr=False)

    @property
    def label(self) -> str:
        return f"{self.package} {self.version} {self.arch}"

    def exports(self) -> dict[str, list[str]]:
        """Exported names keyed by the address angr gave the function.

        lift_one records raw .dynsym values. Lifts before ae-lift/3 carry angr's
        rebased addresses (a shared object mapped at 0x400000), so the base is
        recovered as the most common difference between angr's symbol-named functions
        and the .dynsym values of those names (0 for ae-lift/3, whose addresses are
        the file's own). The Thumb bit is cleared on both sides (ae-lift/3 clears it,
        .dynsym keeps it).
        """
        if self._exports is None:
            raw: dict[str, list[str]] = self.lift.get("reference_exports", {})
            by_name = {n: int(a, 16) & ~1 for a, names in raw.items() for n in names}
            deltas = Counter((int(f["addr"], 16) & ~1) - by_name[f["name"]]
                             for f in self.lift["functions"] if f.get("name") in by_name)
            base = deltas.most_common(1)[0][0] if deltas else 0
            self._exports = {hex((int(a, 16) & ~1) + base): names for a, names in raw.items()}
        return self._exports


def iter_builds(cache: Path, archs: list[str] | None = None,
                families: list[str] | None = None) -> Iterator[ReferenceBuild]:
    """Yield every cached lift, in PACKAGES order then architecture then file name."""
    for pkg in PACKAGES:
        if families and pkg.family not in families:
            continue
        fam_dir = cache / "lift" / pkg.family
        for arch_dir in sorted(fam_dir.glob("*")) if fam_dir.exists() else []:
            if archs and arch_dir.name not in archs:
                continue
            for path in sorted(arch_dir.glob("*.json.gz")):
                with gzip.open(path, "rt", encoding="utf-8") as fh:
                    lift = json.load(fh)
                yield ReferenceBuild(pkg.family, pkg.name, pkg.version, arch_dir.name,
                                     path.name.removesuffix(".json.gz"), lift)


def exported_name(build: ReferenceBuild, func: dict[str, Any]) -> str | None:
    """The function's exported .dynsym name, or None (unexported, PLT, mid-function).

    Aliases (several names at one address) collapse to one row: the name without a
    leading underscore if any, else the shortest. On armhf a Thumb function's address
    and its symbol value may differ in the low bit, so both are tried.
    """
    exports = build.exports()
    addr = int(func["addr"], 16)
    names = exports.get(hex(addr)) or exports.get(hex(addr ^ 1))
    if not names:
        return None
    return sorted(names, key=lambda n: (n.startswith("_"), len(n), n))[0]


def labelled_functions(build: ReferenceBuild, min_blocks: int = 5
                       ) -> list[tuple[str, dict[str, Any]]]:
    """(exported name, function) pairs that may enter the index."""
    out = []
    for func in build.lift["functions"]:
        if not is_considered(func, min_blocks):
            continue
        name = exported_name(build, func)
        if name is not None:
            out.append((name, func))
    return out
