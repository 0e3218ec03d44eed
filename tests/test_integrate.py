"""CrossModalAE, tl.integrate and tl.translate: alignment, translation, persistence, errors."""

from __future__ import annotations

from contextlib import nullcontext
from pathlib import Path

import mudata as md
import numpy as np
import pytest
import scipy.sparse as sp

import pertcausal as pc
from pertcausal._engines.integration_metrics import foscttm, label_transfer_accuracy

pytest.importorskip("torch")
pytest.importorskip("lightning")

CITESEQ = (
    Path(__file__).resolve().parents[1]
    / ".."
    / "shared"
    / "data"
    / "eccite-pbmc-citefuse"
    / "eccite_pbmc_control_500.h5mu"
)
FAST = {"max_epochs": 25, "batch_size": 64, "progress_bar": False, "device": "cpu", "n_hidden": 64}


def _lognorm(X):
    X = X.toarray() if sp.issparse(X) else np.asarray(X)
    return np.log1p(X / X.sum(axis=1, keepdims=True) * 1e4)


@pytest.fixture(scope="module")
def paired():
    mdata = pc.data.simulate_multimodal(n_cells=500, n_genes=150, n_proteins=20, random_state=1)
    model = pc.tl.integrate(mdata, n_latent=6, **FAST)
    return mdata, model


def test_paired_training_aligns_and_translates(paired):
    mdata, model = paired
    hist = model.history
    assert hist["train_loss"].iloc[-1] < 0.8 * hist["train_loss"].iloc[0]
    assert hist["validation_loss"].iloc[-1] < hist["validation_loss"].iloc[0]
    a = mdata["rna"].obsm["X_pertcausal"]
    b = mdata["adt"].obsm["X_pertcausal"]
    assert foscttm(a, b).mean() < 0.1  # chance is 0.5
    pc.tl.translate(mdata, source="rna", target="adt", model=model)
    val = mdata.uns["X_pertcausal"]["validation_cells"]
    pred = mdata["adt_from_rna"][val].X
    truth = _lognorm(mdata["adt"][val].X)
    corr = [np.corrcoef(pred[:, j], truth[:, j])[0, 1] for j in range(truth.shape[1])]
    assert np.nanmean(corr) > 0.6
    # better than predicting each protein's training mean
    train = ~mdata.obs_names.isin(val)
    mean = _lognorm(mdata["adt"][train].X).mean(axis=0)
    assert ((pred - truth) ** 2).mean() < 0.7 * ((mean - truth) ** 2).mean()
    assert mdata.uns["X_pertcausal"]["params"]["paired"]


def test_unpaired_with_labels_aligns_the_true_matches():
    mdata = pc.data.simulate_multimodal(n_cells=500, n_genes=150, n_proteins=20, random_state=2)
    rna, adt = mdata["rna"].copy(), mdata["adt"].copy()
    adt.obs_names = [f"{n}_adt" for n in adt.obs_names]  # the same cells, but the model cannot pair them
    unpaired = md.MuData({"rna": rna, "adt": adt})
    unpaired.obs["cell_type"] = np.concatenate([rna.obs["cell_type"], adt.obs["cell_type"]])
    model = pc.tl.integrate(unpaired, n_latent=6, labels_key="cell_type", **{**FAST, "max_epochs": 40})
    assert not model.paired
    a, b = unpaired["rna"].obsm["X_pertcausal"], unpaired["adt"].obsm["X_pertcausal"]
    assert label_transfer_accuracy(a, rna.obs["cell_type"].to_numpy(), b, adt.obs["cell_type"].to_numpy()) > 0.9
    assert foscttm(a, b).mean() < 0.25  # true matches: well below chance (0.5)
    assert unpaired.obsm["X_pertcausal"].shape == (1000, 6)


def test_gaussian_modality_and_covariates():
    mdata = pc.data.simulate_multimodal(
        n_cells=400, n_genes=120, n_proteins=15, continuous_second=True, n_batches=2, random_state=3
    )
    model = pc.tl.integrate(mdata, n_latent=5, batch_key="batch", **FAST)
    assert model.setup["likelihoods"] == {"rna": "nb", "adt": "gaussian"}
    assert model.module.n_cov == 2
    pc.tl.translate(mdata, source="rna", target="adt", model=model)
    pred, truth = mdata["adt_from_rna"].X, np.asarray(mdata["adt"].X)
    corr = [np.corrcoef(pred[:, j], truth[:, j])[0, 1] for j in range(truth.shape[1])]
    assert np.mean(corr) > 0.6
    assert mdata["adt_from_rna"].uns["params"]["scale"] == "mean"


