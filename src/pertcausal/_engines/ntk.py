"""Neural tangent kernel matrix completion with feature priors (Radhakrishnan, Stefanakis, Belkin & Uhler, PNAS 2022).

Each (perturbation, context) pair is a row with a feature prior ``f = [perturbation part, w * context part]``
built from training data only. Rows are compared by the closed-form NTK of a bias-free ReLU fully
connected network of ``depth`` hidden layers, evaluated at ``rho = <f_i, f_j> / sqrt((|f_i|^2 + s^2)(|f_j|^2 + s^2))``.
The reference appends a private identity block ``s * I`` to every row; that block only changes the
diagonal, so here it is applied analytically: the kernel is ``K_smooth + diag(d)`` with
``d_i = K(1) - K_smooth(i, i)``, never an ``n x (F + n)`` feature matrix. A queried pair that is also a
training pair *is* that training row (it shares its private coordinate), so exact interpolation
(``ridge=0``) returns the measured effect there.

Since ``<f_i, f_j> = <p_i, p_j> + w^2 <c_i, c_j>``, kernel blocks against a fixed set of columns
(the training rows, or the Nystrom centres) are gathered from two small Gram matrices
(perturbations x columns and contexts x columns) instead of ``rows x features x columns`` products.

The regression ``Y_test = K_test,train (K_train + ridge I)^-1 Y_train`` is solved exactly (Cholesky in
float64) for small problems. For large ones a Nystrom approximation with ``n_centers`` centres solves
``(K_mn K_nm + lambda K_mm) alpha = K_mn Y`` (``lambda`` = the mean identity-block diagonal plus ``ridge``)
with the kernel built block by block (``block_size x n_centers``), accumulated in float64 whatever the
block dtype, and solved in the whitened form ``(L^-1 K_mn K_nm L^-T + lambda I) w = L^-1 K_mn Y``,
``alpha = L^-T w`` with ``L L^T = K_mm + jitter I``. Memory is ``O(n_centers^2 + (block_size + n_perts) * n_centers)``,
never ``O(n^2)``; predictions are written block by block into one preallocated numpy array.
"""

from __future__ import annotations

import math
import time
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from .._utils._device import import_torch, resolve_device
from ._grid import Grid, Prediction, option_grid, option_label, validation_folds
from .metrics import _pearson_rows

_GRAM_BUDGET_BYTES = 2 * 1024**3  # perturbation x column Gram kept on the device when under this size


def ntk_relu(rho: Any, depth: int = 1) -> Any:
    """Closed-form NTK of a bias-free ReLU network with ``depth`` hidden layers at cosine ``rho``.

    Uses the arc-cosine recursion ``Sigma_h = kappa_1(Sigma_{h-1})``,
    ``Theta_h = Theta_{h-1} kappa_0(Sigma_{h-1}) + Sigma_h`` with ``Theta_0 = Sigma_0 = rho``, where
    ``kappa_0(r) = (pi - arccos r) / pi`` and ``kappa_1(r) = (r (pi - arccos r) + sqrt(1 - r^2)) / pi``.
    ``depth=1`` gives ``kappa_1(rho) + rho kappa_0(rho)``, so ``K(1) = depth + 1``.
    Works on numpy arrays and torch tensors.
    """
    if depth < 1:
        raise ValueError(f"depth must be >= 1, got {depth}")
    is_np = isinstance(rho, np.ndarray | np.generic | float | int)
    if is_np:
        lib_acos, lib_sqrt = np.arccos, np.sqrt
        sigma = np.clip(np.asarray(rho, dtype=np.float64), -1.0, 1.0)
    else:
        torch = import_torch()
        lib_acos, lib_sqrt = torch.arccos, torch.sqrt
        sigma = rho.clamp(-1.0, 1.0)
    theta = sigma
    for _ in range(depth):
        ang = lib_acos(sigma)
        k0 = (math.pi - ang) / math.pi
        sigma_next = (sigma * (math.pi - ang) + lib_sqrt((1.0 - sigma * sigma).clip(min=0.0))) / math.pi
        theta = theta * k0 + sigma_next
        sigma = sigma_next.clip(-1.0, 1.0) if is_np else sigma_next.clamp(-1.0, 1.0)
    return theta


