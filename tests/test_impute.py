from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from anndata import AnnData

import pertcausal as pc
from pertcausal._engines import METHODS, Grid
from pertcausal.data import true_effects

KEYS = {"perturbation_key": "perturbation", "context_key": "context", "control": "control"}
ALL_METHODS = sorted(METHODS)


def _heldout(sig: AnnData, n: int, seed: int = 0) -> tuple[AnnData, AnnData]:
    """Split a signatures AnnData into training rows and n held-out rows (keeping each label once)."""
    rng = np.random.default_rng(seed)
    p = sig.obs["perturbation"].cat.codes.to_numpy()
    c = sig.obs["context"].cat.codes.to_numpy()
    left_p, left_c = np.bincount(p), np.bincount(c)
    test: list[int] = []
    for i in rng.permutation(sig.n_obs):
        if len(test) == n:
            break
        if left_p[p[i]] > 1 and left_c[c[i]] > 1:
            test.append(i)
            left_p[p[i]] -= 1
            left_c[c[i]] -= 1
    mask = np.zeros(sig.n_obs, bool)
    mask[test] = True
    return sig[~mask].copy(), sig[mask].copy()


def _truth(sig: AnnData, pairs: AnnData) -> np.ndarray:
    """Noise-free effects of the rows of ``pairs`` (codes taken from the full simulation's categories)."""
    p = sig.obs["perturbation"].cat.categories.get_indexer(pairs.obs["perturbation"].astype(str))
    c = sig.obs["context"].cat.categories.get_indexer(pairs.obs["context"].astype(str))
    return true_effects(sig.uns["simulation"], p, c)


# ---------------------------------------------------------------- known answers
def test_exactly_low_rank_tensor_is_recovered():
    sig = pc.data.simulate_effects(
        n_perturbations=60, n_contexts=12, n_genes=50, rank=3, frac_observed=0.6, noise=0.0, seed=3
    )
    train, test = _heldout(sig, 40)
    imp = pc.tl.impute(train, method="synthetic_interventions", progress_bar=False)
    pred = imp[test.obs_names].X
    truth = _truth(sig, test)
    np.testing.assert_allclose(pred, truth, atol=1e-6)  # exact: the donors span the target
    assert np.all(imp[test.obs_names].obs["reliability"] > 0.999)


def test_soft_impute_recovers_low_rank():
    sig = pc.data.simulate_effects(
        n_perturbations=80, n_contexts=10, n_genes=40, rank=2, frac_observed=0.6, noise=0.0, seed=4
    )
    train, test = _heldout(sig, 40)
    imp = pc.tl.impute(train, method="soft_impute", rank=10, shrinkage=0.01, progress_bar=False)
    truth = _truth(sig, test)
    r = np.corrcoef(imp[test.obs_names].X.ravel(), truth.ravel())[0, 1]
    assert r > 0.95


def test_additive_recovers_additive_tensor():
    rng = np.random.default_rng(0)
    a, b, mu = rng.normal(size=(15, 6)), rng.normal(size=(7, 6)), rng.normal(size=6)
    mask = rng.random((15, 7)) < 0.6
    mask[np.arange(15), rng.integers(7, size=15)] = True
    mask[rng.integers(15, size=7), np.arange(7)] = True
    p, c = np.nonzero(mask)
    grid = Grid(mu + a[p] + b[c], p, c, 15, 7)
    qp, qc = np.nonzero(~mask)
    pred = METHODS["additive"](grid, qp, qc, n_iter=500, tol=0).values
    np.testing.assert_allclose(pred, mu + a[qp] + b[qc], atol=1e-6)


def test_means_known_values():
    y = np.array([[1.0, 0.0], [3.0, 2.0], [5.0, 4.0]])
    grid = Grid(y, np.array([0, 0, 1]), np.array([0, 1, 0]), 2, 2)
    moc = METHODS["mean_over_contexts"](grid, np.array([1]), np.array([1])).values
    mop = METHODS["mean_over_perturbations"](grid, np.array([1]), np.array([1])).values
    np.testing.assert_allclose(moc, [[5.0, 4.0]])  # P1's only measurement
    np.testing.assert_allclose(mop, [[3.0, 2.0]])  # C1's only measurement