def test_save_load_and_h5mu_round_trip(paired, tmp_path):
    mdata, model = paired
    model.save(tmp_path / "model")
    with pytest.raises(FileExistsError, match="overwrite=True"):
        model.save(tmp_path / "model")
    loaded = pc.models.CrossModalAE.load(tmp_path / "model", mdata)
    np.testing.assert_array_equal(loaded.get_latent_representation(), model.get_latent_representation())
    assert loaded.is_trained and len(loaded.history) == len(model.history)
    with pytest.raises(ValueError, match="no cell lacks the target"):  # every cell has its protein measured
        pc.tl.translate(mdata, source="rna", target="adt", model=model, cells="unmeasured", key_added="none_missing")
    assert "none_missing" not in mdata.mod
    mdata.write(tmp_path / "m.h5mu")
    back = md.read_h5mu(tmp_path / "m.h5mu")
    np.testing.assert_allclose(back.obsm["X_pertcausal"], mdata.obsm["X_pertcausal"])
    np.testing.assert_allclose(back["rna"].obsm["X_pertcausal"], mdata["rna"].obsm["X_pertcausal"])
    assert back.uns["X_pertcausal"]["params"]["n_latent"] == 6
    assert len(back.uns["X_pertcausal"]["history"]) == 25


def test_nb_log_likelihood_matches_scipy():
    import torch
    from scipy import stats

    from pertcausal.models._cross_modal._module import CrossModalModule

    torch.manual_seed(0)
    module = CrossModalModule({"a": 40, "b": 3}, {"a": "nb", "b": "gaussian"}, n_latent=2)
    with torch.no_grad():
        module.log_theta["a"].normal_()
    x = torch.poisson(torch.rand(6, 40) * 5)
    library = x.sum(1).clamp(min=1.0)
    out = torch.log_softmax(torch.randn(6, 40), -1)
    got = module.log_likelihood("a", out, x, library).detach().numpy()
    theta = module.log_theta["a"].exp().detach().numpy().astype(np.float64)
    mu = (out.exp() * library[:, None]).detach().numpy().astype(np.float64)
    expected = stats.nbinom.logpmf(x.numpy(), theta, theta / (theta + mu)).sum(1)
    np.testing.assert_allclose(got, expected, rtol=1e-5)


def test_same_seed_same_model():
    mdata = pc.data.simulate_multimodal(n_cells=120, n_genes=40, n_proteins=6, random_state=6)
    runs = [pc.tl.integrate(mdata, n_latent=3, **{**FAST, "max_epochs": 2}) for _ in range(2)]
    np.testing.assert_array_equal(runs[0].get_latent_representation(), runs[1].get_latent_representation())
    other = pc.tl.integrate(mdata, n_latent=3, random_state=1, **{**FAST, "max_epochs": 2})
    assert not np.array_equal(other.get_latent_representation(), runs[0].get_latent_representation())


def test_early_stopping_and_feature_selection():
    mdata = pc.data.simulate_multimodal(n_cells=300, n_genes=60, n_proteins=8, random_state=7)
    mdata["rna"].var["highly_variable"] = np.arange(60) < 40
    model = pc.tl.integrate(
        mdata,
        n_latent=4,
        features={"rna": "highly_variable"},
        early_stopping=True,
        early_stopping_patience=3,
        **{**FAST, "max_epochs": 200},
    )
    assert len(model.setup["features"]["rna"]) == 40
    params = mdata.uns["X_pertcausal"]["params"]
    assert params["epochs_run"] < 200 and params["epochs_run"] - params["best_epoch"] - 1 == 3
    # extra features in new data change nothing: the library is over the model's features
    wide = md.MuData({"rna": mdata["rna"].copy()})
    narrow = md.MuData({"rna": mdata["rna"][:, :40].copy()})
    np.testing.assert_allclose(model.translate("rna", "adt", wide), model.translate("rna", "adt", narrow), rtol=1e-6)
    with pytest.raises(KeyError, match=r"features\['rna'\] = 'hvg' is not a column"):
        pc.tl.integrate(mdata, features={"rna": "hvg"}, **FAST)


def test_new_data_with_one_modality(paired):
    mdata, model = paired
    rna_only = md.MuData({"rna": mdata["rna"][:50].copy()})
    emb = model.get_latent_representation(rna_only)
    np.testing.assert_allclose(emb, mdata["rna"].obsm["X_pertcausal"][:50], rtol=1e-5, atol=1e-6)
    pc.tl.translate(rna_only, source="rna", target="adt", model=model)
    assert rna_only["adt_from_rna"].shape == (50, 20)


