"""The per-family verdict and its calibration on hand-made arrays (no model, no angr).

What each rule promises: one sample function supports one family (within the margin),
a reference function is claimed once (one-to-one), shared code weighs less (rarity),
and the family probability grows with the evidence instead of being one number.
"""

from __future__ import annotations

import numpy as np
import pytest

from festive.attribution.calibrate import Rows, calibrate, held_out_rows
from festive.attribution.verdict import ReferenceView, VerdictParams, decide, evidence

# p(match) = sigmoid(40 * (similarity - 0.8)) in every size bucket
PARAMS = VerdictParams(match_curves=[[-32.0, 40.0]] * 5,
                       family_weights=[-4.0, 1.5, 0.0, 0.0], top_k=4)


def view(n_rows: int, families: list[int], identities: list[int] | None = None,
         rarity: list[float] | None = None) -> ReferenceView:
    return ReferenceView(np.asarray(families), np.asarray(identities or range(n_rows)),
                         np.asarray(rarity or [1.0] * n_rows, np.float32), 3)


def test_one_reference_function_is_claimed_once() -> None:
    # five sample functions (fragments or copies) all closest to reference row 0
    sims = np.array([[0.99], [0.97], [0.96], [0.95], [0.94]], np.float32)
    rows = np.zeros((5, 1), np.int64)
    got = evidence(sims, rows, np.full(5, 10), view(1, [0]), PARAMS)
    assert [m.query for m in got[0]] == [0]


def test_a_function_supports_its_best_family_only() -> None:
    sims = np.array([[0.97, 0.90]], np.float32)  # family 1 best, family 0 0.07 below
    rows = np.array([[1, 0]], np.int64)
    got = evidence(sims, rows, np.array([10]), view(2, [0, 1]), PARAMS)
    assert set(got) == {1}
    sims = np.array([[0.97, 0.96]], np.float32)  # within the margin: shared code, both
    got = evidence(sims, rows, np.array([10]), view(2, [0, 1]), PARAMS)
    assert set(got) == {0, 1}


def test_shared_code_weighs_less() -> None:
    sims = np.array([[0.99], [0.99]], np.float32)
    rows = np.array([[0], [1]], np.int64)
    got = evidence(sims, rows, np.array([10, 10]), view(2, [0, 0], rarity=[1.0, 0.5]), PARAMS)
    weights = sorted(m.weight for m in got[0])
    assert weights[0] == pytest.approx(weights[1] / 2, rel=1e-3)


def test_weak_similarities_are_not_evidence() -> None:
    sims = np.array([[0.70], [0.75]], np.float32)  # p < 0.5 under PARAMS
    rows = np.array([[0], [1]], np.int64)
    assert evidence(sims, rows, np.array([10, 10]), view(2, [0, 0]), PARAMS) == {}
    assert decide(np.zeros((0, 4), np.float32), np.zeros((0, 4), np.int64),
                  np.zeros(0, np.int64), view(1, [0]), PARAMS) == []


def test_probability_grows_with_evidence() -> None:
    probs = []
    for n in (1, 3, 8):
        sims = np.full((n, 1), 0.95, np.float32)
        rows = np.arange(n, dtype=np.int64)[:, None]
        decided = decide(sims, rows, np.full(n, 10), view(n, [0] * n), PARAMS)
        probs.append(decided[0].probability)
    assert probs[0] < probs[1] < probs[2]


def synthetic_rows(seed: int = 0) -> Rows:
    """3 families x 2 versions x 2 configs; a function's builds are noisy copies of one
    vector, and families 0 and 1 share their function 0 (vendored code)."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((3, 40, 32))
    centres[1, 0] = centres[0, 0]
    vecs, fam, build, names, blocks = [], [], [], [], []
    versions, configs, build_family = [], [], []
    for f in range(3):
        for v in ("1.0", "2.0"):
            for c in ("gcc-x86_64-O2", "clang-x86_64-O2"):
                b = len(build_family)
                build_family.append(f)
                versions.append(v)
                configs.append(c)
                for i in range(40):
                    x = centres[f, i] + 0.25 * rng.standard_normal(32)
                    vecs.append(x / np.linalg.norm(x))
                    fam.append(f)
                    build.append(b)
                    names.append(f"fn{i}")
                    blocks.append(int(rng.integers(5, 80)))
    return Rows(np.asarray(vecs, np.float32), np.asarray(fam), np.asarray(build), names,
                np.asarray(blocks), ["a", "b", "c"], versions, configs, build_family)


def test_held_out_build_hides_its_version_and_configuration() -> None:
    rows = synthetic_rows()
    hidden = held_out_rows(rows, 0)  # family 0, version 1.0, gcc
    visible_builds = set(np.unique(rows.build[~hidden & (rows.family == 0)]).tolist())
    assert visible_builds == {3}  # version 2.0 built by clang
    assert not hidden[rows.family != 0].any()


def test_calibration_separates_present_from_absent() -> None:
    rows = synthetic_rows()
    params, rarity, report = calibrate(rows, seed=0, device="cpu", log=lambda _m: None)
    assert len(params.match_curves) == 5 and params.trials > 0
    assert 0.5 <= params.present < 1.0
    # the vendored function is shared by families 0 and 1: it weighs half
    shared = (rows.family < 2) & (np.asarray(rows.name) == "fn0")
    assert np.allclose(rarity[shared], 0.5) and np.allclose(rarity[~shared], 1.0)
    held_out = report["cross_validated"]
    assert all(r["recall"] >= 0.9 and r["precision"] >= 0.9 for r in held_out), held_out