def test_nearest_context_known_answer():
    """Contexts 0 and 1 respond alike (shared perturbations P0, P1), context 2 the other way round:
    P2's effect in context 0 is predicted by its effect in context 1, never context 2."""
    y = np.array(
        [
            [1.0, 0.0], [0.9, 0.1], [-1.0, 0.0],  # P0 in contexts 0, 1, 2
            [0.0, 1.0], [0.1, 0.9], [0.0, -1.0],  # P1
            [5.0, 5.0], [-7.0, 7.0],  # P2 in contexts 1 and 2 only
        ]
    )
    grid = Grid(y, np.array([0, 0, 0, 1, 1, 1, 2, 2]), np.array([0, 1, 2, 0, 1, 2, 1, 2]), 3, 3)
    pred = METHODS["nearest_context"](grid, np.array([2]), np.array([0]))
    np.testing.assert_allclose(pred.values, [[5.0, 5.0]])
    from pertcausal._engines.baselines import context_similarity

    sim, shared = context_similarity(grid)
    assert shared[0, 1] == 2 and sim[0, 1] > 0.99 and sim[0, 2] < -0.99
    assert pred.reliability[0] == pytest.approx(sim[0, 1])
    # k=2 weights neighbours by positive similarity only: context 2 (negative) gets no weight
    np.testing.assert_allclose(METHODS["nearest_context"](grid, np.array([2]), np.array([0]), k=2).values, [[5.0, 5.0]])


def test_baseline_reliability_is_agreement():
    y = np.array([[1.0, 0.0], [1.0, 0.0], [1.0, 0.0], [1.0, 0.0], [-1.0, 0.0]])
    grid = Grid(y, np.array([0, 0, 1, 1, 2]), np.array([0, 1, 0, 1, 0]), 3, 3)
    moc = METHODS["mean_over_contexts"](grid, np.array([0, 2]), np.array([2, 1]))
    assert moc.reliability[0] == pytest.approx(1.0)  # both of P0's effects agree
    assert np.isnan(moc.reliability[1])  # P2 has one measurement: no spread to judge
    mop = METHODS["mean_over_perturbations"](grid, np.array([2]), np.array([0]))
    # context 0 holds [1,0], [1,0], [-1,0]: |mean|^2 / mean |e|^2 = (1/3)^2
    assert mop.reliability[0] == pytest.approx(1 / 9)
    add = METHODS["additive"](grid, np.array([2]), np.array([1]))
    assert 0.0 <= add.reliability[0] <= 1.0


def test_si_context_is_synthetic_control():
    """One perturbation, control baselines known: SI-Context writes the target context's baseline as a
    combination of donor contexts' baselines and applies the weights to their perturbed levels."""
    rng = np.random.default_rng(1)
    base = rng.normal(size=(4, 30))
    base[3] = 0.3 * base[0] + 0.7 * base[1]  # exact combination, no intercept needed
    effect = rng.normal(size=(4, 30))
    effect[3] = 0.3 * effect[0] + 0.7 * effect[1]
    grid = Grid(effect[:3], np.zeros(3, int), np.arange(3), 1, 4, baseline=base)
    pred = METHODS["synthetic_interventions"](grid, np.array([0]), np.array([3]), donor="context", use_control=True)
    assert pred.info["donor"] == "context"
    np.testing.assert_allclose(pred.values[0], effect[3], atol=1e-8)


# ---------------------------------------------------------------- tl.impute on MuData / AnnData
@pytest.mark.parametrize("method", ALL_METHODS)
def test_impute_layout_every_method(mdata, method):
    sig = pc.pp.signatures(mdata, **KEYS)
    before = mdata.copy()
    assert pc.tl.impute(mdata, method=method, **KEYS, progress_bar=False, device="cpu") is None
    imp = mdata["impute"]
    n_p, n_c = sig.obs["perturbation"].cat.categories.size, sig.obs["context"].cat.categories.size
    assert imp.n_obs == n_p * n_c
    assert imp.obs["observed"].sum() == sig.n_obs
    np.testing.assert_allclose(imp[sig.obs_names].X, sig.X)  # observed rows are kept as measured
    assert np.isfinite(imp.X).all()
    np.testing.assert_allclose(
        imp.layers["mean"], imp.X + imp.uns["control_mean"].loc[imp.obs["context"]].to_numpy(), rtol=1e-5, atol=1e-5
    )
    assert mdata.uns["impute"]["params"]["method"] == method
    assert imp.obs.loc[imp.obs["observed"], "n_cells"].min() >= 10
    # the input modality is untouched
    np.testing.assert_array_equal(mdata["rna"].X.toarray(), before["rna"].X.toarray())


