"""data.simulate_sparse_shift: a screen whose perturbations shift a few latent variables, with the truth stored."""

from __future__ import annotations

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

from pertcausal.data._sparse_shift import simulate_sparse_shift

SMALL = {
    "n_perturbations": 12,
    "n_cells_per_perturbation": 300,
    "n_control_cells": 400,
    "n_latent": 6,
    "n_genes": 40,
    "n_hidden": 12,
}


@pytest.fixture(scope="module")
def adata():
    return simulate_sparse_shift(**SMALL, random_state=0)


def test_shape_obs_var_and_counts(adata):
    n = 400 + 12 * 300
    assert adata.shape == (n, 40)
    assert list(adata.var_names[:3]) == ["gene0", "gene1", "gene2"]
    assert adata.obs_names.is_unique
    assert list(adata.obs.columns) == ["perturbation", "n_counts"]
    pert = adata.obs["perturbation"]
    assert isinstance(pert.dtype, pd.CategoricalDtype)
    assert list(pert.cat.categories) == ["control"] + [f"P{i:02d}" for i in range(12)]
    counts = pert.value_counts()
    assert counts["control"] == 400 and (counts.drop("control") == 300).all()
    # cells grouped by regime: controls first, then perturbation by perturbation
    assert (pert.cat.codes.to_numpy() == np.repeat(np.arange(13), [400] + [300] * 12)).all()

    assert sp.isspmatrix_csr(adata.X) or isinstance(adata.X, sp.csr_array)
    assert adata.X.dtype == np.float32
    X = adata.X.toarray()
    assert (X >= 0).all() and np.array_equal(X, np.round(X))
    np.testing.assert_array_equal(adata.obs["n_counts"].to_numpy(), X.sum(axis=1))
    assert adata.obsm["X_true_latent"].shape == (n, 6)
    assert adata.obsm["X_true_latent"].dtype == np.float64


def test_library_size_mean_and_cv(adata):
    # totals are Poisson around a log-normal library: mean 5000, CV about sqrt(0.3^2 + 1/5000)
    totals = adata.obs["n_counts"].to_numpy(np.float64)
    assert totals.mean() == pytest.approx(5000, rel=0.03)
    assert totals.std() / totals.mean() == pytest.approx(np.sqrt(0.09 + 1 / 5000), rel=0.1)
    fixed = simulate_sparse_shift(**SMALL, library_cv=0.0, library_size=2000.0, random_state=0)
    totals = fixed.obs["n_counts"].to_numpy(np.float64)
    # a fixed library: only Poisson noise, sd about sqrt(2000)
    assert totals.mean() == pytest.approx(2000, rel=0.01)
    assert totals.std() == pytest.approx(np.sqrt(2000), rel=0.15)


def test_truth_targets_and_shifts(adata):
    truth = adata.uns["sparse_shift_truth"]
    assert list(truth["perturbations"]) == [f"P{i:02d}" for i in range(12)]
    assert truth["control"] == "control" and truth["perturbation_key"] == "perturbation"
    targets, shift = truth["targets"], truth["shift"]
    assert targets.dtype == bool and targets.shape == (12, 6)
    assert shift.shape == (12, 6)
    np.testing.assert_array_equal(shift != 0, targets)  # nonzero exactly on the targets
    assert targets.sum(axis=1).min() >= 1 and targets.sum(axis=1).max() <= 3
    # magnitudes N(5, 0.5): all within 5 sd, both signs present
    on = np.abs(shift[targets])
    assert on.min() > 2.5 and on.max() < 7.5
    assert (shift > 0).any() and (shift < 0).any()


def test_latent_means_follow_the_shifts(adata):
    z = adata.obsm["X_true_latent"]
    pert = adata.obs["perturbation"].astype(str).to_numpy()
    ctrl = z[pert == "control"]
    np.testing.assert_allclose(ctrl.mean(axis=0), 0.0, atol=0.2)  # se 1 / sqrt(400) = 0.05
    np.testing.assert_allclose(ctrl.std(axis=0), 1.0, atol=0.1)
    truth = adata.uns["sparse_shift_truth"]
    for name, row in zip(truth["perturbations"], truth["shift"]):
        cells = z[pert == name]
        np.testing.assert_allclose(cells.mean(axis=0), row, atol=0.25)  # se 1 / sqrt(300) = 0.06
        np.testing.assert_allclose(cells.std(axis=0), 1.0, atol=0.12)


def test_expression_responds_to_the_perturbation(adata):
    # the decoder is injective: a perturbation changes the mean proportions far beyond sampling noise
    X = adata.X.toarray()
    prop = X / X.sum(axis=1, keepdims=True)
    pert = adata.obs["perturbation"].astype(str).to_numpy()
    ctrl = prop[pert == "control"]
    half = ctrl[:200].mean(axis=0) - ctrl[200:].mean(axis=0)
    for name in ("P00", "P05"):
        diff = prop[pert == name].mean(axis=0) - ctrl.mean(axis=0)
        assert np.abs(diff).sum() > 5 * np.abs(half).sum()


