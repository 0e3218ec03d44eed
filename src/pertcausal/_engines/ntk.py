"""Neural tangent kernel matrix completion with feature priors (Radhakrishnan, Stefanakis, Belkin & Uhler, PNAS 2022).

Each (perturbation, context) pair is a row with a feature prior ``f = [perturbation part, w * context part]``
built from training data only. Rows are compared by the closed-form NTK of a bias-free ReLU fully
connected network of ``depth`` hidden layers, evaluated at ``rho = <f_i, f_j> / sqrt((|f_i|^2 + s^2)(|f_j|^2 + s^2))``.
The reference appends a private identity block ``s * I`` to every row; that block only changes the
diagonal, so here it is applied analytically: the kernel is ``K_smooth + diag(d)`` with
``d_i = K(1) - K_smooth(i, i)``, never an ``n x (F + n)`` feature matrix.

The regression ``Y_test = K_test,train (K_train + ridge I)^-1 Y_train`` is solved exactly (Cholesky in
float64) for small problems; for large ones a Nystrom approximation with ``n_centers`` centres
solves ``(K_mn K_nm + lambda K_mm) alpha = K_mn Y`` with the kernel built block by block, so memory is
``O(n_centers^2 + block * n_centers)``, never ``O(n^2)``.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from .._utils._device import import_torch, resolve_device
from ._grid import Grid, Prediction


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
    is_np = isinstance(rho, np.ndarray | float | int)
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
) -> tuple[np.ndarray, np.ndarray]:
    """Unit-norm perturbation features and context features built from training data only.

    Perturbation part: user features (``grid.pert_features``), else the perturbation's effect in
    ``reference_context`` (``"reference"``) falling back to its mean effect over its training contexts
    (``"mean_effect"``), else the global mean effect for a perturbation never measured.
    Context part: user features, else the centred control baseline (``"baseline"``), else the
    context's mean effect over its training pairs (``"mean_effect"``); scaled by ``context_weight``.
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
            raise ValueError(f"unknown perturbation_prior {perturbation_prior!r}; expected 'mean_effect' or 'reference'")
    if context_prior == "auto":
        context_prior = "features" if grid.ctx_features is not None else "baseline" if grid.baseline is not None else "mean_effect"
    if context_prior == "features":
        if grid.ctx_features is None:
            raise ValueError("context_prior='features' needs context features")
        cf = np.asarray(grid.ctx_features, dtype=np.float64)
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
        raise ValueError(f"unknown context_prior {context_prior!r}; expected 'auto', 'baseline', 'mean_effect' or 'features'")
    return _unit(pf), context_weight * _unit(cf)


class _Features:
    """Row features of pairs, normalised so that <a, b> is the smooth-kernel cosine."""

    def __init__(self, pf: Any, cf: Any, nugget: float) -> None:
        self.pf, self.cf, self.s2 = pf, cf, nugget**2

    def rows(self, p: Any, c: Any) -> Any:
        torch = import_torch()
        f = torch.cat([self.pf[p], self.cf[c]], dim=1)
        return f / torch.sqrt((f * f).sum(1, keepdim=True) + self.s2)