def _ntk_relu_(s: Any, depth: int) -> Any:
    """In-place torch version of :func:`ntk_relu` (``s`` holds cosines and is overwritten by the kernel)."""
    torch = import_torch()
    s.clamp_(-1.0, 1.0)
    if depth == 1:  # K = (2 rho (pi - arccos rho) + sqrt(1 - rho^2)) / pi
        a = torch.arccos(s)
        q = torch.mul(s, s).neg_().add_(1.0).clamp_(min=0.0).sqrt_()
        s.mul_(a.neg_().add_(math.pi)).mul_(2.0).add_(q).mul_(1.0 / math.pi)
        return s
    theta = s.clone()
    for _ in range(depth):
        a = torch.arccos(s).neg_().add_(math.pi)  # pi - arccos(sigma)
        q = torch.mul(s, s).neg_().add_(1.0).clamp_(min=0.0).sqrt_()
        theta.mul_(a).mul_(1.0 / math.pi)  # theta * kappa_0(sigma)
        s.mul_(a).add_(q).mul_(1.0 / math.pi).clamp_(-1.0, 1.0)  # sigma <- kappa_1(sigma)
        theta.add_(s)
        del a, q
    return theta


def _unit(x: np.ndarray) -> np.ndarray:
    norm = np.linalg.norm(x, axis=1, keepdims=True)
    return np.divide(x, norm, out=np.zeros_like(x), where=norm > 0)


def feature_prior(
    grid: Grid,
    *,
    perturbation_prior: str = "mean_effect",
    context_prior: str = "auto",
    reference_context: int | None = None,
    context_weight: float = 0.75,
    context_kernel: str = "linear",
    context_lengthscale: float = 1.0,
) -> tuple[np.ndarray, np.ndarray]:
    """Unit-norm perturbation features and context features built from training data only.

    Perturbation part: user features (``grid.pert_features``), else the perturbation's effect in
    ``reference_context`` (``"reference"``) falling back to its mean effect over its training contexts
    (``"mean_effect"``), else the global mean effect for a perturbation never measured.
    Context part: user features, else the centred control baseline (``"baseline"``), else the
    context's mean effect over its training pairs (``"mean_effect"``); scaled by ``context_weight``.
    With ``context_kernel="linear"`` (the reference) the context part is that vector, centred and
    scaled to unit norm. With ``"rbf"`` it is a vector whose inner products are the Gaussian kernel
    ``exp(-|x_i - x_j|^2 / (2 context_lengthscale^2))`` between the contexts' vectors ``x`` (user features
    as given, in their own units; otherwise the unit-norm vectors above), the symmetric square root of
    that ``n_contexts x n_contexts`` Gram matrix: nearby contexts (e.g. the same time at the next
    dose) look alike and distance, not only direction, counts.
    """
    global_mean = grid.y.mean(0)
    if grid.pert_features is not None:
        pf = np.asarray(grid.pert_features, dtype=np.float64)
        pf = pf - pf.mean(0)
    else:
        pf, counts = grid.group_mean("pert")
        pf[counts == 0] = global_mean
        if perturbation_prior == "reference":
            if reference_context is None:
                raise ValueError("perturbation_prior='reference' needs reference_context")
            rows = np.flatnonzero(grid.ctx == reference_context)
            pf[grid.pert[rows]] = grid.y[rows]
        elif perturbation_prior != "mean_effect":
            raise ValueError(
                f"unknown perturbation_prior {perturbation_prior!r}; expected 'mean_effect' or 'reference'"
            )
    if context_prior == "auto":
        context_prior = (
            "features" if grid.ctx_features is not None else "baseline" if grid.baseline is not None else "mean_effect"
        )
    if context_kernel not in ("linear", "rbf"):
        raise ValueError(f"unknown context_kernel {context_kernel!r}; expected 'linear' or 'rbf'")
    if not context_lengthscale > 0:
        raise ValueError(f"context_lengthscale must be > 0, got {context_lengthscale}")
    if context_prior == "features":
        if grid.ctx_features is None:
            raise ValueError("context_prior='features' needs context features")
        cf = np.asarray(grid.ctx_features, dtype=np.float64)
        if context_kernel == "rbf":
            return _unit(pf), context_weight * _rbf_root(cf, context_lengthscale)
        cf = cf - cf.mean(0)
    elif context_prior == "baseline":
        if grid.baseline is None:
            raise ValueError("context_prior='baseline' needs control baselines (signatures with uns['control_mean'])")
        cf = grid.baseline - grid.baseline.mean(0)
    elif context_prior == "mean_effect":
        cf, counts = grid.group_mean("ctx")
        cf = cf - cf[counts > 0].mean(0)
        cf[counts == 0] = 0.0
    else:
        raise ValueError(
            f"unknown context_prior {context_prior!r}; expected 'auto', 'baseline', 'mean_effect' or 'features'"
        )
    if context_kernel == "rbf":
        return _unit(pf), context_weight * _rbf_root(_unit(cf), context_lengthscale)
    return _unit(pf), context_weight * _unit(cf)