def test_bad_input_leaves_the_mudata_unchanged():
    mdata = pc.data.simulate_multimodal(n_cells=60, n_genes=30, n_proteins=5, random_state=4)
    before = (set(mdata.uns), set(mdata.obsm), set(mdata.mod))
    with pytest.raises(KeyError, match="modalities 'atac' are not in the MuData"):
        pc.tl.integrate(mdata, mods=["rna", "atac"], **FAST)
    with pytest.raises(ValueError, match="at least two modalities"):
        pc.tl.integrate(mdata, mods=["rna"], **FAST)
    with pytest.raises(KeyError, match="covariate key 'plate'"):
        pc.tl.integrate(mdata, batch_key="plate", **FAST)
    with pytest.raises(ValueError, match="CUDA is not available") if not _cuda() else nullcontext():
        pc.tl.integrate(mdata, **{**FAST, "device": "cuda", "max_epochs": 1})
    lognorm = mdata.copy()
    lognorm["adt"].X = sp.csr_matrix(_lognorm(lognorm["adt"].X))
    with pytest.raises(ValueError, match="needs raw counts"):
        pc.tl.integrate(lognorm, likelihoods="nb", **FAST)
    bad = mdata.copy()
    bad["adt"].X = bad["adt"].X.toarray()
    bad["adt"].X[0, 0] = np.nan
    with pytest.raises(ValueError, match=r"mdata.mod\['adt'\] has 1 NaN/inf"):
        pc.tl.integrate(bad, **FAST)
    split = md.MuData({"rna": mdata["rna"][:30].copy(), "adt": mdata["adt"][30:].copy()})
    with pytest.raises(ValueError, match="paired=True but no cell is measured in two modalities"):
        pc.tl.integrate(split, paired=True, **FAST)
    assert (set(mdata.uns), set(mdata.obsm), set(mdata.mod)) == before


def test_all_zero_features_are_dropped_with_a_warning():
    mdata = pc.data.simulate_multimodal(n_cells=80, n_genes=30, n_proteins=6, random_state=5)
    X = mdata["adt"].X.toarray()
    X[:, 2] = 0
    mdata["adt"].X = sp.csr_matrix(X)
    with pytest.warns(UserWarning, match="1 features of modality 'adt' are zero in every cell"):
        model = pc.tl.integrate(mdata, n_latent=3, **{**FAST, "max_epochs": 2})
    assert len(model.setup["features"]["adt"]) == 5


@pytest.mark.realdata
@pytest.mark.skipif(not CITESEQ.exists(), reason=f"real data absent: {CITESEQ}")
def test_citeseq_translation_beats_the_mean():
    mdata = md.read_h5mu(CITESEQ)
    rna = mdata["rna"]
    X = rna.X.tocsc()
    mean = np.asarray(X.mean(axis=0)).ravel()
    var = np.asarray(X.multiply(X).mean(axis=0)).ravel() - mean**2
    top = np.argsort(-var / np.maximum(mean, 1e-3))[:1000]  # overdispersed genes
    small = md.MuData({"rna": rna[:, np.sort(top)].copy(), "adt": mdata["adt"].copy()})
    model = pc.tl.integrate(small, n_latent=10, **{**FAST, "max_epochs": 60, "n_hidden": 128})
    pc.tl.translate(small, source="rna", target="adt", model=model)
    val = small.uns["X_pertcausal"]["validation_cells"]
    train = small.obs_names[~small.obs_names.isin(val)]
    pred = small["adt_from_rna"][val].X
    truth = _lognorm(small["adt"][val].X)
    # the decoder predicts the log of an expected proportion, not the mean of the log: put it on the measured
    # scale with a per-protein line fitted on the training cells, then compare with the training mean
    p_tr, t_tr = small["adt_from_rna"][train].X, _lognorm(small["adt"][train].X)
    slope = ((p_tr - p_tr.mean(0)) * (t_tr - t_tr.mean(0))).sum(0) / ((p_tr - p_tr.mean(0)) ** 2).sum(0)
    calibrated = t_tr.mean(0) + slope * (pred - p_tr.mean(0))
    assert ((calibrated - truth) ** 2).mean() < 0.95 * ((t_tr.mean(0) - truth) ** 2).mean()
    corr = np.array([np.corrcoef(pred[:, j], truth[:, j])[0, 1] for j in range(truth.shape[1])])
    assert np.nanmedian(corr) > 0.3
    cd8 = list(small["adt"].var_names).index("CD8")
    assert corr[cd8] > 0.5


def _cuda() -> bool:
    import torch

    return torch.cuda.is_available()


@pytest.mark.gpu
def test_cuda_matches_cpu_latent(paired):
    if not _cuda():
        pytest.skip("no CUDA device")
    mdata, _ = paired
    cpu = pc.tl.integrate(mdata.copy(), n_latent=6, **{**FAST, "max_epochs": 3})
    gpu = pc.tl.integrate(mdata.copy(), n_latent=6, **{**FAST, "max_epochs": 3, "device": "cuda"})
    np.testing.assert_allclose(gpu.get_latent_representation(), cpu.get_latent_representation(), atol=1e-3)
