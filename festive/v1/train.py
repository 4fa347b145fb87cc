"""Train FESTIVE v1 contrastively on Corpus A's train projects (CPU, one thread).

    nice -n 5 python -m festive.v1.train [--minutes 30] [--suites bookworm,sid] [--init W]

Functions come from each suite's corpus (data/festive for bookworm, data/festive-sid
for sid: other upstream versions, built with the same recipes); one identity
(project, label) groups a function across builds and versions. Each step samples
`batch` identities with >= 2 builds and `views` (2) different builds of each; for
`--xv-share` of the identities present in two versions, the views are one build of
each version (cross-version positives; changed bodies stay in as hard cases).
Loss = symmetric InfoNCE with in-batch negatives, plus a uniformity term; 10% of
tokens are dropped as augmentation. Half the steps draw
the whole batch from one project (harder negatives: same code base, same style).
Validation (XM Recall@1 with 100 negatives, on the val projects) every `--eval-every`
steps; the best checkpoint is written to festive/weights/v1/model.pt.
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

from festive.data.corpus import Fn, labels_of, load_versions, split_projects
from festive.data.corpus_b import load_corpus_b
from festive.eval.metrics import rank_stats
from festive.eval.tasks import make_queries
from festive.v1.embed import Embedder
from festive.v1.graph import FunctionGraph, to_graph
from festive.v1.model import (
    Batch,
    FestiveGNN,
    ModelConfig,
    collate,
    n_parameters,
    save,
)
from festive.v1.model import load as load_model

OUT = Path(__file__).resolve().parents[1] / "weights" / "v1"


def graph_of(func: dict, _lift: dict) -> FunctionGraph:
    return to_graph(func)


def load_graphs(split: str, suites: tuple[str, ...], exclude: set[str] | None,
                workers: int) -> list[Fn]:
    return load_versions(split_projects(split), graph_of, suites, exclude_labels=exclude,
                         workers=workers)


def drop_tokens(batch: Batch, rate: float) -> Batch:
    """Augmentation: zero a random share of block and function token weights."""
    if rate <= 0:
        return batch
    batch.tok_w = batch.tok_w * (torch.rand_like(batch.tok_w) >= rate)
    batch.ftok_w = batch.ftok_w * (torch.rand_like(batch.ftok_w) >= rate)
    return batch


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


def pick_views(args: argparse.Namespace, rng: random.Random, train: list[Fn],
               members: list[int]) -> list[int]:
    """`views` builds of one identity; for --xv-share of the identities that exist in
    two or more versions, one build of each of two versions."""
    versions: dict[str, list[int]] = defaultdict(list)
    for i in members:
        versions[train[i].version].append(i)
    if len(versions) >= 2 and rng.random() < args.xv_share:
        return [rng.choice(versions[v]) for v in rng.sample(sorted(versions), 2)]
    return rng.sample(members, min(args.views, len(members)))


def sample_batch(args: argparse.Namespace, rng: random.Random, train: list[Fn],
                 groups: dict[str, list[int]], identities: list[str],
                 by_project: dict[str, list[str]], by_build: dict[str, dict[str, int]],
                 build_names: list[str]) -> tuple[list[FunctionGraph], list[int]]:
    """`batch` identities with `views` builds each; labels say which graphs are one function.

    Half the batches come from one project (harder negatives: same code base, same
    style); with --config-batches, a share of them pairs two whole builds instead.
    """
    if rng.random() < args.config_batches:
        b1, b2 = rng.sample(build_names, 2)
        common = sorted(set(by_build[b1]) & set(by_build[b2]))
        chosen = rng.sample(common, min(args.batch, len(common)))
        picks = [[by_build[b1][k], by_build[b2][k]] for k in chosen]
    else:
        projects = [p for p in by_project if len(by_project[p]) >= args.batch]
        if projects and rng.random() < 0.5:
            chosen = rng.sample(by_project[rng.choice(projects)], args.batch)
        else:
            chosen = rng.sample(identities, min(args.batch, len(identities)))
        picks = [pick_views(args, rng, train, groups[k]) for k in chosen]
    graphs = [train[i].data for members in picks for i in members]
    labels = [k for k, members in enumerate(picks) for _ in members]
    return graphs, labels


def contrastive_loss(emb: torch.Tensor, labels: torch.Tensor, temperature: float,
                     kind: str) -> torch.Tensor:
    """InfoNCE over graphs that share a label (supervised contrastive with >2 views).

    "infonce" scores each graph only against the other views' graphs; "ntxent" also
    uses same-view graphs as negatives. With two views per identity both reduce to
    the usual symmetric forms.
    """
    logits = emb @ emb.T / temperature
    same = labels[:, None] == labels[None, :]
    self_mask = torch.eye(len(labels), dtype=torch.bool)
    logits = logits.masked_fill(self_mask, float("-inf"))
    positive = same & ~self_mask
    if kind == "infonce":  # drop negatives drawn in the anchor's own view slot
        view = torch.zeros_like(labels)
        for k in range(1, len(labels)):
            view[k] = view[k - 1] + 1 if labels[k] == labels[k - 1] else 0
        logits = logits.masked_fill((view[:, None] == view[None, :]) & ~same, float("-inf"))
    log_prob = logits - torch.logsumexp(logits, dim=1, keepdim=True)
    has_pos = positive.any(dim=1)
    per_anchor = (log_prob.masked_fill(~positive, 0).sum(1) / positive.sum(1).clamp(min=1))
    return -per_anchor[has_pos].mean()


def uniformity_loss(emb: torch.Tensor, t: float = 2.0) -> torch.Tensor:
    """log E exp(-t |x - y|^2) over pairs (Wang & Isola 2020): low when spread out."""
    return torch.pdist(emb).pow(2).mul(-t).exp().mean().log()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--minutes", type=float, default=30.0)
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
    parser.add_argument("--corpus-b", action=argparse.BooleanOptionalAction, default=False,
                        help="also train on Debian's multiarch builds (festive.data.corpus_b); "
                             "tried for 1.1.0: validation 0.8345 vs 0.8355 without, not kept")
    parser.add_argument("--views", type=int, default=2, help="builds per identity in a batch")
    parser.add_argument("--token-dropout", type=float, default=0.1)
    parser.add_argument("--uniformity", type=float, default=0.5,
                        help="weight of the uniformity loss (spreads unrelated functions "
                             "apart, so similarity thresholds mean something)")
    parser.add_argument("--suites", default="bookworm,sid",
                        help="Debian suites whose corpora are loaded (other upstream versions)")
    parser.add_argument("--xv-share", type=float, default=0.3,
                        help="share of multi-version identities paired across versions")
    parser.add_argument("--init", type=Path,
                        help="start from these weights (fine-tune) instead of from scratch")
    parser.add_argument("--out", default=str(OUT))
    args = parser.parse_args(argv)
    out = Path(args.out)
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    rng = random.Random(args.seed)

    t0 = time.time()
    suites = tuple(args.suites.split(","))
    test_labels = labels_of(split_projects("test"), suites)
    train = load_graphs("train", suites, test_labels, args.threads)
    if args.corpus_b:
        train += load_corpus_b(graph_of, exclude_labels=test_labels)
    val = load_graphs("val", suites, test_labels, args.threads)
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
    multi_version = sum(len({train[i].version for i in groups[k]}) >= 2 for k in identities)
    print(f"train: {len(train)} functions, {len(identities)} identities with >=2 builds "
          f"({multi_version} in >=2 versions); "
          f"val: {len(val)} functions, {len(val_queries)} XM queries; "
          f"loaded in {time.time() - t0:.0f}s", flush=True)

    model = load_model(str(args.init)) if args.init else FestiveGNN(ModelConfig())
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=1e-4)
    budget = args.minutes * 60
    start = time.time()
    best, best_step, step, log = -1.0, 0, 0, []
    out.mkdir(parents=True, exist_ok=True)
    if args.init:  # fine-tuning keeps the starting weights unless a step beats them
        best = val_recall(model, val, val_queries)
        save(model, str(out / "model.pt"))
        log.append({"step": 0, "seconds": 0, "val_xm_recall1": best})
        print(json.dumps(log[-1]), flush=True)
    while time.time() - start < budget:
        frac = (time.time() - start) / budget
        for group in opt.param_groups:  # cosine decay over the time budget
            group["lr"] = args.lr * 0.5 * (1 + math.cos(math.pi * min(frac, 1.0)))
        graphs, labels = sample_batch(args, rng, train, groups, identities, by_project,
                                      by_build, build_names)
        emb = model(drop_tokens(collate(graphs), args.token_dropout))
        loss = contrastive_loss(emb, torch.as_tensor(labels), args.temperature, args.loss)
        if args.uniformity > 0:
            loss = loss + args.uniformity * uniformity_loss(emb)
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
        "train_identities_multi_version": multi_version,
        "train_builds": sorted({f.build for f in train}),
        "val_functions": len(val), "parameters": n_parameters(model),
        "args": json.loads(json.dumps(vars(args), default=str)),
        "log": log,
    }
    (out / "train_log.json").write_text(json.dumps(summary, indent=1))
    print(json.dumps({k: v for k, v in summary.items() if k != "log"}), flush=True)


if __name__ == "__main__":
    main()