def _rbf_root(x: np.ndarray, lengthscale: float) -> np.ndarray:
    """Rows ``r_i`` with ``<r_i, r_j> = exp(-|x_i - x_j|^2 / (2 lengthscale^2))`` (symmetric Gram square root)."""
    x = np.asarray(x, dtype=np.float64)
    sq = (x * x).sum(1)
    d2 = np.maximum(sq[:, None] + sq[None, :] - 2.0 * (x @ x.T), 0.0)
    gram = np.exp(-0.5 * d2 / lengthscale**2)
    vals, vecs = np.linalg.eigh(gram)
    return (vecs * np.sqrt(np.clip(vals, 0.0, None))) @ vecs.T


class _ColumnKernel:
    """Smooth NTK between any (perturbation, context) rows and a fixed set of column pairs.

    ``<x_i, x_j> = (<p_i, p_j> + <c_i, c_j>) / (r_i r_j)`` with ``r^2 = |p|^2 + |c|^2 + s^2``, so a block is
    ``(Gp[p_rows] + Gc[c_rows]) / r_rows`` from Grams against the (pre-scaled) columns; when the
    perturbation Gram would be too large it is replaced by a product with the columns' features.
    """

    def __init__(
        self,
        pf: np.ndarray,
        cf: np.ndarray,
        nugget: float,
        col_p: np.ndarray,
        col_c: np.ndarray,
        depth: int,
        dtype: Any,
        device: Any,
        identity: float = 0.0,
    ) -> None:
        torch = import_torch()
        self.depth, self.dtype, self.device = depth, dtype, device
        self.t2 = float(identity) ** 2  # private coordinate per perturbation, shared by its rows
        self.pn2, self.cn2, self.s2 = (pf * pf).sum(1) + self.t2, (cf * cf).sum(1), float(nugget) ** 2
        inv_r = self.inv_norm(col_p, col_c)
        self.n_cols = len(col_p)
        self._cols = (pf[col_p] * inv_r[:, None], cf[col_c] * inv_r[:, None])
        self._col_p, self._inv_r = col_p, inv_r
        itemsize = torch.empty((), dtype=dtype).element_size()
        self.gram = pf.shape[0] * self.n_cols * itemsize <= _GRAM_BUDGET_BYTES
        if self.gram:
            gp = pf @ (pf[col_p] * inv_r[:, None]).T
            if self.t2:
                gp[col_p, np.arange(self.n_cols)] += self.t2 * inv_r
            self.gp = self._to(gp)
        else:  # features of the columns only; blocks are products with the rows' features
            self.pf = self._to(pf)
            self.pcols = self._to(pf[col_p] * inv_r[:, None])
            self.col_p = torch.as_tensor(col_p, device=device)
            self.t2_cols = self._to(self.t2 * inv_r)
        self.gc = self._to(cf @ (cf[col_c] * inv_r[:, None]).T)

    def _to(self, a: np.ndarray) -> Any:
        torch = import_torch()
        return torch.as_tensor(np.ascontiguousarray(a), device=self.device).to(self.dtype)

    def inv_norm(self, p: np.ndarray, c: np.ndarray) -> np.ndarray:
        """``1 / r`` per row; a row with no feature and no nugget gets 0 (cosine 0 with every row)."""
        r = np.sqrt(self.pn2[p] + self.cn2[c] + self.s2)
        return np.divide(1.0, r, out=np.zeros_like(r), where=r > 0)

    def cosines(self, p: np.ndarray, c: np.ndarray) -> Any:
        """``(len(p), n_cols)`` cosines between the rows ``(p, c)`` and the columns."""
        torch = import_torch()
        pt = torch.as_tensor(p, device=self.device)
        ct = torch.as_tensor(c, device=self.device)
        if self.gram:
            s = self.gp.index_select(0, pt)
        else:
            s = self.pf.index_select(0, pt) @ self.pcols.T
            if self.t2:
                s.add_((pt[:, None] == self.col_p[None, :]).to(self.dtype) * self.t2_cols[None, :])
        s.add_(self.gc.index_select(0, ct))
        s.mul_(torch.as_tensor(self.inv_norm(p, c), device=self.device).to(self.dtype)[:, None])
        return s

    def block(self, p: np.ndarray, c: np.ndarray) -> Any:
        return _ntk_relu_(self.cosines(p, c), self.depth)

    def columns_block64(self) -> Any:
        """Smooth kernel among the columns themselves, in float64 (the Nystrom ``K_mm``)."""
        torch = import_torch()
        xp, xc = self._cols
        cos = xp @ xp.T + xc @ xc.T
        if self.t2:
            same = self._col_p[:, None] == self._col_p[None, :]
            cos = cos + same * (self.t2 * np.outer(self._inv_r, self._inv_r))
        return _ntk_relu_(torch.as_tensor(cos, device=self.device), self.depth)

    def diag_smooth(self, p: np.ndarray, c: np.ndarray) -> np.ndarray:
        """Smooth kernel of each row with itself (``K(1)`` minus the identity-block part)."""
        f2 = self.pn2[p] + self.cn2[c]
        sq = np.divide(f2, f2 + self.s2, out=np.zeros_like(f2), where=f2 + self.s2 > 0)
        return np.asarray(ntk_relu(sq, self.depth), dtype=np.float64)


