"""Property-based tests of the input layer: whatever the shape, dtype, sparse format, categorical levels or
label strings of a screen, ``pp.signatures`` equals a dense float64 reference or raises a clear error, and
the user's object is unchanged either way."""

from __future__ import annotations

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

import pertcausal as pc
from pertcausal._utils._names import pair_name

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

CONTROL = "control"
# label strings with the pair separator, the escape character, the key separator, spaces and non-ASCII
LABELS = st.text(alphabet="ab|_ \\é1", min_size=1, max_size=4).filter(lambda s: s != CONTROL)
DTYPES = (np.int32, np.int64, np.float16, np.float32, np.float64)
FORMATS = ("dense", "csr", "csc", "csr_duplicates", "csc_duplicates")


def _duplicated(x: sp.csr_matrix, rng: np.random.Generator) -> sp.csr_matrix:
    """``x`` with some stored entries split into two stored parts that sum to them (legal in scipy)."""
    x = sp.csr_matrix(x)
    rows = np.repeat(np.arange(x.shape[0]), np.diff(x.indptr))
    split = rng.random(x.nnz) < 0.5
    part = np.floor(x.data * rng.random(x.nnz))
    data = np.r_[np.where(split, part, x.data), (x.data - part)[split]]
    r = np.r_[rows, rows[split]]
    c = np.r_[x.indices, x.indices[split]]
    order = np.argsort(r, kind="stable")
    indptr = np.r_[0, np.cumsum(np.bincount(r, minlength=x.shape[0]))]
    out = sp.csr_matrix((data[order].astype(x.dtype), c[order], indptr), shape=x.shape)
    np.testing.assert_array_equal(out.toarray(), x.toarray())
    return out


@st.composite
def screens(draw):
    n_p = draw(st.integers(1, 3))
    n_c = draw(st.integers(1, 3))
    n_g = draw(st.integers(1, 5))
    perts = draw(st.lists(LABELS, min_size=n_p, max_size=n_p, unique=True))
    ctxs = draw(st.lists(LABELS, min_size=n_c, max_size=n_c, unique=True))
    groups = [(p, c) for p in [CONTROL, *perts] for c in ctxs]
    sizes = draw(st.lists(st.integers(0, 3), min_size=len(groups), max_size=len(groups)))
    p_col = [p for (p, _), k in zip(groups, sizes) for _ in range(k)]
    c_col = [c for (_, c), k in zip(groups, sizes) for _ in range(k)]
    n = len(p_col)
    if n == 0:
        p_col, c_col, n = [perts[0]], [ctxs[0]], 1
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    # counts up to 18,000: five genes' library overflows float16 (largest value 65,504) while each count fits
    high = draw(st.sampled_from([5, 60, 18_000]))
    counts = rng.integers(0, high + 1, size=(n, n_g)) * (rng.random((n, n_g)) < 0.7)
    dtype = draw(st.sampled_from(DTYPES))
    fmt = draw(st.sampled_from(FORMATS))
    x = counts.astype(dtype)
    if dtype is not np.float16 and fmt != "dense":  # scipy.sparse has no float16
        x = sp.csr_matrix(x)
        if fmt.endswith("duplicates"):
            x = _duplicated(x, rng)
        if fmt.startswith("csc"):
            x = x.T.tocsr().T  # a CSC matrix (duplicates kept) without summing them
            assert x.format == "csc"
    categorical = draw(st.booleans())
    unused = draw(st.booleans())
    obs = pd.DataFrame({"perturbation": p_col, "context": c_col}, index=[f"cell{i}" for i in range(n)])
    if categorical:
        for col, extra in (("perturbation", "zz_unused_p"), ("context", "zz_unused_c")):
            cats = sorted(set(obs[col])) + ([extra] if unused else [])
            obs[col] = pd.Categorical(obs[col], categories=cats)
    return ad.AnnData(X=x, obs=obs, var=pd.DataFrame(index=[f"g{j}" for j in range(n_g)]))


def _reference(adata: ad.AnnData) -> tuple[dict, dict]:
    """Effects and context control means in float64 from the dense matrix, as the definition states them."""
    x = adata.X.toarray() if sp.issparse(adata.X) else np.asarray(adata.X)
    x = x.astype(np.float64)
    lib = x.sum(1, keepdims=True)
    y = np.log1p(np.divide(x * 1e4, lib, out=np.zeros_like(x), where=lib > 0))
    p = adata.obs["perturbation"].astype(str).to_numpy()
    c = adata.obs["context"].astype(str).to_numpy()
    ctrl = {k: y[(p == CONTROL) & (c == k)].mean(0) for k in set(c[p == CONTROL])}
    effects = {}
    for key in set(zip(p[p != CONTROL], c[p != CONTROL])):
        rows = (p == key[0]) & (c == key[1])
        effects[key] = y[rows].mean(0) - ctrl[key[1]] if key[1] in ctrl else None
    return effects, ctrl


def _snapshot(adata: ad.AnnData):
    x = adata.X
    parts = (x.data.copy(), x.indices.copy(), x.indptr.copy(), x.format) if sp.issparse(x) else (x.copy(),)
    return parts, x.dtype, adata.obs.copy(deep=True), adata.var.copy()


