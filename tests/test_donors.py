"""data.simulate_donor_cells: cells of genotyped donors with planted genetic effects on a latent state."""

from __future__ import annotations

import time

import anndata as ad
import numpy as np
import pandas as pd
import pytest

import pertcausal as pc


@pytest.fixture(scope="module")
def geno():
    return pc.data.simulate_genotypes(n_samples=300, n_variants=400, missing_rate=0.01, random_state=0)


@pytest.fixture(scope="module")
def cells(geno):
    return pc.data.simulate_donor_cells(geno, n_cells=20, n_genes=100, random_state=0)


def test_shape_and_obs(geno, cells):
    assert cells.shape == (300 * 20, 100)
    assert list(cells.obs.columns) == ["donor", "n_counts"]
    assert cells.obs_names.is_unique
    donors = cells.obs["donor"]
    assert isinstance(donors.dtype, pd.CategoricalDtype)
    assert list(donors.cat.categories) == list(geno.samples.index)
    assert (donors.value_counts() == 20).all()
    X = cells.X.toarray()
    assert (X >= 0).all() and np.array_equal(X, np.round(X))
    np.testing.assert_array_equal(cells.obs["n_counts"].to_numpy(), X.sum(axis=1))
    assert (cells.obs["n_counts"] > 0).all()


def test_deterministic(geno, cells):
    again = pc.data.simulate_donor_cells(geno, n_cells=20, n_genes=100, random_state=0)
    assert (again.X != cells.X).nnz == 0
    pd.testing.assert_frame_equal(again.uns["simulation"]["causal"], cells.uns["simulation"]["causal"])
    other = pc.data.simulate_donor_cells(geno, n_cells=20, n_genes=100, random_state=1)
    assert (other.X != cells.X).nnz > 0
    assert set(other.uns["simulation"]["causal"]["variant"]) != set(cells.uns["simulation"]["causal"]["variant"])


def test_ground_truth_stored(geno, cells, tmp_path):
    sim = cells.uns["simulation"]
    causal = sim["causal"]
    assert causal["variant"].nunique() == 5
    assert set(causal.columns) >= {"variant", "position", "chrom", "pos", "a1", "a2", "program", "effect"}
    assert causal.groupby("variant").size().between(1, 2).all()
    assert set(np.abs(causal["effect"])) == {0.5}
    var = geno.variants.iloc[causal["position"]]
    assert list(var["variant"]) == list(causal["variant"])
    assert (np.minimum(causal["a1_freq"], 1 - causal["a1_freq"]) >= 0.1).all()
    assert sim["donor_state"].shape == (300, 8)
    assert list(sim["donor_state"].index) == list(geno.samples.index)
    assert sim["loadings"].shape == (8, 100)
    # the ground truth survives an h5ad round trip
    cells.write_h5ad(tmp_path / "cells.h5ad")
    back = ad.read_h5ad(tmp_path / "cells.h5ad")
    pd.testing.assert_frame_equal(back.uns["simulation"]["donor_state"], sim["donor_state"])


def test_causal_variants_drive_donor_states(geno, cells):
    sim = cells.uns["simulation"]
    for _, row in sim["causal"].iterrows():
        g = geno.read([row["position"]])[:, 0]
        ok = ~np.isnan(g)
        r = np.corrcoef(g[ok], sim["donor_state"][row["program"]].to_numpy()[ok])[0, 1]
        # one variant explains a large share of its program's donor variance, in the stored direction
        assert np.sign(r) == np.sign(row["effect"])
        assert abs(r) > 0.3
        r_gen = np.corrcoef(g[ok], sim["genetic_state"][row["program"]].to_numpy()[ok])[0, 1]
        assert abs(r_gen) > abs(r)
    # programs no causal variant touches have no genetic part
    untouched = sorted(set(sim["donor_state"].columns) - set(sim["causal"]["program"]))
    assert np.allclose(sim["genetic_state"][untouched].to_numpy(), 0)


def test_chosen_causal_and_no_genetic_effect(geno):
    a = pc.data.simulate_donor_cells(geno, n_cells=5, n_genes=20, causal=["var3", "var10"], random_state=0)
    assert list(a.uns["simulation"]["causal"]["variant"].unique()) == ["var3", "var10"]
    null = pc.data.simulate_donor_cells(geno, n_cells=5, n_genes=20, n_causal=0, dispersion=0, random_state=0)
    assert len(null.uns["simulation"]["causal"]) == 0
    assert np.allclose(null.uns["simulation"]["genetic_state"].to_numpy(), 0)


def test_errors(geno):
    with pytest.raises(ValueError, match="not variant ids"):
        pc.data.simulate_donor_cells(geno, causal=["var3", "rs_nope"])
    rare = pc.data.simulate_genotypes(n_samples=50, n_variants=20, maf_range=(0.01, 0.02), random_state=0)
    with pytest.raises(ValueError, match="minor allele frequency >= 0.1"):
        pc.data.simulate_donor_cells(rare)
    x_only = pc.pp.Genotypes.from_array(
        geno.read(slice(0, 10)), samples=geno.samples, variants=geno.variants.iloc[:10].assign(chrom="X")
    )
    with pytest.raises(ValueError, match="no autosomal variant"):
        pc.data.simulate_donor_cells(x_only)
    with pytest.raises(ValueError, match="only .* autosomal variants"):
        pc.data.simulate_donor_cells(geno, n_causal=10_000)
    with pytest.raises(ValueError, match="n_cells"):
        pc.data.simulate_donor_cells(geno, n_cells=0)
    with pytest.raises(TypeError, match="Genotypes"):
        pc.data.simulate_donor_cells(np.zeros((10, 10)))


def test_fast_at_hapmap_scale():
    g = pc.data.simulate_genotypes(n_samples=279, n_variants=5000, random_state=1)
    pc.data.simulate_donor_cells(g, n_cells=2, n_genes=10)  # warm up the lazy imports
    start = time.perf_counter()
    a = pc.data.simulate_donor_cells(g, random_state=1)
    elapsed = time.perf_counter() - start
    assert a.shape == (279 * 50, 200)
    assert elapsed < 1.0, f"{elapsed:.2f} s"


def test_gwas_recovers_causal_variants(geno, cells):
    """cells -> log-normalise -> PCA -> per-donor GWAS: the joint test finds the planted variants."""
    X = cells.X.toarray()
    X = np.log1p(X / X.sum(axis=1, keepdims=True) * 1e4)
    X -= X.mean(axis=0)
    U, S, _ = np.linalg.svd(X, full_matrices=False)
    cells = cells.copy()
    cells.obsm["X_pca"] = U[:, :10] * S[:10]
    pc.tl.gwas(cells, geno, use_rep="X_pca", sample_key="donor", n_genetic_pcs=0, progress_bar=False, device="cpu")
    joint = cells.uns["gwas"]["joint"].set_index("variant")
    causal = cells.uns["simulation"]["causal"]["variant"].unique()
    p_causal = joint.loc[causal, "p"]
    assert (p_causal < 1e-6).any()
    assert (p_causal < 1e-6).sum() >= 4
    # and few null variants reach it
    assert (joint.drop(causal)["p"] < 1e-6).sum() <= 1
