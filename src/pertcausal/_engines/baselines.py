"""Honest baselines for perturbation x context imputation (numpy only)."""

from __future__ import annotations

import numpy as np

from ._grid import Grid, Prediction, group_agreement, randomized_svd


def _fallback(means: np.ndarray, counts: np.ndarray, codes: np.ndarray, global_mean: np.ndarray) -> np.ndarray:
    out = means[codes].copy()
    out[counts[codes] == 0] = global_mean
    return out


def mean_over_contexts(grid: Grid, qp: np.ndarray, qc: np.ndarray, **_: object) -> Prediction:
    """Predict a pair by the perturbation's mean effect over the contexts where it was measured.

    A perturbation never measured gets the global mean effect. Reliability: the agreement of the
    averaged effects (``|mean|^2 / mean |e|^2``, NaN with fewer than 2 contexts).
    """
    means, counts = grid.group_mean("pert")
    return Prediction(_fallback(means, counts, qp, grid.y.mean(0)), group_agreement(grid, "pert")[qp])


def mean_over_perturbations(grid: Grid, qp: np.ndarray, qc: np.ndarray, **_: object) -> Prediction:
    """Predict a pair by the context's mean effect over the perturbations measured in it.

    A context with no measured perturbation gets the global mean effect. Reliability: the agreement
    of the averaged effects, as for :func:`mean_over_contexts`.
    """
    means, counts = grid.group_mean("ctx")
    return Prediction(_fallback(means, counts, qc, grid.y.mean(0)), group_agreement(grid, "ctx")[qc])


def additive(
    grid: Grid, qp: np.ndarray, qc: np.ndarray, *, n_iter: int = 50, tol: float = 1e-6, **_: object
) -> Prediction:
    """Two-way additive model ``effect[p, c] = mu + a[p] + b[c]`` per gene, fitted by least squares.

    Fitted by alternating (backfitting) updates on the observed pairs only; a perturbation
    or context never measured contributes zero. Reliability: how well the model fits the observed
    pairs of the query's perturbation and context, ``1 - RSS / sum of squared effects`` over those
    rows (clipped to ``[0, 1]``).
    """
    y = grid.y.astype(np.float64)
    mu = y.mean(0)
    b = np.zeros((grid.n_contexts, grid.n_genes))
    ind_p, ind_c = grid.indicator("pert"), grid.indicator("ctx")
    seen = np.asarray(ind_p.sum(1)).ravel() > 0
    seen_ctx = np.asarray(ind_c.sum(1)).ravel() > 0
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
    # per-row squared residual and squared effect, summed over the rows of each perturbation / context
    resid2 = ((y - mu - a[grid.pert] - b[grid.ctx]) ** 2).sum(1)
    y2 = (y * y).sum(1)
    num = (ind_p @ resid2)[qp] + (ind_c @ resid2)[qc]
    den = (ind_p @ y2)[qp] + (ind_c @ y2)[qc]
    with np.errstate(invalid="ignore", divide="ignore"):
        rel = np.clip(1.0 - num / den, 0.0, 1.0)
    return Prediction(mu + a[qp] + b[qc], rel, info={"rss": rss})


