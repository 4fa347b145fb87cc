"""Read Corpus A back: labelled, filtered, deduplicated functions of one split.

Filters (issue 3): >= 5 basic blocks; no PLT stubs (angr drops them), thunks or
CRT/runtime functions (by the debug label, since the lifted copy is stripped); no
compiler fragments (`.cold`); inside one build, a label that names several different
bodies is ambiguous ground truth and is dropped, identical duplicates collapse to one.
Train/val functions whose label also occurs in a test project are dropped (shared
vendored code such as xxhash would otherwise leak across the split).

The lifted JSON is large (VEX text); callers pass `derive` to keep only what they need.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import multiprocessing
from collections import defaultdict
from collections.abc import Callable, Iterator
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

from festive.data.build import LIFTED, root_for
from festive.data.projects import PROJECTS
from festive.features import MIN_BLOCKS, FeatureConfig, block_tokens
from lifting.angr_lift import RUNTIME_FUNCTIONS

_CONFIG = FeatureConfig()


@dataclass
class Fn:
    """One labelled function of one build; `data` is whatever `derive` returned."""

    project: str
    compiler: str
    arch: str
    opt: str
    label: str
    addr: str
    blocks: int
    data: Any
    version: str = ""  # upstream version, set where several versions are loaded (XV)

    @property
    def build(self) -> str:
        config = f"{self.compiler}-{self.arch}-{self.opt}"
        return f"{config}@{self.version}" if self.version else config

    @property
    def identity(self) -> str:
        return f"{self.project}:{self.label}"


def split_projects(split: str) -> list[str]:
    return [p.name for p in PROJECTS if p.split == split]


def lifted_files(projects: list[str], root: Path = LIFTED) -> Iterator[Path]:
    for name in projects:
        yield from sorted((root / name).glob("*.json.gz"))


def read_lift(path: Path) -> dict[str, Any]:
    with gzip.open(path, "rt") as handle:
        return json.load(handle)


def norm_hash(func: dict[str, Any]) -> str:
    """Hash of the normalised IR op sequence (the dedupe key with the label)."""
    digest = hashlib.sha1()
    for block in func["blocks"]:
        digest.update(" ".join(block_tokens(block["vex"], _CONFIG)).encode())
        digest.update(b"|")
    return digest.hexdigest()


def _wanted(func: dict[str, Any]) -> bool:
    label = func.get("label")
    if not label or label in RUNTIME_FUNCTIONS or ".cold" in label:
        return False
    if label.startswith(("__x86.get_pc_thunk", "_init", "_fini", "__")):
        return False
    return len(func["blocks"]) >= MIN_BLOCKS


def filtered_functions(lift: dict[str, Any]) -> list[dict[str, Any]]:
    """Apply the filters and the per-build dedupe to one lifted build."""
    by_label: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for func in lift["functions"]:
        if _wanted(func):
            by_label[func["label"]].append(func)
    kept = []
    for funcs in by_label.values():
        if len(funcs) == 1 or len({norm_hash(f) for f in funcs}) == 1:
            kept.append(funcs[0])
    return kept


class OnlyConfigs:
    """A `builds` filter for `load` (a class, so worker processes can unpickle it)."""

    def __init__(self, configs: list[str]):
        self.configs = frozenset(configs)

    def __call__(self, meta: dict[str, str]) -> bool:
        return f"{meta['compiler']}-{meta['arch']}-{meta['opt']}" in self.configs


def _load_file(path: Path, derive: Callable[[dict[str, Any], dict[str, Any]], Any],
               exclude_labels: set[str] | None,
               builds: Callable[[dict[str, str]], bool] | None) -> list[Fn]:
    lift = read_lift(path)
    meta = lift["build"]
    if builds is not None and not builds(meta):
        return []
    out = []
    for func in filtered_functions(lift):
        if exclude_labels and func["label"] in exclude_labels:
            continue
        out.append(Fn(meta["project"], meta["compiler"], meta["arch"], meta["opt"],
                      func["label"], func["addr"], len(func["blocks"]), derive(func, lift)))
    return out


def load(projects: list[str], derive: Callable[[dict[str, Any], dict[str, Any]], Any],
         exclude_labels: set[str] | None = None,
         builds: Callable[[dict[str, str]], bool] | None = None,
         workers: int = 1, root: Path = LIFTED) -> list[Fn]:
    """All filtered functions of these projects; derive(func, lift) -> Fn.data.

    workers > 1 reads lifted files in that many processes (derive and builds must then
    be module-level functions); the order of the result does not depend on it. A worker
    that dies (e.g. cannot unpickle its task) raises BrokenProcessPool: a
    multiprocessing.Pool would respawn it and wait for the lost task for ever.
    """
    paths = list(lifted_files(projects, root))
    job = partial(_load_file, derive=derive, exclude_labels=exclude_labels, builds=builds)
    if workers <= 1:
        parts = [job(path) for path in paths]
    else:
        with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn")) as pool:
            parts = list(pool.map(job, paths))
    return [fn for part in parts for fn in part]


def load_versions(projects: list[str], derive: Callable[[dict[str, Any], dict[str, Any]], Any],
                  suites: tuple[str, ...], exclude_labels: set[str] | None = None,
                  workers: int = 1) -> list[Fn]:
    """`load` over several Debian suites' corpora (data/festive, data/festive-<suite>),
    each Fn's `version` set to the project's upstream version in that suite (the source
    tree's name), so one identity (project:label) groups the function across versions."""
    fns: list[Fn] = []
    for suite in suites:
        root = root_for(suite)
        part = load(projects, derive, exclude_labels=exclude_labels, workers=workers,
                    root=root / "lifted")
        for fn in part:
            trees = sorted(p.name for p in (root / "src").glob(f"{fn.project}-*") if p.is_dir())
            fn.version = trees[0].removeprefix(f"{fn.project}-") if trees else suite
        fns += part
    return fns


def labels_of(projects: list[str], suites: tuple[str, ...] = ("bookworm",)) -> set[str]:
    """Every label in these projects' builds, in these suites (for cross-split dedupe)."""
    labels: set[str] = set()
    for suite in suites:
        for path in lifted_files(projects, root_for(suite) / "lifted"):
            labels.update(f["label"] for f in read_lift(path)["functions"] if f.get("label"))
    return labels
