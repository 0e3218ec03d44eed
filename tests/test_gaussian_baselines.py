from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp
from scipy import stats

from pertcausal._engines.gaussian_baselines import (
    GaussianBaseline,
    average_shift_prediction,
    fit_gaussian,
    gaussian_nll_per_cell,
    gaussian_nll_per_gene,
    mean_absolute_shift_error,
)


@pytest.fixture
def correlated():
    rng = np.random.default_rng(0)
    A = rng.normal(size=(4, 4))
    cov = A @ A.T + 0.5 * np.eye(4)
    X = rng.multivariate_normal([1.0, -2.0, 0.0, 3.0], cov, size=300)
    return X, rng.multivariate_normal([1.0, -2.0, 0.0, 3.0], cov, size=40)


def test_fit_full_without_shrinkage_is_the_mle(correlated):
    X, _ = correlated
    model = fit_gaussian(X, shrinkage=0.0)
    assert isinstance(model, GaussianBaseline) and model.kind == "full" and model.n_cells == 300
    np.testing.assert_allclose(model.mean, X.mean(0))
    np.testing.assert_allclose(model.covariance, np.cov(X, rowvar=False, ddof=0))
    np.testing.assert_allclose(model.variances, X.var(0))
    diag = fit_gaussian(X, covariance="diagonal")
    assert diag.kind == "diagonal" and diag.covariance is None and diag.shrinkage == 0.0
    np.testing.assert_allclose(diag.variances, X.var(0))


def test_nll_matches_scipy_full_and_diagonal(correlated):
    X, X_test = correlated
    model = fit_gaussian(X, shrinkage=0.0)
    ref = -stats.multivariate_normal(model.mean, model.covariance).logpdf(X_test) / 4
    np.testing.assert_allclose(gaussian_nll_per_cell(model, X_test), ref, rtol=1e-10)
    assert gaussian_nll_per_gene(model, X_test) == pytest.approx(ref.mean(), rel=1e-10)
    diag = fit_gaussian(X, covariance="diagonal")
    ref_diag = -stats.norm(diag.mean, np.sqrt(diag.variances)).logpdf(X_test).sum(1) / 4
    assert gaussian_nll_per_gene(diag, X_test) == pytest.approx(ref_diag.mean(), rel=1e-10)
    # on correlated data the full covariance fits the training cells better than the diagonal one
    assert gaussian_nll_per_gene(model, X) < gaussian_nll_per_gene(diag, X) - 0.05
    # sparse input is scored like dense
    assert gaussian_nll_per_gene(model, sp.csr_matrix(X_test)) == pytest.approx(ref.mean(), rel=1e-10)


def test_masked_nll_is_the_marginal_of_the_kept_genes(correlated):
    X, X_test = correlated
    model = fit_gaussian(X, shrinkage=0.1)
    targets = [[0], [], [1, 3], [0], [2, 1, 3]] * 8  # 40 cells, 4 distinct patterns
    by_hand = []
    for x, t in zip(X_test, targets):
        keep = [j for j in range(4) if j not in t]
        marginal = stats.multivariate_normal(model.mean[keep], model.covariance[np.ix_(keep, keep)])
        by_hand.append(-marginal.logpdf(x[keep]) / len(keep))
    per_cell = gaussian_nll_per_cell(model, X_test, masked=targets)
    np.testing.assert_allclose(per_cell, by_hand, rtol=1e-10)
    assert gaussian_nll_per_gene(model, X_test, masked=targets) == pytest.approx(np.mean(by_hand), rel=1e-10)
    mask = np.zeros(X_test.shape, dtype=bool)
    for i, t in enumerate(targets):
        mask[i, t] = True
    np.testing.assert_allclose(gaussian_nll_per_cell(model, X_test, masked=mask), by_hand, rtol=1e-10)
    # -1 padding (as in a targets table) is ignored
    padded = [list(t) + [-1] * (3 - len(t)) for t in targets]
    np.testing.assert_allclose(gaussian_nll_per_cell(model, X_test, masked=padded), by_hand, rtol=1e-10)
    # nothing masked is the unmasked likelihood
    none = np.zeros(X_test.shape, dtype=bool)
    assert gaussian_nll_per_gene(model, X_test, masked=none) == pytest.approx(gaussian_nll_per_gene(model, X_test))


def test_masked_nll_diagonal_drops_the_targeted_terms(correlated):
    X, X_test = correlated
    diag = fit_gaussian(X, covariance="diagonal")
    elem = -stats.norm(diag.mean, np.sqrt(diag.variances)).logpdf(X_test)
    targets = [[i % 4] for i in range(40)]
    expected = [np.delete(row, t).mean() for row, t in zip(elem, targets)]
    np.testing.assert_allclose(gaussian_nll_per_cell(diag, X_test, masked=targets), expected, rtol=1e-10)


