"""Fit FESTIVE v0 on the lifted reference corpus and write festive/weights/v0/.

Writes `index.npz` (vocabulary, idf, float16 CSR vectors, row labels) and `card.json`
(version, sha256 of index.npz, exact packages and architectures, counts, thresholds
calibrated by festive.reference.calibrate, evaluation, build command).
"""

from __future__ import annotations

import hashlib
import json
import time
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np

from festive.features import FEATURE_VERSION, FeatureConfig
from festive.reference.calibrate import evaluate
from festive.reference.corpus import iter_builds, labelled_functions
from festive.reference.packages import PACKAGES
from festive.reference.validation import DEV_PACKAGES, LINKERS
from festive.v0 import Csr, ReferenceIndex, Vectoriser

MODEL_VERSION = "0.1.0"
INDEX_FILE = "index.npz"
BUILD_COMMAND = "nice -n 10 .venv/bin/python -m festive.reference.build"
MAX_TERMS_PER_FUNCTION = 2048  # size guard only: capping hurts big functions (measured)


def cap_terms(matrix: Csr, max_terms: int) -> Csr:
    """Keep each row's `max_terms` largest weights, then renormalise (size budget)."""
    indptr, indices, data = [0], [], []
    for i in range(matrix.n_rows):
        idx, val = matrix.row(i)
        if len(idx) > max_terms:
            keep = np.sort(np.argpartition(-val, max_terms)[:max_terms])
            idx, val = idx[keep], val[keep]
            norm = float(np.linalg.norm(val))
            val = val / norm if norm > 0 else val
        indices.append(idx)
        data.append(val.astype(np.float32))
        indptr.append(indptr[-1] + len(idx))
    return Csr(np.asarray(indptr, dtype=np.int64), np.concatenate(indices),
               np.concatenate(data), matrix.n_cols)


def collect(cache: Path, archs: list[str] | None, families: list[str] | None,
            config: FeatureConfig) -> dict[str, Any]:
    """Token bags and labels of every labelled reference function."""
    bags: list[Counter[str]] = []
    row_family, row_build, row_name, row_blocks = [], [], [], []
    families_seen: list[str] = []
    builds: list[str] = []
    build_arch: list[str] = []
    counts: dict[str, dict[str, int]] = {}
    libraries: list[dict[str, Any]] = []
    vectoriser = Vectoriser({}, np.zeros(0, np.float32), config)
    for build in iter_builds(cache, archs, families):
        if build.family not in families_seen:
            families_seen.append(build.family)
        builds.append(f"{build.package} {build.version} {build.arch}")
        build_arch.append(build.arch)
        b = len(builds) - 1
        f = families_seen.index(build.family)
        labelled = labelled_functions(build)
        for name, func in labelled:
            bags.append(vectoriser.bag(func))
            row_family.append(f)
            row_build.append(b)
            row_name.append(name)
            row_blocks.append(len(func["blocks"]))
        per_fam = counts.setdefault(build.family, {})
        per_fam[build.arch] = per_fam.get(build.arch, 0) + len(labelled)
        libraries.append({
            "family": build.family, "package": build.package, "version": build.version,
            "arch": build.arch, "library": build.library,
            "functions_lifted": len(build.lift["functions"]),
            "functions_indexed": len(labelled),
            "lift_seconds": build.lift.get("reference_lift_seconds"),
        })
        print(f"[index] {build.family:8s} {build.arch:6s} {build.library:28s} "
              f"{len(build.lift['functions']):6d} lifted {len(labelled):6d} indexed", flush=True)
    return {"bags": bags, "row_family": row_family, "row_build": row_build,
            "row_name": row_name, "row_blocks": row_blocks, "families": families_seen,
            "builds": builds, "build_arch": build_arch, "counts": counts,
            "libraries": libraries}


def collect_holdout(cache: Path, families: list[str] | None,
                    index: ReferenceIndex) -> dict[str, Any] | None:
    """Vectors of the statically linked held-out builds, labelled by family."""
    from festive.features import is_considered
    from festive.reference.validation import iter_validation

    funcs, fam, arch, names = [], [], [], []
    for vb in iter_validation(cache, families):
        if vb.family not in index.families:
            continue
        for func in vb.lift["functions"]:
            if func.get("name") in vb.names and is_considered(func):
                funcs.append(func)
                fam.append(index.families.index(vb.family))
                arch.append(vb.arch)
                names.append(func["name"])
    if not funcs:
        return None
    print(f"[index] held-out static builds: {len(funcs)} functions", flush=True)
    return {"matrix": index.vectoriser.vectors(funcs), "family": np.asarray(fam),
            "arch": np.asarray(arch), "name": np.asarray(names),
            "blocks": np.asarray([len(f["blocks"]) for f in funcs])}


