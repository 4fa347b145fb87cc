"""Train FESTIVE v1 contrastively on Corpus A's train projects (CPU, one thread).

    nice -n 19 python -m festive.v1.train [--minutes 25] [--batch 128]

Each step samples `batch` function identities (project, label) with >= 2 builds and two
different builds of each; loss = symmetric InfoNCE with in-batch negatives. Half the
steps draw the whole batch from one project (harder negatives: same code base, same
style). Validation (XM Recall@1 with 100 negatives, on the val projects) every
`--eval-every` steps; the best checkpoint is written to festive/weights/v1/model.pt.
"""

from __future__ import annotations

import argparse
import json
import math
import random
import time
from collections import defaultdict
from pathlib import Path

import numpy as np
import torch

from festive.data.corpus import Fn, labels_of, load, split_projects
from festive.eval.metrics import rank_stats
from festive.eval.tasks import make_queries
from festive.v1.embed import Embedder
from festive.v1.graph import to_graph
from festive.v1.model import FestiveGNN, ModelConfig, collate, n_parameters, save

OUT = Path(__file__).resolve().parents[1] / "weights" / "v1"


def load_graphs(split: str, exclude: set[str] | None) -> list[Fn]:
    return load(split_projects(split), lambda func, _lift: to_graph(func), exclude_labels=exclude)


def val_recall(model: FestiveGNN, fns: list[Fn], queries: list) -> float:
    model.eval()
    emb = Embedder(model=model, device="cpu").embed_graphs([f.data for f in fns])
    model.train()
    hits = []
    for q in queries:
        cands = np.concatenate([[q.positive], q.negatives])
        scores = emb[cands] @ emb[q.query]
        hits.append(rank_stats(scores[0], scores[1:])[0])
    return float(np.mean(hits))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--minutes", type=float, default=25.0)
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--temperature", type=float, default=0.05)
    parser.add_argument("--eval-every", type=int, default=100)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--loss", choices=("infonce", "ntxent"), default="infonce",
                        help="ntxent also uses same-side items as negatives")
    parser.add_argument("--config-batches", type=float, default=0.0,
                        help="share of steps whose left/right sides each come from one build")
    parser.add_argument("--out", default=str(OUT))
    args = parser.parse_args(argv)
    out = Path(args.out)
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    rng = random.Random(args.seed)

    t0 = time.time()
    test_labels = labels_of(split_projects("test"))
    train = load_graphs("train", test_labels)
    val = load_graphs("val", test_labels)
    groups: dict[str, list[int]] = defaultdict(list)
    for i, fn in enumerate(train):
        groups[fn.identity].append(i)
    identities = [k for k, v in groups.items() if len(v) >= 2]
    by_build: dict[str, dict[str, int]] = defaultdict(dict)
    for i, fn in enumerate(train):
        by_build[fn.build][fn.identity] = i
    build_names = sorted(by_build)
    by_project: dict[str, list[str]] = defaultdict(list)
    for k in identities:
        by_project[k.split(":", 1)[0]].append(k)
    val_queries = make_queries(val, "XM", n_queries=1000, seed=args.seed)
    print(f"train: {len(train)} functions, {len(identities)} identities with >=2 builds; "
          f"val: {len(val)} functions, {len(val_queries)} XM queries; "
          f"loaded in {time.time() - t0:.0f}s", flush=True)

    model = FestiveGNN(ModelConfig())
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=1e-4)
    budget = args.minutes * 60
    start = time.time()
    best, best_step, step, log = -1.0, 0, 0, []
    out.mkdir(parents=True, exist_ok=True)
    while time.time() - start < budget:
        frac = (time.time() - start) / budget
        for group in opt.param_groups:  # cosine decay over the time budget
            group["lr"] = args.lr * 0.5 * (1 + math.cos(math.pi * min(frac, 1.0)))
        left, right = [], []
        if rng.random() < args.config_batches:
            # one build per side: same-side negatives share the query's configuration
            b1, b2 = rng.sample(build_names, 2)
            common = sorted(set(by_build[b1]) & set(by_build[b2]))
            for k in rng.sample(common, min(args.batch, len(common))):
                left.append(train[by_build[b1][k]].data)
                right.append(train[by_build[b2][k]].data)
        else:
            projects = [p for p in by_project if len(by_project[p]) >= args.batch]
            if projects and rng.random() < 0.5:
                chosen = rng.sample(by_project[rng.choice(projects)], args.batch)
            else:
                chosen = rng.sample(identities, min(args.batch, len(identities)))
            for k in chosen:
                a, b = rng.sample(groups[k], 2)
                left.append(train[a].data)
                right.append(train[b].data)
        n = len(left)
        emb = model(collate(left + right))
        if args.loss == "ntxent":  # 2n x 2n, self-similarity masked out
            logits = emb @ emb.T / args.temperature
            logits = logits.masked_fill(torch.eye(2 * n, dtype=torch.bool), float("-inf"))
            target = torch.cat([torch.arange(n, 2 * n), torch.arange(0, n)])
            loss = torch.nn.functional.cross_entropy(logits, target)
        else:
            logits = emb[:n] @ emb[n:].T / args.temperature
            target = torch.arange(n)
            loss = (torch.nn.functional.cross_entropy(logits, target)
                    + torch.nn.functional.cross_entropy(logits.T, target)) / 2
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 5.0)
        opt.step()
        step += 1
        if step % args.eval_every == 0:
            recall = val_recall(model, val, val_queries)
            log.append({"step": step, "seconds": round(time.time() - start),
                        "loss": round(loss.item(), 4), "val_xm_recall1": recall})
            print(json.dumps(log[-1]), flush=True)
            if recall > best:
                best, best_step = recall, step
                save(model, str(out / "model.pt"))
    recall = val_recall(model, val, val_queries)
    if recall > best:
        best, best_step = recall, step
        save(model, str(out / "model.pt"))
    summary = {
        "steps": step, "train_seconds": round(time.time() - start),
        "best_step": best_step, "best_val_xm_recall1": best,
        "train_functions": len(train), "train_identities": len(identities),
        "val_functions": len(val), "parameters": n_parameters(model), "args": vars(args),
        "log": log,
    }
    (out / "train_log.json").write_text(json.dumps(summary, indent=1))
    print(json.dumps({k: v for k, v in summary.items() if k != "log"}), flush=True)


if __name__ == "__main__":
    main()
