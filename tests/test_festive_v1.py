"""FESTIVE v1: features on a real compiled function, the shipped model, twin ranking,
and the evaluation metrics on hand-made cases. Needs gcc and angr; < 60 s."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

from festive.eval.metrics import auc, bootstrap_ci, rank_stats

SOURCE = r"""
#include <string.h>
#include <stdlib.h>

unsigned crc32_table_free(const unsigned char *buf, unsigned long len) {
    unsigned crc = 0xFFFFFFFFu;
    for (unsigned long i = 0; i < len; i++) {
        crc ^= buf[i];
        for (int k = 0; k < 8; k++)
            crc = (crc & 1) ? (crc >> 1) ^ 0xEDB88320u : crc >> 1;
    }
    return ~crc;
}

int parse_key_value(const char *line, char *key, char *value, int cap) {
    int i = 0, j = 0;
    while (line[i] == ' ' || line[i] == '\t') i++;
    while (line[i] && line[i] != '=' && j < cap - 1) key[j++] = line[i++];
    key[j] = 0;
    if (line[i] != '=') return -1;
    i++;
    j = 0;
    while (line[i] && line[i] != '\n' && j < cap - 1) value[j++] = line[i++];
    value[j] = 0;
    return j;
}

void insertion_sort(int *a, int n) {
    for (int i = 1; i < n; i++) {
        int v = a[i], j = i - 1;
        while (j >= 0 && a[j] > v) { a[j + 1] = a[j]; j--; }
        a[j + 1] = v;
    }
}

long checked_sum(const long *v, int n, long limit) {
    long s = 0;
    for (int i = 0; i < n; i++) {
        if (v[i] < 0) return -1;
        if (s > limit - v[i]) return -2;
        s += v[i];
    }
    return s;
}