def build_index(cache: Path, out: Path, archs: list[str] | None = None,
                families: list[str] | None = None, config: FeatureConfig | None = None,
                write: bool = True, group_weights: dict[str, float] | None = None,
                data: dict[str, Any] | None = None) -> dict[str, Any]:
    """Fit, calibrate and (when `write`) save index.npz + card.json; return the card."""
    started = time.monotonic()
    config = config or FeatureConfig()
    data = data or collect(cache, archs, families, config)
    if not data["bags"]:
        raise SystemExit(f"no lifted reference functions under {cache}/lift")
    vectoriser = Vectoriser.fit(data["bags"], config, group_weights=group_weights)
    matrix = cap_terms(vectoriser.transform(data["bags"]), MAX_TERMS_PER_FUNCTION)
    index = ReferenceIndex(
        vectoriser, matrix, data["families"], data["builds"], data["build_arch"],
        np.asarray(data["row_family"], np.int16), np.asarray(data["row_build"], np.int16),
        data["row_name"], np.asarray(data["row_blocks"], np.int32),
        meta={"model_version": MODEL_VERSION, "feature_version": FEATURE_VERSION},
    )
    # Calibrate on exactly what ships: float16 values, as the engine will load them.
    index.matrix.data = index.matrix.data.astype(np.float16).astype(np.float32)
    holdout = collect_holdout(cache, families, index)
    calibration = evaluate(index, holdout=holdout)
    card = {
        "name": "FESTIVE Func Sim",
        "engine": "v0",
        "version": MODEL_VERSION,
        "feature_version": FEATURE_VERSION,
        "description": "TF-IDF over normalised VEX IR op unigrams+bigrams, CFG shape "
                       "buckets, imported callees and referenced strings; cosine search.",
        "index_file": INDEX_FILE,
        "weights_sha256": None,
        "index_bytes": None,
        "reference_functions": matrix.n_rows,
        "reference_families": data["families"],
        "architectures": sorted(set(data["build_arch"])),
        "vocabulary": len(vectoriser.vocab),
        "max_terms_per_function": MAX_TERMS_PER_FUNCTION,
        "feature_config": config.to_dict(),
        "group_weights": vectoriser.group_weights,
        "functions_per_family_arch": data["counts"],
        "packages": [{"family": p.family, "package": p.name, "version": p.version,
                      "architectures": sorted({lib["arch"] for lib in data["libraries"]
                                               if lib["package"] == p.name})}
                     for p in PACKAGES if p.family in data["families"]],
        "holdout_packages": [{"family": p.family, "package": DEV_PACKAGES[p.family][0],
                              "version": p.version, "archive": DEV_PACKAGES[p.family][1],
                              "architectures": sorted(LINKERS)}
                             for p in PACKAGES if p.family in data["families"]],
        "libraries": data["libraries"],
        "labels": "exported STT_FUNC/STT_GNU_IFUNC names from .dynsym (default "
                  "visibility); functions with < 5 basic blocks, unexported, PLT and "
                  "runtime functions are not indexed; aliases collapse to one row",
        **calibration,
        "calibration_assumption": "precision_table weights in-corpus and out-of-corpus "
                                  "functions equally; idf is fitted on the full corpus",
        "build_command": BUILD_COMMAND,
    }
    if write:
        out.mkdir(parents=True, exist_ok=True)
        path = out / INDEX_FILE
        index.save(path)
        card["weights_sha256"] = hashlib.sha256(path.read_bytes()).hexdigest()
        card["index_bytes"] = path.stat().st_size
        (out / "card.json").write_text(json.dumps(card, indent=1) + "\n")
        print(f"[index] wrote {path} ({card['index_bytes'] / 1e6:.1f} MB), "
              f"{matrix.n_rows} functions, vocabulary {len(vectoriser.vocab)}, "
              f"{time.monotonic() - started:.0f} s", flush=True)
    print(json.dumps({"thresholds": card["thresholds"], "evaluation": card["evaluation"]},
                     indent=1), flush=True)
    return card