def test_reproducible_and_seed_dependent(adata):
    again = simulate_sparse_shift(**SMALL, random_state=0)
    assert (again.X != adata.X).nnz == 0
    np.testing.assert_array_equal(again.obsm["X_true_latent"], adata.obsm["X_true_latent"])
    np.testing.assert_array_equal(again.uns["sparse_shift_truth"]["shift"], adata.uns["sparse_shift_truth"]["shift"])
    other = simulate_sparse_shift(**SMALL, random_state=1)
    assert (other.X != adata.X).nnz > 0
    assert not np.array_equal(other.uns["sparse_shift_truth"]["targets"], adata.uns["sparse_shift_truth"]["targets"])


def test_targets_drawn_without_replacement_and_range():
    a = simulate_sparse_shift(
        n_perturbations=200, n_cells_per_perturbation=2, n_latent=4, n_genes=8, n_hidden=6, n_targets=(3, 3)
    )
    targets = a.uns["sparse_shift_truth"]["targets"]
    assert (targets.sum(axis=1) == 3).all()  # exactly 3 distinct latents each time
    b = simulate_sparse_shift(
        n_perturbations=300, n_cells_per_perturbation=2, n_latent=5, n_genes=8, n_hidden=6, n_targets=(1, 3)
    )
    k = b.uns["sparse_shift_truth"]["targets"].sum(axis=1)
    assert set(np.unique(k)) == {1, 2, 3}
    assert all(abs((k == v).mean() - 1 / 3) < 0.1 for v in (1, 2, 3))
    assert b.n_obs == 2 + 300 * 2  # n_control_cells defaults to n_cells_per_perturbation


def test_custom_keys_and_params():
    a = simulate_sparse_shift(
        n_perturbations=3,
        n_cells_per_perturbation=5,
        n_latent=2,
        n_genes=6,
        n_hidden=4,
        n_targets=(1, 2),
        perturbation_key="guide",
        control="NT",
        random_state=3,
    )
    assert list(a.obs["guide"].cat.categories) == ["NT", "P0", "P1", "P2"]
    assert a.uns["sparse_shift_truth"]["control"] == "NT"
    assert a.uns["sparse_shift_truth"]["perturbation_key"] == "guide"
    params = a.uns["simulation_params"]
    assert params["n_control_cells"] == 5 and params["random_state"] == 3 and params["n_hidden"] == 4
    assert list(params["n_targets"]) == [1, 2]


def test_h5ad_round_trip(adata, tmp_path):
    path = tmp_path / "sim.h5ad"
    adata.write_h5ad(path)
    back = ad.read_h5ad(path)
    assert (back.X != adata.X).nnz == 0
    assert back.X.dtype == np.float32
    assert list(back.obs["perturbation"].cat.categories) == list(adata.obs["perturbation"].cat.categories)
    np.testing.assert_array_equal(back.obs["n_counts"], adata.obs["n_counts"])
    np.testing.assert_array_equal(back.obsm["X_true_latent"], adata.obsm["X_true_latent"])
    truth, t0 = back.uns["sparse_shift_truth"], adata.uns["sparse_shift_truth"]
    assert [str(p) for p in truth["perturbations"]] == list(t0["perturbations"])
    np.testing.assert_array_equal(truth["targets"], t0["targets"])
    assert truth["targets"].dtype == bool
    np.testing.assert_array_equal(truth["shift"], t0["shift"])
    assert truth["control"] == "control" and truth["perturbation_key"] == "perturbation"
    params = back.uns["simulation_params"]
    for k, v in adata.uns["simulation_params"].items():
        np.testing.assert_array_equal(params[k], v)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"n_perturbations": 0}, "n_perturbations"),
        ({"n_cells_per_perturbation": 2.5}, "n_cells_per_perturbation"),
        ({"n_control_cells": 0}, "n_control_cells"),
        ({"n_latent": 50}, r"n_latent <= n_hidden <= n_genes.*n_latent=50"),
        ({"n_genes": 20}, r"n_hidden=40, n_genes=20"),
        ({"n_latent": 10, "n_hidden": 5}, "n_hidden=5"),
        ({"n_targets": (0, 2)}, r"n_targets\[0\]"),
        ({"n_targets": (3, 2)}, r"1 <= lo <= hi <= n_latent.*\(3, 2\)"),
        ({"n_targets": (1, 31)}, r"n_latent \(30\)"),
        ({"n_targets": 2}, "pair"),
        ({"shift_sd": -1.0}, "shift_sd"),
        ({"shift_mean": np.nan}, "shift_mean"),
        ({"library_size": 0}, "library_size"),
        ({"library_cv": -0.1}, "library_cv"),
        ({"control": "P00"}, "control 'P00' clashes"),
        ({"perturbation_key": "n_counts"}, "perturbation_key 'n_counts'"),
        ({"random_state": -1}, "random_state"),
    ],
)
def test_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        simulate_sparse_shift(**kwargs)