int count_words(const char *s) {
    int n = 0, in = 0;
    for (; *s; s++) {
        if (*s == ' ' || *s == '\n' || *s == '\t') in = 0;
        else if (!in) { in = 1; n++; }
    }
    return n;
}
"""
NAMES = ("crc32_table_free", "parse_key_value", "insertion_sort", "checked_sum", "count_words")
WEIGHTS = Path(__file__).resolve().parents[1] / "festive" / "weights" / "v1" / "model.pt"


def _build_and_lift(tmp: Path, opt: str) -> dict[str, dict]:
    """{function name: lifted function} plus "__lift__": the whole lift_binary output."""
    from lifting.angr_lift import lift_binary

    src = tmp / "sample.c"
    src.write_text(SOURCE)
    out = tmp / f"sample-{opt}.so"
    subprocess.run(["gcc", f"-{opt}", "-fPIC", "-shared", "-o", str(out), str(src)], check=True)
    lifted = lift_binary(str(out))
    funcs = {f["name"]: f for f in lifted["functions"] if f.get("name") in NAMES}
    return {**funcs, "__lift__": lifted}


@pytest.fixture(scope="module")
def lifted(tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict[str, dict]]:
    if shutil.which("gcc") is None:
        pytest.skip("gcc not installed")
    tmp = tmp_path_factory.mktemp("festive_v1")
    return {opt: _build_and_lift(tmp, opt) for opt in ("O0", "O2")}


def test_graph_features_of_a_real_function(lifted: dict[str, dict[str, dict]]) -> None:
    from festive.v1.graph import BLOCK_BUCKETS, FUNC_BUCKETS, to_graph

    func = lifted["O0"]["crc32_table_free"]
    g = to_graph(func)
    assert g.n_blocks == len(func["blocks"]) >= 5
    assert len(g.edges) == len(func["edges"]) > 0
    assert g.edges.max() < g.n_blocks
    assert set(np.unique(g.tok_block)) == set(range(g.n_blocks))  # every block has tokens
    assert np.all(np.diff(g.tok_block) >= 0)  # grouped by block, as collate expects
    assert 0 <= g.tok.min() and g.tok.max() < BLOCK_BUCKETS
    assert 0 <= g.ftok.min() and g.ftok.max() < FUNC_BUCKETS
    assert np.all(g.tok_w >= 1.0)


@pytest.mark.skipif(not WEIGHTS.exists(), reason="v1 weights not trained yet")
def test_model_loads_and_embeds_unit_vectors(lifted: dict[str, dict[str, dict]]) -> None:
    from festive.v1.embed import Embedder
    from festive.v1.model import n_parameters

    embedder = Embedder(WEIGHTS, device="cpu")
    assert n_parameters(embedder.model) < 1_000_000
    funcs = [lifted["O0"][n] for n in NAMES if n in lifted["O0"]]
    emb = embedder.embed(funcs)
    assert emb.shape == (len(funcs), embedder.model.config.out_dim)
    assert emb.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(emb, axis=1), 1.0, atol=1e-5)
    # batching must not change a function's vector
    np.testing.assert_allclose(embedder.embed(funcs[:1])[0], emb[0], atol=1e-5)


@pytest.mark.skipif(not WEIGHTS.exists(), reason="v1 weights not trained yet")
def test_o0_function_ranks_its_o2_twin_first(lifted: dict[str, dict[str, dict]]) -> None:
    from festive.v1.embed import Embedder

    names = [n for n in NAMES if n in lifted["O0"] and n in lifted["O2"]]
    assert "crc32_table_free" in names
    embedder = Embedder(WEIGHTS, device="cpu")
    q = embedder.embed([lifted["O0"][n] for n in names])
    c = embedder.embed([lifted["O2"][n] for n in names])
    sims = q @ c.T
    query = names.index("crc32_table_free")
    assert int(np.argmax(sims[query])) == query, dict(zip(names, sims[query].round(3), strict=True))


def test_rank_stats_hand_made() -> None:
    # positive beats all: rank 1
    assert rank_stats(0.9, np.array([0.1, 0.5, 0.8])) == (1.0, 1.0)
    # two negatives above: rank 3
    r1, mrr = rank_stats(0.5, np.array([0.6, 0.7, 0.1]))
    assert r1 == 0.0 and mrr == pytest.approx(1 / 3)
    # tie with one negative: rank 1 or 2 equally likely
    r1, mrr = rank_stats(0.5, np.array([0.5, 0.1]))
    assert r1 == 0.5 and mrr == pytest.approx((1 + 0.5) / 2)
    # rank 11 is outside MRR@10
    assert rank_stats(0.0, np.arange(1, 11, dtype=float)) == (0.0, 0.0)


def test_contrastive_loss_is_symmetric_infonce_for_two_views() -> None:
    import torch

    from festive.v1.train import contrastive_loss

    torch.manual_seed(0)
    n = 6
    left = torch.nn.functional.normalize(torch.randn(n, 8), dim=1)
    right = torch.nn.functional.normalize(torch.randn(n, 8), dim=1)
    logits = left @ right.T / 0.1
    target = torch.arange(n)
    expected = (torch.nn.functional.cross_entropy(logits, target)
                + torch.nn.functional.cross_entropy(logits.T, target)) / 2
    interleaved = torch.stack([left, right], dim=1).reshape(2 * n, 8)
    labels = torch.arange(n).repeat_interleave(2)
    assert torch.isclose(contrastive_loss(interleaved, labels, 0.1, "infonce"), expected)
    # a perfect embedding (each pair identical, pairs orthogonal) has a loss near zero
    perfect = torch.eye(n).repeat_interleave(2, dim=0)
    assert contrastive_loss(perfect, labels, 0.05, "infonce") < 1e-6


def test_auc_hand_made() -> None:
    assert auc(np.array([0.9, 0.8]), np.array([0.1, 0.2])) == 1.0
    assert auc(np.array([0.1]), np.array([0.9])) == 0.0
    # 4 pos x 2 neg: 0.6 beats 0.55 only; 0.5 ties 0.5 -> (2+2+1.5+0.5... computed by hand)
    pos, neg = np.array([0.9, 0.7, 0.5, 0.4]), np.array([0.5, 0.6])
    # pairs won: 0.9:2, 0.7:2, 0.5: tie 0.5 (0.5) + loses 0.6 -> 0.5, 0.4: 0 -> 4.5 / 8
    assert auc(pos, neg) == pytest.approx(4.5 / 8)


def test_bootstrap_ci_hand_made() -> None:
    mean, lo, hi = bootstrap_ci(np.array([1.0] * 10), reps=200, seed=0)
    assert (mean, lo, hi) == (1.0, 1.0, 1.0)
    values = np.array([0.0, 1.0] * 50)
    mean, lo, hi = bootstrap_ci(values, reps=2000, seed=0)
    assert mean == 0.5 and lo < 0.5 < hi
    assert hi - lo == pytest.approx(2 * 1.96 * 0.05, abs=0.03)  # normal approximation
    assert bootstrap_ci(values, reps=500, seed=3) == bootstrap_ci(values, reps=500, seed=3)


@pytest.mark.skipif(not WEIGHTS.exists(), reason="v1 weights not trained yet")
def test_cached_features_and_vectors_equal_the_fresh_ones(
        lifted: dict[str, dict[str, dict]], tmp_path: Path) -> None:
    """Reanalysis reads packed graphs and cached vectors from the blob store: they must be
    what featurising and embedding the JSON lift gives, bit for bit."""
    import gzip
    import json

    from activities.embed import lift_vectors, packed_lift
    from festive.engine import load_engine
    from festive.v1.graph import to_graph
    from festive.v1.packed import PACK_VERSION, considered_functions
    from store.blobs import open_blobs

    lift = lifted["O2"]["__lift__"]
    blobs = open_blobs(str(tmp_path / "blobs"), tmp_path / "scratch")
    lift_sha = blobs.put_bytes(gzip.compress(json.dumps(lift).encode()))
    assert blobs.get_derived(PACK_VERSION, lift_sha) is None

    fresh_sha, fresh = packed_lift(blobs, lift_sha)  # featurised from the JSON now
    cached_sha, cached = packed_lift(blobs, lift_sha)  # read back from the store
    assert cached_sha == fresh_sha == blobs.get_derived(PACK_VERSION, lift_sha)
    direct = [to_graph(f) for f in considered_functions(lift)]
    assert len(cached.graphs) == len(direct) >= 4
    assert cached.addrs == [f["addr"] for f in considered_functions(lift)]
    for a, b in zip(cached.graphs, direct, strict=True):
        assert a.n_blocks == b.n_blocks
        for key in ("tok", "tok_w", "tok_block", "edges", "ftok", "ftok_w"):
            assert getattr(a, key).dtype == getattr(b, key).dtype
            assert np.array_equal(getattr(a, key), getattr(b, key)), key

    engine = load_engine()
    first = lift_vectors(blobs, engine, fresh_sha, fresh)  # embedded, then stored
    again = lift_vectors(blobs, engine, cached_sha, cached)  # from the store
    assert np.array_equal(first, again)
    assert np.array_equal(first, engine.embed_packed(cached))  # cached graphs embed the same
    assert np.array_equal(first, engine.model.embed(considered_functions(lift)))

    child = {"sha256": lift_sha, "name": "sample-O2.so", "lift": lift}
    assert engine.attribute([child]) == engine.attribute_packed([(child, cached, again)])[0]


@pytest.mark.skipif(not WEIGHTS.exists(), reason="v1 weights not trained yet")
def test_bfloat16_embeds_unit_vectors_next_to_float32(
        lifted: dict[str, dict[str, dict]]) -> None:
    """AE_EMBED_PRECISION=bfloat16: the matrix work in bfloat16, the vectors still unit
    length in float32 (bfloat16's own normalisation was off by up to 0.4%) and within a
    hair of float32's; an O0 function still finds its O2 twin first."""
    from festive.v1.embed import Embedder

    names = [n for n in NAMES if n in lifted["O0"] and n in lifted["O2"]]
    full = Embedder(WEIGHTS, device="cpu")
    half = Embedder(WEIGHTS, device="cpu", precision="bfloat16")
    q32 = full.embed([lifted["O0"][n] for n in names])
    q16 = half.embed([lifted["O0"][n] for n in names])
    assert q16.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(q16, axis=1), 1.0, atol=1e-5)
    assert not np.array_equal(q16, q32)  # bfloat16 did run
    assert float((q16 * q32).sum(axis=1).min()) > 0.999
    c16 = half.embed([lifted["O2"][n] for n in names])
    query = names.index("crc32_table_free")
    assert int(np.argmax((q16 @ c16.T)[query])) == query
    with pytest.raises(ValueError, match="precision"):
        Embedder(WEIGHTS, device="cpu", precision="float8")