def _kernel(a: Any, b: Any, depth: int) -> Any:
    return ntk_relu(a @ b.T, depth)


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
    nugget: float = 1.5,
    ridge: float = 0.0,
    center: bool = True,
    solver: str = "auto",
    max_exact: int = 15_000,
    n_centers: int = 5_000,
    block_size: int = 8_192,
    device: str = "auto",
    dtype: str = "float64",
    seed: int = 0,
    progress: bool = False,
    **_: object,
) -> Prediction:
    """Predict queried pairs by NTK kernel regression on feature priors.

    Parameters
    ----------
    depth
        Number of hidden layers of the ReLU network whose NTK is used.
    perturbation_prior, context_prior, reference_context, context_weight
        How the feature prior is built (:func:`feature_prior`).
    nugget
        Scale ``s`` of the private identity block of the reference (conditioning of the kernel).
    ridge
        Extra ridge added to the kernel diagonal (0 gives the reference's interpolation).
    center
        Regress effects minus their per-gene training mean and add it back.
    solver
        ``"exact"`` (Cholesky), ``"nystrom"``, or ``"auto"`` (exact up to ``max_exact`` training pairs).
    n_centers, block_size
        Nystrom centres and the number of rows per kernel block.
    device, dtype
        Torch device (``"auto"`` picks CUDA when present) and float type of the solve.
    """
    torch = import_torch()
    dev = resolve_device(device)
    tdtype = {"float64": torch.float64, "float32": torch.float32}[dtype]
    pf, cf = feature_prior(
        grid, perturbation_prior=perturbation_prior, context_prior=context_prior,
        reference_context=reference_context, context_weight=context_weight,
    )
    feats = _Features(torch.as_tensor(pf, dtype=tdtype, device=dev), torch.as_tensor(cf, dtype=tdtype, device=dev), nugget)
    y = torch.as_tensor(grid.y, dtype=tdtype, device=dev)
    mean = y.mean(0) if center else torch.zeros(grid.n_genes, dtype=tdtype, device=dev)
    y = y - mean
    tp = torch.as_tensor(grid.pert, device=dev)
    tc = torch.as_tensor(grid.ctx, device=dev)
    qpt = torch.as_tensor(np.asarray(qp, dtype=np.int64), device=dev)
    qct = torch.as_tensor(np.asarray(qc, dtype=np.int64), device=dev)
    n = grid.n_obs
    k1 = float(ntk_relu(np.float64(1.0), depth))
    if solver == "auto":
        solver = "exact" if n <= max_exact else "nystrom"
    if solver == "exact":
        x = feats.rows(tp, tc)
        k = _kernel(x, x, depth)
        k.diagonal().fill_(k1 + ridge)  # smooth kernel + analytic identity block + ridge
        chol = torch.linalg.cholesky(k)
        alpha = torch.cholesky_solve(y, chol)
        del k, chol
        info: dict[str, Any] = {"solver": "exact", "n_train": n}
        centers = x
    elif solver == "nystrom":
        m = min(n_centers, n)
        gen = np.random.default_rng(seed)
        idx = torch.as_tensor(np.sort(gen.choice(n, size=m, replace=False)), device=dev)
        centers = feats.rows(tp[idx], tc[idx])
        kmm = _kernel(centers, centers, depth)
        a = torch.zeros((m, m), dtype=tdtype, device=dev)
        b = torch.zeros((m, grid.n_genes), dtype=tdtype, device=dev)
        lam_sum = 0.0
        from .._utils._progress import track

        starts = range(0, n, block_size)
        for s in track(starts, enabled=progress, description="NTK Nystrom", total=len(starts)):
            xb = feats.rows(tp[s : s + block_size], tc[s : s + block_size])
            knm = _kernel(xb, centers, depth)
            a += knm.T @ knm
            b += knm.T @ y[s : s + block_size]
            lam_sum += float((k1 - ntk_relu((xb * xb).sum(1), depth)).sum())
        lam = lam_sum / n + ridge  # the analytic identity block acts as this ridge
        a += lam * kmm
        a.diagonal().add_(1e-8 * float(a.diagonal().mean()))
        alpha = torch.linalg.solve(a, b)
        info = {"solver": "nystrom", "n_train": n, "n_centers": m, "lambda": lam}
    else:
        raise ValueError(f"unknown solver {solver!r}; expected 'auto', 'exact' or 'nystrom'")
    out = torch.empty((len(qp), grid.n_genes), dtype=tdtype, device=dev)
    for s in range(0, len(qp), block_size):
        xq = feats.rows(qpt[s : s + block_size], qct[s : s + block_size])
        out[s : s + block_size] = _kernel(xq, centers, depth) @ alpha + mean
    return Prediction(out.cpu().numpy().astype(np.float64), info=info)