def _unchanged(adata: ad.AnnData, snap) -> None:
    parts, dtype, obs, var = snap
    x = adata.X
    assert x.dtype == dtype
    if sp.issparse(x):
        assert x.format == parts[3]
        for now, before in zip((x.data, x.indices, x.indptr), parts[:3]):
            np.testing.assert_array_equal(now, before)
    else:
        np.testing.assert_array_equal(x, parts[0])
    pd.testing.assert_frame_equal(adata.obs, obs)
    pd.testing.assert_frame_equal(adata.var, var)


@settings(max_examples=300, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])
@given(screens())
def test_signatures_equal_a_dense_float64_reference_or_raise_clearly(adata):
    snap = _snapshot(adata)
    effects, ctrl = _reference(adata)
    lacking = sorted(k for k, v in effects.items() if v is None)
    try:
        sig = pc.pp.signatures(
            adata, perturbation_key="perturbation", context_key="context", control=CONTROL, min_cells=1
        )
    except ValueError as err:
        message = str(err)
        if not ctrl:
            assert f"control {CONTROL!r} not found in obs['perturbation']" in message
        elif not effects:
            assert "no perturbed observation" in message
        else:
            assert lacking, f"unexpected error: {message}"
            assert "have no control observations" in message and repr(pair_name(*lacking[0])) in message
        return
    finally:
        _unchanged(adata, snap)
    assert effects and not lacking
    got = {(str(p), str(c)): row for p, c, row in zip(sig.obs["perturbation"], sig.obs["context"], sig.X)}
    assert set(got) == set(effects)
    for key, ref in effects.items():
        np.testing.assert_allclose(got[key], ref, rtol=1e-5, atol=1e-5)
    # every pair has its own name, built from its labels whatever characters they hold
    assert sig.obs_names.is_unique
    assert list(sig.obs_names) == [pair_name(p, c) for p, c in zip(sig.obs["perturbation"], sig.obs["context"])]
    # context baselines: the control means, for every context with controls
    cm = sig.uns["control_mean"]
    assert set(cm.index) == set(ctrl)
    for k, ref in ctrl.items():
        np.testing.assert_allclose(cm.loc[k].to_numpy(), ref, rtol=1e-5, atol=1e-5)
    assert np.isfinite(sig.X).all()


@settings(max_examples=150, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])
@given(screens())
def test_impute_grid_has_the_observed_and_control_contexts_only(adata):
    """The grid of tl.impute holds the contexts of the observed pairs and those with controls, never an
    unused categorical level, and no pair twice."""
    try:
        sig = pc.pp.signatures(
            adata, perturbation_key="perturbation", context_key="context", control=CONTROL, min_cells=1
        )
    except ValueError:
        return
    snap = sig.copy()
    observed = set(sig.obs["context"].astype(str))
    expected = observed | set(sig.uns["control_mean"].index)
    try:
        imp = pc.tl.impute(sig, method="mean_over_contexts", progress_bar=False)
    except ValueError as err:
        assert "nothing to impute" in str(err)
        assert len(set(sig.obs["perturbation"].astype(str))) * len(expected) == sig.n_obs
        return
    assert set(imp.obs["context"].astype(str)) == expected
    assert set(imp.obs["perturbation"].astype(str)) == set(sig.obs["perturbation"].astype(str))
    assert imp.obs_names.is_unique and imp.n_obs == len(expected) * sig.obs["perturbation"].nunique()
    np.testing.assert_array_equal(sig.X, snap.X)
    pd.testing.assert_frame_equal(sig.obs, snap.obs)


@settings(max_examples=150, deadline=None, derandomize=True)
@given(
    st.sampled_from(["csr", "csc", "coo"]),
    st.integers(1, 6),
    st.integers(1, 6),
    st.lists(st.tuples(st.integers(0, 5), st.integers(0, 5), st.integers(-3, 3)), max_size=40),
)
def test_canonical_sums_duplicates_on_a_copy(fmt, n, m, entries):
    """``canonical`` (the input layer's sparse reader) sums repeated entries of any sparse format into a matrix
    with each entry stored once, equal to the input, leaving the input's storage as it was."""
    from pertcausal._utils._validate import canonical

    entries = [(i % n, j % m, v) for i, j, v in entries]
    rows = np.array([e[0] for e in entries], dtype=np.int64)
    cols = np.array([e[1] for e in entries], dtype=np.int64)
    vals = np.array([e[2] for e in entries], dtype=np.float64)
    coo = sp.coo_matrix((vals, (rows, cols)), shape=(n, m))
    if fmt == "coo":
        x = coo
    else:  # compressed storage with the duplicates kept (scipy's constructors would sum them)
        major, minor = (rows, cols) if fmt == "csr" else (cols, rows)
        order = np.argsort(major, kind="stable")
        indptr = np.r_[0, np.cumsum(np.bincount(major, minlength=n if fmt == "csr" else m))]
        cls = sp.csr_matrix if fmt == "csr" else sp.csc_matrix
        x = cls((vals[order], minor[order], indptr), shape=(n, m))
    before = [a.copy() for a in ((x.data, x.row, x.col) if fmt == "coo" else (x.data, x.indices, x.indptr))]
    out = canonical(x)
    assert out.has_canonical_format
    dense = np.zeros((n, m))
    np.add.at(dense, (rows, cols), vals)
    np.testing.assert_allclose(out.toarray(), dense)
    after = (x.data, x.row, x.col) if fmt == "coo" else (x.data, x.indices, x.indptr)
    for a, b in zip(after, before):
        np.testing.assert_array_equal(a, b)
