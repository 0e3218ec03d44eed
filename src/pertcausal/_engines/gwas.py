"""Batched linear association of many phenotypes with variant blocks (array engine of ``tl.gwas``)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy import special, stats


def genomic_inflation(p: np.ndarray) -> float:
    """Genomic inflation factor lambda: median chi-square (1 df) of the p values over its null median.

    NaN p values are ignored; returns NaN when none is left.
    """
    p = np.asarray(p, dtype=np.float64).ravel()
    p = p[np.isfinite(p)]
    if p.size == 0:
        return float("nan")
    # chi-square falls as p rises, so the median chi-square comes from the middle p value(s) alone
    k = p.size // 2
    middle = np.partition(p, [k - 1, k] if p.size % 2 == 0 else [k])
    mid = middle[[k - 1, k]] if p.size % 2 == 0 else middle[[k]]
    chi2 = stats.chi2.isf(np.clip(mid, 1e-300, 1.0), df=1)
    return float(np.mean(chi2) / stats.chi2.ppf(0.5, df=1))


# ---------------------------------------------------------------------------------------------
# design: phenotypes and covariates, prepared once
# ---------------------------------------------------------------------------------------------
@dataclass
class Design:
    """Phenotypes ``Y`` (n x P) and covariates ``C`` (n x k, intercept first) prepared for block scans."""

    Y: np.ndarray
    C: np.ndarray
    Q: np.ndarray  # orthonormal basis of C's columns
    Yr: np.ndarray  # Y residualised on C
    yy: np.ndarray  # residual sum of squares of each phenotype under the covariates-only model
    W: np.ndarray | None  # Yr whitened (W^T W = I), for the joint test; None when P >= n - k - 1

    @property
    def n(self) -> int:
        return self.Y.shape[0]

    @property
    def k(self) -> int:
        return self.C.shape[1]

    @property
    def n_phenotypes(self) -> int:
        return self.Y.shape[1]

    @property
    def df(self) -> int:
        """Residual degrees of freedom of each variant's model (intercept, covariates, the variant)."""
        return self.n - self.k - 1

    def right(self) -> np.ndarray:
        """The matrix every genotype block is multiplied with: ``[Yr, Q, W]``."""
        parts = [self.Yr, self.Q] + ([self.W] if self.W is not None else [])
        return np.ascontiguousarray(np.concatenate(parts, axis=1))


def make_design(Y: np.ndarray, covariates: np.ndarray | None = None, *, joint: bool = True) -> Design:
    """Add an intercept to ``covariates``, check their rank and residualise the phenotypes on them."""
    Y = np.asarray(Y, dtype=np.float64)
    if Y.ndim == 1:
        Y = Y[:, None]
    n = Y.shape[0]
    C = np.ones((n, 1))
    if covariates is not None and np.asarray(covariates).size:
        cov = np.asarray(covariates, dtype=np.float64).reshape(n, -1)
        C = np.concatenate([C, cov], axis=1)
    k = C.shape[1]
    if k + 2 > n:
        raise ValueError(
            f"{k - 1} covariates (plus the intercept and the variant) need more than {n} samples; "
            "use fewer covariates or genetic PCs"
        )
    Q, R = np.linalg.qr(C)
    diag = np.abs(np.diag(R))
    if diag.min() <= 1e-8 * max(diag.max(), 1.0):
        raise ValueError(
            "the covariates (with the intercept) are collinear: at least one is constant or a combination of "
            "the others; drop it"
        )
    Yr = Y - Q @ (Q.T @ Y)
    yy = np.einsum("ij,ij->j", Yr, Yr)
    W = None
    P = Y.shape[1]
    if joint and P < n - k - 1:
        evals, evecs = np.linalg.eigh(Yr.T @ Yr)
        if evals.min() > 1e-10 * evals.max():
            W = Yr @ (evecs / np.sqrt(evals)) @ evecs.T
    return Design(Y=Y, C=C, Q=Q, Yr=Yr, yy=yy, W=W)


