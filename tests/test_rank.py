from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from anndata import AnnData

import pertcausal as pc

METHODS = ["cosine", "pearson", "connectivity"]
KEYS = {"perturbation_key": "perturbation", "context_key": "context", "control": "control"}


@pytest.fixture(scope="module")
def sig() -> AnnData:
    return pc.data.simulate_effects(n_perturbations=20, n_contexts=5, n_genes=30, seed=0)


@pytest.fixture(scope="module")
def imp(sig: AnnData) -> AnnData:
    return pc.tl.impute(sig, method="additive", progress_bar=False)


def _effect(adata: AnnData, pert: str, ctx: str) -> pd.Series:
    return pd.Series(np.asarray(adata[f"{pert}|{ctx}", :].X[0], dtype=float), index=adata.var_names)


def _snapshot(adata: AnnData) -> tuple:
    return adata.obs.copy(), adata.var.copy(), np.array(adata.X, copy=True), sorted(adata.uns), adata.shape


def _assert_unchanged(adata: AnnData, snap: tuple) -> None:
    obs, var, x, uns, shape = snap
    assert adata.shape == shape
    pd.testing.assert_frame_equal(adata.obs, obs)
    pd.testing.assert_frame_equal(adata.var, var)
    np.testing.assert_array_equal(adata.X, x)
    assert sorted(adata.uns) == uns


def _reference_es(values: np.ndarray, in_set: np.ndarray, p: float) -> float:
    """Weighted KS enrichment score of one set, as a plain loop (Subramanian et al. 2005)."""
    order = sorted(range(len(values)), key=lambda j: -values[j])
    total = sum(abs(values[j]) ** p for j in range(len(values)) if in_set[j])
    n_miss = sum(1 for j in range(len(values)) if not in_set[j])
    hit = miss = 0.0
    best_hi, best_lo = -np.inf, np.inf
    for j in order:
        if in_set[j]:
            hit += abs(values[j]) ** p / total
        else:
            miss += 1 / n_miss
        best_hi, best_lo = max(best_hi, hit - miss), min(best_lo, hit - miss)
    return best_hi if best_hi >= -best_lo else best_lo


def _reference_wtcs(values: np.ndarray, up: np.ndarray, down: np.ndarray, p: float) -> float:
    es_up, es_down = _reference_es(values, up, p), _reference_es(values, down, p)
    return (es_up - es_down) / 2 if np.sign(es_up) != np.sign(es_down) else 0.0


def _tiny(x: np.ndarray) -> AnnData:
    """A one-context signatures AnnData (all observed) with perturbations A, B, C, ... and genes g0, g1, ..."""
    perts = [chr(ord("A") + i) for i in range(len(x))]
    obs = pd.DataFrame({"perturbation": pd.Categorical(perts), "context": pd.Categorical(["c"] * len(x))})
    obs.index = [f"{p}|c" for p in perts]
    return AnnData(
        np.asarray(x, dtype=np.float32), obs=obs, var=pd.DataFrame(index=[f"g{j}" for j in range(x.shape[1])])
    )


# ------------------------------------------------------------------------------ known answers
@pytest.mark.parametrize("method", METHODS)
def test_own_effect_ranks_first_and_its_negative_last(imp: AnnData, method: str):
    for pert, ctx in [("P00003", "C001"), ("P00011", "C004")]:
        query = _effect(imp, pert, ctx)
        res = pc.tl.rank_perturbations(imp, query, context=ctx, method=method, n_genes=5)
        assert len(res) == 20 and res["perturbation"].is_unique
        assert res.loc[0, "perturbation"] == pert and res.loc[0, "rank"] == 1
        assert np.all(np.diff(res["score"]) <= 0)
        np.testing.assert_array_equal(res["rank"], np.arange(1, 21))
        assert (res["context"] == ctx).all()
        if method != "connectivity":
            assert res.loc[0, "score"] == pytest.approx(1.0, abs=1e-6)
        rev = pc.tl.rank_perturbations(imp, -query, context=ctx, method=method, n_genes=5)
        assert rev.iloc[-1]["perturbation"] == pert and rev.iloc[-1]["rank"] == 20
        assert rev.iloc[-1]["score"] < 0
        if method != "connectivity":  # exact negation of the cosine / correlation
            assert rev.iloc[-1]["score"] == pytest.approx(-1.0, abs=1e-6)
            mine = res.set_index("perturbation")["score"]
            np.testing.assert_allclose(rev.set_index("perturbation")["score"][mine.index], -mine, atol=1e-12)


