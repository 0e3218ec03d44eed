"""SparseShiftVAE, tl.sparse_shift and tl.evaluate_sparse_shift: recovery, sparsity, held-out protocol, errors."""

from __future__ import annotations

from contextlib import nullcontext

import anndata as ad
import mudata as md
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

import pertcausal as pc

torch = pytest.importorskip("torch")
pytest.importorskip("scvi")

FAST = {"progress_bar": False, "device": "cpu", "n_mc_samples": 10}
KEY = {"perturbation_key": "perturbation", "control": "control"}


def _sim(**kw):
    args = {"n_perturbations": 8, "n_cells_per_perturbation": 150, "n_latent": 4, "n_genes": 50, "random_state": 0}
    return pc.data.simulate_sparse_shift(**{**args, **kw})


@pytest.fixture(scope="module")
def trained():
    adata = _sim()
    held = ["P6", "P7"]
    model = pc.tl.sparse_shift(adata, **KEY, n_latent=4, max_epochs=80, heldout=held, heldout_epochs=20, **FAST)
    return adata, model


def test_outputs_written_and_survive_h5ad(trained, tmp_path):
    adata, model = trained
    res = adata.uns["X_sparse_shift"]
    assert adata.obsm["X_sparse_shift"].shape == (adata.n_obs, 4)
    assert adata.varm["X_sparse_shift"].shape == (adata.n_vars, 4)
    assert res["target_probability"].shape == (8, 4)
    assert list(res["target_probability"].index) == [f"P{i}" for i in range(8)]
    assert res["targets"].dtypes.eq(bool).all()
    assert set(res["likelihood"].columns) >= {"elbo", "iwelbo", "n_cells", "heldout"}
    assert res["likelihood"].loc[["P6", "P7"], "heldout"].all()
    assert res["params"]["heldout"] == ["P6", "P7"]
    adata.write_h5ad(tmp_path / "a.h5ad")
    back = ad.read_h5ad(tmp_path / "a.h5ad")
    pd.testing.assert_frame_equal(back.uns["X_sparse_shift"]["target_probability"], res["target_probability"])
    np.testing.assert_allclose(back.obsm["X_sparse_shift"], adata.obsm["X_sparse_shift"])
    assert "_scvi_labels" not in adata.obs  # the user's object is not registered with scvi-tools


def test_recovers_ground_truth_better_than_untrained(trained):
    adata, model = trained
    scores = pc.tl.evaluate_sparse_shift(model, adata, n_mc_samples=10)
    untrained = pc.models.SparseShiftVAE(model.adata, n_latent=4)
    untrained.is_trained_ = True  # a random model: initial weights, every mask entry on
    base = pc.tl.evaluate_sparse_shift(untrained, adata, n_mc_samples=10)
    # observed when written: MCC 0.78 (random 0.19), precision 0.85 (0.53), F1 0.73
    assert scores["mcc"] > 0.7
    assert scores["mcc"] > base["mcc"] + 0.3
    assert scores["precision"] > base["precision"] + 0.2
    assert scores["f1"] > 0.6
    assert scores["elbo"] > base["elbo"] + 30
    assert scores["heldout_iwelbo"] >= scores["heldout_elbo"] - 1e-6  # IWELBO bounds log p tighter


def test_heldout_masks_learned_from_the_likelihood(trained):
    adata, model = trained
    held = ["P6", "P7"]
    p = model.get_target_probability().loc[held].to_numpy()
    # fit_heldout once ran in eval mode: hard masks that only the sparsity prior moved, all entries alike
    assert (p > 0.5).any(axis=1).all()  # each held-out perturbation keeps a target
    assert (p.max(axis=1) - p.min(axis=1) > 0.3).all()  # observed when written: 0.68, 0.49 (the bug: 0)
    fitted = model.evaluate_likelihood(perturbations=held, n_mc_samples=10)["iwelbo"].mean()
    module = model.module
    rows = np.isin(model.perturbations_all, held)
    saved = module.mask_logit.detach().clone()
    try:
        with torch.no_grad():
            module.mask_logit[rows] = -10.0  # no shift: the N(0, I) prior for the held-out cells
        off = model.evaluate_likelihood(perturbations=held, n_mc_samples=10)["iwelbo"].mean()
    finally:
        with torch.no_grad():
            module.mask_logit.copy_(saved)
    # observed when written: -271.1 against -279.0 nats per cell
    assert fitted > off + 3.0