# ---------------------------------------------------------------------------------------------
# block products on numpy or torch
# ---------------------------------------------------------------------------------------------
class Backend:
    """Computes ``G^T M`` and the column sums of squares of a genotype block, on numpy or a torch device."""

    def __init__(self, right: np.ndarray, *, device: Any = None, dtype: str = "float64") -> None:
        self.dtype = np.dtype(dtype)
        self.device = device
        if device is None:
            self.right = right.astype(self.dtype)
        else:
            import torch

            self.torch = torch
            tdtype = torch.float64 if self.dtype == np.float64 else torch.float32
            self.right = torch.as_tensor(right, dtype=tdtype, device=device)

    def products(self, G: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        if self.device is None:
            G = G.astype(self.dtype, copy=False)
            return G.T @ self.right, np.einsum("ij,ij->j", G, G)
        t = self.torch.as_tensor(G, device=self.device).to(self.right.dtype)
        return (t.T @ self.right).double().cpu().numpy(), (t * t).sum(0).double().cpu().numpy()


# ---------------------------------------------------------------------------------------------
# association of one block
# ---------------------------------------------------------------------------------------------
def mlog10_ibeta(x: np.ndarray, a: np.ndarray, b: np.ndarray, *, value: np.ndarray | None = None) -> np.ndarray:
    """-log10 of the regularised incomplete beta function I_x(a, b), without underflow for tiny values.

    Uses I_x(a, b) = x^a (1 - x)^b / (a B(a, b)) 2F1(a + b, 1; a + 1; x), which converges fast for the small
    ``x`` of extreme statistics. ``value``, when given, is I_x(a, b) already computed.
    """
    x, a, b = np.broadcast_arrays(*(np.asarray(v, dtype=np.float64) for v in (x, a, b)))
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        direct = special.betainc(a, b, x) if value is None else np.broadcast_to(value, x.shape)
        out = -np.log10(direct)
        tiny = np.isfinite(x) & (direct < 1e-250)
        if tiny.any():
            xs, as_, bs = x[tiny], a[tiny], b[tiny]
            lp = (
                as_ * np.log(xs)
                + bs * np.log1p(-xs)
                - np.log(as_)
                - special.betaln(as_, bs)
                + np.log(special.hyp2f1(as_ + bs, 1.0, as_ + 1.0, xs))
            )
            out[tiny] = -lp / np.log(10)
    return out


def _t_stats(beta: np.ndarray, rss: np.ndarray, gg: np.ndarray, df: np.ndarray) -> dict[str, np.ndarray]:
    """Standard errors, t statistics and two-sided p values (also as -log10 p, exact below 1e-300)."""
    with np.errstate(divide="ignore", invalid="ignore"):
        se = np.where(np.isfinite(beta), np.sqrt(np.maximum(rss, 0.0) / df / gg), np.nan)
        t = beta / se
        x = df / (df + t**2)
        p = special.betainc(df / 2.0, 0.5, x)  # two-sided Student t p value
    return {"beta": beta, "se": se, "t": t, "p": p, "mlog10p": mlog10_ibeta(x, df / 2.0, 0.5, value=p)}


def _joint(r2: np.ndarray, P: int, df: np.ndarray) -> dict[str, np.ndarray]:
    """Exact F test of one variant on P phenotypes (Wilks' lambda = 1 - r2 for a single predictor)."""
    df2 = df - P + 1
    with np.errstate(divide="ignore", invalid="ignore"):
        F = r2 / (1.0 - r2) * df2 / P
        x = df2 / (df2 + P * F)
        p = special.betainc(df2 / 2.0, P / 2.0, x)  # upper tail of F(P, df2)
    mlog10p = mlog10_ibeta(x, df2 / 2.0, P / 2.0, value=p)
    return {"statistic": F, "df1": np.full_like(F, P), "df2": df2.astype(np.float64), "p": p, "mlog10p": mlog10p}


def call_summary(G: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Missing-call mask, number of missing calls and ``a1`` frequency of each variant (column of ``G``)."""
    miss = np.isnan(G)
    n_missing = miss.sum(axis=0)
    with np.errstate(invalid="ignore", divide="ignore"):
        freq = np.where(miss, 0, G).sum(axis=0, dtype=np.float64) / (2.0 * (G.shape[0] - n_missing))
    return miss, n_missing, freq


def associate_block(
    G: np.ndarray,
    design: Design,
    backend: Backend,
    *,
    missing: str = "mean",
    joint: bool = True,
    miss: np.ndarray | None = None,
) -> dict[str, np.ndarray]:
    """Linear association of each variant (column of ``G``) with every phenotype of ``design``.

    ``G`` (n x m, float, NaN for a missing call) is overwritten. Missing calls are replaced by the variant's
    mean (``missing="mean"``) or the variant's missing samples are left out of its regression
    (``missing="drop"``, PLINK 2's behaviour). Returns per-variant ``n``, ``n_missing``, ``a1_freq``, and
    P-column arrays ``beta``, ``se``, ``t``, ``p``; with ``joint``, ``joint_statistic``, ``joint_df1``,
    ``joint_df2``, ``joint_p``. ``miss`` is ``G``'s missing-call mask when the caller already has it.
    """
    n, m = G.shape
    P, k = design.n_phenotypes, design.k
    if miss is None:
        miss = np.isnan(G)
    n_missing = miss.sum(axis=0)
    n_obs = n - n_missing
    G[miss] = 0.0
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = G.sum(axis=0) / n_obs
    G -= mean
    G[miss] = 0.0
    A, gg_raw = backend.products(G)
    gy, gq = A[:, :P], A[:, P : P + k]
    gg = gg_raw - np.einsum("ij,ij->i", gq, gq)
    tol = 1e-8 * np.maximum(gg_raw, 1e-300)
    df = np.full(m, float(design.df))
    with np.errstate(divide="ignore", invalid="ignore"):
        beta = gy / gg[:, None]
    rss = design.yy[None, :] - beta**2 * gg[:, None]
    r2 = None
    if joint and design.W is not None:
        gw = A[:, P + k :]
        with np.errstate(divide="ignore", invalid="ignore"):
            r2 = np.einsum("ij,ij->i", gw, gw) / gg
    out_n = np.full(m, n, dtype=np.int64)

    drop = np.flatnonzero(n_missing > 0) if missing == "drop" else np.empty(0, dtype=np.intp)
    if drop.size:
        b, rss_d, gg_d, r2_d = _drop_missing(G[:, drop], miss[:, drop], design, joint=r2 is not None)
        beta[drop], rss[drop], gg[drop] = b, rss_d, gg_d
        if r2 is not None:
            r2[drop] = r2_d
        df[drop] = n_obs[drop] - k - 1
        out_n[drop] = n_obs[drop]
    bad = (gg <= tol) | (df < 1)
    beta[bad] = np.nan
    res = _t_stats(beta, rss, gg[:, None], df[:, None])
    res.update(n=out_n, n_missing=n_missing, a1_freq=mean / 2.0)
    if r2 is not None:
        r2[bad] = np.nan
        for name, val in _joint(r2, P, df).items():
            res[f"joint_{name}"] = val
    return res


def _drop_missing(
    Gc: np.ndarray, miss: np.ndarray, design: Design, *, joint: bool
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray | None]:
    """Regressions of variants with missing calls on their called samples only, by Gram-matrix downdates."""
    C, Y = design.C, design.Y
    J, k, P = Gc.shape[1], design.k, design.n_phenotypes
    rows = np.flatnonzero(miss.any(axis=1))  # only samples missing somewhere in these variants
    Mr, Cr, Yrow = miss[rows].astype(np.float64), C[rows], Y[rows]
    CC = (C.T @ C)[None] - (Mr.T @ np.einsum("ik,il->ikl", Cr, Cr).reshape(len(rows), k * k)).reshape(J, k, k)
    CY = (C.T @ Y)[None] - (Mr.T @ np.einsum("ik,ip->ikp", Cr, Yrow).reshape(len(rows), k * P)).reshape(J, k, P)
    Cg = Gc.T @ C  # missing calls are 0 in Gc, so these sums are over called samples
    gY = Gc.T @ Y
    gg0 = np.einsum("ij,ij->j", Gc, Gc)
    sol = np.linalg.solve(CC, np.concatenate([Cg[:, :, None], CY], axis=2))
    u, V = sol[:, :, 0], sol[:, :, 1:]
    gg = gg0 - np.einsum("jk,jk->j", Cg, u)
    b = gY - np.einsum("jk,jkp->jp", u, CY)
    yy = (np.einsum("ip,ip->p", Y, Y)[None] - Mr.T @ Yrow**2) - np.einsum("jkp,jkp->jp", CY, V)
    with np.errstate(divide="ignore", invalid="ignore"):
        beta = b / gg[:, None]
    rss = yy - beta**2 * gg[:, None]
    r2 = None
    if joint:
        YY = (Y.T @ Y)[None] - (Mr.T @ np.einsum("ip,iq->ipq", Yrow, Yrow).reshape(len(rows), P * P)).reshape(J, P, P)
        S = YY - np.einsum("jkp,jkq->jpq", CY, V)
        with np.errstate(divide="ignore", invalid="ignore"):
            r2 = np.einsum("jp,jp->j", b, np.linalg.solve(S, b[:, :, None])[:, :, 0]) / gg
    return beta, rss, gg, r2


# ---------------------------------------------------------------------------------------------
# the direction-projection test (1 df per variant, ml4h's latent-space GWAS)
# ---------------------------------------------------------------------------------------------
def direction_block(Gc: np.ndarray, design: Design, estimate: np.ndarray) -> dict[str, np.ndarray]:
    """Split-sample 1-df test of each variant along its own latent direction.

    ``Gc`` is a block already centred with missing calls at 0 (as left by :func:`associate_block`) and
    ``estimate`` a boolean mask of the samples that estimate each variant's direction: the OLS direction of
    its effect on the covariate-adjusted phenotypes, ``Z_A^T (g_A - mean)``, normalised. The other samples
    are projected on that direction and the projections regressed on the genotype with the covariates. The
    test samples never inform the direction, so the t test is exact under the null.

    Pooling folds (each fold projected on the direction of the others, then one regression) is not valid:
    the pooled statistic is a sum of ``g_i g_j z_i.z_j`` over pairs of samples whose variance is about twice
    what OLS assumes, so it is not offered.
    """
    Z = design.Yr
    A, B = np.flatnonzero(estimate), np.flatnonzero(~estimate)
    ga = Gc[A] - Gc[A].mean(axis=0)
    V = ga.T @ (Z[A] - Z[A].mean(axis=0))  # m x P
    norm = np.linalg.norm(V, axis=1, keepdims=True)
    with np.errstate(divide="ignore", invalid="ignore"):
        V = np.where(norm > 0, V / norm, 0.0)
    y = Z[B] @ V.T  # n_B x m: each column projected on its own variant's direction
    gb = Gc[B]
    Q, _ = np.linalg.qr(design.C[B])
    y -= Q @ (Q.T @ y)
    gq = gb.T @ Q
    gg0 = np.einsum("ij,ij->j", gb, gb)
    gg = gg0 - np.einsum("ij,ij->i", gq, gq)
    with np.errstate(divide="ignore", invalid="ignore"):
        beta = np.einsum("ij,ij->j", gb, y) / gg
    rss = np.einsum("ij,ij->j", y, y) - beta**2 * gg
    beta[gg <= 1e-8 * np.maximum(gg0, 1e-300)] = np.nan
    df = np.full(Gc.shape[1], float(len(B) - design.k - 1))
    res = _t_stats(beta, rss, gg, df)
    res["n"] = np.full(Gc.shape[1], len(B), dtype=np.int64)
    return res


# ---------------------------------------------------------------------------------------------
# phenotype transforms and genetic principal components
# ---------------------------------------------------------------------------------------------
def inverse_normal(Y: np.ndarray) -> np.ndarray:
    """Rank-based inverse normal transform of each column (Blom offsets, average ranks for ties)."""
    Y = np.asarray(Y, dtype=np.float64)
    ranks = stats.rankdata(Y, axis=0)
    n = Y.shape[0]
    return stats.norm.ppf((ranks - 0.375) / (n + 0.25))


def pca_whiten(Y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Principal components of the centred columns, scaled to unit variance; also returns the explained variance."""
    Yc = np.asarray(Y, dtype=np.float64) - np.mean(Y, axis=0)
    u, s, _ = np.linalg.svd(Yc, full_matrices=False)
    keep = s > 1e-10 * s.max()
    var = s**2 / (Yc.shape[0] - 1)
    return u[:, keep] * np.sqrt(Yc.shape[0] - 1), var[keep]


def standardize_genotypes(G: np.ndarray) -> np.ndarray:
    """Centre each variant, scale by sqrt(2p(1-p)) and set missing calls to 0 (in place)."""
    miss = np.isnan(G)
    G[miss] = 0
    n_obs = G.shape[0] - miss.sum(axis=0)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = G.sum(axis=0, dtype=np.float64) / n_obs
        sd = np.sqrt(mean * (1.0 - mean / 2.0))
    G -= mean.astype(G.dtype)
    G /= np.where(sd > 0, sd, 1.0).astype(G.dtype)
    G[miss] = 0
    return G


def genetic_pcs(G: np.ndarray, n_pcs: int, *, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Top principal components of standardised genotypes (samples x variants): scores and variance ratios."""
    Gs = standardize_genotypes(np.array(G, dtype=np.float32))
    if n_pcs >= min(Gs.shape):
        raise ValueError(f"n_genetic_pcs={n_pcs} must be smaller than the samples and variants ({Gs.shape})")
    from ._grid import randomized_svd

    u, s, _ = randomized_svd(Gs, n_pcs, n_iter=6, seed=seed)
    total = float(np.einsum("ij,ij->", Gs, Gs, dtype=np.float64))
    return (u * s).astype(np.float64), (s.astype(np.float64) ** 2 / total if total > 0 else np.zeros(len(s)))
