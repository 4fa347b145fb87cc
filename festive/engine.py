"""The interface the pipeline calls: model card, engine loading, attribution.

Importing this module is cheap (JSON only); numpy/torch load with the engine.
Attribution follows Intezer-style code reuse: each considered function (>= 5 basic
blocks, not runtime scaffolding) is matched to its most similar reference function;
it counts for that family when the similarity passes the calibrated threshold for
its size; the
verdict is the family with most matched functions, if it has enough of them.
"""

from __future__ import annotations

import json
import math
import threading
from functools import cache
from pathlib import Path
from typing import Any

MODEL_NAME = "FESTIVE Func Sim"
DEFAULT_ENGINE = "v1"  # the trained GNN; "v0" (TF-IDF baseline) stays loadable by name
WEIGHTS_DIR = Path(__file__).resolve().parent / "weights"
MAX_MATCHES = 500

_lock = threading.Lock()


def _card_path(version: str) -> Path:
    return WEIGHTS_DIR / version / "card.json"


@cache
def _read_card(version: str) -> dict[str, Any]:
    path = _card_path(version)
    if not path.exists():
        raise FileNotFoundError(f"no FESTIVE weights for engine {version!r} at {path}")
    return json.loads(path.read_text())


def model_card(version: str | None = None) -> dict[str, Any]:
    """Cheap description of the shipped model (reads card.json only)."""
    engine = version or DEFAULT_ENGINE
    card = _read_card(engine)
    return {
        "name": MODEL_NAME,
        "version": card["version"],
        "engine": engine,
        "default_engine": DEFAULT_ENGINE,
        "weights_sha256": card["weights_sha256"],
        "reference_functions": int(card["reference_functions"]),
        "reference_families": list(card["reference_families"]),
        "architectures": list(card.get("architectures", [])),
        "thresholds": dict(card["thresholds"]),
        "packages": list(card.get("packages", [])),
    }


def _fmt(value: float, digits: int = 4) -> str:
    return f"{value:.{digits}f}"