@pytest.mark.skipif(not WEIGHTS.exists(), reason="v1 weights not trained yet")
def test_cached_vectors_are_kept_per_precision(
        lifted: dict[str, dict[str, dict]], tmp_path: Path) -> None:
    """A worker switched to bfloat16 embeds again rather than reading float32's vectors
    (and back): each precision's vectors are cached under their own name, and the
    results say which precision made them."""
    import gzip
    import json

    from activities.embed import lift_vectors, packed_lift
    from festive.engine import load_engine
    from store.blobs import open_blobs

    blobs = open_blobs(str(tmp_path / "blobs"), tmp_path / "scratch")
    lift = lifted["O2"]["__lift__"]
    packed_sha, packed = packed_lift(blobs, blobs.put_bytes(
        gzip.compress(json.dumps(lift).encode())))
    full, half = load_engine(), load_engine(precision="bfloat16")
    assert load_engine() is full and load_engine(precision="bfloat16") is half
    v32 = lift_vectors(blobs, full, packed_sha, packed)
    v16 = lift_vectors(blobs, half, packed_sha, packed)
    assert not np.array_equal(v16, v32)
    assert np.array_equal(v16, half.embed_packed(packed))
    assert np.array_equal(lift_vectors(blobs, full, packed_sha, packed), v32)
    assert np.array_equal(lift_vectors(blobs, half, packed_sha, packed), v16)
    child = {"sha256": "ab" * 32, "name": "sample-O2.so"}
    assert half.attribute_packed([(child, packed, v16)])[0]["precision"] == "bfloat16"
    assert full.attribute_packed([(child, packed, v32)])[0]["precision"] == "float32"