def _syrk_lower_(c: np.ndarray, k: np.ndarray) -> None:
    """``c += k.T @ k`` on the lower triangle of the Fortran-ordered float64 ``c`` (BLAS dsyrk, no copies)."""
    from scipy.linalg import blas

    out = blas.dsyrk(1.0, k.T, beta=1.0, c=c, trans=0, lower=1, overwrite_c=1)
    if out is not c:  # pragma: no cover - f2py copied; keep the result anyway
        c[...] = out


def _cholesky(a: Any, *, jitter: float, what: str, max_tries: int = 8) -> tuple[Any, float]:
    """Cholesky factor of ``a + jitter I`` (in place on ``a``'s diagonal), raising the jitter tenfold on failure.

    ``jitter`` is relative to the mean diagonal; returns the factor and the absolute jitter used.
    """
    torch = import_torch()
    scale = float(a.diagonal().mean().abs()) or 1.0
    added, rel = 0.0, jitter
    for _ in range(max_tries):
        target = rel * scale
        a.diagonal().add_(target - added)
        added = target
        chol, info = torch.linalg.cholesky_ex(a)
        if int(info) == 0:
            return chol, added
        rel = max(rel * 10.0, 1e-12)
    raise np.linalg.LinAlgError(
        f"NTK {what}: Cholesky failed even with jitter {added:.3g}; the kernel is numerically singular "
        "(use a larger nugget or ridge)"
    )


