"""Synthetic interventions with pairwise moments, a locality kernel and per-gene shrinkage: known answers."""

from __future__ import annotations

import numpy as np
import pytest

import pertcausal as pc
from pertcausal._engines import METHODS, Grid

SI = METHODS["synthetic_interventions"]
CONTEXT = {"donor": "context", "use_control": False}


def _grid(eff: np.ndarray, observed: np.ndarray) -> Grid:
    p, c = np.nonzero(observed)
    return Grid(eff[p, c], p, c, eff.shape[0], eff.shape[1])


def test_pairwise_moments_by_hand():
    """Contexts 0 and 1 are donors of target context 2. Perturbations 0-5 are measured everywhere, 6-11 miss
    donor 1, 12-14 miss the target, 15 (the query) misses the target. Each moment is averaged over the units
    measured in both of its contexts, about a scalar mean per context."""
    rng = np.random.default_rng(1)
    n_p, g = 16, 12
    eff = rng.normal(size=(n_p, 3, g))
    eff[:, 2] = 0.6 * eff[:, 0] + 0.3 * eff[:, 1] + 0.2 * rng.normal(size=(n_p, g))
    obs = np.ones((n_p, 3), dtype=bool)
    obs[6:12, 1] = False
    obs[12:, 2] = False
    grid = _grid(eff, obs)
    pred = SI(grid, np.array([15]), np.array([2]), **CONTEXT, unit_weight="none", moments="pairwise")
    # by hand
    units = np.arange(15)
    m = obs[units]
    x = np.where(m[..., None], eff[units], 0.0)
    mean = x.sum((0, 2)) / (m.sum(0) * g)
    xc = (x - mean[None, :, None]) * m[..., None]
    n_ab = m.T.astype(float) @ m
    s = np.einsum("vag,vbg->ab", xc, xc) / n_ab
    e_t, e_d = 2, [0, 1]
    beta = np.linalg.solve(s[np.ix_(e_d, e_d)], s[e_d, e_t])
    expected = mean[e_t] + beta @ (eff[15, e_d] - mean[e_d, None])
    np.testing.assert_allclose(pred.values[0], expected, atol=1e-10)
    assert pred.info["moments"] == "pairwise" and pred.info["n_donors"][0] == 2
    assert pred.reliability[0] == pytest.approx(beta @ s[e_d, e_t] / s[e_t, e_t], abs=1e-10)
    # the complete-case regression uses perturbations 0-5 only, so it differs
    complete = SI(grid, np.array([15]), np.array([2]), **CONTEXT, unit_weight="none")
    assert np.abs(complete.values[0] - expected).max() > 1e-3


def _two_rule_effects(n_p: int, g: int, seed: int) -> np.ndarray:
    """Noise-free effects in 3 contexts whose per-gene means over perturbations 0..n_p-2 are zero."""
    rng = np.random.default_rng(seed)
    eff = rng.normal(size=(n_p, 3, g))
    eff[:, :2] -= eff[:-1, :2].mean(0)
    return eff


def test_gene_shrinkage_one_recovers_gene_specific_rules():
    """Genes 0-9 follow target = donor 0, genes 10-19 target = donor 1: one pooled set of coefficients cannot
    fit both halves; per-gene coefficients (``gene_shrinkage=1``) recover the target exactly."""
    n_p, g = 15, 20
    eff = _two_rule_effects(n_p, g, seed=2)
    eff[:, 2, :10] = eff[:, 0, :10]
    eff[:, 2, 10:] = eff[:, 1, 10:]
    obs = np.ones((n_p, 3), dtype=bool)
    obs[-1, 2] = False
    grid = _grid(eff, obs)
    q = (np.array([n_p - 1]), np.array([2]))
    truth = eff[-1, 2]
    per_gene = SI(grid, *q, **CONTEXT, unit_weight="none", moments="pairwise", gene_shrinkage=1.0)
    np.testing.assert_allclose(per_gene.values[0], truth, atol=1e-10)
    pooled = SI(grid, *q, **CONTEXT, unit_weight="none", moments="pairwise")
    half = SI(grid, *q, **CONTEXT, unit_weight="none", moments="pairwise", gene_shrinkage=0.5)
    err = {
        k: float(((v.values[0] - truth) ** 2).sum() / (truth**2).sum()) for k, v in (("pooled", pooled), ("half", half))
    }
    assert err["pooled"] > 0.2 and 0.04 < err["half"] < 0.15, err  # 0.25 and 0.081