def test_imputation_beats_baselines_on_simulation(mdata):
    truth = mdata.uns["true_effect"]
    scores = {}
    for method in ("ntk", "synthetic_interventions", "mean_over_perturbations"):
        imp = pc.tl.impute(mdata, method=method, copy=True, **KEYS, progress_bar=False)["impute"]
        hidden = ~imp.obs["observed"].to_numpy()
        p = imp.obs["perturbation"].cat.codes.to_numpy()[hidden]
        c = imp.obs["context"].cat.codes.to_numpy()[hidden]
        scores[method] = np.corrcoef(imp.X[hidden].ravel(), truth[p, c].ravel())[0, 1]
    assert scores["ntk"] > 0.8 and scores["synthetic_interventions"] > 0.8
    assert scores["ntk"] > scores["mean_over_perturbations"] + 0.3


def test_reliability_only_for_imputed(mdata):
    pc.tl.impute(mdata, method="synthetic_interventions", **KEYS, progress_bar=False)
    imp = mdata["impute"]
    rel = imp.obs["reliability"]
    assert rel[imp.obs["observed"]].isna().all()
    r = rel[~imp.obs["observed"]]
    assert r.notna().all() and r.between(0, 1).all()


def test_copy_returns_new_object(mdata):
    out = pc.tl.impute(mdata, method="additive", **KEYS, copy=True, progress_bar=False)
    assert "impute" in out.mod and "impute" not in mdata.mod


def test_signatures_anndata_input_returns_anndata(mdata):
    sig = pc.pp.signatures(mdata, **KEYS)
    imp = pc.tl.impute(sig, method="ntk", key_added="ntk", progress_bar=False)
    assert isinstance(imp, AnnData)
    assert imp.uns["ntk"]["params"]["method"] == "ntk"
    assert "ntk" not in sig.uns  # the input is not written to


def test_user_features_are_used(mdata):
    sig = pc.pp.signatures(mdata, **KEYS)
    cats = sig.obs["perturbation"].cat.categories
    rng = np.random.default_rng(0)
    feats = pd.DataFrame(rng.normal(size=(len(cats), 5)), index=cats)
    a = pc.tl.impute(sig, method="ntk", progress_bar=False)
    b = pc.tl.impute(sig, method="ntk", perturbation_features=feats, progress_bar=False)
    hidden = ~a.obs["observed"].to_numpy()
    assert not np.allclose(a.X[hidden], b.X[hidden])
    with pytest.raises(KeyError, match="perturbation_features has no row for"):
        pc.tl.impute(sig, method="ntk", perturbation_features=feats.iloc[1:], progress_bar=False)


def test_seed_gives_same_numbers(mdata):
    sig = pc.pp.signatures(mdata, **KEYS)
    a = pc.tl.impute(sig, method="soft_impute", random_state=3, progress_bar=False)
    b = pc.tl.impute(sig, method="soft_impute", random_state=3, progress_bar=False)
    np.testing.assert_array_equal(a.X, b.X)


def test_h5mu_round_trip(mdata, tmp_path):
    import mudata as md

    pc.tl.impute(mdata, method="synthetic_interventions", **KEYS, progress_bar=False)
    path = tmp_path / "screen.h5mu"
    mdata.write(path)
    back = md.read_h5mu(path)
    imp, imp2 = mdata["impute"], back["impute"]
    np.testing.assert_allclose(imp2.X, imp.X)
    assert imp2.obs["observed"].dtype == bool
    pd.testing.assert_series_equal(imp2.obs["perturbation"].astype(str), imp.obs["perturbation"].astype(str))
    np.testing.assert_allclose(imp2.obs["reliability"], imp.obs["reliability"])
    assert back.uns["impute"]["params"]["method"] == "synthetic_interventions"
    assert back.uns["impute"]["params"]["signatures"]["control"] == "control"
    pd.testing.assert_frame_equal(imp2.uns["control_mean"], imp.uns["control_mean"])


