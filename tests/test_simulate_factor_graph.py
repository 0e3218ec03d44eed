from __future__ import annotations

import anndata as ad
import numpy as np
import pytest
import scipy.sparse as sp

from pertcausal._engines.graph_metrics import is_acyclic, topological_order
from pertcausal.data._factor_graph import simulate_factor_graph

SMALL = {"n_genes": 30, "n_modules": 4, "n_regimes": 12, "n_cells_per_regime": 40}


def _descendants(adj: np.ndarray) -> np.ndarray:
    """reach[i, j]: a directed path i -> ... -> j of length >= 1 (transitive closure)."""
    reach = adj.astype(bool)
    while True:
        new = reach | ((reach.astype(int) @ reach.astype(int)) > 0)
        if (new == reach).all():
            return reach
        reach = new


def _regime_cells(adata: ad.AnnData, label: str) -> np.ndarray:
    return np.asarray(adata.X[(adata.obs["perturbation"] == label).to_numpy()], dtype=np.float64)


def _total_effects(truth: dict) -> np.ndarray:
    """(I - B)^-1 of the linear SEM x = x B + e, B = gene_to_module @ module_to_gene weights."""
    B = truth["weights"]["gene_to_module"] @ truth["weights"]["module_to_gene"]
    return np.linalg.inv(np.eye(B.shape[0]) - B)


@pytest.mark.parametrize("mechanism", ["linear", "nonlinear"])
def test_factor_structure_is_an_acyclic_graph_in_the_stored_order(mechanism):
    adata = simulate_factor_graph(**SMALL, mechanism=mechanism, random_state=1)
    truth = adata.uns["factor_graph_truth"]
    g2m, m2g, order = truth["gene_to_module"], truth["module_to_gene"], truth["order"]
    assert g2m.shape == (30, 4) and m2g.shape == (4, 30) and g2m.dtype == bool
    graph = adata.varp["true_graph"]
    assert sp.issparse(graph) and graph.dtype == np.float32
    dense = graph.toarray()
    assert set(np.unique(dense)) <= {0.0, 1.0}
    np.testing.assert_array_equal(dense > 0, (g2m.astype(int) @ m2g.astype(int)) > 0)
    assert np.trace(dense) == 0 and dense.sum() > 0
    assert sorted(order.tolist()) == list(range(30))
    position = np.empty(30, dtype=int)
    position[order] = np.arange(30)
    parents, children = np.nonzero(dense)
    assert (position[parents] < position[children]).all()  # every edge goes forward in the order
    cut = truth["module_position"]
    assert (g2m <= (position[:, None] < cut[None, :])).all()  # a module reads genes before it ...
    assert (m2g <= (position[None, :] >= cut[:, None])).all()  # ... and writes genes after it
    assert g2m.any(axis=0).all() and m2g.any(axis=1).all()
    assert is_acyclic(graph) and topological_order(graph) is not None
    assert truth["mechanism"] == mechanism
    # genes without a module parent are N(0, 1) roots, the others have noise_sd noise
    np.testing.assert_allclose(truth["noise_scale"], np.where(m2g.any(axis=0), 0.5, 1.0))


def test_regime_labels_targets_and_layout():
    adata = simulate_factor_graph(**SMALL, n_control_cells=25, random_state=2)
    assert adata.shape == (25 + 12 * 40, 30)
    assert adata.X.dtype == np.float32 and isinstance(adata.X, np.ndarray)
    labels = adata.obs["perturbation"]
    assert labels.dtype == "category" and (labels[:25] == "control").all()
    truth = adata.uns["factor_graph_truth"]
    assert len(truth["regimes"]) == 12 and len(set(truth["regimes"])) == 12
    assert truth["targets"].shape == (12, 3)
    for label, row in zip(truth["regimes"], truth["targets"]):
        t = row[row >= 0]
        assert 1 <= t.size <= 3 and np.unique(t).size == t.size
        assert label == "+".join(f"gene{g}" for g in t)
        cells = (labels == label).to_numpy()
        assert cells.sum() == 40
        assert (adata.obs["n_targets"][cells] == t.size).all()
    assert (adata.obs["n_targets"][:25] == 0).all()
    custom = simulate_factor_graph(
        n_genes=6, n_modules=2, n_regimes=3, n_cells_per_regime=2, n_targets=2, separator="|", control="NT"
    )
    assert set(custom.obs["perturbation"].cat.categories) >= {"NT"}
    assert all(label.count("|") == 1 for label in custom.uns["factor_graph_truth"]["regimes"])


