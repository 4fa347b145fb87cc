"""Corpus B: Debian's own multiarch builds of libraries, for evaluation and training.

Why: Corpus A is built by us; the reference cache (festive.reference, `make index`)
holds Debian's release builds on four architectures (one pinned version everywhere),
the realistic case. Its test families (Corpus A test projects) are an extra
evaluation set (festive.eval); its other families can add training identities
(`festive.v1.train --corpus-b`; validation and test families are never trained on).
Labels come from exported .dynsym names with aliases collapsed to one name
(festive.reference.corpus.exported_name).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from festive.data.corpus import Fn
from festive.data.projects import PROJECTS
from festive.reference.build import DEFAULT_CACHE
from festive.reference.corpus import iter_builds, labelled_functions
from festive.reference.packages import PACKAGES

# Debian architecture names -> Corpus A's
ARCH_NAMES = {"amd64": "x86_64", "arm64": "aarch64", "i386": "i686", "armhf": "armhf"}
COMPILER, OPT = "gcc", "deb"  # Debian's release flags (gcc 12, mostly -O2)
# Reference families that are also Corpus A projects under another source name: one
# identity per function, so Debian's build of it is a positive, never a negative.
PROJECT_OF_FAMILY = {"zstd": "libzstd"}


def training_families() -> list[str]:
    """Reference families that are not Corpus A validation or test projects."""
    held_out = {p.name for p in PROJECTS if p.split in ("val", "test")}
    return [p.family for p in PACKAGES if p.family not in held_out]


def test_families() -> list[str]:
    """Reference families that are Corpus A test projects (never trained on)."""
    test = {p.name for p in PROJECTS if p.split == "test"}
    return [p.family for p in PACKAGES if p.family in test]


def load_corpus_b(derive: Callable[[dict[str, Any], dict[str, Any]], Any],
                  exclude_labels: set[str] | None = None,
                  cache: Path = DEFAULT_CACHE, families: list[str] | None = None) -> list[Fn]:
    """Labelled functions of `families` (default: the training families); one function
    per name and architecture (expat ships libexpat and libexpatw: first wins)."""
    out: list[Fn] = []
    seen: set[tuple[str, str, str]] = set()
    for build in iter_builds(cache, families=families or training_families()):
        for name, func in labelled_functions(build):
            key = (build.family, build.arch, name)
            if key in seen or (exclude_labels and name in exclude_labels):
                continue
            seen.add(key)
            project = PROJECT_OF_FAMILY.get(build.family, build.family)
            out.append(Fn(project, COMPILER, ARCH_NAMES[build.arch], OPT, name,
                          func["addr"], len(func["blocks"]), derive(func, build.lift)))
    return out