def test_cosine_and_pearson_values():
    x = np.array([[1.0, 2.0, 3.0, 4.0], [0.0, 0.0, 0.0, 0.0], [2.0, 1.0, -1.0, 0.5]])
    q = np.array([1.0, 0.0, 1.0, 0.0])
    ad = _tiny(x)
    cos = pc.tl.rank_perturbations(ad, q, context="c").set_index("perturbation")["score"]
    assert cos["A"] == pytest.approx(4 / (np.sqrt(30) * np.sqrt(2)))
    assert cos["B"] == 0.0  # a zero effect scores 0
    assert cos["C"] == pytest.approx(1 / (np.sqrt(6.25) * np.sqrt(2)))
    r = pc.tl.rank_perturbations(ad, q, context="c", method="pearson").set_index("perturbation")["score"]
    assert r["A"] == pytest.approx(np.corrcoef(x[0], q)[0, 1])
    assert r["C"] == pytest.approx(np.corrcoef(x[2], q)[0, 1])
    assert r["B"] == 0.0


def test_connectivity_hand_computed():
    # A: ranks g0 g1 g2 g3; ES_up{g0,g2} = 4/5 (first step), ES_down{g3} = -1 -> (0.8 + 1) / 2 = 0.9
    # B: ranks g3 g2 g1 g0; ES_up = -1/2, ES_down = +1 -> (-0.5 - 1) / 2 = -0.75
    # C: ranks g1 g2 g3 g0; ES_up = -1/2, ES_down = -2/3: same sign -> 0
    x = np.array([[4.0, 3.0, -1.0, -2.0], [-2.0, -1.0, 3.0, 4.0], [1.0, 5.0, 4.0, 3.0]])
    res = pc.tl.rank_perturbations(_tiny(x), context="c", up=["g0", "g2"], down=["g3"], method="connectivity")
    assert list(res["perturbation"]) == ["A", "C", "B"]
    np.testing.assert_allclose(res["score"], [0.9, 0.0, -0.75], atol=1e-12)
    assert (res["n_genes"] == 3).all()
    assert res.attrs["n_up"] == 2 and res.attrs["n_down"] == 1


@pytest.mark.parametrize("weight", [1.0, 0.0, 2.0])
def test_connectivity_matches_loop_reference(weight: float):
    rng = np.random.default_rng(7)
    x = rng.normal(size=(12, 15))
    up = np.zeros(15, bool)
    down = np.zeros(15, bool)
    up[[0, 3, 4, 9]] = True
    down[[1, 7, 12]] = True
    genes = np.array([f"g{j}" for j in range(15)])
    res = pc.tl.rank_perturbations(
        _tiny(x), context="c", up=list(genes[up]), down=list(genes[down]), method="connectivity", weight=weight
    ).set_index("perturbation")
    x32 = x.astype(np.float32).astype(np.float64)  # the AnnData stores float32
    expected = [_reference_wtcs(x32[i], up, down, weight) for i in range(12)]
    np.testing.assert_allclose(res.loc[[chr(ord("A") + i) for i in range(12)], "score"], expected, atol=1e-12)
    assert (np.asarray(expected) == 0).any() and (np.asarray(expected) != 0).any()  # both WTCS branches hit
    # one set only: ES_up, or -ES_down
    only_up = pc.tl.rank_perturbations(_tiny(x), context="c", up=list(genes[up]), method="connectivity", weight=weight)
    only_up = only_up.set_index("perturbation")["score"]
    only_down = pc.tl.rank_perturbations(
        _tiny(x), context="c", down=list(genes[down]), method="connectivity", weight=weight
    ).set_index("perturbation")["score"]
    for i in range(12):
        p = chr(ord("A") + i)
        assert only_up[p] == pytest.approx(_reference_es(x32[i], up, weight), abs=1e-12)
        assert only_down[p] == pytest.approx(-_reference_es(x32[i], down, weight), abs=1e-12)


