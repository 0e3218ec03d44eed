"""NTK engine: closed-form kernel, empirical NTK of wide nets, exact and Nystrom solvers, devices."""

from __future__ import annotations

import math

import numpy as np
import pytest

torch = pytest.importorskip("torch")

import pertcausal as pc  # noqa: E402
from pertcausal._engines import Grid  # noqa: E402
from pertcausal._engines import ntk as ntk_mod  # noqa: E402
from pertcausal._engines.ntk import feature_prior, fit_ntk, ntk, ntk_relu  # noqa: E402
from pertcausal.data._simulate import true_effects  # noqa: E402
from pertcausal.tl._grid_io import grid_from_signatures  # noqa: E402


def _closed_form_depth1(rho: np.ndarray) -> np.ndarray:
    rho = np.clip(rho, -1.0, 1.0)
    k1 = (rho * (math.pi - np.arccos(rho)) + np.sqrt(1 - rho**2)) / math.pi
    return k1 + rho * (math.pi - np.arccos(rho)) / math.pi


def _row_pearson(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a = a - a.mean(1, keepdims=True)
    b = b - b.mean(1, keepdims=True)
    return (a * b).sum(1) / np.sqrt((a * a).sum(1) * (b * b).sum(1))


def _screen(n_perturbations=120, n_contexts=8, n_genes=40, *, rank=3, noise=0.02, frac=0.5, seed=0):
    """A simulated signature-level screen as a Grid, with its simulation factors."""
    sig = pc.data.simulate_effects(n_perturbations=n_perturbations, n_contexts=n_contexts, n_genes=n_genes,
                                   rank=rank, noise=noise, frac_observed=frac, seed=seed)
    grid, _, _ = grid_from_signatures(sig)
    return grid, sig.uns["simulation"]


def _split(grid: Grid, frac: float = 0.2, seed: int = 0) -> tuple[Grid, np.ndarray]:
    """Hold out a fraction of observed pairs whose perturbation and context stay in training."""
    rng = np.random.default_rng(seed)
    cand = rng.permutation(grid.n_obs)
    keep_p = np.bincount(grid.pert, minlength=grid.n_perts)
    keep_c = np.bincount(grid.ctx, minlength=grid.n_contexts)
    test = []
    for i in cand[: int(frac * grid.n_obs * 2)]:
        if keep_p[grid.pert[i]] > 1 and keep_c[grid.ctx[i]] > 1 and len(test) < frac * grid.n_obs:
            test.append(i)
            keep_p[grid.pert[i]] -= 1
            keep_c[grid.ctx[i]] -= 1
    test = np.sort(np.asarray(test))
    return grid.subset(np.setdiff1d(np.arange(grid.n_obs), test)), test


# ---------------------------------------------------------------- (i) kernel
def test_ntk_relu_closed_form_depth1():
    rho = np.linspace(-1.0, 1.0, 201)
    np.testing.assert_allclose(ntk_relu(rho, 1), _closed_form_depth1(rho), rtol=1e-12, atol=1e-12)
    assert float(ntk_relu(np.float64(1.0), 1)) == pytest.approx(2.0)
    assert float(ntk_relu(np.float64(-1.0), 1)) == pytest.approx(0.0, abs=1e-12)
    assert float(ntk_relu(np.float64(0.0), 1)) == pytest.approx(1.0 / math.pi)
    assert float(ntk_relu(np.float32(1.0), 2)) == pytest.approx(3.0)  # K(1) = depth + 1
    # cosines a hair outside [-1, 1] (rounding) are clipped, never NaN
    assert np.isfinite(ntk_relu(np.array([1.0 + 1e-9, -1.0 - 1e-9]), 1)).all()


@pytest.mark.parametrize("depth", [1, 2, 3])
def test_ntk_relu_torch_and_inplace_match_numpy(depth):
    rho = np.linspace(-1.0, 1.0, 101)
    ref = ntk_relu(rho, depth)
    np.testing.assert_allclose(ntk_relu(torch.as_tensor(rho), depth).numpy(), ref, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(ntk_mod._ntk_relu_(torch.as_tensor(rho).clone(), depth).numpy(), ref,
                               rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(ntk_mod._ntk_relu_(torch.as_tensor(rho, dtype=torch.float32), depth).numpy(), ref,
                               rtol=1e-5, atol=1e-5)


def _empirical_ntk(x: torch.Tensor, depth: int, width: int, seed: int) -> np.ndarray:
    """Empirical NTK of a bias-free ReLU MLP in the NTK parametrisation, by autograd over all weights.

    ``f(x) = sqrt(2/n) v . relu(h_L)``, ``h_l = sqrt(2/n) W_l relu(h_{l-1})``, ``h_1 = W_1 x``, all weights N(0, 1).
    """
    gen = torch.Generator().manual_seed(seed)
    ws = [torch.randn(width, x.shape[1], generator=gen, requires_grad=True)]
    ws += [torch.randn(width, width, generator=gen, requires_grad=True) for _ in range(depth - 1)]
    v = torch.randn(width, generator=gen, requires_grad=True)
    params = [*ws, v]
    scale = math.sqrt(2.0 / width)

    def f(xi: torch.Tensor) -> torch.Tensor:
        h = ws[0] @ xi
        for w in ws[1:]:
            h = scale * (w @ torch.relu(h))
        return scale * (v @ torch.relu(h))

    jac = torch.stack([torch.cat([g.reshape(-1) for g in torch.autograd.grad(f(xi), params)]) for xi in x])
    return (jac @ jac.T).double().numpy()


@pytest.mark.parametrize(("depth", "width", "n_nets"), [(1, 16384, 8), (2, 4096, 6)])
def test_ntk_relu_matches_empirical_ntk_of_wide_relu_net(depth, width, n_nets):
    rng = np.random.default_rng(0)
    x = rng.standard_normal((5, 4))
    x /= np.linalg.norm(x, axis=1, keepdims=True)  # inputs on the unit sphere
    x[4] = -x[0]  # an antipodal pair (rho = -1)
    rho = np.clip(x @ x.T, -1.0, 1.0)
    xt = torch.as_tensor(x, dtype=torch.float32)
    emp = np.mean([_empirical_ntk(xt, depth, width, seed) for seed in range(n_nets)], axis=0)
    theory = ntk_relu(rho, depth)
    # finite-width fluctuations are O(1/sqrt(width * n_nets)); a few % of K(1) = depth + 1
    np.testing.assert_allclose(emp, theory, atol=0.04 * (depth + 1))
    np.testing.assert_allclose(np.diag(emp), depth + 1.0, rtol=0.04)


# ---------------------------------------------------------------- (ii) exact interpolation
@pytest.mark.parametrize("nugget", [1.5, 0.3])
def test_exact_interpolates_training_rows(nugget):
    grid, _ = _screen(n_perturbations=40, n_contexts=6, n_genes=25, noise=0.1)
    rng = np.random.default_rng(3)
    new_p, new_c = np.nonzero(~grid.observed())
    pick = rng.choice(len(new_p), 10, replace=False)
    qp = np.concatenate([grid.pert, new_p[pick]])  # every training pair plus unseen ones
    qc = np.concatenate([grid.ctx, new_c[pick]])
    pred = ntk(grid, qp, qc, solver="exact", ridge=0.0, nugget=nugget, device="cpu")
    assert pred.values.dtype == np.float64
    np.testing.assert_allclose(pred.values[: grid.n_obs], grid.y, atol=1e-7)
    assert np.isfinite(pred.values).all()
    # the same unseen pairs queried alone give the same predictions
    alone = ntk(grid, new_p[pick], new_c[pick], solver="exact", nugget=nugget, device="cpu").values
    np.testing.assert_allclose(pred.values[grid.n_obs :], alone, atol=1e-10)


def test_exact_with_ridge_does_not_interpolate():
    grid, _ = _screen(n_perturbations=40, n_contexts=6, n_genes=25, noise=0.1)
    pred = ntk(grid, grid.pert, grid.ctx, solver="exact", ridge=1.0, device="cpu").values
    assert np.abs(pred - grid.y).max() > 1e-3


# ---------------------------------------------------------------- (iii) Nystrom vs exact
def test_nystrom_with_all_centres_equals_exact():
    grid, _ = _screen(n_perturbations=150, n_contexts=8, n_genes=30)
    train, test = _split(grid)
    qp, qc = grid.pert[test], grid.ctx[test]
    exact = ntk(train, qp, qc, solver="exact", device="cpu")
    nys = ntk(train, qp, qc, solver="nystrom", n_centers=train.n_obs, dtype="float64", block_size=97, device="cpu")
    assert nys.info["solver"] == "nystrom" and nys.info["n_centers"] == train.n_obs
    scale = np.abs(exact.values).max()
    np.testing.assert_allclose(nys.values, exact.values, atol=1e-6 * scale)
    # float32 kernel blocks with float64 accumulation stay close too
    n32 = ntk(train, qp, qc, solver="nystrom", n_centers=train.n_obs, dtype="float32", device="cpu")
    assert n32.values.dtype == np.float32
    np.testing.assert_allclose(n32.values, exact.values, atol=1e-3 * scale)


def test_nystrom_with_fewer_centres_stays_close():
    grid, _ = _screen(n_perturbations=200, n_contexts=8, n_genes=30)
    train, test = _split(grid)
    qp, qc = grid.pert[test], grid.ctx[test]
    exact = ntk(train, qp, qc, solver="exact", device="cpu").values
    for m in (train.n_obs // 4, train.n_obs // 10):
        nys = ntk(train, qp, qc, solver="nystrom", n_centers=m, block_size=64, device="cpu").values
        assert np.corrcoef(nys.ravel(), exact.ravel())[0, 1] > 0.99, m


def test_nystrom_auto_above_max_exact_and_chunked_predict():
    grid, _ = _screen(n_perturbations=100, n_contexts=6, n_genes=20)
    qp, qc = np.nonzero(~grid.observed())
    pred = ntk(grid, qp, qc, max_exact=50, n_centers=60, block_size=33, device="cpu", seed=1)
    assert pred.info["solver"] == "nystrom" and pred.values.dtype == np.float32
    assert pred.values.flags.c_contiguous and pred.values.shape == (len(qp), grid.n_genes)
    fitted = fit_ntk(grid, max_exact=50, n_centers=60, block_size=33, device="cpu", seed=1)
    out = np.empty((len(qp), grid.n_genes), dtype=np.float32)
    for s in range(0, len(qp), 50):  # chunks of the grid reuse one fit
        fitted.predict(qp[s : s + 50], qc[s : s + 50], out=out[s : s + 50])
    np.testing.assert_allclose(out, pred.values, rtol=1e-5, atol=1e-6 * np.abs(pred.values).max())
    with pytest.raises(ValueError, match="out must be"):
        fitted.predict(qp, qc, out=np.empty((len(qp), grid.n_genes)))


def test_gram_and_feature_product_paths_agree(monkeypatch):
    grid, _ = _screen(n_perturbations=80, n_contexts=6, n_genes=20)
    qp, qc = np.nonzero(~grid.observed())
    a = ntk(grid, qp, qc, solver="nystrom", n_centers=100, dtype="float64", device="cpu").values
    monkeypatch.setattr(ntk_mod, "_GRAM_BUDGET_BYTES", 0)  # force row-feature products
    b = ntk(grid, qp, qc, solver="nystrom", n_centers=100, dtype="float64", device="cpu").values
    np.testing.assert_allclose(a, b, rtol=1e-9, atol=1e-9)


def test_singular_systems_fall_back_to_jitter():
    """No nugget, no ridge and duplicated rows: the Cholesky factorisations need jitter but succeed."""
    rng = np.random.default_rng(0)
    pf = rng.normal(size=(10, 3))
    pf[1] = pf[0]  # P0 and P1 look identical, so rows (P0, c) and (P1, c) coincide
    p, c = np.arange(30) % 10, np.arange(30) // 10
    grid = Grid(rng.normal(size=(30, 5)), p, c, 10, 4, pert_features=pf, ctx_features=rng.normal(size=(4, 2)))
    exact = ntk(grid, np.array([0, 5]), np.array([3, 3]), solver="exact", nugget=0.0, device="cpu")
    assert np.isfinite(exact.values).all() and exact.info["jitter"] > 0
    nys = ntk(grid, np.array([0, 5]), np.array([3, 3]), solver="nystrom", nugget=0.0, n_centers=30,
              dtype="float64", device="cpu")
    assert np.isfinite(nys.values).all() and nys.info["jitter_kmm"] > 0 and nys.info["lambda"] == 0.0
    np.testing.assert_allclose(nys.values, exact.values, atol=1e-3 * np.abs(exact.values).max())
    # rows with no feature at all and no nugget are not NaN
    zero = Grid(grid.y, p, c, 10, 4, pert_features=np.ones((10, 3)), ctx_features=np.ones((4, 2)))
    for solver in ("exact", "nystrom"):
        pred = ntk(zero, np.array([0, 5]), np.array([3, 3]), solver=solver, nugget=0.0, n_centers=12, device="cpu")
        assert np.isfinite(pred.values).all(), solver


# ---------------------------------------------------------------- (iv) no leakage of held-out pairs
def test_feature_prior_and_predictions_use_training_data_only():
    grid, _ = _screen(n_perturbations=60, n_contexts=6, n_genes=20)
    train, test = _split(grid, seed=2)
    qp, qc = grid.pert[test], grid.ctx[test]
    base_prior = feature_prior(train)
    base = ntk(train, qp, qc, device="cpu").values
    changed = grid.y.copy()
    changed[test] = 100.0 * np.random.default_rng(5).normal(size=(len(test), grid.n_genes))
    grid2 = Grid(changed, grid.pert, grid.ctx, grid.n_perts, grid.n_contexts, grid.baseline)
    train2 = grid2.subset(np.setdiff1d(np.arange(grid.n_obs), test))
    for a, b in zip(base_prior, feature_prior(train2)):
        np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(ntk(train2, qp, qc, device="cpu").values, base)
    # ...while the same change made to training rows does change them
    grid3 = Grid(changed[::-1].copy(), grid.pert, grid.ctx, grid.n_perts, grid.n_contexts, grid.baseline)
    train3 = grid3.subset(np.setdiff1d(np.arange(grid.n_obs), test))
    assert not np.allclose(ntk(train3, qp, qc, device="cpu").values, base)


# ---------------------------------------------------------------- (v) accuracy on a low-rank screen
@pytest.mark.parametrize("solver", ["exact", "nystrom"])
def test_low_rank_screen_is_predicted(solver):
    grid, sim = _screen(n_perturbations=200, n_contexts=10, n_genes=50, rank=3, noise=0.0, frac=0.5, seed=4)
    train, test = _split(grid)
    qp, qc = grid.pert[test], grid.ctx[test]
    pred = ntk(train, qp, qc, solver=solver, n_centers=300, device="cpu").values
    r = _row_pearson(pred.astype(np.float64), true_effects(sim, qp, qc))
    assert np.median(r) > 0.9 and r.mean() > 0.9


# ---------------------------------------------------------------- (vi, vii) devices
@pytest.mark.gpu
@pytest.mark.parametrize(("solver", "dtype"), [("exact", "float64"), ("nystrom", "float64"), ("nystrom", "float32")])
def test_cpu_and_cuda_agree(solver, dtype):
    grid, _ = _screen(n_perturbations=150, n_contexts=8, n_genes=30)
    qp, qc = np.nonzero(~grid.observed())
    kw = {"solver": solver, "dtype": dtype, "n_centers": 200}
    cpu = ntk(grid, qp, qc, device="cpu", **kw)
    gpu = ntk(grid, qp, qc, device="cuda", **kw)
    assert gpu.info["device"].startswith("cuda") and gpu.values.dtype == cpu.values.dtype
    tol = 1e-8 if dtype == "float64" else 1e-3
    np.testing.assert_allclose(gpu.values, cpu.values, atol=tol * np.abs(cpu.values).max())


def test_cuda_without_cuda_raises_naming_the_device():
    if torch.cuda.is_available():
        pytest.skip("CUDA is available here")
    grid, _ = _screen(n_perturbations=20, n_contexts=4, n_genes=10)
    with pytest.raises(ValueError, match="device 'cuda' was requested but CUDA is not available"):
        ntk(grid, np.array([0]), np.array([0]), device="cuda")
    with pytest.raises(ValueError, match="'cuda:1'"):
        fit_ntk(grid, device="cuda:1")


def test_bad_options():
    grid, _ = _screen(n_perturbations=20, n_contexts=4, n_genes=10)
    with pytest.raises(ValueError, match="depth must be >= 1"):
        ntk(grid, np.array([0]), np.array([0]), depth=0, device="cpu")
    with pytest.raises(ValueError, match="unknown solver 'cg'"):
        ntk(grid, np.array([0]), np.array([0]), solver="cg", device="cpu")
    with pytest.raises(ValueError, match="unknown dtype 'float16'"):
        ntk(grid, np.array([0]), np.array([0]), dtype="float16", device="cpu")


# ---------------------------------------------------------------- posterior variance (reliability)
def _arc_grid(n_train: int = 30, span: float = 1.0) -> Grid:
    """One context; perturbations on an arc at angles in [0, span] with user features (cos, sin)."""
    theta = np.linspace(0.0, span, n_train)
    rng = np.random.default_rng(0)
    y = np.stack([np.sin(3 * theta), np.cos(2 * theta)], 1) + 0.01 * rng.standard_normal((n_train, 2))
    angles = np.concatenate([theta, span + np.array([0.05, 0.2, 0.5, 1.0, 2.0])])
    feats = np.stack([np.cos(angles), np.sin(angles)], 1)
    return Grid(y, np.arange(n_train), np.zeros(n_train, int), len(angles), 1, pert_features=feats)


def test_posterior_variance_zero_at_training_pairs_and_grows_away():
    grid = _arc_grid()
    fit = fit_ntk(grid, solver="exact", nugget=0.3, device="cpu", posterior_variance=True)
    v_train = fit.variance(grid.pert, grid.ctx)
    np.testing.assert_allclose(v_train, 0.0, atol=1e-8)
    far = np.arange(grid.n_obs, grid.n_perts)  # increasingly far from the training arc
    v_far = fit.variance(far, np.zeros(len(far), int))
    assert np.all(np.diff(v_far) > 0) and v_far[0] > 1e-4 and v_far[-1] <= 1.0
    # the Nystrom (subset-of-regressors) variance ranks the same queries the same way
    nys = fit_ntk(grid, solver="nystrom", n_centers=20, nugget=0.3, device="cpu", posterior_variance=True)
    assert np.all(np.diff(nys.variance(far, np.zeros(len(far), int))) > 0)
    # ntk() reports it through the prediction, and reliability is one minus it
    pred = ntk(grid, far, np.zeros(len(far), int), nugget=0.3, device="cpu")
    np.testing.assert_allclose(pred.variance, v_far, atol=1e-10)
    np.testing.assert_allclose(pred.reliability, 1 - v_far, atol=1e-10)
    with pytest.raises(ValueError, match="posterior_variance=True"):
        fit_ntk(grid, device="cpu").variance(far, np.zeros(len(far), int))


def test_posterior_variance_in_impute_output():
    sig = pc.data.simulate_effects(n_perturbations=30, n_contexts=6, n_genes=20, seed=2)
    imp = pc.tl.impute(sig, method="ntk", device="cpu", progress_bar=False)
    obs = imp.obs
    assert (obs.loc[obs["observed"], "posterior_variance"] == 0).all()
    q = obs.loc[~obs["observed"]]
    assert (q["posterior_variance"] > 0).all()
    np.testing.assert_allclose(q["reliability"], 1 - q["posterior_variance"])
    off = pc.tl.impute(sig, method="ntk", device="cpu", progress_bar=False, posterior_variance=False)
    assert "posterior_variance" not in off.obs and off.obs["reliability"].isna().all()


# ---------------------------------------------------------------- transport across contexts
def _dose_grid(n_perts: int = 40, doses=(1.0, 2.0, 3.0, 4.0, 5.0), n_genes: int = 30, held_out: int = 3, seed: int = 0):
    """Every perturbation has its own gene patterns u_p, v_p; its effect at dose d is u_p d/5 + v_p (d/5)^2.

    Context features: the dose. The context ``held_out`` has no training pair. Returns the training grid,
    the queried pairs (every perturbation in the held-out context) and their true effects.
    """
    rng = np.random.default_rng(seed)
    u, v = rng.normal(size=(n_perts, n_genes)), rng.normal(size=(n_perts, n_genes))
    d = np.asarray(doses) / max(doses)
    p, c = np.divmod(np.arange(n_perts * len(doses)), len(doses))
    y = u[p] * d[c, None] + v[p] * d[c, None] ** 2
    train = c != held_out
    grid = Grid(y[train], p[train], c[train], n_perts, len(doses), ctx_features=np.asarray(doses)[:, None])
    return grid, p[~train], c[~train], y[~train]


def test_identity_block_and_rbf_context_match_explicit_features(monkeypatch):
    """The analytic perturbation identity block and the RBF context part equal explicit feature vectors
    ``[pf, t e_p, w R(c), s e_row]`` with ``R R^T`` the Gaussian kernel of the context features."""
    grid, qp, qc, _ = _dose_grid(n_perts=12, n_genes=8)
    qp, qc = np.concatenate([qp, [0, 3]]), np.concatenate([qc, [0, 4]])  # two training pairs queried again
    t, w, s, ell = 1.5, 2.0, 0.7, 1.3
    kw = {"perturbation_identity": t, "context_kernel": "rbf", "context_lengthscale": ell, "context_weight": w}
    kw["nugget"] = s
    got = ntk(grid, qp, qc, solver="exact", device="cpu", **kw).values
    # explicit features, as in the reference (one private coordinate per training row)
    pf = grid.group_mean("pert")[0]
    pf /= np.linalg.norm(pf, axis=1, keepdims=True)
    x = np.asarray(grid.ctx_features, float)
    gram = np.exp(-0.5 * (x - x.T) ** 2 / ell**2)
    vals, vecs = np.linalg.eigh(gram)
    root = (vecs * np.sqrt(np.clip(vals, 0, None))) @ vecs.T
    np.testing.assert_allclose(root @ root.T, gram, atol=1e-12)

    n, m = grid.n_obs, len(qp)
    index = {(a, b): i for i, (a, b) in enumerate(zip(grid.pert, grid.ctx))}
    row = np.array([index.get((a, b), -1) for a, b in zip(qp, qc)])
    priv_q = np.zeros((m, n + m))  # a new pair has its own private coordinate, a training pair its row's
    priv_q[np.arange(m), np.where(row >= 0, row, n + np.arange(m))] = s
    ftr = np.hstack([pf[grid.pert], t * np.eye(grid.n_perts)[grid.pert], w * root[grid.ctx], s * np.eye(n, n + m)])
    fq = np.hstack([pf[qp], t * np.eye(grid.n_perts)[qp], w * root[qc], priv_q])
    ftr /= np.linalg.norm(ftr, axis=1, keepdims=True)
    fq /= np.linalg.norm(fq, axis=1, keepdims=True)
    mu = grid.y.mean(0)
    alpha = np.linalg.solve(ntk_relu(ftr @ ftr.T), grid.y - mu)
    np.testing.assert_allclose(got, ntk_relu(fq @ ftr.T) @ alpha + mu, atol=1e-7)
    np.testing.assert_allclose(got[-2:], grid.y[[index[(0, 0)], index[(3, 4)]]], atol=1e-9)  # interpolation
    # Nystrom: the Gram and the feature-product paths give the same numbers with the identity block
    a = ntk(grid, qp, qc, solver="nystrom", n_centers=20, dtype="float64", device="cpu", **kw).values
    monkeypatch.setattr(ntk_mod, "_GRAM_BUDGET_BYTES", 0)
    b = ntk(grid, qp, qc, solver="nystrom", n_centers=20, dtype="float64", device="cpu", **kw).values
    np.testing.assert_allclose(a, b, rtol=1e-9, atol=1e-9)


def test_identity_and_rbf_context_transport_to_an_unseen_context():
    """Perturbations with private gene patterns and a smooth dose response: a dose never observed is
    predicted from each perturbation's own other doses with the identity block and an RBF context kernel
    (relative squared error 0.0009, correlation 0.9995) far better than with the reference prior (0.26, 0.93)."""
    grid, qp, qc, truth = _dose_grid()
    ref = ntk(grid, qp, qc, device="cpu").values
    own = ntk(grid, qp, qc, device="cpu", perturbation_identity=3.0, context_kernel="rbf", context_lengthscale=2.0,
              context_weight=2.0, nugget=0.5).values
    r_ref, r_own = _row_pearson(truth, ref).mean(), _row_pearson(truth, own).mean()
    e_ref, e_own = ((((p - truth) ** 2).sum(1) / (truth**2).sum(1)).mean() for p in (ref, own))
    assert r_own > 0.999 and r_ref < 0.95, (r_ref, r_own)
    assert e_own < 0.002 and e_ref > 0.2, (e_ref, e_own)


def test_select_chooses_by_validation_on_training_contexts():
    """With a context held out, ``select`` validates by holding out each training context in turn and picks
    the identity block; the held-out pairs' values play no part (changing them changes nothing)."""
    grid, qp, qc, truth = _dose_grid()
    folds = ntk_mod.validation_folds(grid, qp, qc)
    assert [np.unique(grid.ctx[va]).tolist() for _, va in folds] == [[0], [1], [2], [4]]
    assert all(np.intersect1d(tr, va).size == 0 and len(tr) + len(va) == grid.n_obs for tr, va in folds)
    sel = {"perturbation_identity": [0.0, 3.0], "context_lengthscale": [0.3, 2.0]}
    pred = ntk(grid, qp, qc, device="cpu", context_kernel="rbf", context_weight=2.0, nugget=0.5, select=sel)
    assert pred.info["selected"] == {"perturbation_identity": 3.0, "context_lengthscale": 2.0}
    assert len(pred.info["validation_score"]) == 4
    assert _row_pearson(truth, pred.values).mean() > 0.98
    # a held-out pair among training pairs: validation on pairs; an unseen perturbation: on perturbations
    assert len(ntk_mod.validation_folds(grid, np.array([0]), np.array([0]))) == 1
    unseen = grid.subset(np.flatnonzero(grid.pert != 5))
    groups = ntk_mod.validation_folds(unseen, np.array([5]), np.array([0]), max_folds=4)
    assert len(groups) == 4
    assert all(not np.isin(unseen.pert[va], unseen.pert[tr]).any() for tr, va in groups)


def test_transport_options_bad_values():
    grid, qp, qc, _ = _dose_grid(n_perts=5)
    with pytest.raises(ValueError, match="unknown context_kernel 'poly'"):
        ntk(grid, qp, qc, context_kernel="poly", device="cpu")
    with pytest.raises(ValueError, match="context_lengthscale must be > 0"):
        ntk(grid, qp, qc, context_kernel="rbf", context_lengthscale=0.0, device="cpu")
    with pytest.raises(ValueError, match="perturbation_identity must be >= 0"):
        ntk(grid, qp, qc, perturbation_identity=-1.0, device="cpu")
    with pytest.raises(ValueError, match=r"select: unknown NTK option\(s\) \['solver'\]"):
        ntk(grid, qp, qc, select={"solver": ["exact"]}, device="cpu")