class NTKFit:
    """A fitted NTK regression: ``predict`` any (perturbation, context) pairs, block by block.

    Made by :func:`fit_ntk`; :func:`ntk` is ``fit_ntk(...).predict(qp, qc)``. Predicting in several calls
    (e.g. chunks of a grid too large to hold) reuses the fit.
    """

    def __init__(
        self,
        *,
        kern: _ColumnKernel,
        alpha: Any,
        mean: Any,
        dtype: str,
        device: Any,
        block_size: int,
        info: dict,
        n_contexts: int,
        train_keys: np.ndarray | None = None,
        d_alpha: Any = None,
        factors: tuple | None = None,
        k1: float = 1.0,
    ) -> None:
        self.kern, self.alpha, self.mean, self.dtype, self.device = kern, alpha, mean, dtype, device
        self.block_size, self.info, self.n_contexts = block_size, info, n_contexts
        self.train_keys, self.d_alpha, self.factors, self.k1 = train_keys, d_alpha, factors, k1

    def _training_rows(self, qp: np.ndarray, qc: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Queried pairs that are training rows: (positions in the query, training row indices)."""
        keys = self.train_keys
        order = np.argsort(keys)
        q_keys = qp * self.n_contexts + qc
        pos = np.minimum(np.searchsorted(keys, q_keys, sorter=order), len(keys) - 1)
        qi = np.flatnonzero(keys[order[pos]] == q_keys)
        return qi, order[pos[qi]]

    def variance(self, qp: np.ndarray, qc: np.ndarray, *, progress: bool = False) -> np.ndarray:
        """Posterior variance of the queried pairs relative to the prior ``K(1)`` (the Gaussian-process view).

        ``1 - k_q^T (K + ridge I)^-1 k_q / K(1)`` for the exact solver (0 at training pairs when
        ``ridge=0``, up to 1 far from every training pair); for Nystrom the subset-of-regressors
        variance ``1 - (|L^-1 k_mq|^2 - lambda |M^-1 L^-1 k_mq|^2) / K(1)``. Needs a fit made with
        ``posterior_variance=True``.
        """
        torch = import_torch()
        from .._utils._progress import track

        if self.factors is None:
            raise ValueError("this NTK fit kept no factor for the posterior variance; fit with posterior_variance=True")
        qp = np.asarray(qp, dtype=np.int64)
        qc = np.asarray(qc, dtype=np.int64)
        out = np.empty(len(qp))
        kind, *fac = self.factors
        train_q, train_i = self._training_rows(qp, qc) if kind == "exact" else (np.empty(0, int), None)
        d = fac[1] if kind == "exact" else None
        starts = range(0, len(qp), self.block_size)
        for s in track(starts, enabled=progress, description="NTK posterior variance", total=len(starts)):
            e = min(s + self.block_size, len(qp))
            kq = self.kern.block(qp[s:e], qc[s:e]).to(torch.float64)
            if kind == "exact":
                sel = (train_q >= s) & (train_q < e)
                if sel.any():  # the private identity coordinate of a training row queried again
                    ti = torch.as_tensor(train_i[sel], device=self.device)
                    kq[torch.as_tensor(train_q[sel] - s, device=self.device), ti] += d[ti]
                v = torch.linalg.solve_triangular(fac[0], kq.T, upper=False)
                explained = (v * v).sum(0)
            else:
                lchol, mchol, lam = fac
                u = torch.linalg.solve_triangular(lchol, kq.T, upper=False)
                w = torch.linalg.solve_triangular(mchol, u, upper=False)
                explained = (u * u).sum(0) - lam * (w * w).sum(0)
            out[s:e] = (1.0 - explained / self.k1).clamp(0.0, 1.0).cpu().numpy()
            del kq
        return out

    def predict(
        self, qp: np.ndarray, qc: np.ndarray, *, out: np.ndarray | None = None, progress: bool = False
    ) -> np.ndarray:
        """Predicted effects of the pairs ``(qp[i], qc[i])``, written block by block into ``out``.

        ``out`` (optional) is a preallocated ``(len(qp), n_genes)`` C-contiguous array of the fit's dtype.
        """
        torch = import_torch()
        from .._utils._progress import track

        qp = np.asarray(qp, dtype=np.int64)
        qc = np.asarray(qc, dtype=np.int64)
        shape = (len(qp), self.alpha.shape[1])
        if out is None:
            out = np.empty(shape, dtype=np.dtype(self.dtype))
        elif out.shape != shape or out.dtype != np.dtype(self.dtype) or not out.flags.c_contiguous:
            raise ValueError(
                f"out must be a C-contiguous {self.dtype} array of shape {shape}, got {out.dtype} {out.shape}"
            )
        starts = range(0, len(qp), self.block_size)
        for s in track(starts, enabled=progress, description="NTK predict", total=len(starts)):
            e = min(s + self.block_size, len(qp))
            kq = self.kern.block(qp[s:e], qc[s:e])
            if self.device.type == "cpu":  # write straight into the output array
                blk = torch.from_numpy(out[s:e])
                torch.matmul(kq, self.alpha, out=blk)
                blk.add_(self.mean)
            else:
                out[s:e] = (kq @ self.alpha).add_(self.mean).cpu().numpy()
            del kq
        if self.d_alpha is not None and len(qp):
            # a queried pair that is a training row shares its private coordinate: K(q, i) gains d_i
            qi, ti = self._training_rows(qp, qc)
            if len(qi):
                ti = torch.as_tensor(ti, device=self.device)
                out[qi] += self.d_alpha[ti].cpu().numpy().astype(out.dtype)
        return out


def fit_ntk(
    grid: Grid,
    *,
    depth: int = 1,
    perturbation_prior: str = "mean_effect",
    context_prior: str = "auto",
    reference_context: int | None = None,
    context_weight: float = 0.75,
    context_kernel: str = "linear",
    context_lengthscale: float = 1.0,
    perturbation_identity: float = 0.0,
    nugget: float = 1.5,
    ridge: float = 0.0,
    center: bool = True,
    solver: str = "auto",
    max_exact: int = 15_000,
    n_centers: int = 6_000,
    block_size: int = 4_096,
    device: str = "auto",
    dtype: str = "auto",
    jitter: float | None = None,
    seed: int = 0,
    progress: bool = False,
    posterior_variance: bool = False,
    **_: object,
) -> NTKFit:
    """Fit NTK kernel regression on a grid's observed pairs; the parameters are those of :func:`ntk`."""
    torch = import_torch()
    from .._utils._progress import track

    if depth < 1:
        raise ValueError(f"depth must be >= 1, got {depth}")
    dev = resolve_device(device)
    if solver == "auto":
        solver = "exact" if grid.n_obs <= max_exact else "nystrom"
    if solver not in ("exact", "nystrom"):
        raise ValueError(f"unknown solver {solver!r}; expected 'auto', 'exact' or 'nystrom'")
    if dtype == "auto":
        dtype = "float64" if solver == "exact" else "float32"
    if dtype not in ("float32", "float64"):
        raise ValueError(f"unknown dtype {dtype!r}; expected 'auto', 'float32' or 'float64'")
    if block_size < 1 or n_centers < 1:
        raise ValueError(f"block_size and n_centers must be >= 1, got {block_size} and {n_centers}")
    tdtype = {"float64": torch.float64, "float32": torch.float32}[dtype]
    f64 = torch.float64
    if jitter is None:
        jitter = 1e-6 if dtype == "float32" else 1e-10

    t0 = time.perf_counter()
    if perturbation_identity < 0:
        raise ValueError(f"perturbation_identity must be >= 0, got {perturbation_identity}")
    pf, cf = feature_prior(
        grid,
        perturbation_prior=perturbation_prior,
        context_prior=context_prior,
        reference_context=reference_context,
        context_weight=context_weight,
        context_kernel=context_kernel,
        context_lengthscale=context_lengthscale,
    )
    mean_np = grid.y.mean(0) if center else np.zeros(grid.n_genes)
    n, g = grid.n_obs, grid.n_genes
    k1 = float(ntk_relu(np.float64(1.0), depth))
    info: dict[str, Any] = {"solver": solver, "n_train": n, "dtype": dtype, "device": str(dev)}

    def y_block(s: int, e: int) -> Any:
        return torch.as_tensor(np.asarray(grid.y[s:e], dtype=np.float64) - mean_np, device=dev)

    d_alpha, train_keys, factors = None, grid.pert * grid.n_contexts + grid.ctx, None
    if solver == "exact":
        kern = _ColumnKernel(pf, cf, nugget, grid.pert, grid.ctx, depth, f64, dev, perturbation_identity)
        k = torch.empty((n, n), dtype=f64, device=dev)
        for s in range(0, n, block_size):
            e = min(s + block_size, n)
            k[s:e] = kern.block(grid.pert[s:e], grid.ctx[s:e])
        k.diagonal().fill_(k1 + ridge)  # smooth kernel + analytic identity block + ridge
        chol, used = _cholesky(k, jitter=0.0, what="exact solve")
        del k
        alpha64 = torch.cholesky_solve(y_block(0, n), chol)
        info.update(jitter=used)
        d_priv = torch.as_tensor(k1 - kern.diag_smooth(grid.pert, grid.ctx), device=dev)
        d_alpha = alpha64 * d_priv[:, None]
        factors = ("exact", chol, d_priv) if posterior_variance else None
        del chol
        if tdtype != f64:
            kern = _ColumnKernel(pf, cf, nugget, grid.pert, grid.ctx, depth, tdtype, dev, perturbation_identity)
        alpha = alpha64.to(tdtype)
        del alpha64
    else:
        m = min(n_centers, n)
        idx = np.sort(np.random.default_rng(seed).choice(n, size=m, replace=False))
        kern = _ColumnKernel(pf, cf, nugget, grid.pert[idx], grid.ctx[idx], depth, tdtype, dev, perturbation_identity)
        kmm = kern.columns_block64()
        # float64 accumulation of A = K_mn K_nm (lower triangle by BLAS syrk on the CPU) and B = K_mn Y
        a_np = np.zeros((m, m), order="F") if dev.type == "cpu" else None
        a = None if dev.type == "cpu" else torch.zeros((m, m), dtype=f64, device=dev)
        b = torch.zeros((m, g), dtype=f64, device=dev)
        starts = range(0, n, block_size)
        for s in track(starts, enabled=progress, description="NTK Nystrom fit", total=len(starts)):
            e = min(s + block_size, n)
            knm = kern.block(grid.pert[s:e], grid.ctx[s:e]).to(f64)
            if a_np is not None:
                _syrk_lower_(a_np, knm.numpy())
            else:
                a.addmm_(knm.T, knm)
            b.addmm_(knm.T, y_block(s, e))
            del knm
        if a_np is not None:
            a = torch.from_numpy(a_np)
            a = torch.tril(a) + torch.tril(a, -1).T
            del a_np
        d = k1 - kern.diag_smooth(grid.pert, grid.ctx)
        lam = float(d.mean()) + ridge  # the analytic identity block acts as this ridge
        # whitened system: (L^-1 A L^-T + lam I) w = L^-1 B, alpha = L^-T w, with L L^T = K_mm + jitter
        lchol, used_mm = _cholesky(kmm, jitter=jitter, what="Nystrom K_mm")
        del kmm
        a = torch.linalg.solve_triangular(lchol, a, upper=False)
        a = torch.linalg.solve_triangular(lchol, a.T, upper=False)  # L^-1 A L^-T (A symmetric)
        a = 0.5 * (a + a.T)
        a.diagonal().add_(lam)
        mchol, used_sys = _cholesky(a, jitter=0.0 if lam > 0 else jitter, what="Nystrom system")
        del a
        w = torch.cholesky_solve(torch.linalg.solve_triangular(lchol, b, upper=False), mchol)
        alpha = torch.linalg.solve_triangular(lchol.T, w, upper=True).to(tdtype)
        factors = ("nystrom", lchol, mchol, lam) if posterior_variance else None
        del lchol, mchol, w, b
        info.update(n_centers=m, **{"lambda": lam, "jitter_kmm": used_mm, "jitter_system": used_sys})
    info["seconds_fit"] = time.perf_counter() - t0
    return NTKFit(
        kern=kern,
        alpha=alpha,
        mean=torch.as_tensor(mean_np, device=dev).to(tdtype),
        dtype=dtype,
        device=dev,
        block_size=block_size,
        info=info,
        n_contexts=grid.n_contexts,
        train_keys=train_keys,
        d_alpha=d_alpha,
        factors=factors,
        k1=k1,
    )


def ntk(
    grid: Grid,
    qp: np.ndarray,
    qc: np.ndarray,
    *,
    depth: int = 1,
    perturbation_prior: str = "mean_effect",
    context_prior: str = "auto",
    reference_context: int | None = None,
    context_weight: float = 0.75,
    context_kernel: str = "linear",
    context_lengthscale: float = 1.0,
    perturbation_identity: float = 0.0,
    nugget: float = 1.5,
    ridge: float = 0.0,
    center: bool = True,
    solver: str = "auto",
    max_exact: int = 15_000,
    n_centers: int = 6_000,
    block_size: int = 4_096,
    device: str = "auto",
    dtype: str = "auto",
    jitter: float | None = None,
    seed: int = 0,
    progress: bool = False,
    posterior_variance: bool | None = None,
    select: Mapping[str, Sequence[Any]] | None = None,
    n_validation: int = 200,
    **_: object,
) -> Prediction:
    """Predict queried pairs by NTK kernel regression on feature priors.

    Parameters
    ----------
    depth
        Number of hidden layers of the ReLU network whose NTK is used.
    perturbation_prior, context_prior, reference_context, context_weight, context_kernel, context_lengthscale
        How the feature prior is built (:func:`feature_prior`). ``context_kernel="rbf"`` compares
        contexts by a Gaussian kernel of their features (e.g. dose and log time) with length scale
        ``context_lengthscale``, so that a context never observed borrows from the nearest observed ones.
    perturbation_identity
        Weight ``t`` of a private coordinate per perturbation, shared by all of its rows (a one-hot
        block ``t * e_p`` appended to the perturbation part, applied analytically like the nugget). With
        ``t > 0`` a pair's own perturbation measured in other contexts counts more than other
        perturbations with similar features: the kernel transports a perturbation's effects across
        contexts. ``0`` (the default) is the reference prior.
    nugget
        Scale ``s`` of the private identity block of the reference (conditioning of the kernel).
    ridge
        Extra ridge added to the kernel diagonal (0 gives the reference's interpolation).
    center
        Regress effects minus their per-gene training mean and add it back.
    solver
        ``"exact"`` (Cholesky), ``"nystrom"``, or ``"auto"`` (exact up to ``max_exact`` training pairs).
        The exact solver interpolates training pairs queried again (when ``ridge=0``); the Nystrom
        solver treats the identity block as a ridge and smooths them.
    n_centers, block_size
        Nystrom centres (drawn uniformly from the training pairs with ``seed``) and the number of rows
        per kernel block (rows of the output computed at once). The defaults (6,000 and 4,096) complete
        a Connectivity-Map-sized screen (~117k observed, ~1.3M missing pairs x 978 genes) in a few minutes
        on two CPU cores with ~3 GB besides the output (see ``docs/benchmarks/impute_scale.md``); on ~10k-pair
        simulated screens 4,000 centres stay within 1% (relative) of the exact solve.
    device, dtype
        Torch device (``"auto"`` picks CUDA when present) and float type of the kernel blocks and of the
        returned values: ``"float32"``, ``"float64"`` or ``"auto"`` (float64 for the exact solver, float32
        for Nystrom). The ``n x n`` exact system and the Nystrom ``m x m`` system are always
        accumulated and solved in float64.
    jitter
        Relative diagonal jitter of the Nystrom ``K_mm`` Cholesky (raised tenfold until it succeeds, as
        is the exact solve's from zero); default ``1e-6`` for float32 blocks and ``1e-10`` for float64.

    posterior_variance
        Also return the posterior variance of every queried pair (:meth:`NTKFit.variance`) and the
        reliability ``1 - variance``. ``None`` does so when it costs at most about as much as the
        fit (``len(qp) * n_columns^2 <= 1e12`` operations, ``n_columns`` the training pairs or centres).
    select
        Candidate values of options to choose by validation on the training pairs only, e.g.
        ``{"nugget": [0.5, 1.5], "perturbation_identity": [0, 2]}``: every combination is fitted on part of
        the training pairs and scored on the rest (:func:`validation_folds`: whole training contexts held out
        in turn when a queried context has no training pair, whole perturbations when a queried perturbation
        has none, else up to ``n_validation`` held-out pairs); the combination with the highest mean
        Pearson correlation (across genes) of held-out effects is then fitted on all training pairs.
        ``info["selected"]`` and ``info["validation_score"]`` record the choice. The queried pairs are
        never looked at, only which pairs are queried.
    n_validation
        Number of held-out training pairs when ``select`` validates on pairs.

    Returns
    -------
    :class:`Prediction` whose ``values`` is a ``(len(qp), n_genes)`` array of the working dtype,
    ``variance`` and ``reliability`` the posterior variance (relative to the prior) and one minus it,
    and ``info`` records the solver, sizes, regularisation and timings.
    """
    options = {
        "depth": depth,
        "perturbation_prior": perturbation_prior,
        "context_prior": context_prior,
        "reference_context": reference_context,
        "context_weight": context_weight,
        "context_kernel": context_kernel,
        "context_lengthscale": context_lengthscale,
        "perturbation_identity": perturbation_identity,
        "nugget": nugget,
        "ridge": ridge,
        "center": center,
    }
    selected, scores = None, None
    if select:
        unknown = sorted(set(select) - set(options))
        if unknown:
            raise ValueError(f"select: unknown NTK option(s) {unknown}; expected some of {sorted(options)}")
        fixed = {
            "solver": solver,
            "max_exact": max_exact,
            "n_centers": n_centers,
            "block_size": block_size,
            "device": device,
            "dtype": dtype,
            "jitter": jitter,
            "seed": seed,
        }
        selected, scores = _select(grid, qp, qc, options, select, fixed, n_validation=n_validation, seed=seed)
        options.update(selected)
    if posterior_variance is None:
        n_cols = grid.n_obs if (solver == "exact" or (solver == "auto" and grid.n_obs <= max_exact)) else n_centers
        posterior_variance = len(qp) * float(min(n_cols, grid.n_obs)) ** 2 <= 1e12
    fitted = fit_ntk(
        grid,
        **options,
        solver=solver,
        max_exact=max_exact,
        n_centers=n_centers,
        block_size=block_size,
        device=device,
        dtype=dtype,
        jitter=jitter,
        seed=seed,
        progress=progress,
        posterior_variance=posterior_variance,
    )
    t1 = time.perf_counter()
    values = fitted.predict(qp, qc, progress=progress)
    info = dict(fitted.info, seconds_predict=time.perf_counter() - t1)
    if selected is not None:
        info.update(selected=selected, validation_score=scores)
    variance = None
    if posterior_variance:
        t2 = time.perf_counter()
        variance = fitted.variance(qp, qc, progress=progress)
        info["seconds_variance"] = time.perf_counter() - t2
    return Prediction(values, None if variance is None else 1.0 - variance, info=info, variance=variance)


def _select(
    grid: Grid,
    qp: np.ndarray,
    qc: np.ndarray,
    options: dict[str, Any],
    select: Mapping[str, Sequence[Any]],
    fixed: dict[str, Any],
    *,
    n_validation: int,
    seed: int,
) -> tuple[dict[str, Any], dict[str, float]]:
    """The combination of ``select``'s candidate values with the best validation score on training pairs.

    Score: mean Pearson correlation across genes between held-out and predicted effects, over the
    held-out pairs of every validation fold (:func:`validation_folds`). Ties keep the first combination.
    """
    combos = option_grid(select)
    folds = validation_folds(grid, qp, qc, n_validation=n_validation, seed=seed)
    if len(combos) == 1 or not folds:
        return combos[0], {}
    scores: dict[str, float] = {}
    best, best_score = combos[0], -np.inf
    for combo in combos:
        total, count = 0.0, 0
        for train, val in folds:
            sub = grid.subset(train)
            pred = fit_ntk(sub, **{**options, **combo}, **fixed).predict(grid.pert[val], grid.ctx[val])
            r = _pearson_rows(grid.y[val], np.asarray(pred, dtype=np.float64))
            total += float(np.nansum(r))
            count += int(np.isfinite(r).sum())
        score = total / count if count else -np.inf
        scores[option_label(combo)] = score
        if score > best_score:
            best, best_score = combo, score
    return best, scores
