"""Write festive/data/manifest.json: which projects and builds are train/val/test.

    python -m festive.data.manifest

Committed so anyone can audit the split; derived from what is actually lifted under
data/festive/ (so it shows the matrix that was really used, not the wished-for one).
"""

from __future__ import annotations

import json
from pathlib import Path

from festive.data.build import LIFTED, SRC
from festive.data.corpus import filtered_functions, read_lift
from festive.data.projects import PROJECTS

MANIFEST = Path(__file__).resolve().parent / "manifest.json"


def build_manifest() -> dict:
    projects = {}
    for p in PROJECTS:
        files = sorted((LIFTED / p.name).glob("*.json.gz"))
        if not files:
            continue
        trees = sorted(d.name for d in SRC.glob(f"{p.name}-*") if d.is_dir())
        builds = {}
        for path in files:
            lift = read_lift(path)
            builds[path.name.removesuffix(".json.gz")] = {
                "functions_lifted": len(lift["functions"]),
                "functions_kept": len(filtered_functions(lift)),
                "lift_seconds": lift["build"]["lift_seconds"],
                "lift_format": lift.get("format"),  # ae-lift/1: lifted before strings
            }
        projects[p.name] = {"split": p.split, "debian_source": trees[0] if trees else None,
                            "builds": builds}
    return {
        "corpus": "A: Debian bookworm source packages, library C files compiled directly "
                  "(-g -fPIC -fvisibility=hidden -shared), stripped copy lifted",
        "build_command": "nice -n 19 .venv/bin/python -m festive.data.build",
        "filters": ">= 5 basic blocks; no PLT/thunks/CRT (by debug label); no .cold "
                   "fragments; per build: duplicate labels collapse when bodies are "
                   "identical, else dropped; train/val labels that occur in test dropped",
        "splits": {s: [n for n, v in projects.items() if v["split"] == s]
                   for s in ("train", "val", "test")},
        "projects": projects,
    }


def main() -> None:
    manifest = build_manifest()
    MANIFEST.write_text(json.dumps(manifest, indent=1) + "\n")
    print(f"wrote {MANIFEST}: {manifest['splits']}")


if __name__ == "__main__":
    main()