def test_deterministic_and_graph_independent_of_the_intervention_type():
    a = simulate_factor_graph(**SMALL, random_state=5)
    b = simulate_factor_graph(**SMALL, random_state=5)
    np.testing.assert_array_equal(a.X, b.X)
    np.testing.assert_array_equal(a.obs["perturbation"], b.obs["perturbation"])
    c = simulate_factor_graph(**SMALL, random_state=6)
    assert not np.array_equal(a.X, c.X)
    k = simulate_factor_graph(**SMALL, intervention="knockout", random_state=5)
    assert (a.varp["true_graph"] != k.varp["true_graph"]).nnz == 0
    np.testing.assert_array_equal(a.uns["factor_graph_truth"]["targets"], k.uns["factor_graph_truth"]["targets"])


def test_survives_h5ad_round_trip(tmp_path):
    for mechanism in ("linear", "nonlinear"):
        adata = simulate_factor_graph(**SMALL, mechanism=mechanism, random_state=3)
        path = tmp_path / f"{mechanism}.h5ad"
        adata.write_h5ad(path)
        back = ad.read_h5ad(path)
        np.testing.assert_array_equal(back.X, adata.X)
        np.testing.assert_array_equal(back.obs["perturbation"], adata.obs["perturbation"])
        assert (back.varp["true_graph"] != adata.varp["true_graph"]).nnz == 0
        t0, t1 = adata.uns["factor_graph_truth"], back.uns["factor_graph_truth"]
        for key in ("gene_to_module", "module_to_gene", "order", "targets", "noise_scale", "module_position"):
            np.testing.assert_array_equal(t1[key], t0[key])
        assert list(t1["regimes"]) == list(t0["regimes"]) and t1["mechanism"] == mechanism
        for key, value in t0["weights"].items():
            np.testing.assert_array_equal(t1["weights"][key], value)
        assert t1["params"]["n_targets"].tolist() == [1, 3]
    empty = simulate_factor_graph(n_genes=5, n_modules=2, n_regimes=0, n_control_cells=10)
    empty.write_h5ad(tmp_path / "obs_only.h5ad")
    assert ad.read_h5ad(tmp_path / "obs_only.h5ad").n_obs == 10


@pytest.mark.parametrize("mechanism", ["linear", "nonlinear"])
def test_control_cells_are_standardised(mechanism):
    adata = simulate_factor_graph(
        n_genes=20, n_modules=3, n_regimes=0, n_control_cells=20_000, mechanism=mechanism, random_state=4
    )
    X = np.asarray(adata.X, dtype=np.float64)
    np.testing.assert_allclose(X.mean(0), 0.0, atol=0.05)
    np.testing.assert_allclose(X.var(0), 1.0, atol=0.08)
    if mechanism == "linear":  # the exact observational covariance of the SEM has a unit diagonal
        T = _total_effects(adata.uns["factor_graph_truth"])
        noise = adata.uns["factor_graph_truth"]["noise_scale"]
        np.testing.assert_allclose(np.diag(T.T @ np.diag(noise**2) @ T), 1.0, atol=1e-10)


def test_hard_intervention_target_is_standard_normal_and_propagates_linearly():
    adata = simulate_factor_graph(
        n_genes=25, n_modules=4, n_regimes=25, n_cells_per_regime=2000, n_targets=1, random_state=7
    )
    truth = adata.uns["factor_graph_truth"]
    T = _total_effects(truth)
    graph = adata.varp["true_graph"].toarray() > 0
    checked = 0
    for label, row in zip(truth["regimes"], truth["targets"]):
        t = int(row[0])
        X = _regime_cells(adata, label)
        x_t = X[:, t]
        assert abs(x_t.mean()) < 0.1 and abs(x_t.var() - 1.0) < 0.1  # N(0, 1), cut from its parents
        # cov(x_t, x_j) = total effect of t on j (0 for its parents and every other non-descendant)
        cov = (X - X.mean(0)).T @ (x_t - x_t.mean()) / X.shape[0]
        np.testing.assert_allclose(cov, T[t], atol=0.12)
        if graph[:, t].any():
            parents = np.flatnonzero(graph[:, t])
            assert np.abs(cov[parents]).max() < 0.12
            checked += 1
    assert checked >= 5  # several targets had parents to be cut from


