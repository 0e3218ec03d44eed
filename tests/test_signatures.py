from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
from anndata import AnnData
from mudata import MuData

import pertcausal as pc

KEYS = {"perturbation_key": "perturbation", "context_key": "context", "control": "control"}


def _toy() -> AnnData:
    """4 cells per group, exact known means on a log layer."""
    obs = pd.DataFrame(
        {
            "perturbation": ["ctrl"] * 4 + ["A"] * 4 + ["ctrl"] * 4 + ["B"] * 4,
            "context": ["c1"] * 8 + ["c2"] * 8,
        },
        index=[f"cell{i}" for i in range(16)],
    )
    x = np.zeros((16, 3))
    x[0:4] = [1.0, 2.0, 3.0]  # ctrl c1
    x[4:8] = [[2.0, 2.0, 1.0], [4.0, 2.0, 1.0], [2.0, 2.0, 1.0], [4.0, 2.0, 1.0]]  # A c1 mean [3,2,1]
    x[8:12] = [0.0, 1.0, 0.0]  # ctrl c2
    x[12:16] = [0.0, 3.0, 5.0]  # B c2
    return AnnData(X=sp.csr_matrix(x), obs=obs, layers={"log": x.copy()})


def test_known_means_and_layout():
    sig = pc.pp.signatures(
        _toy(),
        perturbation_key="perturbation",
        context_key="context",
        control="ctrl",
        layer="log",
        min_cells=2,
        normalize=False,
    )
    assert list(sig.obs_names) == ["A|c1", "B|c2"]
    np.testing.assert_allclose(sig.X, [[2.0, 0.0, -2.0], [0.0, 2.0, 5.0]])
    np.testing.assert_allclose(sig.layers["mean"], [[3.0, 2.0, 1.0], [0.0, 3.0, 5.0]])
    assert sig.obs["n_cells"].tolist() == [4, 4]
    np.testing.assert_allclose(sig.uns["control_mean"].loc["c1"], [1.0, 2.0, 3.0])
    assert sig.uns["control_n_cells"] == {"c1": 4, "c2": 4}
    assert sig.uns["signatures"]["params"]["normalize"] is False
    # integer-valued input is taken for raw counts by default
    auto = pc.pp.signatures(
        _toy(), perturbation_key="perturbation", context_key="context", control="ctrl", layer="log", min_cells=2
    )
    assert auto.uns["signatures"]["params"]["normalize"] is True


def test_raw_counts_are_normalised(screen):
    import scanpy as sc

    sig = pc.pp.signatures(screen, **KEYS, min_cells=5)
    assert sig.uns["signatures"]["params"]["normalize"] is True
    # same as scanpy's normalize_total + log1p followed by group means
    rna = screen["rna"].copy()
    sc.pp.normalize_total(rna, target_sum=1e4)
    sc.pp.log1p(rna)
    p, c = sig.obs_names[0].split("|")
    sel = (rna.obs["perturbation"] == p).to_numpy() & (rna.obs["context"] == c).to_numpy()
    ctrl = (rna.obs["perturbation"] == "control").to_numpy() & (rna.obs["context"] == c).to_numpy()
    expected = np.asarray(rna.X[sel].mean(0)).ravel() - np.asarray(rna.X[ctrl].mean(0)).ravel()
    np.testing.assert_allclose(sig.X[0], expected, rtol=1e-4, atol=1e-5)


def test_signatures_estimate_truth(screen):
    sig = pc.pp.signatures(screen, **KEYS)
    truth = screen.uns["true_effect"]
    p = sig.obs["perturbation"].cat.codes.to_numpy()
    c = sig.obs["context"].cat.codes.to_numpy()
    assert np.corrcoef(sig.X.ravel(), truth[p, c].ravel())[0, 1] > 0.95
    assert sig.n_obs == int(screen.uns["observed"].sum())