def test_masks_sparse_under_default_prior(trained):
    _, model = trained
    p = model.get_target_probability().loc[[f"P{i}" for i in range(6)]].to_numpy()
    # every entry started at probability 0.95; the default prior (0.2 per cell) switches most off, not all
    assert (p > 0.5).mean() < 0.6
    assert (p > 0.5).sum() >= 3


def test_no_sparsity_pressure_with_uniform_prior():
    adata = _sim()
    model = pc.tl.sparse_shift(adata, **KEY, n_latent=4, max_epochs=15, sparsity=1.0, **FAST)
    assert (model.get_target_probability().to_numpy() > 0.5).mean() > 0.9  # Beta(1, 1): nothing switched off


def test_target_threshold_reads_the_mask_and_is_recorded():
    adata = _sim(n_perturbations=4, n_cells_per_perturbation=60)
    pc.tl.sparse_shift(adata, **KEY, n_latent=4, max_epochs=3, target_threshold=0.7, **FAST)
    res = adata.uns["X_sparse_shift"]
    assert res["params"]["target_threshold"] == 0.7
    pd.testing.assert_frame_equal(res["targets"], res["target_probability"] > 0.7)
    with pytest.raises(ValueError, match=r"target_threshold must lie in \[0, 1\), got 1.0"):
        pc.tl.sparse_shift(adata.copy(), **KEY, n_latent=4, max_epochs=1, target_threshold=1.0, **FAST)
    assert res["params"]["target_threshold"] == 0.7  # the failed call wrote nothing


def test_heldout_fit_leaves_networks_unchanged(trained):
    adata, model = trained
    before = {k: v.clone() for k, v in model.module.state_dict().items()}
    model.fit_heldout(["P7"], max_epochs=3, progress_bar=False)
    after = model.module.state_dict()
    rows = model.perturbations_all == "P7"
    for k, v in before.items():
        if k in ("shift", "mask_logit"):
            assert np.array_equal(v.numpy()[~rows], after[k].numpy()[~rows]), k
        else:
            assert np.array_equal(v.numpy(), after[k].numpy()), k  # batch-norm statistics included
    assert not np.array_equal(before["shift"].numpy()[rows], after["shift"].numpy()[rows])
    assert all(p.requires_grad for p in model.module.parameters())


def test_save_load_round_trip(trained, tmp_path):
    adata, model = trained
    model.save(tmp_path / "m", save_anndata=False)
    back = pc.models.SparseShiftVAE.load(tmp_path / "m", adata=model.adata)
    np.testing.assert_allclose(back.get_latent_representation(), model.get_latent_representation(), atol=1e-6)
    pd.testing.assert_frame_equal(back.get_target_probability(), model.get_target_probability())
    assert back.heldout_perturbations_ == ["P6", "P7"]
    assert back.control_ == "control"


def test_decoder_sensitivity_shape_and_sign(trained):
    _, model = trained
    sens = model.get_decoder_sensitivity(delta=1.0)
    assert sens.shape == (4, 50)
    # moving a latent changes expression; normalised proportions cannot all rise together
    assert (sens.abs().max(axis=1) > 0.05).all()
    assert (sens.max(axis=1) > 0).all() and (sens.min(axis=1) < 0).all()


