"""_engines.latent_metrics: MCC with Hungarian matching, target precision/recall/F1, top-k targets."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats

from pertcausal._engines.latent_metrics import (
    correlation_matrix,
    mean_correlation_coefficient,
    target_identification,
    top_k_targets,
)


@pytest.fixture(scope="module")
def z():
    return np.random.default_rng(0).standard_normal((2000, 5))


# ---------------------------------------------------------------------------------------------
# mean_correlation_coefficient
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("method", ["pearson", "spearman"])
def test_mcc_permuted_sign_flipped_scaled_copy_is_one(z, method):
    perm = np.array([3, 0, 4, 1, 2])
    learned = z[:, perm] * np.array([-2.0, 0.5, 3.0, -1.0, 10.0]) + 7.0
    mcc, assignment = mean_correlation_coefficient(learned, z, method=method)
    assert mcc == pytest.approx(1.0)
    assert assignment.dtype.kind == "i" and assignment.shape == (5, 2)
    np.testing.assert_array_equal(assignment[:, 0], np.arange(5))
    np.testing.assert_array_equal(assignment[:, 1], perm)  # learned i is true perm[i]


def test_mcc_spearman_invariant_to_monotone_maps_pearson_not(z):
    learned = np.column_stack([np.exp(z[:, 1]), z[:, 0] ** 3, -np.tanh(z[:, 2]), z[:, 4], z[:, 3]])
    mcc_s, asg = mean_correlation_coefficient(learned, z, method="spearman")
    assert mcc_s == pytest.approx(1.0)
    np.testing.assert_array_equal(asg[:, 1], [1, 0, 2, 4, 3])
    mcc_p, _ = mean_correlation_coefficient(learned, z, method="pearson")
    assert 0.7 < mcc_p < 0.99


def test_mcc_matches_a_direct_computation(z):
    rng = np.random.default_rng(1)
    learned = z @ rng.standard_normal((5, 5)) + rng.standard_normal((2000, 5))
    corr = np.abs(np.corrcoef(learned, z, rowvar=False)[:5, 5:])
    np.testing.assert_allclose(np.abs(correlation_matrix(learned, z)), corr, atol=1e-12)
    spear = np.abs(stats.spearmanr(learned, z)[0][:5, 5:])
    np.testing.assert_allclose(np.abs(correlation_matrix(learned, z, method="spearman")), spear, atol=1e-12)
    mcc, asg = mean_correlation_coefficient(learned, z)
    assert mcc == pytest.approx(corr[asg[:, 0], asg[:, 1]].mean())
    # the matching is optimal: no permutation of the 5 true latents does better
    from itertools import permutations

    best = max(corr[np.arange(5), list(p)].sum() for p in permutations(range(5)))
    assert corr[asg[:, 0], asg[:, 1]].sum() == pytest.approx(best)


def test_mcc_of_independent_noise_is_small(z):
    noise = np.random.default_rng(2).standard_normal((2000, 5))
    mcc, _ = mean_correlation_coefficient(noise, z)
    assert mcc < 0.08  # |corr| of independent columns is about 1 / sqrt(2000) = 0.022


def test_mcc_rectangular_and_constant_columns(z):
    # more learned latents than true: the extra (constant and noise) ones stay unmatched
    learned = np.column_stack([np.ones(2000), z[:, 2], np.random.default_rng(3).standard_normal(2000), -z[:, 0]])
    mcc, asg = mean_correlation_coefficient(learned, z[:, :3])
    assert asg.shape == (3, 2)
    pairs = {tuple(r) for r in asg.tolist()}
    assert {(1, 2), (3, 0)} <= pairs
    assert np.isfinite(mcc)
    assert np.isfinite(correlation_matrix(learned, z)).all()
    assert (correlation_matrix(learned, z)[0] == 0).all()  # a constant column correlates 0, not NaN
    # fewer learned latents than true: one pair per learned latent
    mcc, asg = mean_correlation_coefficient(z[:, [4, 1]], z)
    assert mcc == pytest.approx(1.0)
    assert asg.tolist() == [[0, 4], [1, 1]]
    # a constant true column matched to anything gives 0
    mcc, _ = mean_correlation_coefficient(z[:, :1], np.ones((2000, 1)))
    assert mcc == 0.0


def test_mcc_errors(z):
    with pytest.raises(ValueError, match=r"same samples.*2000 and 10 rows"):
        mean_correlation_coefficient(z, z[:10])
    with pytest.raises(ValueError, match=r"z_learned must be 2-D.*\(2000,\)"):
        mean_correlation_coefficient(z[:, 0], z)
    bad = z.copy()
    bad[5, 1] = np.nan
    with pytest.raises(ValueError, match="z_true holds 1 NaN"):
        mean_correlation_coefficient(z, bad)
    with pytest.raises(ValueError, match="unknown method 'kendall'"):
        mean_correlation_coefficient(z, z, method="kendall")
    with pytest.raises(ValueError, match="at least 2 samples"):
        mean_correlation_coefficient(z[:1], z[:1])
    with pytest.raises(ValueError, match="no columns"):
        mean_correlation_coefficient(z[:, :0], z)


# ---------------------------------------------------------------------------------------------
# target_identification
# ---------------------------------------------------------------------------------------------
def test_target_identification_hand_example():
    # 3 perturbations; 4 learned latents, 3 true ones; learned 0 <-> true 2, learned 2 <-> true 0,
    # learned 3 <-> true 1; learned 1 unmatched
    truth = np.array(
        [
            [True, False, False],
            [False, True, True],
            [False, False, True],
        ]
    )
    predicted = np.array(
        [
            [False, True, True, False],  # learned 2 = true 0: TP; learned 1 unmatched: FP
            [True, False, False, True],  # learned 0 = true 2: TP; learned 3 = true 1: TP
            [False, False, True, False],  # learned 2 = true 0: FP; true 2 (learned 0) missed: FN
        ]
    )
    assignment = np.array([[0, 2], [2, 0], [3, 1]])
    res = target_identification(predicted, truth, assignment)
    assert (res["n_true_positive"], res["n_false_positive"], res["n_false_negative"]) == (3, 2, 1)
    assert res["precision"] == pytest.approx(3 / 5)
    assert res["recall"] == pytest.approx(3 / 4)
    assert res["f1"] == pytest.approx(2 * 0.6 * 0.75 / 1.35)

    # drop the pair (learned 3, true 1): learned 3's prediction becomes a FP, true 1's target a FN
    res = target_identification(predicted, truth, assignment[:2])
    assert (res["n_true_positive"], res["n_false_positive"], res["n_false_negative"]) == (2, 3, 2)
    assert res["precision"] == pytest.approx(0.4) and res["recall"] == pytest.approx(0.5)
    assert res["f1"] == pytest.approx(2 * 0.4 * 0.5 / 0.9)
    # 0/1 integers are accepted, and a list of pairs
    res2 = target_identification(predicted.astype(int), truth.astype(int), assignment[:2].tolist())
    assert res2 == res


def test_target_identification_perfect_with_permutation():
    rng = np.random.default_rng(4)
    truth = rng.random((20, 6)) < 0.3
    perm = rng.permutation(6)
    predicted = truth[:, perm]  # learned i is true perm[i]
    res = target_identification(predicted, truth, np.column_stack([np.arange(6), perm]))
    assert res["precision"] == res["recall"] == res["f1"] == 1.0
    assert res["n_true_positive"] == truth.sum() and res["n_false_positive"] == res["n_false_negative"] == 0


def test_target_identification_empty_denominators_are_zero():
    none = np.zeros((3, 2), dtype=bool)
    asg = np.array([[0, 0], [1, 1]])
    res = target_identification(none, none, asg)
    assert res == {
        "precision": 0.0,
        "recall": 0.0,
        "f1": 0.0,
        "n_true_positive": 0,
        "n_false_positive": 0,
        "n_false_negative": 0,
    }
    res = target_identification(none, np.ones((3, 2), dtype=bool), asg)
    assert res["precision"] == 0.0 and res["recall"] == 0.0 and res["n_false_negative"] == 6
    # an empty matching: everything predicted is FP, everything true is FN
    res = target_identification(np.ones((3, 2), bool), np.ones((3, 2), bool), np.zeros((0, 2), dtype=int))
    assert (res["n_true_positive"], res["n_false_positive"], res["n_false_negative"]) == (0, 6, 6)


def test_target_identification_errors():
    t = np.zeros((3, 2), dtype=bool)
    asg = np.array([[0, 0], [1, 1]])
    with pytest.raises(ValueError, match=r"one row per perturbation.*3 and 4 rows"):
        target_identification(t, np.zeros((4, 2), bool), asg)
    with pytest.raises(ValueError, match="threshold probabilities"):
        target_identification(np.full((3, 2), 0.7), t, asg)
    with pytest.raises(ValueError, match=r"must lie in \[0, 2\)"):
        target_identification(t, t, np.array([[0, 0], [2, 1]]))
    with pytest.raises(ValueError, match="repeats an index"):
        target_identification(t, t, np.array([[0, 1], [1, 1]]))
    with pytest.raises(ValueError, match=r"\(m, 2\)"):
        target_identification(t, t, np.array([0, 1]))
    with pytest.raises(ValueError, match="2-D"):
        target_identification(t[0], t, asg)


# ---------------------------------------------------------------------------------------------
# top_k_targets
# ---------------------------------------------------------------------------------------------
def test_top_k_targets():
    shift = np.array([[0.1, -3.0, 2.0, 0.0], [1.0, 0.0, 0.5, -0.2], [0.0, 0.0, 0.0, 0.0]])
    np.testing.assert_array_equal(
        top_k_targets(shift, 2),
        [[False, True, True, False], [True, False, True, False], [True, True, False, False]],  # ties: lower index
    )
    np.testing.assert_array_equal(top_k_targets(shift, [1, 0, 4]).sum(axis=1), [1, 0, 4])
    assert top_k_targets(shift, [1, 0, 4])[0].tolist() == [False, True, False, False]
    assert top_k_targets(shift, np.int64(1)).dtype == bool


def test_top_k_targets_recovers_planted_targets_through_the_matching():
    rng = np.random.default_rng(5)
    truth = np.zeros((30, 5), dtype=bool)
    k = rng.integers(1, 4, size=30)
    for i in range(30):
        truth[i, rng.choice(5, k[i], replace=False)] = True
    shift = np.where(truth, rng.choice([-5.0, 5.0], truth.shape), 0.0) + rng.normal(0, 0.3, truth.shape)
    perm = np.array([2, 4, 0, 1, 3])
    predicted = top_k_targets(shift[:, perm], k)
    res = target_identification(predicted, truth, np.column_stack([np.arange(5), perm]))
    assert res["f1"] == 1.0


def test_top_k_targets_errors():
    s = np.zeros((3, 4))
    with pytest.raises(ValueError, match=r"k must lie in \[0, 4\]"):
        top_k_targets(s, 5)
    with pytest.raises(ValueError, match=r"one value per row of shift \(3\)"):
        top_k_targets(s, [1, 2])
    with pytest.raises(ValueError, match="integer"):
        top_k_targets(s, 1.5)
    with pytest.raises(ValueError, match="2-D"):
        top_k_targets(s[0], 1)
    with pytest.raises(ValueError, match="NaN"):
        top_k_targets(np.full((2, 2), np.nan), 1)