def test_connectivity_vector_query_derives_sets(imp: AnnData):
    query = _effect(imp, "P00005", "C002")
    res = pc.tl.rank_perturbations(imp, query, context="C002", method="connectivity", n_genes=4)
    top, bottom = query.sort_values(ascending=False).index[:4], query.sort_values().index[:4]
    by_sets = pc.tl.rank_perturbations(imp, context="C002", up=list(top), down=list(bottom), method="connectivity")
    pd.testing.assert_frame_equal(res, by_sets, check_like=False)
    assert res.attrs["n_up"] == 4 and res.attrs["n_down"] == 4 and (res["n_genes"] == 8).all()
    # sets keep their sign: a query with one negative gene gives an up set only
    q = pd.Series(np.r_[np.arange(1.0, 30.0), -1.0], index=imp.var_names)
    res = pc.tl.rank_perturbations(imp, q, context="C002", method="connectivity", n_genes=50)
    assert res.attrs["n_up"] == 29 and res.attrs["n_down"] == 1


def test_up_down_query_vector(imp: AnnData):
    up, down = ["G0001", "G0004", "G0020"], ["G0007", "G0013"]
    q = pd.Series(0.0, index=imp.var_names)
    q[up], q[down] = 1.0, -1.0
    for method in ("cosine", "pearson"):
        by_sets = pc.tl.rank_perturbations(imp, context="C000", up=up, down=down, method=method)
        by_vec = pc.tl.rank_perturbations(imp, q, context="C000", method=method)
        pd.testing.assert_frame_equal(by_sets.drop(columns="n_genes"), by_vec.drop(columns="n_genes"))
        assert (by_sets["n_genes"] == 5).all() and (by_vec["n_genes"] == 30).all()
    # genes absent from the data are dropped (partial overlap is fine) and counted
    res = pc.tl.rank_perturbations(imp, context="C000", up=[*up, "NOPE"], down=down)
    assert res.attrs["n_query_genes"] == 6 and res.attrs["n_matched"] == 5 and (res["n_genes"] == 5).all()
    pd.testing.assert_frame_equal(res, pc.tl.rank_perturbations(imp, context="C000", up=up, down=down))


def test_observed_and_reliability_carried(sig: AnnData):
    imp = pc.tl.impute(sig, method="synthetic_interventions", progress_bar=False)
    imp.obs["reliability"] = np.where(imp.obs["observed"], np.nan, np.linspace(0.1, 0.9, imp.n_obs))
    for ctx in ("C000", "C003"):
        res = pc.tl.rank_perturbations(imp, _effect(imp, "P00002", ctx), context=ctx)
        obs = imp.obs.loc[[f"{p}|{ctx}" for p in res["perturbation"]]]
        np.testing.assert_array_equal(res["observed"].to_numpy(), obs["observed"].to_numpy())
        np.testing.assert_array_equal(res["reliability"].to_numpy(), obs["reliability"].to_numpy())
        assert res["observed"].dtype == bool
        assert res["observed"].any() and not res["observed"].all()
        assert res.loc[~res["observed"], "reliability"].between(0.1, 0.9).all()
        assert res.loc[res["observed"], "reliability"].isna().all()


def test_signatures_input_all_observed(sig: AnnData):
    res = pc.tl.rank_perturbations(sig, _effect(sig, "P00000", "C000"), context="C000")
    measured = sig.obs.loc[sig.obs["context"] == "C000", "perturbation"].astype(str)
    assert sorted(res["perturbation"]) == sorted(measured) and len(res) < 20
    assert res["observed"].all() and res["reliability"].isna().all()
    assert res.loc[0, "perturbation"] == "P00000"


def test_query_forms_agree(imp: AnnData):
    series = _effect(imp, "P00003", "C001")
    expected = pc.tl.rank_perturbations(imp, series, context="C001")
    as_array = pc.tl.rank_perturbations(imp, series.to_numpy(), context="C001")
    as_view = pc.tl.rank_perturbations(imp, imp["P00003|C001", :], context="C001")
    shuffled = pc.tl.rank_perturbations(imp, series.iloc[::-1], context="C001")  # matched by name
    for res in (as_array, as_view, shuffled):
        pd.testing.assert_frame_equal(res, expected)
    # partial overlap: only the named genes enter the score
    part = series.iloc[:10]
    res = pc.tl.rank_perturbations(imp, pd.concat([part, pd.Series([5.0], index=["NOPE"])]), context="C001")
    assert res.attrs["n_matched"] == 10 and res.attrs["n_query_genes"] == 11 and (res["n_genes"] == 10).all()
    x = imp[imp.obs["context"] == "C001"]
    score = dict(zip(x.obs["perturbation"].astype(str), [_cos(r[:10], part.to_numpy()) for r in np.asarray(x.X)]))
    np.testing.assert_allclose(res["score"], [score[p] for p in res["perturbation"]], atol=1e-6)