def test_baselines_are_options_of_the_same_class():
    adata = _sim(n_perturbations=3, n_cells_per_perturbation=40)
    for prior in ("svae", "ivae", "vae"):
        model = pc.tl.sparse_shift(adata.copy(), **KEY, n_latent=3, max_epochs=2, prior=prior, **FAST)
        p = model.get_target_probability().to_numpy()
        if prior == "vae":
            assert (p == 0).all() and (model.get_shift().to_numpy() == 0).all()
        if prior == "ivae":
            assert (p == 1).all()
        scores = pc.tl.evaluate_sparse_shift(model, adata, n_mc_samples=3)
        assert np.isfinite(scores.to_numpy()).all()


def test_mudata_and_setup_mudata(tmp_path):
    adata = _sim(n_perturbations=3, n_cells_per_perturbation=40)
    mdata = md.MuData({"rna": adata})
    mdata.obs["perturbation"] = adata.obs["perturbation"].to_numpy()
    del adata.obs["perturbation"]
    model = pc.tl.sparse_shift(mdata, **KEY, n_latent=3, max_epochs=2, **FAST)
    assert mdata["rna"].obsm["X_sparse_shift"].shape == (adata.n_obs, 3)
    mdata.write(tmp_path / "m.h5mu")
    back = md.read_h5mu(tmp_path / "m.h5mu")
    assert back["rna"].uns["X_sparse_shift"]["shift"].shape == (3, 3)
    assert model.perturbations == ["P0", "P1", "P2"]
    # the model class registers MuData directly too
    pc.models.SparseShiftVAE.setup_mudata(mdata, mod="rna", **KEY)
    m2 = pc.models.SparseShiftVAE(mdata, n_latent=3)
    m2.train(max_epochs=1, progress_bar=False)
    assert m2.get_latent_representation().shape == (adata.n_obs, 3)


def _unchanged(adata, fn):
    obs, obsm, uns = adata.obs.copy(), set(adata.obsm), set(adata.uns)
    fn()
    pd.testing.assert_frame_equal(adata.obs, obs)
    assert set(adata.obsm) == obsm and set(adata.uns) == uns


def test_errors_name_the_fault_and_leave_data_unchanged():
    adata = _sim(n_perturbations=3, n_cells_per_perturbation=40)
    run = lambda **kw: pc.tl.sparse_shift(adata, **{**KEY, "n_latent": 3, "max_epochs": 1, **FAST, **kw})  # noqa: E731
    with pytest.raises(ValueError, match="control 'ctrl' is not a value"):
        _unchanged(adata, lambda: run(control="ctrl"))
    with pytest.raises(KeyError, match="perturbation_key 'guide'"):
        _unchanged(adata, lambda: run(perturbation_key="guide"))
    with pytest.raises(ValueError, match="n_latent=60 must be between 1 and the number of genes"):
        _unchanged(adata, lambda: run(n_latent=60))
    with pytest.raises(KeyError, match="'P9'.*not perturbations of the model"):
        _unchanged(adata, lambda: run(heldout=["P9"]))
    with pytest.raises(ValueError, match="fewer than min_cells=50 cells: P0 \\(40\\), P1 \\(40\\), P2 \\(40\\)"):
        _unchanged(adata, lambda: run(min_cells=50))
    logged = adata.copy()
    logged.X = sp.csr_matrix(np.log1p(logged.X.toarray()))
    with pytest.raises(ValueError, match="does not hold raw counts"):
        _unchanged(logged, lambda: pc.tl.sparse_shift(logged, **{**KEY, "n_latent": 3, "max_epochs": 1, **FAST}))
    with pytest.raises(ValueError, match="CUDA is not available") if not _cuda() else nullcontext():
        run(device="cuda")


def _cuda() -> bool:
    import torch

    return torch.cuda.is_available()


@pytest.mark.gpu
def test_cuda_matches_cpu_evaluation(trained):
    if not _cuda():
        pytest.skip("no CUDA device")
    _, model = trained
    cpu = model.get_latent_representation()
    model.module.to("cuda")
    try:
        gpu = model.get_latent_representation()
    finally:
        model.module.to("cpu")
    np.testing.assert_allclose(gpu, cpu, atol=1e-4)
