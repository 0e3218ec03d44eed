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
    with pytest.raises(ValueError, match="'C00'.*no control observations"):
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


# --- real experimental designs: matched controls, several keys, replicates, effect input ---------------


def _bulk() -> AnnData:
    """Two compounds, each with its own vehicle controls per time point; 2 replicates per condition.

    Values are chosen so that matched and context-wide controls give different effects.
    """
    rows = []
    for drug, ctrl_level in (("A", 1.0), ("B", 5.0)):
        for time in (8, 24):
            for rep in (1, 2):
                rows.append(("control", drug, "Control", time, rep, ctrl_level + 0.1 * rep + 0.01 * time))
            for dose, shift in (("Low", 1.0), ("High", 3.0)):
                for rep in (1, 2):
                    base = ctrl_level + 0.01 * time
                    rows.append((drug, drug, dose, time, rep, base + shift * (1 if drug == "A" else -1) + 0.2 * rep))
    obs = pd.DataFrame(rows, columns=["perturbation", "matched_drug", "dose_level", "time", "replicate", "level"])
    obs.index = [f"s{i}" for i in range(len(obs))]
    # gene 0 carries the level, gene 1 the level times 2 plus a replicate-specific wiggle
    x = np.stack([obs["level"], 2 * obs["level"] + 0.05 * (obs["replicate"] == 1)], axis=1)
    return AnnData(X=x.astype(np.float64), obs=obs.drop(columns="level"))


BULK = {
    "perturbation_key": "perturbation",
    "context_key": ["dose_level", "time"],
    "control": "control",
    "control_match": ["matched_drug", "time"],
    "replicate_key": "replicate",
    "min_cells": 1,
}


def _hand_effect(a: AnnData, drug: str, dose: str, time: int) -> tuple[np.ndarray, np.ndarray]:
    o = a.obs
    t = (o["perturbation"] == drug) & (o["dose_level"] == dose) & (o["time"] == time)
    c = (o["perturbation"] == "control") & (o["matched_drug"] == drug) & (o["time"] == time)
    xt, xc = a.X[t.to_numpy()], a.X[c.to_numpy()]
    se = np.sqrt(xt.var(0, ddof=1) / len(xt) + xc.var(0, ddof=1) / len(xc))
    return xt.mean(0) - xc.mean(0), se


def test_matched_controls_equal_hand_computation():
    a = _bulk()
    before = a.copy()
    sig = pc.pp.signatures(a, **BULK)
    assert sig.n_obs == 8
    assert set(sig.obs["context"]) == {"Low_8", "High_8", "Low_24", "High_24"}
    assert list(sig.obs.columns[:4]) == ["perturbation", "context", "dose_level", "time"]
    for drug in ("A", "B"):
        for dose in ("Low", "High"):
            for time in (8, 24):
                eff, se = _hand_effect(a, drug, dose, time)
                row = sig[f"{drug}|{dose}_{time}"]
                np.testing.assert_allclose(row.X[0], eff, atol=1e-6)
                np.testing.assert_allclose(row.layers["se"][0], se, rtol=1e-5)
    # A's controls sit at 1, B's at 5: the matched effect of A/High is +3 (+0.2 * mean replicate shift)
    np.testing.assert_allclose(sig["A|High_24"].X[0, 0], 3.0 + 0.3 - 0.15, atol=1e-6)
    assert sig.obs["n_cells"].tolist() == [2] * 8
    assert sig.obs["n_replicates"].tolist() == [2] * 8
    # the context baseline averages the matched controls of both drugs at that time
    np.testing.assert_allclose(sig.uns["control_mean"].loc["High_24"].iloc[0], (1.15 + 5.15) / 2 + 0.24, atol=1e-6)
    assert sig.uns["control_n_cells"]["High_24"] == 4
    assert sig.uns["signatures"]["params"]["control_match"] == ["matched_drug", "time"]
    # context-wide controls would be the average of both drugs' vehicles: a different answer
    wide = pc.pp.signatures(
        a, **{**BULK, "context_key": "time", "control_match": None, "select": {"dose_level": ["High", "Control"]}}
    )
    assert not np.allclose(wide["A|24"].X, sig["A|High_24"].X)
    pd.testing.assert_frame_equal(a.obs, before.obs)
    np.testing.assert_array_equal(a.X, before.X)


def test_replicate_agreement_and_pooling():
    a = _bulk()
    sig = pc.pp.signatures(a, **BULK)
    # replicate effects of gene 0/1 differ by a constant shift only on both genes: Pearson over 2 genes is +-1
    o = a.obs
    t = ((o["perturbation"] == "A") & (o["dose_level"] == "High") & (o["time"] == 8)).to_numpy()
    c = ((o["perturbation"] == "control") & (o["matched_drug"] == "A") & (o["time"] == 8)).to_numpy()
    reps = a.X[t] - a.X[c].mean(0)
    expected = np.corrcoef(reps)[0, 1]
    np.testing.assert_allclose(sig["A|High_8"].obs["replicate_agreement"].iloc[0], expected, atol=1e-6)
    mx = pc.pp.signatures(a, **BULK, pool="max_norm")
    np.testing.assert_allclose(mx["A|High_8"].X[0], reps[np.argmax(np.linalg.norm(reps, axis=1))], atol=1e-6)
    med = pc.pp.signatures(a, **BULK, pool="median")
    np.testing.assert_allclose(med["A|High_8"].X[0], np.median(reps, axis=0), atol=1e-6)
    # one replicate per pair: no agreement and no standard error
    one = pc.pp.signatures(a, **{**BULK, "select": {"replicate": 1}})
    assert one.obs["replicate_agreement"].isna().all()
    assert np.isnan(one.layers["se"]).all()


