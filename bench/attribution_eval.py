"""Sample-level benchmark: is each family that a binary contains found, and nothing else?

    nice -n 5 .venv/bin/python bench/attribution_eval.py [--previous 5bdf613]
        [--manifest bench/attribution_samples.json] [--data data/bench]
        [--out bench/attribution_eval]

Runs the engine of this checkout over every lifted sample of the evaluation set
(bench/attribution_samples.md: binaries built by others, binaries we built with
versions and toolchains the reference does not use, and negatives), and, in the same
run, the engine of an earlier commit (--previous: a detached git worktree of it, run
in its own process) on the same lifts. Per engine:
- "family present": precision and recall over (sample, family) pairs, overall and per
  family and per group, with 95% bootstrap CIs over samples; a family that another
  family of the sample carries inside it (the manifest's `vendored`: xxhash inside lz4
  or zstd, zlib's inflate inside freetype; and festive.data.projects.EMBEDS) is neither
  required nor wrong: reporting it is right, leaving it out is too;
- negatives: the share answered `unknown`, and of those with >= 10,000 functions;
- calibration: a reliability table of the reported family probabilities (a family not
  listed counts as probability 0) against the truth;
- time: seconds per sample to attribute (the lift's own time is in the manifest).
Writes <out>.json (every sample's answer) and <out>.md (the tables).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from festive.data.projects import EMBEDS  # noqa: E402
from festive.eval.metrics import bootstrap_ci, reliability_table  # noqa: E402

RUNNER = r"""
import gzip, json, sys, time
from festive.engine import load_engine
engine = load_engine()
for line in sys.stdin:
    item = json.loads(line)
    with gzip.open(item["lift"], "rt") as handle:
        lift = json.load(handle)
    start = time.perf_counter()
    result = engine.attribute([{"sha256": item["sha256"], "name": item["id"], "lift": lift}])
    result["_seconds"] = time.perf_counter() - start
    print(json.dumps({"id": item["id"], "result": result}), flush=True)
