"""Embedding and search speed of the served engine on this machine's CPU (issue 14).

    python bench/embed_cpu.py LIFT.json.gz... [--threads 1 2] [--repeat 3]

LIFT.json.gz: lifts written by `python -m lifting.child BINARY OUT` (the packed graphs
beside them, OUT.fgraph.npz, are what the embed stage reads). For each torch thread
count: functions embedded per second (Engine.embed_packed, the embed stage's call) and
the search and verdict per sample (Engine.attribute_packed with the vectors given), best
of --repeat. Writes bench/embed_cpu.json.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("lift", nargs="+")
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()

    import torch

    from festive.engine import load_engine
    from festive.v1.packed import from_bytes

    engine = load_engine()
    rows = []
    for threads in args.threads:
        torch.set_num_threads(threads)
        for lift in args.lift:
            packed = from_bytes(Path(lift + ".fgraph.npz").read_bytes())
            embed_s, search_s = [], []
            for _ in range(args.repeat):
                t0 = time.perf_counter()
                vectors = engine.embed_packed(packed)
                t1 = time.perf_counter()
                engine.attribute_packed([({"sha256": "0" * 64, "name": Path(lift).name},
                                          packed, vectors)], None)
                t2 = time.perf_counter()
                embed_s.append(t1 - t0)
                search_s.append(t2 - t1)
            embedded = len(packed.addrs)
            rows.append({
                "threads": threads, "lift": lift, "functions_embedded": embedded,
                "embed_s": round(min(embed_s), 3),
                "functions_per_s": round(embedded / min(embed_s), 1),
                "search_and_verdict_s": round(min(search_s), 3),
                "search_ms_per_function": round(1000 * min(search_s) / max(embedded, 1), 3),
            })
            print(rows[-1], flush=True)
    out = ROOT / "bench" / "embed_cpu.json"
    out.write_text(json.dumps({
        "command": " ".join(["python", *sys.argv]), "cpus": os.cpu_count(),
        "engine": {"version": engine.version, "index_version": engine.index_version,
                   "reference_rows": int(engine.searcher.n)},
        "device": engine.device, "load_at_end": os.getloadavg(), "rows": rows,
    }, indent=1) + "\n")
    print(f"-> {out}")


if __name__ == "__main__":
    main()
