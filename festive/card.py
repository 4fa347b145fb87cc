"""Which model is installed: its engine, version, weights and reference index.

The one home of what "current" means for a prediction (analysis_version).
Importing this module is cheap (JSON only); numpy/torch load with the engine.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable
from functools import cache
from pathlib import Path
from typing import Any

from common.contracts import MODEL_NAME

DEFAULT_ENGINE = "v1"
# How the embedding runs (AE_EMBED_PRECISION): float32 as trained, or its matrix work in
# bfloat16 (torch autocast) with the vectors made unit length in float32 (bench/bf16.md).
PRECISIONS = ("float32", "bfloat16")
DEFAULT_PRECISION = PRECISIONS[0]
WEIGHTS_DIR = Path(__file__).resolve().parent / "weights"


@cache
def read_card(engine: str = DEFAULT_ENGINE) -> dict[str, Any]:
    path = WEIGHTS_DIR / engine / "card.json"
    if not path.exists():
        raise FileNotFoundError(f"no FESTIVE weights for engine {engine!r} at {path}")
    return json.loads(path.read_text())


def analysis_version(card: dict[str, Any], index_version: str | None = None) -> str:
    """What a stored prediction must match to count as current: the model version and
    the reference index version (semver build metadata), e.g. 1.2.0+idx.3f2a9c0d1e2b4a5c.
    A new model or a new index makes resubmission and reanalysis run again.
    `index_version` defaults to the shipped index's (see `index_version`)."""
    index = str(card.get("index_version", "")) if index_version is None else index_version
    return f"{card['version']}+idx.{index}" if index else str(card["version"])


def index_version(shipped: str, references: Iterable[tuple[str, str, str]]) -> str:
    """The version of the index a prediction is searched against: the shipped index's,
    followed by a short hash of the active user references, each (sha256, family,
    version), e.g. e7b72ec8255c3368.u1c0ffee1234a; the shipped version alone when users
    added none. Adding, relabelling or removing a reference changes it. The API (from the
    database) and the engine (from the set it loaded) both compute it here."""
    rows = sorted(set(references))
    if not rows:
        return shipped
    digest = hashlib.sha256(json.dumps(rows, separators=(",", ":")).encode()).hexdigest()
    return f"{shipped}.u{digest[:12]}"


def model_card(engine: str | None = None) -> dict[str, Any]:
    """Cheap description of the installed model (reads card.json only)."""
    engine = engine or DEFAULT_ENGINE
    card = read_card(engine)
    return {
        "name": MODEL_NAME,
        "version": card["version"],
        "analysis_version": analysis_version(card),
        "index_version": str(card.get("index_version", "")),
        "engine": engine,
        "default_engine": DEFAULT_ENGINE,
        "weights_sha256": card["weights_sha256"],
        "reference_functions": int(card["reference_functions"]),
        "reference_families": list(card["reference_families"]),
        "architectures": list(card.get("architectures", [])),
    }