# ---------------------------------------------------------------- errors, object unchanged
@pytest.mark.parametrize(
    ("kwargs", "err", "match"),
    [
        ({"method": "knn"}, ValueError, "unknown method 'knn'; expected one of"),
        ({"device": "tpu"}, ValueError, "unknown device 'tpu'"),
        ({"perturbation_key": "guide"}, KeyError, "perturbation_key 'guide' is not a column of mdata\\['rna'\\].obs"),
        ({"control": "NT"}, ValueError, "control 'NT' not found"),
        ({"mod": "atac"}, KeyError, "mod 'atac' is not a modality"),
        ({"context_key": None}, ValueError, "missing: 'context_key'"),
        ({"depth": 0}, ValueError, "depth must be >= 1"),
    ],
)
def test_errors_leave_object_unchanged(mdata, kwargs, err, match):
    args = {**KEYS, "method": "ntk", "progress_bar": False, **kwargs}
    mods, uns = list(mdata.mod), dict(mdata.uns)
    with pytest.raises(err, match=match):
        pc.tl.impute(mdata, **args)
    assert list(mdata.mod) == mods and list(mdata.uns) == list(uns)


def test_cuda_without_cuda(mdata):
    torch = pytest.importorskip("torch")
    if torch.cuda.is_available():
        pytest.skip("CUDA is available here")
    with pytest.raises(ValueError, match="device 'cuda' was requested but CUDA is not available"):
        pc.tl.impute(mdata, method="ntk", device="cuda", **KEYS)
    assert "impute" not in mdata.mod


def test_nothing_to_impute():
    sig = pc.data.simulate_effects(n_perturbations=4, n_contexts=3, n_genes=5, frac_observed=1.0, seed=0)
    with pytest.raises(ValueError, match="nothing to impute: all 4 x 3"):
        pc.tl.impute(sig, method="additive")


def test_nan_effects_rejected():
    sig = pc.data.simulate_effects(n_perturbations=6, n_contexts=3, n_genes=5, seed=0)
    sig.X[0, 0] = np.inf
    with pytest.raises(ValueError, match="signatures .X holds 1 NaN or infinite"):
        pc.tl.impute(sig, method="additive")


def test_mudata_without_keys(mdata):
    with pytest.raises(ValueError, match="pass perturbation_key=, context_key= and control="):
        pc.tl.impute(mdata)


def test_signatures_without_obs_columns():
    bad = AnnData(np.zeros((3, 2), dtype=np.float32))
    with pytest.raises(KeyError, match="needs obs\\['perturbation'\\]"):
        pc.tl.impute(bad, method="additive")


# ---------------------------------------------------------------- evaluation
def test_evaluate_folds_and_metrics():
    sig = pc.data.simulate_effects(n_perturbations=30, n_contexts=6, n_genes=40, rank=2, noise=0.01, seed=0)
    res = pc.tl.evaluate_imputation(
        sig, methods=["synthetic_interventions", "mean_over_perturbations"], n_folds=5, progress_bar=False
    )
    for m in ("synthetic_interventions", "mean_over_perturbations"):
        sub = res[res["method"] == m]
        assert len(sub) == sig.n_obs  # every observed pair is held out exactly once
        assert sorted(sub["fold"].unique()) == [0, 1, 2, 3, 4]
    summary = pc.tl.summarize_imputation(res)
    assert summary.index[0] == "synthetic_interventions"
    assert summary.loc["synthetic_interventions", "pearson"] > 0.9
    assert summary.loc["synthetic_interventions", "pearson"] > summary.loc["mean_over_perturbations", "pearson"]