def test_locality_weights_units_like_the_query():
    """Perturbations 0-9 share one response pattern and follow target = donor 0; 10-19 share another and follow
    target = donor 1. The query (20) has the first pattern: a narrow locality kernel keeps the units like it."""
    rng = np.random.default_rng(3)
    n_p, g = 21, 30
    pattern = rng.normal(size=(2, 2, g)) * 3.0
    group = np.r_[np.zeros(10, int), np.ones(10, int), 0]
    eff = rng.normal(size=(n_p, 3, g))
    eff[:, :2] += pattern[group]
    eff[:, 2] = np.where(group[:, None] == 0, eff[:, 0], eff[:, 1])
    obs = np.ones((n_p, 3), dtype=bool)
    obs[20, 2] = False
    grid = _grid(eff, obs)
    q = (np.array([20]), np.array([2]))
    truth = eff[20, 2]

    def rel(pred) -> float:
        return float(((pred.values[0] - truth) ** 2).sum() / (truth**2).sum())

    local = SI(grid, *q, **CONTEXT, unit_weight="none", moments="pairwise", locality=0.05)
    flat = SI(grid, *q, **CONTEXT, unit_weight="none", moments="pairwise", locality=np.inf)
    none = SI(grid, *q, **CONTEXT, unit_weight="none", moments="pairwise")
    np.testing.assert_allclose(flat.values, none.values)  # an infinite bandwidth is no kernel
    assert rel(local) < 1e-3 and rel(none) > 0.1, (rel(local), rel(none))  # 4e-18 and 0.44


def test_select_and_option_errors():
    sig = pc.data.simulate_effects(n_perturbations=30, n_contexts=6, n_genes=20, frac_observed=0.7, seed=0)
    from pertcausal.tl._grid_io import grid_from_signatures

    grid, _, _ = grid_from_signatures(sig)
    qp, qc = np.nonzero(~grid.observed())
    select = {"locality": [np.inf, 0.3], "gene_shrinkage": [0.0, 0.2]}
    pred = SI(grid, qp, qc, moments="pairwise", select=select)
    assert set(pred.info["selected"]) == {"locality", "gene_shrinkage"}
    assert len(pred.info["select_error"]) == 4
    assert pred.info["locality"] == pred.info["selected"]["locality"]
    assert np.isfinite(pred.values).all()
    with pytest.raises(ValueError, match="need moments='pairwise'"):
        SI(grid, qp, qc, locality=0.3)
    with pytest.raises(ValueError, match="need moments='pairwise'"):
        SI(grid, qp, qc, select={"gene_shrinkage": [0.0, 0.2]})
    with pytest.raises(ValueError, match="unknown moments"):
        SI(grid, qp, qc, moments="available")
    with pytest.raises(ValueError, match="unknown option"):
        SI(grid, qp, qc, moments="pairwise", select={"nugget": [1.0]})
    with pytest.raises(ValueError, match=r"gene_shrinkage must be in \[0, 1\]"):
        SI(grid, qp, qc, moments="pairwise", gene_shrinkage=1.5)


def test_impute_records_pairwise_options(tmp_path):
    sig = pc.data.simulate_effects(n_perturbations=20, n_contexts=5, n_genes=15, frac_observed=0.7, seed=1)
    imp = pc.tl.impute(
        sig,
        method="synthetic_interventions",
        moments="pairwise",
        select={"locality": [np.inf, 0.5], "gene_shrinkage": [0.0, 0.2]},
        progress_bar=False,
    )
    info = imp.uns["impute"]["params"]["engine_info"]
    assert info["moments"] == "pairwise" and set(info["selected"]) == {"locality", "gene_shrinkage"}
    assert imp.uns["impute"]["params"]["method_kwargs"]["moments"] == "pairwise"
    imp.write_h5ad(tmp_path / "imp.h5ad")