def test_chunking_does_not_change_result(screen):
    a = pc.pp.signatures(screen, **KEYS)
    b = pc.pp.signatures(screen, **KEYS, chunk_size=97)
    np.testing.assert_allclose(a.X, b.X, rtol=1e-5, atol=1e-6)


def test_dense_and_anndata_input(screen):
    rna = screen["rna"].copy()
    rna.X = rna.X.toarray()
    a = pc.pp.signatures(rna, **KEYS)
    b = pc.pp.signatures(screen, **KEYS)
    np.testing.assert_allclose(a.X, b.X, rtol=1e-5, atol=1e-6)


def test_many_cells_one_pass():
    """200k sparse cells x 500 genes: indicator products, no loop over cells."""
    import time

    rng = np.random.default_rng(0)
    n, g = 200_000, 500
    x = sp.random(n, g, density=0.05, format="csr", random_state=0, dtype=np.float32)
    x.data = np.ceil(x.data * 5)
    obs = pd.DataFrame({"perturbation": rng.choice(["ctrl", "a", "b", "c"], n), "context": rng.choice(["x", "y"], n)})
    obs.index = obs.index.astype(str)
    t0 = time.perf_counter()
    sig = pc.pp.signatures(
        AnnData(X=x, obs=obs), perturbation_key="perturbation", context_key="context", control="ctrl"
    )
    assert time.perf_counter() - t0 < 30
    assert sig.n_obs == 6 and np.isfinite(sig.X).all()


@pytest.mark.parametrize(
    ("kwargs", "err", "match"),
    [
        ({"perturbation_key": "guide"}, KeyError, "perturbation_key 'guide' is not a column"),
        ({"context_key": "celltype"}, KeyError, "context_key 'celltype' is not a column"),
        ({"control": "NT"}, ValueError, "control 'NT' not found in obs\\['perturbation'\\]"),
        ({"layer": "counts"}, KeyError, "layer 'counts' is not in"),
        ({"mod": "prot"}, KeyError, "mod 'prot' is not a modality"),
        ({"min_cells": 1000}, ValueError, "fewer than min_cells=1000"),
    ],
)
def test_bad_input(screen, kwargs, err, match):
    args = {**KEYS, **kwargs}
    with pytest.raises(err, match=match):
        pc.pp.signatures(screen, **args)


def test_context_without_controls(screen):
    rna = screen["rna"]
    keep = ~((rna.obs["perturbation"] == "control") & (rna.obs["context"] == "C00")).to_numpy()
    with pytest.raises(ValueError, match="'C00'.*no control cells"):
        pc.pp.signatures(rna[keep].copy(), **KEYS)


def test_perturbation_below_min_cells(screen):
    # 30 cells per pair, 100 controls per context
    with pytest.raises(ValueError, match="perturbation\\(s\\) 'P000'.* have fewer than min_cells=50 cells in every"):
        pc.pp.signatures(screen, **KEYS, min_cells=50)


def test_small_pairs_are_dropped_with_a_warning(screen, caplog):
    rna = screen["rna"]
    pair = (rna.obs["perturbation"] == "P000").to_numpy()
    first_ctx = rna.obs["context"][pair].iloc[0]
    drop = np.flatnonzero(pair & (rna.obs["context"] == first_ctx).to_numpy())[:25]
    keep = np.setdiff1d(np.arange(rna.n_obs), drop)
    full = pc.pp.signatures(screen, **KEYS)
    with caplog.at_level("WARNING", logger="pertcausal"):
        sig = pc.pp.signatures(rna[keep].copy(), **KEYS, min_cells=10)
    assert f"P000|{first_ctx}" in caplog.text
    assert sig.n_obs == full.n_obs - 1


def test_nan_is_rejected(screen):
    rna = screen["rna"].copy()
    rna.X = rna.X.toarray()
    rna.X[3, 2] = np.nan
    with pytest.raises(ValueError, match="1 NaN or infinite"):
        pc.pp.signatures(MuData({"rna": rna}), **KEYS)