def _cos(a: np.ndarray, b: np.ndarray) -> float:
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


def test_gene_key(imp: AnnData):
    ad = imp.copy()
    ad.var["symbol"] = [f"SYM{i}" for i in range(ad.n_vars)]
    query = _effect(ad, "P00007", "C002")
    by_symbol = query.set_axis(ad.var["symbol"].to_numpy())
    expected = pc.tl.rank_perturbations(ad, query, context="C002")
    res = pc.tl.rank_perturbations(ad, by_symbol, context="C002", gene_key="symbol")
    pd.testing.assert_frame_equal(res, expected)
    sets = pc.tl.rank_perturbations(
        ad, context="C002", up=["SYM1", "SYM2"], down=["SYM5"], gene_key="symbol", method="connectivity"
    )
    pd.testing.assert_frame_equal(
        sets, pc.tl.rank_perturbations(ad, context="C002", up=["G0001", "G0002"], down=["G0005"], method="connectivity")
    )
    with pytest.raises(ValueError, match=r"0 of 30 matched.*imputed.var\['symbol'\]"):
        pc.tl.rank_perturbations(ad, query, context="C002", gene_key="symbol")
    with pytest.raises(KeyError, match="gene_key 'nope' is not a column of imputed.var"):
        pc.tl.rank_perturbations(ad, query, context="C002", gene_key="nope")
    ad.var["symbol"] = ["SYM0", "SYM0", *[f"SYM{i}" for i in range(2, ad.n_vars)]]
    with pytest.raises(ValueError, match="'SYM0'.*more than one gene"):
        pc.tl.rank_perturbations(ad, context="C002", up=["SYM0"], gene_key="symbol")


def test_mudata_input():
    mdata = pc.data.simulate_screen(n_perturbations=8, n_contexts=4, n_genes=30, seed=0)
    pc.tl.impute(mdata, method="additive", **KEYS, progress_bar=False)
    grid = mdata["impute"]
    snap = _snapshot(grid)
    mods = list(mdata.mod)
    query = _effect(grid, "P003", "C01")
    res = pc.tl.rank_perturbations(mdata, query, context="C01")
    pd.testing.assert_frame_equal(res, pc.tl.rank_perturbations(grid, query, context="C01"))
    assert res.loc[0, "perturbation"] == "P003" and len(res) == 8
    obs = grid.obs.loc[[f"{p}|C01" for p in res["perturbation"]]]
    np.testing.assert_array_equal(res["observed"], obs["observed"])
    assert list(mdata.mod) == mods
    _assert_unchanged(mdata["impute"], snap)
    with pytest.raises(KeyError, match="mod 'nope' is not a modality"):
        pc.tl.rank_perturbations(mdata, query, context="C01", mod="nope")


def test_exclude(imp: AnnData):
    query = _effect(imp, "P00003", "C001")
    res = pc.tl.rank_perturbations(imp, query, context="C001", exclude="P00003")
    assert "P00003" not in set(res["perturbation"]) and len(res) == 19
    full = pc.tl.rank_perturbations(imp, query, context="C001").iloc[1:].reset_index(drop=True)
    np.testing.assert_allclose(res["score"], full["score"])
    assert list(res["rank"]) == list(range(1, 20))
    res = pc.tl.rank_perturbations(imp, query, context="C001", exclude=["P00003", "P00004"])
    assert len(res) == 18
    with pytest.raises(ValueError, match="exclude 'P99' not found in obs\\['perturbation'\\]"):
        pc.tl.rank_perturbations(imp, query, context="C001", exclude=["P99"])