def test_knockout_shifts_descendants_by_the_total_effect():
    adata = simulate_factor_graph(
        n_genes=25,
        n_modules=4,
        n_regimes=25,
        n_cells_per_regime=2000,
        n_targets=1,
        intervention="knockout",
        knockout_level=-3.0,
        random_state=7,
    )
    truth = adata.uns["factor_graph_truth"]
    T = _total_effects(truth)
    reach = _descendants(adata.varp["true_graph"].toarray())
    shifted = 0
    for label, row in zip(truth["regimes"], truth["targets"]):
        t = int(row[0])
        X = _regime_cells(adata, label)
        np.testing.assert_allclose(X.mean(0), -3.0 * T[t], atol=0.1)  # E[x | do(x_t ~ N(-3, .))] = -3 T[t]
        assert X[:, t].std() == pytest.approx(0.5, abs=0.05)
        shifted += int(reach[t].any() and np.abs(X.mean(0)[reach[t]]).max() > 0.3)
    assert shifted >= 5


def test_nonlinear_knockout_moves_only_descendants():
    adata = simulate_factor_graph(
        n_genes=25,
        n_modules=4,
        n_regimes=20,
        n_cells_per_regime=1500,
        n_control_cells=5000,
        n_targets=1,
        mechanism="nonlinear",
        intervention="knockout",
        edge_probability=(0.4, 0.3),
        random_state=0,
    )
    truth = adata.uns["factor_graph_truth"]
    reach = _descendants(adata.varp["true_graph"].toarray())
    control = _regime_cells(adata, "control").mean(0)
    with_children, moved = 0, 0
    for label, row in zip(truth["regimes"], truth["targets"]):
        t = int(row[0])
        shift = _regime_cells(adata, label).mean(0) - control
        others = ~reach[t]
        others[t] = False
        assert np.abs(shift[others]).max() < 0.15  # non-descendants keep their control distribution
        assert shift[t] == pytest.approx(-3.0, abs=0.1)
        if reach[t].any():
            with_children += 1
            moved += int(np.abs(shift[reach[t]]).max() > 0.3)
    assert with_children >= 8 and moved >= 0.7 * with_children  # a saturated tanh can hide a few


def test_argument_errors():
    with pytest.raises(ValueError, match="n_regimes \\(10\\) exceeds the 3 distinct sets"):
        simulate_factor_graph(n_genes=3, n_modules=1, n_regimes=10, n_targets=1)
    with pytest.raises(ValueError, match="unknown mechanism 'quadratic'"):
        simulate_factor_graph(**SMALL, mechanism="quadratic")
    with pytest.raises(ValueError, match="unknown intervention 'soft'"):
        simulate_factor_graph(**SMALL, intervention="soft")
    with pytest.raises(ValueError, match="noise_sd"):
        simulate_factor_graph(**SMALL, noise_sd=1.0)
    with pytest.raises(ValueError, match="n_targets"):
        simulate_factor_graph(**SMALL, n_targets=(2, 40))
    with pytest.raises(ValueError, match="n_targets"):
        simulate_factor_graph(**SMALL, n_targets=(3, 1))
    with pytest.raises(ValueError, match="edge_probability"):
        simulate_factor_graph(**SMALL, edge_probability=(0.2, 1.5))
    with pytest.raises(ValueError, match="separator 'e'"):
        simulate_factor_graph(**SMALL, separator="e")
    with pytest.raises(ValueError, match="control 'gene3'"):
        simulate_factor_graph(**SMALL, control="gene3")
    with pytest.raises(ValueError, match="n_genes must be >= 2"):
        simulate_factor_graph(n_genes=1)
    with pytest.raises(TypeError, match="n_modules must be an integer"):
        simulate_factor_graph(n_modules=2.5)
    with pytest.raises(ValueError, match="no cells"):
        simulate_factor_graph(**{**SMALL, "n_regimes": 0}, n_control_cells=0)
    with pytest.raises(TypeError):
        simulate_factor_graph(30)  # keyword-only
