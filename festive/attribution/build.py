"""Build a model's reference index: embed, calibrate, merge near-duplicates, quantise.

    nice -n 10 python -m festive.attribution.build [--lift] [--no-debian]

--lift first compiles and lifts whatever reference builds are missing (festive.data.build:
apt-get source, the cross compilers, angr; hours on 2 cores from nothing).

Sources of reference rows (each function labelled, stripped copies lifted):
- libraries compiled from Debian source packages by festive.data.build, every
  labelled function (static ones too, names from the -g twin): data/festive/ holds
  bookworm's versions, data/festive-sid/ sid's (trixie's where sid's pool lacks one);
- Debian's own shared objects (festive.reference.build), exported functions only,
  when their lifts are in data/reference-cache/.
Writes festive/weights/<engine>/reference.npz and the index part of card.json
(index version, families, versions, builds, verdict calibration and its report).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from festive.attribution.calibrate import Rows, calibrate
from festive.attribution.index import ReferenceIndex
from festive.attribution.search import Quantised
from festive.card import WEIGHTS_DIR
from festive.data.build import DATA, root_for
from festive.data.corpus import filtered_functions, read_lift
from festive.data.projects import EMBEDS, PROJECTS, family_of

# Suites (upstream versions) and toolchains of the reference: samples built otherwise
# are what it must recognise. Every project of festive.data.projects is a family.
REFERENCE_BUILDS: dict[str, tuple[str, ...]] = {
    "bookworm": ("gcc-x86_64-O2", "clang-x86_64-O2", "gcc-aarch64-O2", "gcc-x86_64-O3",
                 "gcc-i686-O2"),
    "sid": ("gcc-x86_64-O2", "clang-x86_64-O2"),
}
MERGE_SIMILARITY = 0.985  # one function's rows this alike across builds become one row
INDEX_FILE = "reference.npz"


@dataclass
class Build:
    family: str
    version: str
    config: str
    arch: str
    label: str
    functions: list[tuple[str, dict[str, Any]]]  # (name, lifted function)


def source_version(root: Path, project: str) -> str:
    """Upstream version of the unpacked Debian source tree, e.g. zlib-1.3.dfsg -> 1.3.dfsg."""
    trees = sorted(p.name for p in (root / "src").glob(f"{project}-*") if p.is_dir())
    return trees[0].removeprefix(f"{project}-") if trees else "unknown"


def lift_missing() -> None:
    """Compile and lift the reference builds that are not in data/ yet."""
    from festive.data.build import main as data_build

    projects = ",".join(p.name for p in PROJECTS)
    for suite, configs in REFERENCE_BUILDS.items():
        data_build(["--suite", suite, "--projects", projects, "--configs", ",".join(configs)])


def source_builds(builds: dict[str, tuple[str, ...]]) -> Iterator[Build]:
    for suite, configs in builds.items():
        root = root_for(suite)
        for project in PROJECTS:
            version = source_version(root, project.name)
            for config in configs:
                path = root / "lifted" / project.name / f"{config}.json.gz"
                if not path.exists():
                    continue
                lift = read_lift(path)
                funcs = [(f["label"], f) for f in filtered_functions(lift)]
                family = family_of(project.name)
                yield Build(family, version, config, config.split("-")[1],
                            f"{family} {version} {config}", funcs)


def debian_builds(cache: Path) -> Iterator[Build]:
    from festive.reference.corpus import iter_builds, labelled_functions

    for b in iter_builds(cache):
        yield Build(b.family, b.version, f"debian-{b.arch}", b.arch,
                    f"{b.package} {b.version} {b.arch} ({b.library})", labelled_functions(b))


def collect(builds: Iterator[Build], vectorise: Any, log: Any = print
            ) -> tuple[Rows, list[dict[str, Any]]]:
    families: list[str] = []
    vecs, fam, bld, names, blocks = [], [], [], [], []
    build_version: list[str] = []
    build_config: list[str] = []
    build_family: list[int] = []
    listing: list[dict[str, Any]] = []
    for b in builds:
        if not b.functions:
            continue
        if b.family not in families:
            families.append(b.family)
        f = families.index(b.family)
        build_id = len(build_family)
        build_family.append(f)
        build_version.append(b.version)
        build_config.append(b.config)
        vecs.append(vectorise([func for _n, func in b.functions]))
        fam += [f] * len(b.functions)
        bld += [build_id] * len(b.functions)
        names += [n for n, _f in b.functions]
        blocks += [len(func["blocks"]) for _n, func in b.functions]
        listing.append({"label": b.label, "family": b.family, "version": b.version,
                        "config": b.config, "arch": b.arch, "functions": len(b.functions)})
        log(f"[index] {b.label}: {len(b.functions)} functions")
    if not vecs:
        raise SystemExit("no reference lifts found: run festive.data.build first (make index)")
    rows = Rows(np.concatenate(vecs).astype(np.float32), np.asarray(fam), np.asarray(bld),
                names, np.asarray(blocks), families, build_version, build_config,
                build_family, {k: v for k, v in EMBEDS.items()})
    return rows, listing


def merge(rows: Rows, rarity: np.ndarray) -> tuple[np.ndarray, list[np.ndarray]]:
    """Representative rows and the builds each stands for: within one (family, name),
    a row within MERGE_SIMILARITY of an earlier representative joins it."""
    vectors = np.asarray(rows.vectors, dtype=np.float32)
    keep: list[int] = []
    members: dict[int, list[int]] = {}
    groups: dict[tuple[int, str], list[int]] = {}
    for i, key in enumerate(zip(rows.family.tolist(), rows.name, strict=True)):
        groups.setdefault(key, []).append(i)
    for group in groups.values():
        reps: list[int] = []
        for i in group:
            if reps:
                sims = vectors[reps] @ vectors[i]
                j = int(np.argmax(sims))
                if sims[j] >= MERGE_SIMILARITY:
                    members[reps[j]].append(int(rows.build[i]))
                    continue
            reps.append(i)
            members[i] = [int(rows.build[i])]
        keep += reps
    order = np.asarray(sorted(keep), dtype=np.int64)
    return order, [np.asarray(sorted(set(members[int(i)])), np.int32) for i in order]


def build(engine: str, builds: dict[str, tuple[str, ...]], include_debian: bool, seed: int,
          log: Any = print) -> dict[str, Any]:
    from festive.v1.embed import Embedder

    started = time.monotonic()
    out = WEIGHTS_DIR / engine
    card_path = out / "card.json"
    card = json.loads(card_path.read_text())
    embedder = Embedder(out / card["weights_file"])
    sources: list[Iterator[Build]] = [source_builds(builds)]
    if include_debian:
        sources.append(debian_builds(DATA / "reference-cache"))
    rows, listing = collect((b for src in sources for b in src), embedder.embed, log)
    # calibrate on the rows as they will be searched: quantised to int8
    quantised = Quantised.of(np.asarray(rows.vectors))
    rows.vectors = quantised.rows(0, len(rows.family))
    params, rarity, report = calibrate(rows, seed=seed, log=log)
    keep, row_builds = merge(rows, rarity)
    index = ReferenceIndex(
        Quantised(quantised.codes[keep], quantised.scale[keep]), rows.families,
        [b["label"] for b in listing], [b["arch"] for b in listing],
        [b["version"] for b in listing], rows.family[keep].astype(np.int16), row_builds,
        [rows.name[i] for i in keep], rows.blocks[keep].astype(np.int32), rarity[keep],
        meta={"engine": engine, "weights_sha256": card["weights_sha256"],
              "builds": {k: list(v) for k, v in builds.items()},
              "merge_similarity": MERGE_SIMILARITY})
    path = out / INDEX_FILE
    version = index.save(path)
    archs = sorted({b["arch"] for b in listing})
    versions: dict[str, list[str]] = {}
    for b in listing:
        versions.setdefault(b["family"], [])
        if b["version"] not in versions[b["family"]]:
            versions[b["family"]].append(b["version"])
    card.update({
        "index_file": INDEX_FILE,
        "index_version": version,
        "index_sha256": hashlib.sha256(path.read_bytes()).hexdigest(),
        "index_bytes": path.stat().st_size,
        "reference_functions": index.n_rows,
        "reference_functions_before_merge": int(len(rows.family)),
        "reference_families": rows.families,
        "reference_versions": versions,
        "reference_builds": listing,
        "architectures": archs,
        "verdict": params.to_card(),
        "calibration": report,
        "index_command": "make index",
        "index_seconds": round(time.monotonic() - started, 1),
    })
    for stale in ("thresholds", "precision_table", "evaluation", "packages"):
        card.pop(stale, None)
    card_path.write_text(json.dumps(card, indent=1) + "\n")
    log(json.dumps({"index_version": version, "rows": index.n_rows,
                    "calibration": {k: report[k] for k in ("cross_validated",
                                                           "present_threshold")}}, indent=1))
    return card


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--engine", default="v1")
    parser.add_argument("--lift", action="store_true",
                        help="first compile and lift the reference builds that are missing")
    parser.add_argument("--no-debian", action="store_true",
                        help="leave out Debian's own shared objects (data/reference-cache)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if args.lift:
        lift_missing()
    build(args.engine, REFERENCE_BUILDS, not args.no_debian, args.seed)


if __name__ == "__main__":
    main()