@pytest.mark.parametrize("holdout", ["context", "perturbation"])
def test_evaluate_group_holdout(holdout):
    sig = pc.data.simulate_effects(n_perturbations=20, n_contexts=6, n_genes=20, seed=1)
    res = pc.tl.evaluate_imputation(sig, methods=["additive"], holdout=holdout, n_folds=3, progress_bar=False)
    key = "context" if holdout == "context" else "perturbation"
    # a label is held out in exactly one fold
    assert (res.groupby(key, observed=True)["fold"].nunique() == 1).all()
    assert len(res) == sig.n_obs


def test_reliability_informativeness_in_summary():
    from pertcausal._engines.metrics import reliability_informativeness

    err = np.arange(10.0)
    out = reliability_informativeness(-err, err)  # perfectly informative
    assert out["reliability_spearman"] == pytest.approx(-1.0)
    assert out["error_reliable_half"] == pytest.approx(2.0) and out["error_other_half"] == pytest.approx(7.0)
    assert np.isnan(reliability_informativeness(np.ones(10), err)["reliability_spearman"])
    sig = pc.data.simulate_effects(n_perturbations=30, n_contexts=6, n_genes=20, seed=3)
    res = pc.tl.evaluate_imputation(sig, methods=["ntk", "soft_impute"], n_folds=3, progress_bar=False, device="cpu")
    summary = pc.tl.summarize_imputation(res)
    assert np.isfinite(summary.loc["ntk", "reliability_spearman"])
    assert np.isnan(summary.loc["soft_impute", "reliability_spearman"])  # no reliability
    assert {"rel_error_reliable_half", "rel_error_other_half"} <= set(summary.columns)


def test_metric_definitions():
    from pertcausal._engines.metrics import pooled_pearson, profile_metrics

    t = np.array([[1.0, 2.0, 3.0, 4.0]])
    m = profile_metrics(t, 2 * t, top_k=2)
    assert m["pearson"][0] == pytest.approx(1.0)
    assert m["cosine"][0] == pytest.approx(1.0)
    assert m["r2"][0] == pytest.approx(1 - 30 / 5)  # SSE 30 over SS 5
    assert m["pearson_top_k"][0] == pytest.approx(1.0)
    assert pooled_pearson(t, -t) == pytest.approx(-1.0)


def test_evaluate_bad_arguments():
    sig = pc.data.simulate_effects(n_perturbations=6, n_contexts=3, n_genes=5, seed=0)
    with pytest.raises(ValueError, match="unknown holdout 'cell'"):
        pc.tl.evaluate_imputation(sig, holdout="cell")
    with pytest.raises(ValueError, match="unknown method 'gears'"):
        pc.tl.evaluate_imputation(sig, methods=["gears"])


def test_leave_one_pair_out_and_context_features():
    sig = pc.data.simulate_effects(n_perturbations=8, n_contexts=4, n_genes=10, seed=5)
    res = pc.tl.evaluate_imputation(sig, methods=["nearest_context"], n_folds=10_000, progress_bar=False)
    assert res["fold"].nunique() == sig.n_obs == len(res)  # one pair per fold
    ctxs = sig.obs["context"].cat.categories
    feats = pd.DataFrame({"dose": np.arange(len(ctxs), dtype=float)}, index=ctxs)
    out = pc.tl.evaluate_imputation(
        sig, methods=["nearest_context"], holdout="context", n_folds=len(ctxs), context_features=feats,
        progress_bar=False,
    )
    assert len(out) == sig.n_obs and np.isfinite(out["pearson"]).all()
    with pytest.raises(KeyError, match="context_features has no row"):
        pc.tl.evaluate_imputation(sig, methods=["additive"], context_features=feats.iloc[:2], progress_bar=False)


def test_nearest_context_uses_features_for_an_unseen_context():
    """Context 2 has no observed pair: features say it is next to context 1, far from context 0."""
    y = np.array([[1.0, 0.0], [0.0, 1.0]])
    grid = Grid(y, np.array([0, 0]), np.array([0, 1]), 1, 3, ctx_features=np.array([[0.0], [9.0], [10.0]]))
    pred = METHODS["nearest_context"](grid, np.array([0]), np.array([2]))
    np.testing.assert_allclose(pred.values, [[0.0, 1.0]])


