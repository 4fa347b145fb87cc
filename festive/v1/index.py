"""Build the v1 reference index: v1 embeddings of helper v0's reference corpus.

    nice -n 19 python -m festive.v1.index [--cache data/reference-cache]

Why it looks like v0's index: the embeddings are stored in a festive.v0.ReferenceIndex
(dense rows held as CSR), so v0's Searcher, its calibration (festive.reference.calibrate)
and its Engine.attribute run unchanged on v1 vectors. Writes festive/weights/v1/
reference.npz (float16 embeddings + labels) and fills card.json's reference part.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import time
from pathlib import Path
from typing import Any

import numpy as np

from festive.data.corpus_b import training_families
from festive.reference.calibrate import evaluate
from festive.reference.corpus import iter_builds, labelled_functions
from festive.reference.index import collect_holdout
from festive.reference.packages import PACKAGES
from festive.v0 import Csr, ReferenceIndex
from festive.v1.embed import WEIGHTS, Embedder

INDEX_FORMAT = "festive-v1-index/1"
INDEX_FILE = "reference.npz"
ROOT = Path(__file__).resolve().parents[2]


def dense_to_csr(matrix: np.ndarray) -> Csr:
    """Dense unit rows as a full CSR (what v0's Searcher multiplies)."""
    n, d = matrix.shape
    indptr = np.arange(0, n * d + 1, d, dtype=np.int64)
    return Csr(indptr, np.tile(np.arange(d, dtype=np.int32), n),
               matrix.astype(np.float32).ravel(), d)


class V1Vectoriser:
    """Stands where v0's Vectoriser stands: functions -> rows of unit vectors."""

    def __init__(self, embedder: Embedder):
        self.embedder = embedder

    def vectors(self, functions: list[dict[str, Any]]) -> Csr:
        if not functions:
            return dense_to_csr(np.zeros((0, self.embedder.model.config.out_dim), np.float32))
        return dense_to_csr(self.embedder.embed(functions))


def save_index(index: ReferenceIndex, embeddings: np.ndarray, path: Path) -> None:
    header = {"format": INDEX_FORMAT, "families": index.families, "builds": index.builds,
              "build_arch": index.build_arch, "row_name": index.row_name, "meta": index.meta}
    buf = io.BytesIO()
    np.savez_compressed(
        buf, header=np.frombuffer(json.dumps(header).encode(), np.uint8),
        embeddings=embeddings.astype(np.float16), row_family=index.row_family.astype(np.int16),
        row_build=index.row_build.astype(np.int16), row_blocks=index.row_blocks.astype(np.int32))
    path.write_bytes(buf.getvalue())


def load_index(path: Path, embedder: Embedder) -> ReferenceIndex:
    with np.load(path, allow_pickle=False) as z:
        header = json.loads(z["header"].tobytes().decode())
        if header.get("format") != INDEX_FORMAT:
            raise ValueError(f"{path}: not a {INDEX_FORMAT} file")
        matrix = dense_to_csr(z["embeddings"].astype(np.float32))
        return ReferenceIndex(V1Vectoriser(embedder), matrix, header["families"],  # type: ignore[arg-type]
                              header["builds"], header["build_arch"], z["row_family"],
                              z["row_build"], header["row_name"], z["row_blocks"], header["meta"])


def trained_families(families: list[str]) -> list[str]:
    """Reference families whose Debian builds were in the model's training data."""
    log = WEIGHTS.parent / "train_log.json"
    args = json.loads(log.read_text()).get("args", {}) if log.exists() else {}
    return [f for f in training_families() if f in families] if args.get("corpus_b") else []


def build(cache: Path, out: Path) -> dict[str, Any]:
    started = time.monotonic()
    embedder = Embedder(WEIGHTS)
    families, builds, build_arch = [], [], []
    rows: list[np.ndarray] = []
    row_family, row_build, row_name, row_blocks = [], [], [], []
    for b in iter_builds(cache):
        if b.family not in families:
            families.append(b.family)
        builds.append(b.label)
        build_arch.append(b.arch)
        labelled = labelled_functions(b)
        if labelled:
            rows.append(embedder.embed([f for _n, f in labelled]))
        for name, func in labelled:
            row_family.append(families.index(b.family))
            row_build.append(len(builds) - 1)
            row_name.append(name)
            row_blocks.append(len(func["blocks"]))
        print(f"[v1-index] {b.family:8s} {b.arch:6s} {b.library:28s} {len(labelled):6d}",
              flush=True)
    embeddings = np.concatenate(rows).astype(np.float16)
    index = ReferenceIndex(V1Vectoriser(embedder), dense_to_csr(embeddings.astype(np.float32)),  # type: ignore[arg-type]
                           families, builds, build_arch, np.asarray(row_family, np.int16),
                           np.asarray(row_build, np.int16), row_name,
                           np.asarray(row_blocks, np.int32), meta={"engine": "v1"})
    # v0's calibration, run on v1 similarities; thresholds and precisions come from
    # families the model never trained on (a real unknown sample is new code too).
    trained = trained_families(families)
    unseen = [f for f in families if f not in trained]
    holdout = collect_holdout(cache, unseen, index)
    calibration = evaluate(index, holdout=holdout, trained_families=frozenset(trained))
    out.mkdir(parents=True, exist_ok=True)
    save_index(index, embeddings, out / INDEX_FILE)
    card_path = out / "card.json"
    card = json.loads(card_path.read_text()) if card_path.exists() else {}
    card.update({
        "index_file": INDEX_FILE,
        "index_sha256": hashlib.sha256((out / INDEX_FILE).read_bytes()).hexdigest(),
        "reference_functions": int(len(row_name)),
        "reference_families": families,
        "architectures": sorted(set(build_arch)),
        "packages": [{"family": p.family, "package": p.name, "version": p.version}
                     for p in PACKAGES if p.family in families],
        **calibration,
        "index_command": "nice -n 19 .venv/bin/python -m festive.v1.index",
        "index_seconds": round(time.monotonic() - started, 1),
    })
    card_path.write_text(json.dumps(card, indent=1) + "\n")
    summary = {"thresholds": card["thresholds"], "evaluation": card["evaluation"]}
    print(json.dumps(summary, indent=1))
    return card


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--cache", default=str(ROOT / "data" / "reference-cache"))
    parser.add_argument("--out", default=str(WEIGHTS.parent))
    args = parser.parse_args(argv)
    build(Path(args.cache), Path(args.out))


if __name__ == "__main__":
    main()
