"""Integration metrics (FOSCTTM, matching, label transfer, translation accuracy) and their plots."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import warnings

import anndata as ad
import matplotlib.pyplot as plt
import mudata as md
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
from matplotlib.axes import Axes
from matplotlib.figure import Figure

from pertcausal._engines import integration_metrics as im
from pertcausal._engines.integration_metrics import (
    feature_correlation,
    foscttm,
    knn_match_accuracy,
    label_transfer_accuracy,
    matching_ranks,
)
from pertcausal.pl._latent import latent, translation
from pertcausal.tl._evaluate_integration import evaluate_integration

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
REP = "X_pertcausal"


@pytest.fixture(autouse=True)
def _close_figures():
    yield
    plt.close("all")


def _brute_foscttm(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    d = np.sqrt(((a[:, None, :] - b[None, :, :]) ** 2).sum(-1))  # d[i, j] = d(a_i, b_j)
    n = len(a)
    out = np.zeros(n)
    for i in range(n):
        ab = sum(d[i, j] < d[i, i] for j in range(n) if j != i)
        ba = sum(d[j, i] < d[i, i] for j in range(n) if j != i)
        out[i] = (ab + ba) / (2 * (n - 1))
    return out


# ---------------------------------------------------------------------------------------------
# engine
# ---------------------------------------------------------------------------------------------
def test_foscttm_identical_is_zero():
    x = np.random.default_rng(0).normal(size=(200, 8))
    assert np.array_equal(foscttm(x, x), np.zeros(200))
    assert knn_match_accuracy(x, x, k=1) == 1.0


def test_foscttm_independent_is_half():
    rng = np.random.default_rng(1)
    f = foscttm(rng.normal(size=(600, 5)), rng.normal(size=(600, 5)))
    assert f.mean() == pytest.approx(0.5, abs=0.03)
    assert ((f >= 0) & (f <= 1)).all()


def test_foscttm_hand_computed():
    # a = 0, 1, 2; b = 0, 2, 1 (samples 1 and 2 swapped in b)
    # a->b: i=0: own 0, none closer; i=1: own |1-2|=1, b_2=1 is closer; i=2: own |2-1|=1, b_1=2 closer
    # b->a: i=0: 0; i=1: b_1=2, own |2-1|=1, a_2=2 closer; i=2: b_2=1, own |1-2|=1, a_1=1 closer
    a = np.array([[0.0], [1.0], [2.0]])
    b = np.array([[0.0], [2.0], [1.0]])
    assert foscttm(a, b).tolist() == [0.0, 0.5, 0.5]
    r_ab, r_ba = matching_ranks(a, b)
    assert r_ab.tolist() == [0, 1, 1] and r_ba.tolist() == [0, 1, 1]
    assert knn_match_accuracy(a, b, k=1) == pytest.approx(1 / 3)
    assert knn_match_accuracy(a, b, k=2) == 1.0


def test_foscttm_blocks_match_brute_force():
    rng = np.random.default_rng(2)
    a = rng.normal(size=(57, 3))
    b = a + rng.normal(scale=0.8, size=a.shape)
    expected = _brute_foscttm(a, b)
    for block in (1, 57 * 5, 57 * 57 * 2):  # one row at a time, a few rows, everything at once
        np.testing.assert_allclose(foscttm(a, b, max_block_entries=block), expected)
    # another metric goes through sklearn too
    cos = foscttm(a, b, metric="cosine", max_block_entries=100)
    assert cos.shape == (57,) and 0 < cos.mean() < 0.5


def test_foscttm_errors():
    with pytest.raises(ValueError, match="same samples"):
        foscttm(np.zeros((3, 2)), np.zeros((4, 2)))
    with pytest.raises(ValueError, match="at least 2"):
        foscttm(np.zeros((1, 2)), np.zeros((1, 2)))
    with pytest.raises(ValueError, match="NaN"):
        foscttm(np.array([[0.0], [np.nan]]), np.zeros((2, 1)))
    with pytest.raises(ValueError, match="k must be"):
        knn_match_accuracy(np.zeros((3, 1)), np.zeros((3, 1)), k=0)


def test_feature_correlation_equals_corrcoef(monkeypatch):
    rng = np.random.default_rng(3)
    true = rng.poisson(2.0, size=(40, 7)).astype(float)
    pred = true + rng.normal(size=true.shape)
    true[:, 3] = 5.0  # constant measured column
    pred[:, 5] = 0.1  # constant predicted column (mean 0.1 is not exact in binary)
    with np.errstate(invalid="ignore", divide="ignore"):
        expected = np.array([np.corrcoef(pred[:, j], true[:, j])[0, 1] for j in range(7)])
    expected[[3, 5]] = np.nan
    np.testing.assert_allclose(feature_correlation(pred, true), expected, rtol=1e-12)
    np.testing.assert_allclose(feature_correlation(sp.csr_matrix(pred), sp.csc_matrix(true)), expected, rtol=1e-12)
    monkeypatch.setattr(im, "_COLUMN_BLOCK_ENTRIES", 40 * 2)  # two columns per block
    np.testing.assert_allclose(feature_correlation(pred, sp.csr_matrix(true)), expected, rtol=1e-12)
    with pytest.raises(ValueError, match="same shape"):
        feature_correlation(pred, true[:, :3])


def test_label_transfer_separated_and_shuffled():
    rng = np.random.default_rng(4)
    centers = np.array([[0.0, 0.0], [20.0, 0.0], [0.0, 20.0]])
    labels = np.repeat(["a", "b", "c"], 100)
    ref = centers[np.repeat([0, 1, 2], 100)] + rng.normal(size=(300, 2))
    query = centers[np.repeat([0, 1, 2], 100)] + rng.normal(size=(300, 2))
    assert label_transfer_accuracy(ref, labels, query, labels, k=15) == 1.0
    # labels that the embedding knows nothing about: chance (1/3 for three balanced labels)
    acc = label_transfer_accuracy(ref, rng.permutation(labels), query, rng.permutation(labels), k=15)
    assert acc == pytest.approx(1 / 3, abs=0.08)
    # k larger than the reference: capped, the majority of everything
    assert label_transfer_accuracy(ref[:3], ["a", "a", "b"], query[:4], ["a"] * 4, k=50) == 1.0
    with pytest.raises(ValueError, match="one entry per sample"):
        label_transfer_accuracy(ref, labels[:10], query, labels)


# ---------------------------------------------------------------------------------------------
# tl.evaluate_integration on a constructed MuData
# ---------------------------------------------------------------------------------------------
def _emb(positions) -> np.ndarray:
    """Points on a line, embedded in 2-D."""
    return np.c_[np.asarray(positions, dtype=float), np.zeros(len(positions))]


@pytest.fixture
def mdata() -> md.MuData:
    """rna: c0..c9 (counts), atac: c4..c13, prot: c0..c5 (continuous) and two translations.

    Embeddings: cell c_i sits at position i in every modality, except that prot swaps c0 and c1.
    Hence rna|atac (c4..c9) and atac|prot (c4, c5) align perfectly; rna|prot (c0..c5) has FOSCTTM
    1/5 for c0 and c1 (each has the other closer than its partner) and 0 otherwise: mean 1/15.
    """
    rng = np.random.default_rng(5)
    rna_cells = [f"c{i}" for i in range(10)]
    atac_cells = [f"c{i}" for i in range(4, 14)]
    prot_cells = [f"c{i}" for i in range(6)]
    counts = rng.poisson(3.0, size=(10, 5)).astype(np.float32)
    counts[:, 4] = 0.0  # a gene never detected
    counts[:, 0] += np.arange(10) * 4  # unequal totals, so normalisation matters
    rna = ad.AnnData(counts, obs=pd.DataFrame(index=rna_cells), var=pd.DataFrame(index=[f"g{j}" for j in range(5)]))
    rna.obs["ct"] = np.where(np.arange(10) < 7, "low", "high")
    rna.obsm[REP] = _emb(range(10))
    atac = ad.AnnData(np.zeros((10, 3)), obs=pd.DataFrame(index=atac_cells))
    atac.var_names = [f"peak{j}" for j in range(3)]
    atac.obs["ct"] = np.where(np.arange(4, 14) < 7, "low", "high")
    atac.obsm[REP] = _emb(range(4, 14))
    prot_x = rng.normal(size=(6, 4)) + 2.5
    prot = ad.AnnData(prot_x, obs=pd.DataFrame(index=prot_cells), var=pd.DataFrame(index=["p1", "p2", "p3", "p4"]))
    prot.obsm[REP] = _emb([1, 0, 2, 3, 4, 5])

    # prot predicted from all rna cells: p1 = 2 * true + 1 (r = 1), p2 = true (r = 1), p3 = -true
    # (r = -1), p4 constant (no r), pX not a feature of prot (ignored)
    pred = np.zeros((10, 5))
    pred[:6, 0] = 2 * prot_x[:, 0] + 1
    pred[:6, 1] = prot_x[:, 1]
    pred[:6, 2] = -prot_x[:, 2]
    pred[:, 3] = 0.3
    pred[6:, :3] = rng.normal(size=(4, 3)) * 100  # rna cells without protein: never compared
    prot_from_rna = ad.AnnData(
        pred, obs=pd.DataFrame(index=rna_cells), var=pd.DataFrame(index=["p1", "p2", "p3", "p4", "pX"])
    )
    # rna predicted from prot cells: exactly the log-normalised counts (r = 1 but for the zero gene)
    norm = np.log1p(1e4 * counts[:6] / counts[:6].sum(1, keepdims=True))
    rna_from_prot = ad.AnnData(norm, obs=pd.DataFrame(index=prot_cells), var=rna.var.copy())
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return md.MuData(
            {"rna": rna, "atac": atac, "prot": prot, "prot_from_rna": prot_from_rna, "rna_from_prot": rna_from_prot}
        )


def _value(res: pd.DataFrame, metric: str, mods: str) -> tuple[float, int]:
    row = res[(res["metric"] == metric) & (res["mods"] == mods)]
    assert len(row) == 1, (metric, mods, res)
    return float(row["value"].iloc[0]), int(row["n_cells"].iloc[0])


def test_evaluate_integration_exact(mdata, tmp_path):
    res = evaluate_integration(mdata, labels_key="ct", k=1)
    assert list(res.columns) == ["metric", "mods", "translation", "value", "n_cells"]
    assert _value(res, "foscttm", "rna|atac") == (0.0, 6)
    assert _value(res, "match_top5", "rna|atac") == (1.0, 6)
    fos, n = _value(res, "foscttm", "rna|prot")
    assert n == 6 and fos == pytest.approx(1 / 15)
    assert _value(res, "match_top5", "rna|prot") == (1.0, 6)
    assert _value(res, "foscttm", "atac|prot") == (0.0, 2)
    # labels only in rna and atac; every cell's nearest neighbour across has its label
    assert set(res.loc[res["metric"] == "label_transfer", "mods"]) == {"rna->atac", "atac->rna"}
    assert _value(res, "label_transfer", "rna->atac") == (1.0, 10)
    assert _value(res, "label_transfer", "atac->rna") == (1.0, 10)
    # translations: found by name; prot is continuous (compared as is), rna counts are log-normalised
    assert _value(res, "translation_pearson_mean", "rna->prot") == (pytest.approx(1 / 3), 6)
    assert _value(res, "translation_pearson_median", "rna->prot") == (pytest.approx(1.0), 6)
    assert _value(res, "translation_n_features", "rna->prot") == (2.0 + 1, 6)
    assert _value(res, "translation_pearson_mean", "prot->rna") == (pytest.approx(1.0), 6)
    assert _value(res, "translation_n_features", "prot->rna") == (4.0, 6)
    assert set(res.loc[res["mods"] == "rna->prot", "translation"]) == {"prot_from_rna"}
    assert set(res.loc[res["metric"] == "foscttm", "translation"]) == {""}

    store = mdata.uns["integration_metrics"]
    pd.testing.assert_frame_equal(store["results"], res)
    table = store["translation"]["prot_from_rna"]
    assert list(table.index) == ["p1", "p2", "p3", "p4"]
    np.testing.assert_allclose(table["pearson"].to_numpy()[:3], [1.0, 1.0, -1.0])
    assert np.isnan(table["pearson"].iloc[3])
    assert np.isnan(store["translation"]["rna_from_prot"].loc["g4", "pearson"])
    assert store["params"]["use_rep"] == REP and list(store["params"]["mods"]) == ["rna", "atac", "prot"]
    assert list(store["params"]["translation_target_counts"]) == [False, True]

    path = tmp_path / "m.h5mu"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        mdata.write(path)
        back = md.read_h5mu(path)
    stored = back.uns["integration_metrics"]
    pd.testing.assert_frame_equal(stored["results"], res, check_dtype=False)
    pd.testing.assert_frame_equal(stored["translation"]["prot_from_rna"], table, check_dtype=False)
    assert stored["params"]["labels_key"] == "ct" and int(stored["params"]["k"]) == 1


def test_evaluate_integration_options(mdata):
    # held-out cells: everything restricted to them
    res = evaluate_integration(mdata, cells=["c4", "c5", "c6", "c7"], translations=[], key_added="held_out")
    assert _value(res, "foscttm", "rna|atac") == (0.0, 4)
    assert _value(res, "foscttm", "rna|prot") == (0.0, 2)
    assert not res["metric"].str.startswith("translation").any()
    assert "held_out" in mdata.uns and "integration_metrics" not in mdata.uns
    # explicit modalities and translation tuple; match_k=1 catches the swapped pair
    res = evaluate_integration(mdata, mods=["rna", "prot"], translations=[("rna", "prot", "prot_from_rna")], match_k=1)
    assert set(res["mods"]) == {"rna|prot", "rna->prot"}
    assert _value(res, "match_top1", "rna|prot")[0] == pytest.approx(4 / 6)
    # translations alone (no two embeddings under that key)
    res = evaluate_integration(mdata, use_rep="X_other", translations=["rna_from_prot"])
    assert set(res["metric"]) == {"translation_pearson_mean", "translation_pearson_median", "translation_n_features"}


def test_evaluate_integration_errors(mdata):
    before = set(mdata.uns)
    with pytest.raises(KeyError, match=r"use_rep 'X_umap' is in the obsm of no modality.*rna: \['X_pertcausal'\]"):
        evaluate_integration(mdata, use_rep="X_umap", translations=[])
    mdata.mod["rna"].obsm["X_rna_only"] = mdata.mod["rna"].obsm[REP]
    with pytest.raises(KeyError, match=r"not in mdata\['atac'\].obsm"):
        evaluate_integration(mdata, use_rep="X_rna_only", mods=["rna", "atac"])
    with pytest.raises(ValueError, match=r"at least two modalities with obsm\['X_rna_only'\].*'rna'"):
        evaluate_integration(mdata, use_rep="X_rna_only", translations=[])
    with pytest.raises(KeyError, match=r"translation 'prot_from_atac' is not a modality.*'rna_from_prot'"):
        evaluate_integration(mdata, translations=["prot_from_atac"])
    with pytest.raises(ValueError, match=r"no two modalities share at least 2 cells.*prot\|atac: 0"):
        evaluate_integration(mdata, mods=["prot", "atac"], cells=["c0", "c9"], translations=[])
    with pytest.raises(ValueError, match=r"translation 'prot_from_rna' \(rna -> prot\) shares no cell with"):
        evaluate_integration(mdata, mods=[], cells=["c7", "c8"], translations=["prot_from_rna"])
    with pytest.raises(ValueError, match="none of the 2 names passed as cells"):
        evaluate_integration(mdata, cells=["nope", "zilch"])
    with pytest.raises(KeyError, match="labels_key 'cell_type'"):
        evaluate_integration(mdata, labels_key="cell_type")
    with pytest.raises(KeyError, match="mod 'dna' is not a modality"):
        evaluate_integration(mdata, mods=["rna", "dna"])
    with pytest.raises(TypeError, match="MuData"):
        evaluate_integration(mdata.mod["rna"])
    assert set(mdata.uns) == before  # nothing written by a failed call


def test_evaluate_integration_no_shared_cells_at_all(mdata):
    with pytest.raises(ValueError, match=r"no two modalities share at least 2 cells.*rna\|atac: 1"):
        evaluate_integration(mdata, mods=["rna", "atac"], cells=["c0", "c9", "c13"], translations=[])


# ---------------------------------------------------------------------------------------------
# pl.latent and pl.translation
# ---------------------------------------------------------------------------------------------
@pytest.fixture
def joint(mdata) -> md.MuData:
    mdata.obsm[REP] = np.random.default_rng(6).normal(size=(mdata.n_obs, 3))
    return mdata


def test_latent_panels(joint):
    ax = latent(joint, show=False)
    assert isinstance(ax, Axes)
    np.testing.assert_allclose(ax.collections[0].get_offsets(), joint.obsm[REP][:, :2])
    axes = latent(joint, color=["rna:ct", "g0", "ct"], show=False)
    assert isinstance(axes, list) and len(axes) == 3
    # categorical: legend with the categories (and NA for cells without a label)
    legend = [t.get_text() for t in axes[0].get_legend().get_texts()]
    assert legend == ["high", "low", "NA"]
    # a feature of a modality: continuous, with a colour bar, cells without rna grey
    fig = axes[1].figure
    assert len(fig.axes) == 4
    drawn = {c.get_gid(): len(c.get_offsets()) for c in axes[1].collections}
    assert drawn == {"cells": 10, "cells_na": joint.n_obs - 10}
    # a modality's own embedding, and an explicit Axes
    _, ax_given = plt.subplots()
    out = latent(joint, mod="prot", color="p1", ax=ax_given)
    assert out is ax_given
    pts = ax_given.collections[0].get_offsets()
    assert len(pts) == 6 and set(np.asarray(pts)[:, 0]) == set(range(6))


def test_latent_save_and_errors(joint, tmp_path):
    path = tmp_path / "latent.png"
    fig = latent(joint, color="rna:ct", save=path, return_fig=True)
    assert isinstance(fig, Figure)
    assert path.read_bytes()[:8] == PNG_MAGIC
    with pytest.raises(KeyError, match=r"use_rep 'X_umap' is not in mdata.obsm"):
        latent(joint, use_rep="X_umap", show=False)
    with pytest.raises(KeyError, match=r"not in mdata.obsm.*have it \(pass mod=\)"):
        del joint.obsm[REP]
        latent(joint, show=False)
    with pytest.raises(KeyError, match="color 'nope'"):
        latent(joint, mod="rna", color="nope", show=False)
    with pytest.raises(ValueError, match="one Axes per panel"):
        latent(joint, mod="rna", color=["ct", "g0"], ax=plt.subplots()[1])


@pytest.mark.slow  # the first UMAP compiles numba code (a few seconds)
def test_latent_umap_leaves_data_unchanged(joint):
    pytest.importorskip("scanpy")
    rna = joint.mod["rna"]
    before_obsm, before_uns = set(rna.obsm), set(rna.uns)
    before_joint = (set(joint.obsm), set(joint.uns), set(joint.obsp))
    emb = rna.obsm[REP].copy()
    rna.obsm[REP] = emb + np.random.default_rng(7).normal(scale=0.1, size=emb.shape)
    emb = rna.obsm[REP].copy()
    ax = latent(rna, umap=True, n_neighbors=5, color="ct", show=False)
    assert ax.get_xlabel() == "UMAP 1"
    assert np.asarray(ax.collections[0].get_offsets()).shape == (10, 2)
    assert set(rna.obsm) == before_obsm and set(rna.uns) == before_uns and not rna.obsp
    np.testing.assert_array_equal(rna.obsm[REP], emb)
    assert (set(joint.obsm), set(joint.uns), set(joint.obsp)) == before_joint


def test_translation_plot(mdata, tmp_path):
    axes = translation(mdata, source="rna", target="prot", n_features=2, show=False)
    assert len(axes) == 2
    titles = [a.get_title() for a in axes]
    assert titles[0].endswith("r = 1.00") and titles[1] == "p3\nr = -1.00"
    x, y = np.asarray(axes[1].collections[0].get_offsets()).T
    np.testing.assert_allclose(y, -x)
    # counts are shown log-normalised; a constant feature says so
    axes = translation(mdata, source="prot", target="rna", features=["g0", "g4"], show=False)
    assert axes[0].get_title() == "g0\nr = 1.00" and "n/a" in axes[1].get_title()
    assert "log1p" in axes[0].get_xlabel()
    ax = translation(mdata, source="prot", target="rna", features="g1", show=False)
    assert isinstance(ax, Axes)
    path = tmp_path / "translation.png"
    translation(mdata, source="rna", target="prot", save=path)
    assert path.read_bytes()[:8] == PNG_MAGIC
    with pytest.raises(KeyError, match="translation 'atac_from_rna' is not a modality"):
        translation(mdata, source="rna", target="atac", show=False)
    with pytest.raises(KeyError, match=r"feature\(s\) 'pX'"):
        translation(mdata, source="rna", target="prot", features=["pX"], show=False)