def test_si_equal_unit_weight_is_weighted_least_squares():
    """SI-Context with ``unit_weight="equal"``: weighted least squares with each training perturbation's rows
    weighted by one over its mean squared outcome norm. Twenty perturbations follow target = donor 0; one
    with 100-fold effects follows target = donor 1 and dominates the unweighted fit, not the weighted one."""
    rng = np.random.default_rng(0)
    n_p, g = 22, 25
    eff = rng.normal(size=(n_p, 3, g))
    eff[:, 2] = eff[:, 0] + 0.05 * rng.normal(size=(n_p, g))
    eff[20] *= 100.0
    eff[20, 2] = eff[20, 1]
    p, c = np.divmod(np.arange(n_p * 3), 3)
    keep = ~((p == 21) & (c == 2))  # query: perturbation 21 in context 2
    grid = Grid(eff[p[keep], c[keep]], p[keep], c[keep], n_p, 3)
    si = METHODS["synthetic_interventions"]
    q = (np.array([21]), np.array([2]))
    equal = si(grid, *q, donor="context", unit_weight="equal")
    plain = si(grid, *q, donor="context", unit_weight="none")
    assert equal.info["unit_weight"] == "equal" and plain.info["unit_weight"] == "none"
    # by hand: weighted least squares with an intercept over the 21 training perturbations
    x = eff[:21, :2].transpose(0, 2, 1).reshape(-1, 2)
    y = eff[:21, 2].reshape(-1)
    w = np.repeat(1.0 / ((eff[:21] ** 2).sum((1, 2)) / 3), g)
    z = np.hstack([x, np.ones((len(x), 1))]) * np.sqrt(w)[:, None]
    beta = np.linalg.lstsq(z, y * np.sqrt(w), rcond=None)[0]
    np.testing.assert_allclose(equal.values[0], eff[21, :2].T @ beta[:2] + beta[2], atol=1e-8)
    truth = eff[21, 2]
    err = {k: float(((v.values[0] - truth) ** 2).sum() / (truth**2).sum()) for k, v in (("eq", equal), ("no", plain))}
    assert err["eq"] < 0.02 and err["no"] > 2.0, err  # 0.012 and 2.7
    # "auto" picks the weighting by validation on training pairs and records it
    auto = si(grid, *q, donor="context", unit_weight="auto")
    assert auto.info["unit_weight"] in ("none", "equal") and len(auto.info["validation_error"]) == 2
    with pytest.raises(ValueError, match="unknown unit_weight 'rows'"):
        si(grid, *q, unit_weight="rows")
    # reliability: the weighted donor-fit R^2 (by hand) times the subspace inclusion (1 under least squares)
    res = y - x @ beta[:2] - beta[2]
    r2 = 1.0 - (w @ res**2) / (w @ (y - (w @ y) / w.sum()) ** 2)
    assert equal.info["inclusion"][0] == pytest.approx(1.0)
    assert equal.info["donor_fit_r2"][0] == pytest.approx(r2, abs=1e-10)
    assert equal.reliability[0] == pytest.approx(r2, abs=1e-10)


@pytest.mark.realdata
def test_synthetic_interventions_reliability_ranks_errors_on_tggates(tggates_arrays):
    # TG-GATEs, 10-fold held-out pairs: the subspace inclusion alone is 1 for every pair (uninformative);
    # with the donor-fit R^2 the more reliable half of the predictions has the smaller relative error
    sig = pc.pp.signatures(
        tggates_arrays, perturbation_key="perturbation", context_key=["dose_level", "time"], control="control",
        control_match=["matched_drug", "time"], replicate_key="replicate", min_cells=1,
    )  # fmt: skip
    res = pc.tl.evaluate_imputation(
        sig, methods={"synthetic_interventions": {}}, holdout="pair", n_folds=10, top_k=20, progress_bar=False
    )
    rel, err = res["reliability"], res["rel_error"]
    assert rel.std() > 0.05
    assert rel.corr(err, method="spearman") < -0.25  # -0.35 on the benchmark's folds
    half = rel >= rel.median()
    assert err[half].mean() < err[~half].mean() - 0.08  # 0.62 against 0.75