def context_similarity(grid: Grid, *, n_components: int = 100, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Similarity of every pair of contexts, from training pairs only.

    The cosine between two contexts' effects of the perturbations measured in both, pooled over those
    perturbations and genes (genes are first projected on the top ``n_components`` principal axes of
    the observed effects when there are more). Returns the ``(n_contexts, n_contexts)`` similarity
    (NaN where no perturbation is shared) and the number of shared perturbations.
    """
    y = grid.y.astype(np.float64)
    if y.shape[1] > n_components:
        _, _, vt = randomized_svd(y - y.mean(0), n_components, seed=seed)
        y = y @ vt.T
    k = y.shape[1]
    t = np.zeros((grid.n_perts, grid.n_contexts, k))
    m = np.zeros((grid.n_perts, grid.n_contexts))
    t[grid.pert, grid.ctx] = y
    m[grid.pert, grid.ctx] = 1.0
    flat = t.transpose(1, 0, 2).reshape(grid.n_contexts, -1)
    cross = flat @ flat.T  # sum over shared perturbations (missing entries are zero)
    n2 = (t * t).sum(2)  # (perts, contexts)
    own = n2.T @ m  # own[a, b] = sum over perturbations measured in b of |t_pa|^2 (zero unless measured in a)
    shared = m.T @ m
    with np.errstate(invalid="ignore", divide="ignore"):
        sim = cross / np.sqrt(own * own.T)
    sim[shared == 0] = np.nan
    return sim, shared


def _feature_cosine(features: np.ndarray) -> np.ndarray:
    """Cosine between the centred rows of a per-context feature matrix (0 for an all-zero row)."""
    f = np.asarray(features, dtype=np.float64)
    f = f - f.mean(0)
    norm = np.linalg.norm(f, axis=1, keepdims=True)
    unit = np.divide(f, norm, out=np.zeros_like(f), where=norm > 0)
    return unit @ unit.T


def nearest_context(
    grid: Grid, qp: np.ndarray, qc: np.ndarray, *, k: int = 1, n_components: int = 100, seed: int = 0, **_: object
) -> Prediction:
    """Predict a pair by the perturbation's own effect in its most similar observed context(s).

    Context similarity is :func:`context_similarity` on the training pairs (the cosine between the
    effects of the perturbations two contexts share). With ``k > 1`` the ``k`` most similar contexts
    where the perturbation was measured are averaged, weighted by their (positive) similarity.
    Contexts that share no perturbation with the query's (e.g. a context held out entirely) fall back to
    the cosine of the centred context features when given, else of the centred control baselines, else
    of the contexts' mean effects. A perturbation never measured gets the context's mean effect. Reliability: the
    (mean) similarity of the neighbour(s) used, clipped to ``[0, 1]``.
    """
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    sim, shared = context_similarity(grid, n_components=n_components, seed=seed)
    ctx_mean, ctx_n = grid.group_mean("ctx")
    fallback = _feature_cosine(
        grid.ctx_features if grid.ctx_features is not None else grid.baseline if grid.baseline is not None else ctx_mean
    )
    score = np.where(np.isnan(sim), fallback - 2.0, sim)  # shared-perturbation similarity ranks first
    np.fill_diagonal(score, -np.inf)
    index = np.full((grid.n_perts, grid.n_contexts), -1, dtype=np.int64)
    index[grid.pert, grid.ctx] = np.arange(grid.n_obs)
    out = np.empty((len(qp), grid.n_genes))
    rel = np.full(len(qp), np.nan)
    n_nb = np.zeros(len(qp), dtype=np.int64)
    global_mean = grid.y.mean(0)
    step = max(1, 2_000_000 // max(grid.n_contexts, 1))
    kk = min(k, grid.n_contexts)
    for s in range(0, len(qp), step):
        p, c = qp[s : s + step], qc[s : s + step]
        cand = np.where(index[p] >= 0, score[c], -np.inf)  # (queries, contexts)
        order = np.argsort(-cand, axis=1)[:, :kk]
        best = np.take_along_axis(cand, order, axis=1)
        ok = np.isfinite(best)
        sims = np.where(ok, np.where(best < -1.0, best + 2.0, best), 0.0)  # undo the fallback offset
        w = np.maximum(sims, 0.0)
        flat = ok.any(1) & (w.sum(1) == 0)  # no positively similar neighbour: equal weights
        w[flat] = ok[flat]
        rows = index[p[:, None], order]
        vals = np.where(ok[..., None], grid.y[np.maximum(rows, 0)], 0.0)
        with np.errstate(invalid="ignore", divide="ignore"):
            pred = (w[..., None] * vals).sum(1) / w.sum(1, keepdims=True)
        none = ~ok.any(1)
        pred[none] = np.where(ctx_n[c[none], None] > 0, ctx_mean[c[none]], global_mean)
        out[s : s + step] = pred
        with np.errstate(invalid="ignore", divide="ignore"):
            rel[s : s + step] = np.clip(sims.sum(1) / ok.sum(1), 0.0, 1.0)
        n_nb[s : s + step] = ok.sum(1)
    return Prediction(out, rel, info={"n_neighbours": n_nb})


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
