from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import subprocess
import sys
import time
import warnings

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import pytest
from anndata import AnnData
from matplotlib.axes import Axes
from matplotlib.figure import Figure

import pertcausal as pc

KEYS = {"perturbation_key": "perturbation", "context_key": "context", "control": "control"}
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(autouse=True)
def _close_figures():
    yield
    plt.close("all")


@pytest.fixture(scope="module")
def screen():
    """Simulated screen imputed with synthetic interventions (which gives a reliability)."""
    mdata = pc.data.simulate_screen(n_perturbations=12, n_contexts=5, n_genes=40, seed=0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        pc.tl.impute(mdata, method="synthetic_interventions", **KEYS, progress_bar=False)
    return mdata


@pytest.fixture(scope="module")
def imp(screen):
    return screen["impute"]


@pytest.fixture(scope="module")
def sig(screen):
    return pc.pp.signatures(screen, **KEYS)


def _pivot(adata: AnnData, values: np.ndarray) -> np.ndarray:
    """values per row arranged perturbation x context in category order (NaN for absent pairs)."""
    df = pd.DataFrame({"p": adata.obs["perturbation"].astype(str), "c": adata.obs["context"].astype(str), "v": values})
    table = df.pivot(index="p", columns="c", values="v")
    table = table.reindex(index=adata.obs["perturbation"].cat.categories, columns=adata.obs["context"].cat.categories)
    return table.to_numpy(np.float64)


def _image(ax: Axes) -> np.ndarray:
    return np.ma.filled(ax.images[0].get_array().astype(np.float64), np.nan)


def _collection(ax: Axes, gid: str):
    found = [c for c in ax.collections if c.get_gid() == gid]
    assert len(found) == 1, [c.get_gid() for c in ax.collections]
    return found[0]


# --------------------------------------------------------------------------------------------
# pl.imputation
# --------------------------------------------------------------------------------------------
def test_exports():
    expected = {
        "causal_graph",
        "imputation",
        "latent",
        "manhattan",
        "prediction_scatter",
        "qq",
        "reliability",
        "targets",
        "translation",
    }
    assert set(pc.pl.__all__) == expected
    assert callable(pc.pl.imputation) and callable(pc.pl.prediction_scatter)


def test_heatmap_is_norm_per_pair(imp):
    axes = pc.pl.imputation(imp, show=False)
    expected = _pivot(imp, np.linalg.norm(np.asarray(imp.X, dtype=np.float64), axis=1))
    got = _image(axes["heatmap"])
    assert got.shape == (12, 5)
    np.testing.assert_allclose(got, expected, rtol=1e-6)
    # norm is a magnitude: the colour scale starts at 0
    assert axes["heatmap"].images[0].get_clim() == pytest.approx((0.0, np.nanmax(expected)))
    # tick labels follow the category order
    assert [t.get_text() for t in axes["heatmap"].get_yticklabels()] == list(imp.obs["perturbation"].cat.categories)
    assert [t.get_text() for t in axes["heatmap"].get_xticklabels()] == list(imp.obs["context"].cat.categories)


def test_heatmap_mean_and_gene(imp):
    x = np.asarray(imp.X, dtype=np.float64)
    ax = pc.pl.imputation(imp, summary="mean", show=False)["heatmap"]
    np.testing.assert_allclose(_image(ax), _pivot(imp, x.mean(1)), rtol=1e-6, atol=1e-9)
    gene = imp.var_names[7]
    ax = pc.pl.imputation(imp, gene=gene, show=False)["heatmap"]
    expected = _pivot(imp, x[:, 7])
    np.testing.assert_allclose(_image(ax), expected, rtol=1e-6)
    vmax = np.abs(expected).max()
    assert ax.images[0].get_clim() == pytest.approx((-vmax, vmax))  # signed: centred on 0
    assert ax.images[0].get_cmap().name.startswith("RdBu_r")
    assert gene in ax.get_title()


def test_observed_markers(imp):
    ax = pc.pl.imputation(imp, show=False)["heatmap"]
    dots = _collection(ax, "observed").get_offsets()
    obs = imp.obs[imp.obs["observed"]]
    assert len(dots) == int(imp.obs["observed"].sum()) == 33
    expected = set(zip(obs["context"].cat.codes.astype(float), obs["perturbation"].cat.codes.astype(float)))
    assert {tuple(map(float, d)) for d in np.asarray(dots)} == expected
    ax = pc.pl.imputation(imp, show_observed=False, show=False)["heatmap"]
    assert not [c for c in ax.collections if c.get_gid() == "observed"]


def test_reliability_panel(imp):
    axes = pc.pl.imputation(imp, show=False)
    assert set(axes) == {"heatmap", "colorbar", "reliability", "reliability_colorbar"}
    rel = _image(axes["reliability"])
    np.testing.assert_array_equal(rel, _pivot(imp, imp.obs["reliability"].to_numpy()))
    observed = _pivot(imp, imp.obs["observed"].to_numpy(float)) == 1
    assert np.isnan(rel[observed]).all() and np.isfinite(rel[~observed]).all()
    assert axes["reliability"].images[0].get_clim() == (0.0, 1.0)
    assert set(pc.pl.imputation(imp, show_reliability=False, show=False)) == {"heatmap", "colorbar"}
    # no finite reliability: no panel
    no_rel = imp.copy()
    no_rel.obs["reliability"] = np.nan
    assert set(pc.pl.imputation(no_rel, show=False)) == {"heatmap", "colorbar"}


def test_mudata_input_and_key(screen, imp):
    from_mdata = _image(pc.pl.imputation(screen, show=False)["heatmap"])
    np.testing.assert_array_equal(from_mdata, _image(pc.pl.imputation(imp, show=False)["heatmap"]))
    with pytest.raises(KeyError, match=r"key 'nope' is not a modality.*'rna'.*'impute'"):
        pc.pl.imputation(screen, key="nope")


def test_missing_gene_error(imp):
    with pytest.raises(KeyError, match=r"gene 'NOT_A_GENE' is not in .*var_names; genes are: 'G0000'"):
        pc.pl.imputation(imp, gene="NOT_A_GENE")
    with pytest.raises(ValueError, match="unknown summary 'max'"):
        pc.pl.imputation(imp, summary="max")


def test_signatures_input_masks_unmeasured(sig):
    ax = pc.pl.imputation(sig, show=False)["heatmap"]
    img = ax.images[0].get_array()
    assert img.shape == (12, 5)
    assert int((~np.ma.getmaskarray(img)).sum()) == sig.n_obs
    assert len(_collection(ax, "observed").get_offsets()) == sig.n_obs  # every row counts as observed


def _grid_adata(n_p: int, n_c: int, n_genes: int = 5, seed: int = 0) -> AnnData:
    rng = np.random.default_rng(seed)
    p, c = np.divmod(np.arange(n_p * n_c), n_c)
    perts = [f"pert{i}" for i in range(n_p)]
    ctxs = [f"ctx{i}" for i in range(n_c)]
    obs = pd.DataFrame(
        {
            "perturbation": pd.Categorical.from_codes(p, categories=perts),
            "context": pd.Categorical.from_codes(c, categories=ctxs),
            "observed": rng.random(n_p * n_c) < 0.3,
            "reliability": np.nan,
        },
        index=[f"{perts[i]}|{ctxs[j]}" for i, j in zip(p, c)],
    )
    return AnnData(rng.standard_normal((n_p * n_c, n_genes)).astype(np.float32), obs=obs)


def test_large_grid_has_no_ticks_and_is_fast():
    big = _grid_adata(3000, 12)
    t0 = time.perf_counter()
    fig = pc.pl.imputation(big, return_fig=True)
    fig.canvas.draw()
    assert time.perf_counter() - t0 < 5.0
    ax = fig.axes[0]
    assert len(ax.get_yticks()) == 0 and "3,000" in ax.get_ylabel()
    assert [t.get_text() for t in ax.get_xticklabels()] == [f"ctx{i}" for i in range(12)]
    assert len(_collection(ax, "observed").get_offsets()) == int(big.obs["observed"].sum())
    # the threshold: 60 labels get ticks, 61 do not
    assert len(pc.pl.imputation(_grid_adata(60, 2), show=False)["heatmap"].get_yticks()) == 60
    assert len(pc.pl.imputation(_grid_adata(61, 2), show=False)["heatmap"].get_yticks()) == 0


def test_imputation_return_types(imp, tmp_path):
    fig = pc.pl.imputation(imp, return_fig=True)
    assert isinstance(fig, Figure)
    axes = pc.pl.imputation(imp, show=False)
    assert isinstance(axes, dict) and all(isinstance(a, Axes) for a in axes.values())
    _, own = plt.subplots()
    axes = pc.pl.imputation(imp, ax=own)  # show=None with ax: not shown, axes returned
    assert axes["heatmap"] is own
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # Agg cannot show
        assert pc.pl.imputation(imp, show=True) is None
    out = tmp_path / "imputation.png"
    axes = pc.pl.imputation(imp, save=out)  # show=None with save: not shown, axes returned
    assert isinstance(axes, dict)
    data = out.read_bytes()
    assert len(data) > 1000 and data.startswith(PNG_MAGIC)


# --------------------------------------------------------------------------------------------
# pl.prediction_scatter
# --------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def heldout(sig):
    """Hold out one observed pair of the signatures, impute it from the rest."""
    counts_p = sig.obs["perturbation"].value_counts()
    counts_c = sig.obs["context"].value_counts()
    row = next(
        i
        for i, (p, c) in enumerate(zip(sig.obs["perturbation"], sig.obs["context"]))
        if counts_p[p] > 1 and counts_c[c] > 1
    )
    train = sig[np.arange(sig.n_obs) != row].copy()
    pred = pc.tl.impute(train, method="additive", progress_bar=False)
    p, c = str(sig.obs["perturbation"].iloc[row]), str(sig.obs["context"].iloc[row])
    return pred, p, c, row


def test_scatter_offsets_and_pearson(sig, heldout):
    pred, p, c, row = heldout
    assert not bool(pred.obs.loc[f"{p}|{c}", "observed"])
    ax = pc.pl.prediction_scatter(pred, sig, perturbation=p, context=c, show=False)
    truth = np.asarray(sig.X[row], dtype=np.float64)
    predicted = np.asarray(pred[f"{p}|{c}"].X, dtype=np.float64).ravel()
    np.testing.assert_allclose(_collection(ax, "genes").get_offsets(), np.c_[truth, predicted], rtol=1e-6)
    r = np.corrcoef(truth, predicted)[0, 1]
    assert f"r = {r:.2f}" in ax.get_title()
    assert p in ax.get_title() and c in ax.get_title()
    # y = x reference line over the whole range
    line = next(ln for ln in ax.lines if ln.get_gid() == "identity")
    xs, ys = line.get_data()
    np.testing.assert_array_equal(xs, ys)
    assert xs[0] <= min(truth.min(), predicted.min()) and xs[-1] >= max(truth.max(), predicted.max())


def test_scatter_aligns_truth_genes_by_name(sig, heldout):
    pred, p, c, row = heldout
    shuffled = sig[:, sig.var_names[::-1]].copy()
    ax = pc.pl.prediction_scatter(pred, shuffled, perturbation=p, context=c, highlight=0, show=False)
    np.testing.assert_allclose(_collection(ax, "genes").get_offsets()[:, 0], np.asarray(sig.X[row]), rtol=1e-6)
    # an array aligned with pred.var_names gives the same points
    ax2 = pc.pl.prediction_scatter(pred, np.asarray(sig.X[row]), perturbation=p, context=c, show=False)
    np.testing.assert_allclose(_collection(ax2, "genes").get_offsets(), _collection(ax, "genes").get_offsets())


def test_scatter_top_k_and_highlight(sig, heldout):
    pred, p, c, row = heldout
    truth = np.asarray(sig.X[row], dtype=np.float64)
    order = np.argsort(-np.abs(truth))
    ax = pc.pl.prediction_scatter(pred, sig, perturbation=p, context=c, top_k=12, highlight=4, show=False)
    pts = np.asarray(_collection(ax, "genes").get_offsets())
    assert len(pts) == 12
    np.testing.assert_allclose(np.sort(pts[:, 0]), np.sort(truth[order[:12]]), rtol=1e-6)
    labels = {t.get_text() for t in ax.texts if t.get_gid() == "label"}
    assert labels == set(sig.var_names[order[:4]])
    r = np.corrcoef(pts[:, 0], pts[:, 1])[0, 1]
    assert f"r = {r:.2f}" in ax.get_title() and "top 12" in ax.get_title()


def test_scatter_simulated_truth_from_mudata(screen, imp):
    p, c = imp.obs.loc[~imp.obs["observed"], ["perturbation", "context"]].astype(str).iloc[0]
    ax = pc.pl.prediction_scatter(screen, perturbation=p, context=c, show=False)
    pi = list(screen.uns["true_perturbations"]).index(p)
    ci = list(screen.uns["true_contexts"]).index(c)
    pts = np.asarray(_collection(ax, "genes").get_offsets())
    np.testing.assert_allclose(pts[:, 0], screen.uns["true_effect"][pi, ci], rtol=1e-6)
    np.testing.assert_allclose(pts[:, 1], np.asarray(imp[f"{p}|{c}"].X).ravel(), rtol=1e-6)


def test_scatter_errors(sig, heldout, imp):
    pred, p, c, _ = heldout
    with pytest.raises(KeyError, match=r"pair 'P999\|C00'.*perturbation 'P999' not in it.*available pairs include"):
        pc.pl.prediction_scatter(pred, sig, perturbation="P999", context="C00")
    missing = imp.obs.loc[~imp.obs["observed"]].index[0]  # imputed, hence absent from the signatures
    mp, mc = missing.split("|")
    with pytest.raises(KeyError, match=rf"pair '{mp}\|{mc}'.* is not in truth; available pairs include: '{mp}\|"):
        pc.pl.prediction_scatter(imp, sig, perturbation=mp, context=mc)
    with pytest.raises(ValueError, match=r"one value per gene of pred \(40\); got shape \(3,\)"):
        pc.pl.prediction_scatter(pred, np.zeros(3), perturbation=p, context=c)
    with pytest.raises(ValueError, match="no simulated truth"):
        pc.pl.prediction_scatter(pred, perturbation=p, context=c)
    with pytest.raises(ValueError, match="top_k must be >= 1"):
        pc.pl.prediction_scatter(pred, sig, perturbation=p, context=c, top_k=0)


def test_scatter_warns_when_pair_is_not_a_prediction(sig, imp):
    p, c = sig.obs[["perturbation", "context"]].astype(str).iloc[0]
    with pytest.warns(UserWarning, match="observed in pred"):
        ax = pc.pl.prediction_scatter(imp, sig, perturbation=p, context=c, show=False)
    assert "r = 1.00" in ax.get_title()  # the measured effect against itself


def test_scatter_return_types_and_save(sig, heldout, tmp_path):
    pred, p, c, _ = heldout
    assert isinstance(pc.pl.prediction_scatter(pred, sig, perturbation=p, context=c, return_fig=True), Figure)
    assert isinstance(pc.pl.prediction_scatter(pred, sig, perturbation=p, context=c, show=False), Axes)
    _, own = plt.subplots()
    assert pc.pl.prediction_scatter(pred, sig, perturbation=p, context=c, ax=own) is own
    out = tmp_path / "scatter.png"
    assert isinstance(pc.pl.prediction_scatter(pred, sig, perturbation=p, context=c, save=out), Axes)
    data = out.read_bytes()
    assert len(data) > 1000 and data.startswith(PNG_MAGIC)


def test_import_is_light():
    code = "import sys, pertcausal.pl; assert 'torch' not in sys.modules and 'matplotlib' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)


def test_reliability_retention_curve():
    sig = pc.data.simulate_effects(n_perturbations=30, n_contexts=6, n_genes=20, seed=0)
    res = pc.tl.evaluate_imputation(sig, methods=["additive", "soft_impute"], n_folds=3, progress_bar=False)
    ax = pc.pl.reliability(res, n_points=10, show=False)
    lines = {line.get_gid(): line for line in ax.get_lines()}
    assert set(lines) == {"curve:additive"}  # soft_impute gives no reliability
    x, y = lines["curve:additive"].get_data()
    part = res[(res["method"] == "additive") & np.isfinite(res["reliability"])]
    assert x[-1] == pytest.approx(1.0)
    assert y[-1] == pytest.approx(part["rel_error"].mean())  # keeping everything: the plain mean
    n = int(round(0.3 * len(part)))
    best = part.sort_values("reliability", ascending=False, kind="stable")["rel_error"].iloc[:n].mean()
    assert y[2] == pytest.approx(best)  # the 30% most reliable pairs
    with pytest.raises(ValueError, match="no finite reliability"):
        pc.pl.reliability(res, methods=["soft_impute"], show=False)
    with pytest.raises(KeyError, match="no column 'auc'"):
        pc.pl.reliability(res, metric="auc", show=False)
    plt.close("all")