"""


def run_engine(tree: Path, samples: list[dict[str, Any]], data: Path) -> dict[str, dict]:
    """Attribute every sample with the engine of `tree`, in a process of its own."""
    feed = "".join(json.dumps({"id": s["id"], "sha256": s["sha256"],
                               "lift": str(data / s["lift"])}) + "\n" for s in samples)
    done = subprocess.run([sys.executable, "-c", RUNNER], cwd=tree, input=feed,
                          capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"engine of {tree} failed: {done.stderr[-3000:]}")
    out = {}
    for line in done.stdout.splitlines():
        if line.startswith("{"):
            item = json.loads(line)
            out[item["id"]] = item["result"]
    return out


KEPT = ("model_version", "index_version", "verdict", "confidence", "families_present",
        "families_weak", "functions_total", "functions_considered", "functions_matched",
        "families", "_seconds")


def slim(result: dict[str, Any]) -> dict[str, Any]:
    """What the report keeps of an answer: the verdict and the families, without the
    per-function evidence (`matches`) that the service stores."""
    return {k: result[k] for k in KEPT if k in result}


def present(result: dict[str, Any]) -> set[str]:
    if "families_present" in result:
        return set(str(result["families_present"]).split())
    verdict = result.get("verdict", "unknown")  # engines before per-family verdicts
    return set() if verdict == "unknown" else {verdict}


def probabilities(result: dict[str, Any]) -> dict[str, float]:
    fams = result.get("families", {})
    if "families_present" in result:
        return {f: float(v.get("probability", 0)) for f, v in fams.items()}
    verdict = result.get("verdict", "unknown")
    return {verdict: float(result.get("confidence", 0))} if verdict != "unknown" else {}


def allowed(truth: set[str], vendored: dict[str, str]) -> set[str]:
    """Families carried inside another family of the sample: optional either way."""
    carried = {e for t in truth for e in EMBEDS.get(t, [])}
    carried |= {family for family, host in vendored.items() if host in truth}
    return carried


def score(samples: list[dict[str, Any]], results: dict[str, dict], known: set[str],
          seed: int = 0) -> dict[str, Any]:
    per_sample, rel_p, rel_y = [], [], []
    per_family: dict[str, dict[str, int]] = {}
    for s in samples:
        r = results[s["id"]]
        optional = allowed(set(s["truth"]), s.get("vendored", {}))
        truth = (set(s["truth"]) & known) - optional
        said = present(r) - optional
        tp, fp, fn = len(said & truth), len(said - truth), len(truth - said)
        per_sample.append({"id": s["id"], "group": s["group"], "tp": tp, "fp": fp, "fn": fn,
                           "truth": sorted(truth), "said": sorted(said),
                           "functions": s.get("functions", 0), "seconds": r["_seconds"]})
        for f in truth | said:
            c = per_family.setdefault(f, {"tp": 0, "fp": 0, "fn": 0})
            c["tp"] += f in said and f in truth
            c["fp"] += f in said and f not in truth
            c["fn"] += f in truth and f not in said
        probs = probabilities(r)
        for f in known - optional:
            rel_p.append(probs.get(f, 0.0))
            rel_y.append(float(f in truth))

    def pr(rows: list[dict[str, Any]]) -> dict[str, Any]:
        tp = np.asarray([x["tp"] for x in rows], float)
        fp = np.asarray([x["fp"] for x in rows], float)
        fn = np.asarray([x["fn"] for x in rows], float)
        rng = np.random.default_rng(seed)
        boot_p, boot_r = [], []
        for _ in range(1000):
            i = rng.integers(0, len(rows), len(rows))
            if tp[i].sum() + fp[i].sum():
                boot_p.append(tp[i].sum() / (tp[i].sum() + fp[i].sum()))
            if tp[i].sum() + fn[i].sum():
                boot_r.append(tp[i].sum() / (tp[i].sum() + fn[i].sum()))
        def ci(point: float | None, boot: list[float]) -> list[float] | None:
            if point is None or not boot:
                return None
            return [round(point, 3), round(float(np.quantile(boot, 0.025)), 3),
                    round(float(np.quantile(boot, 0.975)), 3)]
        p = tp.sum() / (tp.sum() + fp.sum()) if tp.sum() + fp.sum() else None
        r = tp.sum() / (tp.sum() + fn.sum()) if tp.sum() + fn.sum() else None
        return {"samples": len(rows), "tp": int(tp.sum()), "fp": int(fp.sum()),
                "fn": int(fn.sum()), "precision": ci(p, boot_p), "recall": ci(r, boot_r)}

    negatives = [x for x in per_sample if not x["truth"]]
    big = [x for x in negatives if x["functions"] >= 10_000]
    unknown = np.asarray([not x["said"] for x in negatives], float)
    groups = sorted({x["group"] for x in per_sample})
    return {
        "overall": pr(per_sample),
        "positives_only": pr([x for x in per_sample if x["truth"]]),
        "by_group": {g: pr([x for x in per_sample if x["group"] == g]) for g in groups},
        "by_family": dict(sorted(per_family.items())),
        "negatives_unknown": (list(bootstrap_ci(unknown, seed=seed)) if len(unknown) else None),
        "negatives": len(negatives),
        "large_negatives_unknown": f"{sum(not x['said'] for x in big)}/{len(big)}",
        "reliability": reliability_table(np.asarray(rel_p), np.asarray(rel_y)),
        "seconds_per_sample": round(float(np.mean([x["seconds"] for x in per_sample])), 3),
        "seconds_max": round(float(np.max([x["seconds"] for x in per_sample])), 3),
        "samples": per_sample,
    }


def worktree(rev: str) -> Path:
    path = Path("/tmp") / f"ae-previous-{rev}"
    if not path.exists():
        subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "--detach", str(path), rev],
                       check=True, capture_output=True)
    return path


def fmt(ci: list[float] | None) -> str:
    return "n/a" if ci is None else f"{ci[0]:.3f} [{ci[1]:.3f}, {ci[2]:.3f}]"


def markdown(report: dict[str, Any]) -> str:
    lines = ["| engine | samples | precision | recall | negatives unknown | large negatives "
             "unknown | s/sample |", "|---|---:|---|---|---|---|---:|"]
    for name, s in report["engines"].items():
        neg = s["negatives_unknown"]
        lines.append(f"| {name} | {s['overall']['samples']} | {fmt(s['overall']['precision'])} "
                     f"| {fmt(s['overall']['recall'])} | "
                     f"{fmt([round(x, 3) for x in neg]) if neg else 'n/a'} "
                     f"| {s['large_negatives_unknown']} | {s['seconds_per_sample']} |")
    for name, s in report["engines"].items():
        lines += ["", f"### {name}: by group", "", "| group | samples | tp | fp | fn | precision "
                  "| recall |", "|---|---:|---:|---:|---:|---|---|"]
        for g, r in s["by_group"].items():
            lines.append(f"| {g} | {r['samples']} | {r['tp']} | {r['fp']} | {r['fn']} | "
                         f"{fmt(r['precision'])} | {fmt(r['recall'])} |")
        lines += ["", f"### {name}: by family", "", "| family | tp | fp | fn |",
                  "|---|---:|---:|---:|"]
        for f, c in s["by_family"].items():
            lines.append(f"| {f} | {c['tp']} | {c['fp']} | {c['fn']} |")
        lines += ["", f"### {name}: reliability of the family probabilities", "",
                  "| probability | (sample, family) pairs | mean probability | observed present |",
                  "|---|---:|---:|---:|"]
        for row in s["reliability"]:
            lines.append(f"| {row['bin']} | {row['n']} | {row['mean_probability']} | "
                         f"{row['observed_present']} |")
        lines += ["", f"### {name}: every sample", "", "| sample | group | truth | said |",
                  "|---|---|---|---|"]
        for x in s["samples"]:
            lines.append(f"| {x['id']} | {x['group']} | {' '.join(x['truth']) or '-'} | "
                         f"{' '.join(x['said']) or 'unknown'} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--manifest", type=Path,
                        default=ROOT / "bench" / "attribution_samples.json")
    parser.add_argument("--data", type=Path, default=ROOT / "data" / "bench")
    parser.add_argument("--previous", default="", help="git revision of the engine to compare")
    parser.add_argument("--out", default=str(ROOT / "bench" / "attribution_eval"))
    parser.add_argument("--rescore", type=Path,
                        help="score the engines' answers saved in this <out>.json again")
    args = parser.parse_args()
    manifest = json.loads(args.manifest.read_text())
    samples = [s for s in manifest["samples"]
               if s.get("lift") and (args.data / s["lift"]).exists()]
    card = json.loads((ROOT / "festive" / "weights" / "v1" / "card.json").read_text())
    # the families the set is labelled for: the same truth for every engine compared
    known = set(manifest["families"])
    engines = {f"this checkout ({card['version']}, index {card.get('index_version')})": ROOT}
    if args.previous:
        engines[f"previous ({args.previous})"] = worktree(args.previous)
    report: dict[str, Any] = {"samples": len(samples), "reference_families": sorted(known),
                              "engines": {}}
    started = time.time()
    saved = json.loads(args.rescore.read_text())["engines"] if args.rescore else {}
    if saved:
        engines = {name: ROOT for name in saved}
    for name, tree in engines.items():
        results = saved[name]["results"] if saved else run_engine(tree, samples, args.data)
        report["engines"][name] = score(samples, results, known)
        report["engines"][name]["results"] = {k: slim(v) for k, v in results.items()}
        print(name, json.dumps({k: report["engines"][name][k] for k in
                                ("overall", "negatives_unknown", "large_negatives_unknown")}),
              flush=True)
    report["seconds"] = round(time.time() - started, 1)
    Path(f"{args.out}.json").write_text(json.dumps(report, indent=1) + "\n")
    Path(f"{args.out}.table.md").write_text(markdown(report))


if __name__ == "__main__":
    main()