def test_ledoit_wolf_matches_sklearn_and_handles_more_genes_than_cells():
    covariance_mod = pytest.importorskip("sklearn.covariance")
    rng = np.random.default_rng(1)
    X = rng.normal(size=(30, 80)) @ rng.normal(size=(80, 80)) * 0.2
    model = fit_gaussian(X)
    cov_ref, a_ref = covariance_mod.ledoit_wolf(X)
    assert model.shrinkage == pytest.approx(a_ref, rel=1e-10)
    np.testing.assert_allclose(model.covariance, cov_ref, rtol=1e-8, atol=1e-12)
    assert np.linalg.eigvalsh(model.covariance).min() > 0
    assert np.isfinite(gaussian_nll_per_gene(model, X))
    with pytest.raises(ValueError, match="not positive definite"):
        fit_gaussian(X, shrinkage=0.0)


def test_min_variance_floors_constant_genes():
    X = np.column_stack([np.arange(10.0), np.full(10, 2.0)])
    diag = fit_gaussian(X, covariance="diagonal", min_variance=1e-3)
    assert diag.variances[1] == pytest.approx(1e-3)
    full = fit_gaussian(X, shrinkage=0.0, min_variance=1e-3)
    assert full.covariance[1, 1] == pytest.approx(1e-3)


def test_nll_errors(correlated):
    X, X_test = correlated
    model = fit_gaussian(X)
    with pytest.raises(ValueError, match="fitted on 4"):
        gaussian_nll_per_gene(model, X_test[:, :3])
    with pytest.raises(ValueError, match="shape"):
        gaussian_nll_per_gene(model, X_test, masked=np.zeros((3, 4), dtype=bool))
    with pytest.raises(ValueError, match="one list of gene indices per row"):
        gaussian_nll_per_gene(model, X_test, masked=[[0]] * 3)
    with pytest.raises(ValueError, match="bool mask"):
        gaussian_nll_per_gene(model, X_test, masked=np.zeros(X_test.shape, dtype=int))
    with pytest.raises(ValueError, match="gene index 7"):
        gaussian_nll_per_gene(model, X_test, masked=[[7]] * 40)
    with pytest.raises(ValueError, match="leaves no gene"):
        gaussian_nll_per_gene(model, X_test, masked=[[0, 1, 2, 3]] + [[]] * 39)
    with pytest.raises(ValueError, match="unknown covariance"):
        fit_gaussian(X, covariance="banded")
    with pytest.raises(ValueError, match="shrinkage"):
        fit_gaussian(X, shrinkage=1.5)
    with pytest.raises(ValueError, match="NaN"):
        fit_gaussian(np.array([[0.0, np.nan], [1.0, 2.0]]))


def test_average_shift_prediction_and_error():
    control = np.array([1.0, 1.0, 1.0])
    train = np.array([[2.0, 1.0, 0.0], [4.0, 1.0, 1.0]])  # shifts (1, 0, -1) and (3, 0, 0)
    pred = average_shift_prediction(train, control)
    np.testing.assert_allclose(pred, [3.0, 1.0, 0.5])
    observed = np.array([3.0, 2.0, -5.0])  # shift errors |2-2|, |0-1|, |-0.5+6| = 0, 1, 5.5
    assert mean_absolute_shift_error(pred, observed, control) == pytest.approx(6.5 / 3)
    assert mean_absolute_shift_error(pred, observed, control, exclude=[2]) == pytest.approx(0.5)
    assert mean_absolute_shift_error(pred, observed, control, exclude=np.array([False, False, True])) == 0.5
    # several regimes at once, each with its own excluded targets
    both = mean_absolute_shift_error(np.vstack([pred, pred]), np.vstack([observed, pred]), control, exclude=[[2], []])
    np.testing.assert_allclose(both, [0.5, 0.0])
    with pytest.raises(ValueError, match="control_mean"):
        average_shift_prediction(train, np.ones(2))
    with pytest.raises(ValueError, match="same shape"):
        mean_absolute_shift_error(pred, observed[:2], control)
    with pytest.raises(ValueError, match="no gene"):
        mean_absolute_shift_error(pred, observed, control, exclude=[0, 1, 2])


def test_masked_nll_many_patterns_across_bytes():
    rng = np.random.default_rng(3)
    X = rng.normal(size=(200, 12)) @ rng.normal(size=(12, 12))
    model = fit_gaussian(X)
    X_test = X[:60]
    mask = rng.random(X_test.shape) < 0.3
    mask[:, 0] = False  # at least one kept gene per cell
    mask[30:] = mask[:30]  # repeated patterns share a factorisation
    expected = []
    for x, m in zip(X_test, mask):
        keep = np.flatnonzero(~m)
        marginal = stats.multivariate_normal(model.mean[keep], model.covariance[np.ix_(keep, keep)])
        expected.append(-marginal.logpdf(x[keep]) / keep.size)
    np.testing.assert_allclose(gaussian_nll_per_cell(model, X_test, masked=mask), expected, rtol=1e-9)