class Engine:
    """FESTIVE v0 loaded in memory: vectoriser, reference index, thresholds."""

    def __init__(self, version: str = DEFAULT_ENGINE):
        from festive.v0 import ReferenceIndex, Searcher

        self._load_card(version)
        self.index = ReferenceIndex.load(WEIGHTS_DIR / version / self.card["index_file"])
        self.searcher = Searcher(self.index)
        self.device = self.searcher.device

    def _load_card(self, version: str) -> None:
        """Name, version and calibrated thresholds from the engine's card.json."""
        card = _read_card(version)
        self.name = MODEL_NAME
        self.engine = version
        self.version = card["version"]
        self.card = card
        t = card["thresholds"]
        self.min_blocks = int(t["min_blocks"])
        self.match_similarity = float(t["match_similarity"])
        self.match_by_blocks = [(int(lo), float(sim)) for lo, sim in
                                t.get("match_similarity_by_blocks", [[0, self.match_similarity]])]
        self.min_family_matches = int(t["min_family_matches"])
        self.min_family_share = float(t.get("min_family_share", 0.0))
        trials = t.get("verdict_trials")  # absent in cards calibrated before the cap
        self.max_confidence = 1.0 - 1.0 / (int(trials) + 2) if trials else 1.0
        self.precision_table = [(float(lo), float(p)) for lo, p in card["precision_table"]]

    def match_precision(self, similarity: float) -> float:
        """P(family right | best similarity), from the calibration table (step function)."""
        p = 0.0
        for lo, precision in self.precision_table:
            if similarity >= lo:
                p = precision
        return p

    def threshold(self, blocks: int) -> float:
        """Calibrated match similarity for a function of `blocks` basic blocks."""
        value = self.match_by_blocks[0][1]
        for lo, sim in self.match_by_blocks:
            if blocks >= lo:
                value = sim
        return value

    def required_matches(self, considered: int) -> int:
        """Matches a family needs for a verdict: above what unrelated code produced."""
        by_share = math.floor(self.min_family_share * considered) + 1
        return max(self.min_family_matches, by_share)

    def attribute(self, children: list[dict[str, Any]]) -> dict[str, Any]:
        """prediction_results for one sample; every leaf is a string."""
        from festive.features import is_considered

        idx = self.index
        considered: list[tuple[dict[str, Any], dict[str, Any]]] = []
        children_out: dict[str, dict[str, str]] = {}
        total = 0
        for child in children:
            lift = child["lift"]
            funcs = lift.get("functions", [])
            mine = [f for f in funcs if is_considered(f, self.min_blocks)]
            total += len(funcs)
            considered.extend((child, f) for f in mine)
            binary = lift.get("binary", {})
            children_out[child["sha256"]] = {
                "name": str(child.get("name", "")),
                "format": str(binary.get("format", "")),
                "arch": str(binary.get("arch", "")),
                "functions": str(len(funcs)),
                "functions_considered": str(len(mine)),
            }

        with _lock:  # one search at a time per process (shared device tensors)
            hits = self.searcher.search(
                idx.vectoriser.vectors([f for _c, f in considered])) if considered else []

        matched = []
        for (child, func), hit in zip(considered, hits, strict=True):
            if hit.similarity >= self.threshold(len(func.get("blocks", []))):
                matched.append((child, func, hit))
        matched.sort(key=lambda m: -m[2].similarity)

        per_family: dict[int, list[Any]] = {}
        for _child, _func, hit in matched:
            per_family.setdefault(hit.family, []).append(hit)
        families: dict[str, dict[str, str]] = {}
        ranking = []
        for fam, fam_hits in per_family.items():
            sims = [h.similarity for h in fam_hits]
            # Noisy-OR of calibrated per-match precisions: P(at least one match is right).
            # Matches of one sample are not independent, so it is capped at what the
            # calibration's held-out experiments could show (Laplace: 1 - 1/(n + 2)).
            miss = 1.0
            for s in sims:
                miss *= 1.0 - self.match_precision(s)
            confidence = min(1.0 - miss, self.max_confidence)
            archs = sorted({idx.build_arch[int(idx.row_build[h.row])] for h in fam_hits})
            families[idx.families[fam]] = {
                "functions_matched": str(len(fam_hits)),
                "share_of_considered": _fmt(len(fam_hits) / max(len(considered), 1), 3),
                "mean_similarity": _fmt(sum(sims) / len(sims)),
                "best_similarity": _fmt(max(sims)),
                "confidence": _fmt(confidence),
                "reference_builds": " ".join(archs),
            }
            ranking.append((len(fam_hits), confidence, idx.families[fam]))
        ranking.sort(reverse=True)

        verdict, confidence = "unknown", 0.0
        needed = self.required_matches(len(considered))
        if ranking and ranking[0][0] >= needed:
            verdict, confidence = ranking[0][2], ranking[0][1]

        matches: dict[str, dict[str, str]] = {}
        for child, func, hit in matched[:MAX_MATCHES]:
            key = f"{child['sha256'][:12]}:{func['addr']}"
            runner = hit.runner_up_family >= 0 and math.isfinite(hit.runner_up_similarity)
            matches[key] = {
                "child_sha256": child["sha256"],
                "address": func["addr"],
                "name": func.get("name") or "",
                "blocks": str(len(func.get("blocks", []))),
                "family": idx.families[hit.family],
                "reference_function": idx.row_name[hit.row],
                "reference_build": idx.builds[int(idx.row_build[hit.row])],
                "similarity": _fmt(hit.similarity),
                "runner_up_family": idx.families[hit.runner_up_family] if runner else "",
                "runner_up_similarity": _fmt(hit.runner_up_similarity) if runner else "",
            }

        return {
            "model": MODEL_NAME,
            "model_version": self.version,
            "engine": self.engine,
            "verdict": verdict,
            "confidence": _fmt(confidence),
            "functions_total": str(total),
            "functions_considered": str(len(considered)),
            "functions_matched": str(len(matched)),
            "match_thresholds": " ".join(f">={lo}b:{sim:.2f}" for lo, sim in self.match_by_blocks),
            "matches_required_for_verdict": str(needed),
            "families": families,
            "matches": matches,
            "children": children_out,
        }


@cache
def _load(version: str) -> Engine:
    if version == "v1":
        from festive.v1.engine import EngineV1  # torch + v1 weights, only when used

        return EngineV1(version)
    return Engine(version)


def load_engine(version: str | None = None) -> Engine:
    """The process-wide engine for `version` (None = default), loaded once."""
    with _lock:
        return _load(version or DEFAULT_ENGINE)