def test_replicate_agreement_of_single_cells(screen):
    """Observation-level agreement equals the mean pairwise Pearson over the pair's cells."""
    sig = pc.pp.signatures(screen, **KEYS)
    rna = screen["rna"]
    x = np.log1p(rna.X.toarray() / rna.X.toarray().sum(1, keepdims=True) * 1e4)
    p, c = sig.obs_names[0].split("|")
    sel = ((rna.obs["perturbation"] == p) & (rna.obs["context"] == c)).to_numpy()
    ctrl = ((rna.obs["perturbation"] == "control") & (rna.obs["context"] == c)).to_numpy()
    e = x[sel] - x[ctrl].mean(0)
    r = np.corrcoef(e)
    expected = r[np.triu_indices(len(e), 1)].mean()
    np.testing.assert_allclose(sig.obs["replicate_agreement"].iloc[0], expected, rtol=1e-4)
    se = np.sqrt(e.var(0, ddof=1) / len(e) + x[ctrl].var(0, ddof=1) / ctrl.sum())
    np.testing.assert_allclose(sig.layers["se"][0], se, rtol=1e-3, atol=1e-6)


def test_effect_input_is_pooled_without_subtraction():
    rng = np.random.default_rng(0)
    obs = pd.DataFrame(
        {
            "drug": ["v", "v", "v", "a", "a", "a"],
            "cell_line": ["x", "x", "y", "x", "y", "y"],
            "dose": ["10", "1", "10", "10", "10", "1"],
        },
        index=[f"sig{i}" for i in range(6)],
    )
    z = rng.normal(size=(6, 4))
    a = AnnData(X=z, obs=obs)
    sig = pc.pp.signatures(a, perturbation_key="drug", context_key="cell_line", control=None)
    assert "mean" not in sig.layers and "control_mean" not in sig.uns
    np.testing.assert_allclose(sig["v|x"].X[0], z[:2].mean(0), atol=1e-6)
    np.testing.assert_allclose(sig["a|y"].X[0], z[4:6].mean(0), atol=1e-6)
    assert sig.obs.loc["v|y", "n_cells"] == 1
    sel = pc.pp.signatures(a, perturbation_key="drug", context_key="cell_line", control=None, select={"dose": "10"})
    np.testing.assert_allclose(sel["v|x"].X[0], z[0], atol=1e-6)
    np.testing.assert_allclose(sel["a|y"].X[0], z[4], atol=1e-6)
    both = pc.pp.signatures(a, perturbation_key=["drug", "dose"], context_key="cell_line", control=None)
    assert "v_10|x" in both.obs_names and list(both.obs.columns[:3]) == ["perturbation", "context", "drug"]
    with pytest.raises(ValueError, match="raw counts"):
        pc.pp.signatures(
            AnnData(X=np.ones((6, 4)), obs=obs), perturbation_key="drug", context_key="cell_line", control=None
        )


@pytest.mark.realdata
def test_tggates_matched_signatures_reproduce_known_inductions(tggates_arrays):
    a = tggates_arrays
    sig = pc.pp.signatures(a, **BULK)
    assert sig.n_obs == 857 and sig.uns["control_mean"].shape == (9, 196)
    sym = list(a.var["gene_symbol"])
    # log2 fold changes, high dose vs matched vehicle, from the data set's README
    for drug, gene, t8, t24 in (("Omeprazole", "CYP1A1", 3.0, 6.1), ("Phenobarbital", "CYP2B6", 0.7, 2.2)):
        j = sym.index(gene)
        assert sig[f"{drug}|High_8"].X[0, j] == pytest.approx(t8, abs=0.05)
        assert sig[f"{drug}|High_24"].X[0, j] == pytest.approx(t24, abs=0.05)
    assert sig.obs["replicate_agreement"].median() > 0.4


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"control_match": ["plate"]}, "control_match 'plate' is not a column"),
        ({"replicate_key": "well"}, "replicate_key 'well' is not a column"),
        ({"select": {"time": 48}}, "value\\(s\\) '48' not found in obs\\['time'\\]"),
        ({"pool": "max"}, "unknown pool 'max'"),
    ],
)
def test_bad_design_input(kwargs, match):
    with pytest.raises((KeyError, ValueError), match=match):
        pc.pp.signatures(_bulk(), **{**BULK, **kwargs})


def test_treated_groups_without_matched_controls_are_listed():
    a = _bulk()
    drop = ((a.obs["perturbation"] == "control") & (a.obs["matched_drug"] == "B") & (a.obs["time"] == 24)).to_numpy()
    b = a[~drop].copy()
    with pytest.raises(ValueError, match="'B\\|High_24' \\(matched_drug, time='B_24'\\).*no control observations"):
        pc.pp.signatures(b, **BULK)


def test_context_keys_with_missing_values():
    a = _bulk()
    a.obs["dose_level"] = a.obs["dose_level"].astype(object)
    a.obs.iloc[2, a.obs.columns.get_loc("dose_level")] = np.nan  # a treated array
    before = a.obs.copy()
    with pytest.raises(ValueError, match="context_key 'dose_level' has 1 missing value"):
        pc.pp.signatures(a, **BULK)
    pd.testing.assert_frame_equal(a.obs, before)
