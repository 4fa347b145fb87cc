"""Assemble festive/weights/v1/card.json and MODEL_CARD.md from what was measured.

    python -m festive.v1.card

Reads the training log, the weights' sha256, the data manifest, the reference index
part of card.json (festive.attribution.build) and bench/festive_eval.json (festive.eval); no
number is typed in by hand.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from common.contracts import MODEL_NAME
from festive.v1.embed import WEIGHTS

ROOT = Path(__file__).resolve().parents[2]
VERSION = "1.2.0"  # 1.2: the whole build matrix (50 configurations), strings in every lift
TRAIN_COMMAND = "nice -n 5 .venv/bin/python -m festive.v1.train"


def _read(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text()) if path.exists() else {}


def assemble() -> dict[str, Any]:
    out = WEIGHTS.parent
    card = _read(out / "card.json")
    log = _read(out / "train_log.json")
    manifest = _read(ROOT / "festive" / "data" / "manifest.json")
    evaluation = _read(ROOT / "bench" / "festive_eval.json")
    card.update({
        "name": MODEL_NAME,
        "engine": "v1",
        "version": VERSION,
        "description": "GGSNN-style message passing over the CFG (hashed VEX-op/bigram/"
                       "constant bags per block; callee/string/CFG-size bag per function), "
                       "trained with symmetric InfoNCE over in-batch negatives (plus a "
                       "uniformity term); 128-d L2-normalised embeddings.",
        "weights_file": WEIGHTS.name,
        "weights_sha256": hashlib.sha256(WEIGHTS.read_bytes()).hexdigest(),
        "weights_bytes": WEIGHTS.stat().st_size,
        "parameters": log.get("parameters"),
        "training": {k: v for k, v in log.items() if k != "log"},
        "train_command": TRAIN_COMMAND,
        "data_manifest": "festive/data/manifest.json",
        "data_splits": manifest.get("splits"),
    })
    card.pop("corpus_a_test", None)
    # the full-matrix evaluation counts only when it measured these weights
    if evaluation and (evaluation.get("meta") or {}).get("weights_sha256") == card[
            "weights_sha256"]:
        card["corpus_a_test"] = {
            "report": "bench/festive_eval.md",
            "recall1_pool100": {t: {m: r["recall1"] for m, r in per.items()}
                                for t, per in evaluation["tasks"].items()},
            "search_recall1": {m: r["recall1"] for m, r in evaluation["search"].items()},
            "auc_xm": {m: r["auc"] for m, r in evaluation["auc"].items()},
            "meta": evaluation.get("meta"),
        }
    compare = _read(ROOT / "bench" / "festive_eval_compare.json")
    names = list(compare.get("weights") or {})
    card.pop("comparison", None)
    if compare and names and any(w["sha256_16"] == card["weights_sha256"][:16]
                                 for w in compare["weights"].values()):
        card["comparison"] = {
            "report": "bench/festive_eval_compare.table.md",
            "command": compare.get("command"),
            "weights": compare["weights"],
            "recall1_pool100": {t: {m: r["recall1"] for m, r in per.items()}
                                for t, per in compare["tasks"].items()},
            "builds": compare.get("builds"),
        }
    return card


def markdown(card: dict[str, Any]) -> str:
    t = card.get("training", {})
    lines = [
        f"# {card['name']} — engine v1 ({card['version']})", "",
        card["description"], "",
        "## Weights", "",
        f"- file: `festive/weights/v1/{card['weights_file']}` "
        f"({card['weights_bytes'] / 1e6:.2f} MB), sha256 `{card['weights_sha256']}`",
        f"- parameters: {card.get('parameters')}",
        f"- reference index: `festive/weights/v1/{card.get('index_file')}`, "
        f"sha256 `{card.get('index_sha256')}`, {card.get('reference_functions')} functions of "
        f"{', '.join(card.get('reference_families', []))} on "
        f"{', '.join(card.get('architectures', []))}", "",
        "## Training", "",
        f"- command: `{card['train_command']}` (args: `{json.dumps(t.get('args'))}`)",
        f"- {t.get('steps')} steps in {t.get('train_seconds')} s on CPU "
        f"({(t.get('args') or {}).get('threads', 1)} thread(s)); best "
        f"checkpoint at step {t.get('best_step')} (validation XM Recall@1 "
        f"{t.get('best_val_xm_recall1')})",
        f"- data: `{card['data_manifest']}` — splits by project: "
        f"`{json.dumps(card.get('data_splits'))}`; {t.get('train_functions')} train "
        f"functions ({t.get('train_identities')} identities with >= 2 builds), "
        f"{t.get('val_functions')} validation functions", "",
    ]
    test = card.get("corpus_a_test")
    if test:
        lines += ["## Corpus A test projects (Recall@1, 1 positive + 100 negatives, 95% CI)", "",
                  "| method | " + " | ".join(test["recall1_pool100"]) + " |",
                  "|---" * (len(test["recall1_pool100"]) + 1) + "|"]
        methods = list(next(iter(test["recall1_pool100"].values())))
        for m in methods:
            cells = []
            for per in test["recall1_pool100"].values():
                v = per.get(m)
                cells.append(f"{v[0]:.3f} [{v[1]:.3f}, {v[2]:.3f}]" if v else "n/a")
            lines.append(f"| {m} | " + " | ".join(cells) + " |")
        lines += ["", "Full report: `bench/festive_eval.md`.", ""]
    comparison = card.get("comparison")
    if comparison:
        table = comparison["recall1_pool100"]
        lines += ["## Against the previous model, same queries, one run "
                  "(festive.eval.compare)", "",
                  "Held-out test projects; XO..XM within bookworm's versions, XV/XVM across "
                  "bookworm's and sid's. Recall@1, 1 positive + 100 negatives, 95% CI.", "",
                  "| method | " + " | ".join(table) + " |", "|---" * (len(table) + 1) + "|"]
        for m in next(iter(table.values())):
            cells = []
            for per in table.values():
                v = per.get(m)
                cells.append(f"{v[0]:.3f} [{v[1]:.3f}, {v[2]:.3f}]" if v else "n/a")
            lines.append(f"| {m} | " + " | ".join(cells) + " |")
        lines += ["", f"Weights: `{json.dumps(comparison['weights'])}`", ""]
    calibration = card.get("calibration")
    if calibration:
        lines += ["## Verdict calibration (festive.attribution.calibrate)", "",
                  f"Index version `{card.get('index_version')}`: "
                  f"{card.get('reference_functions_before_merge')} reference functions, "
                  f"{card.get('reference_functions')} rows after merging near-duplicates.",
                  "", f"```\n{json.dumps(calibration, indent=1)}\n```", ""]
    return "\n".join(lines)


def main() -> None:
    card = assemble()
    out = WEIGHTS.parent
    (out / "card.json").write_text(json.dumps(card, indent=1) + "\n")
    (out / "MODEL_CARD.md").write_text(markdown(card))
    print(f"wrote {out / 'card.json'} and MODEL_CARD.md")


if __name__ == "__main__":
    main()