# ------------------------------------------------------------------------------ bad input
def test_bad_input_errors_and_input_unchanged(imp: AnnData):
    ad = imp.copy()
    snap = _snapshot(ad)
    query = _effect(ad, "P00003", "C001")
    cases = [
        (ValueError, r"context 'C999' not found in obs\['context'\]; labels are: 'C000', 'C001'", {"context": "C999"}),
        (
            ValueError,
            "unknown method 'spearman'; expected one of: 'cosine', 'pearson', 'connectivity'",
            {"method": "spearman"},
        ),
        (ValueError, "either signature or up/down gene sets, not both", {"up": ["G0001"]}),
        (ValueError, "n_genes must be a positive integer", {"n_genes": 0}),
        (ValueError, "weight must be a finite number >= 0", {"weight": -1.0}),
    ]
    for err, match, kwargs in cases:
        kwargs = {"context": "C001", **kwargs}
        with pytest.raises(err, match=match):
            pc.tl.rank_perturbations(ad, query, **kwargs)
    with pytest.raises(ValueError, match="pass a query: signature"):
        pc.tl.rank_perturbations(ad, context="C001")
    with pytest.raises(ValueError, match=r"0 of 3 matched; query genes: 'a', 'b', 'c'; imputed.var_names: 'G0000'"):
        pc.tl.rank_perturbations(ad, pd.Series([1.0, 2.0, 3.0], index=["a", "b", "c"]), context="C001")
    with pytest.raises(ValueError, match="0 of 2 matched"):
        pc.tl.rank_perturbations(ad, context="C001", up=["x"], down=["y"])
    for bad in (np.nan, np.inf):
        q = query.copy()
        q.iloc[3] = bad
        with pytest.raises(ValueError, match="signature holds 1 NaN or infinite value"):
            pc.tl.rank_perturbations(ad, q, context="C001")
        with pytest.raises(ValueError, match="signature holds 1 NaN or infinite value"):
            pc.tl.rank_perturbations(ad, q.to_numpy(), context="C001")
    with pytest.raises(ValueError, match="signature has 29 values but imputed has 30 genes"):
        pc.tl.rank_perturbations(ad, query.to_numpy()[:-1], context="C001")
    with pytest.raises(ValueError, match="1-D"):
        pc.tl.rank_perturbations(ad, np.zeros((2, 30)), context="C001")
    with pytest.raises(ValueError, match="exactly one row, got 2"):
        pc.tl.rank_perturbations(ad, ad[:2], context="C001")
    with pytest.raises(ValueError, match="repeated gene names"):
        pc.tl.rank_perturbations(ad, pd.concat([query, query.iloc[:1]]), context="C001")
    with pytest.raises(ValueError, match="zero on every matched gene"):
        pc.tl.rank_perturbations(ad, query * 0, context="C001")
    with pytest.raises(ValueError, match="constant on the matched genes"):
        pc.tl.rank_perturbations(ad, query * 0 + 1, context="C001", method="pearson")
    with pytest.raises(ValueError, match="'G0001' are in both up and down"):
        pc.tl.rank_perturbations(ad, context="C001", up=["G0001", "G0002"], down=["G0001"])
    with pytest.raises(ValueError, match="the up set holds all 30 genes"):
        pc.tl.rank_perturbations(ad, context="C001", up=list(ad.var_names), method="connectivity")
    with pytest.raises(ValueError, match="no perturbation of context 'C001' is left"):
        pc.tl.rank_perturbations(ad, query, context="C001", exclude=list(ad.obs["perturbation"].cat.categories))
    with pytest.raises(TypeError, match="expected an AnnData or MuData"):
        pc.tl.rank_perturbations(ad.X, query, context="C001")
    with pytest.raises(TypeError, match="context must be one label"):
        pc.tl.rank_perturbations(ad, query, context=["C001"])
    nan = ad.copy()
    nan.X[0, 0] = np.nan
    with pytest.raises(ValueError, match="imputed effects of context 'C000' holds 1 NaN"):
        pc.tl.rank_perturbations(nan, query, context="C000")
    no_ctx = ad.copy()
    del no_ctx.obs["context"]
    with pytest.raises(KeyError, match="'context' is not a column of imputed.obs"):
        pc.tl.rank_perturbations(no_ctx, query, context="C000")
    # and a successful call leaves it alone too
    for method in METHODS:
        pc.tl.rank_perturbations(ad, query, context="C001", method=method, exclude="P00003")
        pc.tl.rank_perturbations(ad, context="C001", up=["G0001"], down=["G0002"], method=method)
    _assert_unchanged(ad, snap)
