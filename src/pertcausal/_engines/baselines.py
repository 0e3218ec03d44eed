"""Honest baselines for perturbation x context imputation (numpy only)."""

from __future__ import annotations

import numpy as np

from ._grid import Grid, Prediction, randomized_svd


def _fallback(means: np.ndarray, counts: np.ndarray, codes: np.ndarray, global_mean: np.ndarray) -> np.ndarray:
    out = means[codes].copy()
    out[counts[codes] == 0] = global_mean
    return out


def mean_over_contexts(grid: Grid, qp: np.ndarray, qc: np.ndarray, **_: object) -> Prediction:
    """Predict a pair by the perturbation's mean effect over the contexts where it was measured.

    A perturbation never measured gets the global mean effect.
    """
    means, counts = grid.group_mean("pert")
    return Prediction(_fallback(means, counts, qp, grid.y.mean(0)))


def mean_over_perturbations(grid: Grid, qp: np.ndarray, qc: np.ndarray, **_: object) -> Prediction:
    """Predict a pair by the context's mean effect over the perturbations measured in it.

    A context with no measured perturbation gets the global mean effect.
    """
    means, counts = grid.group_mean("ctx")
    return Prediction(_fallback(means, counts, qc, grid.y.mean(0)))


def additive(
    grid: Grid, qp: np.ndarray, qc: np.ndarray, *, n_iter: int = 50, tol: float = 1e-6, **_: object
) -> Prediction:
    """Two-way additive model ``effect[p, c] = mu + a[p] + b[c]`` per gene, fitted by least squares.

    Fitted by alternating (backfitting) updates on the observed pairs only; a perturbation
    or context never measured contributes zero.
    """
    y = grid.y.astype(np.float64)
    mu = y.mean(0)
    b = np.zeros((grid.n_contexts, grid.n_genes))
    seen = grid.group_mean("pert")[1] > 0
    seen_ctx = grid.group_mean("ctx")[1] > 0
    prev = np.inf
    for _ in range(n_iter):
        a, _n = grid.group_mean("pert", y - mu - b[grid.ctx])
        b, _n = grid.group_mean("ctx", y - mu - a[grid.pert])
        # identification: centre b over the observed rows and move the shift into a
        shift = b[grid.ctx].mean(0)
        b[seen_ctx] -= shift
        a[seen] += shift
        rss = float(((y - mu - a[grid.pert] - b[grid.ctx]) ** 2).sum())
        if np.isfinite(prev) and prev - rss <= tol * max(prev, 1.0):
            break
        prev = rss
    return Prediction(mu + a[qp] + b[qc], info={"rss": rss})


def soft_impute(
    grid: Grid,
    qp: np.ndarray,
    qc: np.ndarray,
    *,
    rank: int = 20,
    shrinkage: float = 0.05,
    n_gene_components: int = 50,
    unfold: str = "perturbation",
    n_iter: int = 100,
    tol: float = 1e-5,
    seed: int = 0,
    **_: object,
) -> Prediction:
    """Low-rank soft-impute (Mazumder, Hastie & Tibshirani 2010) on an unfolding of the tensor.

    Genes are first projected on the top ``n_gene_components`` principal axes of the observed
    effects; the tensor is unfolded to perturbations x (contexts x components) (or the transpose
    roles with ``unfold="context"``), missing blocks are filled iteratively by a rank-``rank`` SVD
    whose singular values are shrunk by ``shrinkage`` times the largest one.
    """
    y = grid.y.astype(np.float64)
    mean = y.mean(0)
    yc = y - mean
    k = max(1, min(n_gene_components, yc.shape[0], yc.shape[1]))
    _, _, vt = randomized_svd(yc, k, seed=seed)
    scores = yc @ vt.T  # (n_obs, k)
    rows, cols, n_rows, n_cols = (
        (grid.pert, grid.ctx, grid.n_perts, grid.n_contexts)
        if unfold == "perturbation"
        else (grid.ctx, grid.pert, grid.n_contexts, grid.n_perts)
    )
    m = np.zeros((n_rows, n_cols, k))
    mask = np.zeros((n_rows, n_cols), dtype=bool)
    m[rows, cols] = scores
    mask[rows, cols] = True
    mat = m.reshape(n_rows, n_cols * k)
    obs = np.repeat(mask, k, axis=1)
    z = np.zeros_like(mat)
    lam = None
    r = max(1, min(rank, n_rows, n_cols * k))
    for _ in range(n_iter):
        filled = np.where(obs, mat, z)
        u, s, vtt = randomized_svd(filled, r, seed=seed)
        if lam is None:
            lam = shrinkage * (s[0] if s.size else 0.0)
        s = np.maximum(s - lam, 0.0)
        z_new = (u * s) @ vtt
        delta = np.linalg.norm(z_new - z) / max(np.linalg.norm(z), 1e-12)
        z = z_new
        if delta < tol:
            break
    z = z.reshape(n_rows, n_cols, k)
    q_rows, q_cols = (qp, qc) if unfold == "perturbation" else (qc, qp)
    return Prediction(z[q_rows, q_cols] @ vt + mean)
