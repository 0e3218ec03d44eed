"""Real data from ../shared/data: Kang 2018 (IFN-beta x cell type x donor) and Papalexi 2021 (CRISPR KO)."""

from __future__ import annotations

import numpy as np
import pytest

import pertcausal as pc

pytestmark = pytest.mark.realdata

KANG_KEYS = {"perturbation_key": "group_id", "context_key": "context", "control": "ctrl"}


def test_kang_signatures(kang_signatures):
    sig = kang_signatures
    assert sig.n_obs == 10  # IFN-beta in 5 cell types x 2 donors
    isg15 = sig[:, "ISG15"].X.ravel()
    assert (isg15 > 2.0).all()  # the interferon response gene is strongly induced everywhere
    assert set(sig.uns["control_n_cells"].values()) <= set(range(15, 101))


def test_kang_ntk_and_si_beat_additive(kang_signatures):
    """Hold out each context's stimulated response in turn; compare on top-50 DE gene effects."""
    res = pc.tl.evaluate_imputation(
        kang_signatures,
        methods=["ntk", "synthetic_interventions", "additive", "mean_over_contexts"],
        holdout="context",
        n_folds=10,
        progress_bar=False,
        device="cpu",
    )
    table = pc.tl.summarize_imputation(res)
    assert (table["n_pairs"] == 10).all()
    top = table["pearson_top_k"]
    assert top["ntk"] > top["additive"] + 0.02
    assert top["synthetic_interventions"] > top["additive"] + 0.04
    assert top["ntk"] > 0.9 and top["synthetic_interventions"] > 0.93
    # one perturbation: the additive model reduces to the mean over contexts
    assert top["additive"] == pytest.approx(top["mean_over_contexts"], abs=1e-6)


def test_kang_impute_hidden_context_from_raw_counts(kang_cells, kang_signatures):
    """Hide the stimulated cells of one context, impute them from raw counts, compare to the truth."""
    from mudata import MuData

    target = "CD14+ Monocytes_101"
    hide = ((kang_cells.obs["context"] == target) & (kang_cells.obs["group_id"] == "stim")).to_numpy()
    mdata = MuData({"rna": kang_cells[~hide].copy()})
    pc.tl.impute(mdata, method="ntk", **KANG_KEYS, progress_bar=False, device="cpu")
    imp = mdata["impute"]
    assert not imp.obs.loc[f"stim|{target}", "observed"]
    # truth from the same normalisation (raw counts, normalised by pertcausal)
    truth = pc.pp.signatures(kang_cells, **KANG_KEYS)[f"stim|{target}"].X.ravel()
    pred = imp[f"stim|{target}"].X.ravel()
    top = np.argsort(-np.abs(truth))[:50]
    assert np.corrcoef(truth, pred)[0, 1] > 0.8
    assert np.corrcoef(truth[top], pred[top])[0, 1] > 0.9


@pytest.mark.slow
def test_pertpy_chain_papalexi(papalexi_cells):
    """pertpy's Mixscape perturbation signature on the MuData, then pertcausal imputation on it."""
    import pertpy as pt
    import scanpy as sc
    from mudata import MuData

    a = papalexi_cells.copy()
    a.layers["counts"] = a.X.copy()
    sc.pp.normalize_total(a, target_sum=1e4)
    sc.pp.log1p(a)
    a.X = a.X.toarray()  # pertpy 1.0.3's split_by mode indexes X with a boolean Series (fails on sparse)
    mdata = MuData({"rna": a})
    pt.tl.Mixscape().perturbation_signature(
        mdata["rna"],
        pert_key="perturbation",
        control="non-targeting",
        split_by="replicate",
        ref_selection_mode="split_by",
    )
    keys = {"perturbation_key": "perturbation", "context_key": "replicate", "control": "non-targeting"}
    # pertpy's X_pert is (control mean of the replicate) - cell, so its signatures are minus the effects
    from_pertpy = pc.pp.signatures(mdata, **keys, layer="X_pert")
    direct = pc.pp.signatures(mdata, **keys)
    np.testing.assert_allclose(from_pertpy.X, -direct.X, atol=1e-5)

    pc.tl.impute(mdata, method="ntk", **keys, layer="X_pert", progress_bar=False, device="cpu")
    imp = mdata["impute"]
    assert imp.n_obs == 25 * 3 and int(imp.obs["observed"].sum()) == 74  # SPI1|rep_2 has 7 cells < 10
    assert not imp.obs.loc["SPI1|rep_2", "observed"]

    res = pc.tl.evaluate_imputation(
        direct, methods=["ntk", "additive", "mean_over_perturbations"], n_folds=5, progress_bar=False, device="cpu"
    )
    table = pc.tl.summarize_imputation(res)
    assert table.loc["ntk", "pearson_top_k"] > table.loc["mean_over_perturbations", "pearson_top_k"] + 0.05
    assert table.loc["ntk", "pearson_top_k"] > 0.5
