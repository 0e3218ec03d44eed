"""The array form of a perturbation x context x gene tensor that every imputation engine works on."""

from __future__ import annotations

import itertools
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import scipy.sparse as sp


@dataclass
class Grid:
    """Observed effects of a perturbation x context x gene tensor.

    Parameters
    ----------
    y
        ``(n_obs, n_genes)`` observed effects (perturbed minus control), one row per observed pair.
    pert, ctx
        ``(n_obs,)`` integer codes of each row's perturbation and context.
    n_perts, n_contexts
        Sizes of the full grid (codes run over ``range(n_perts)`` and ``range(n_contexts)``).
    baseline
        Optional ``(n_contexts, n_genes)`` control mean levels per context.
    pert_features, ctx_features
        Optional user-supplied features per perturbation / context (rows aligned with the codes).
    """

    y: np.ndarray
    pert: np.ndarray
    ctx: np.ndarray
    n_perts: int
    n_contexts: int
    baseline: np.ndarray | None = None
    pert_features: np.ndarray | None = None
    ctx_features: np.ndarray | None = None
    _cache: dict = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        self.y = np.asarray(self.y)
        self.pert = np.asarray(self.pert, dtype=np.int64)
        self.ctx = np.asarray(self.ctx, dtype=np.int64)
        if self.y.ndim != 2 or self.y.shape[0] != self.pert.shape[0] or self.pert.shape != self.ctx.shape:
            raise ValueError(
                f"y must be (n_obs, n_genes) with n_obs matching pert and ctx; got y {self.y.shape}, "
                f"pert {self.pert.shape}, ctx {self.ctx.shape}"
            )
        if self.baseline is not None and self.baseline.shape != (self.n_contexts, self.n_genes):
            raise ValueError(
                f"baseline must be (n_contexts, n_genes) = {(self.n_contexts, self.n_genes)}, got {self.baseline.shape}"
            )

    @property
    def n_obs(self) -> int:
        return self.y.shape[0]

    @property
    def n_genes(self) -> int:
        return self.y.shape[1]

    def subset(self, rows: np.ndarray) -> Grid:
        """The grid restricted to some observed rows (same codes, same features)."""
        return Grid(
            self.y[rows],
            self.pert[rows],
            self.ctx[rows],
            self.n_perts,
            self.n_contexts,
            self.baseline,
            self.pert_features,
            self.ctx_features,
        )

    def indicator(self, axis: str) -> sp.csr_matrix:
        """Sparse ``(n_groups, n_obs)`` indicator of rows per perturbation (``"pert"``) or context (``"ctx"``)."""
        if axis not in self._cache:
            codes, n = (self.pert, self.n_perts) if axis == "pert" else (self.ctx, self.n_contexts)
            self._cache[axis] = sp.csr_matrix(
                (np.ones(self.n_obs), (codes, np.arange(self.n_obs))), shape=(n, self.n_obs)
            )
        return self._cache[axis]

    def group_mean(self, axis: str, values: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Mean of ``values`` (default ``y``) per perturbation or context, and the counts per group."""
        ind = self.indicator(axis)
        counts = np.asarray(ind.sum(axis=1)).ravel()
        sums = ind @ (self.y if values is None else values)
        with np.errstate(invalid="ignore", divide="ignore"):
            means = sums / counts[:, None]
        means[counts == 0] = 0.0
        return means, counts

    def observed(self) -> np.ndarray:
        """Boolean ``(n_perts, n_contexts)`` matrix of observed pairs."""
        m = np.zeros((self.n_perts, self.n_contexts), dtype=bool)
        m[self.pert, self.ctx] = True
        return m


@dataclass
class Prediction:
    """What an engine returns for the queried pairs.

    ``reliability`` is one number per queried pair, higher meaning more trustworthy (in ``[0, 1]`` for the
    methods of this package); ``variance`` an optional posterior variance per pair (relative to the prior).
    """

    values: np.ndarray
    reliability: np.ndarray | None = None
    info: dict = field(default_factory=dict)
    variance: np.ndarray | None = None


def option_grid(select: Mapping[str, Sequence[Any]]) -> list[dict[str, Any]]:
    """Every combination of ``select``'s candidate values (option name -> candidates), in order; an option
    without candidates is an error."""
    names = list(select)
    combos = [dict(zip(names, values)) for values in itertools.product(*(list(select[n]) for n in names))]
    if not combos:
        raise ValueError("select: every option needs at least one candidate value")
    return combos


def option_label(combo: Mapping[str, Any]) -> str:
    """``"name=value, ..."``: how a combination of :func:`option_grid` is recorded in ``info``."""
    return ", ".join(f"{k}={v}" for k, v in combo.items())


def validation_pairs(grid: Grid, n: int, seed: int) -> np.ndarray:
    """Up to ``n`` observed rows (at most a fifth of them, at least one) whose perturbation keeps other
    observed pairs, and whose context does too unless control baselines are known (a context with its
    control is then still described)."""
    n = min(n, max(1, grid.n_obs // 5))
    rng = np.random.default_rng(seed)
    left_p = np.bincount(grid.pert, minlength=grid.n_perts)
    left_c = np.bincount(grid.ctx, minlength=grid.n_contexts)
    out: list[int] = []
    for i in rng.permutation(grid.n_obs):
        if len(out) == n:
            break
        if left_p[grid.pert[i]] > 1 and (grid.baseline is not None or left_c[grid.ctx[i]] > 1):
            out.append(int(i))
            left_p[grid.pert[i]] -= 1
            left_c[grid.ctx[i]] -= 1
    return np.asarray(out, dtype=np.int64)


def validation_folds(
    grid: Grid, qp: np.ndarray, qc: np.ndarray, *, n_validation: int = 200, max_folds: int = 10, seed: int = 0
) -> list[tuple[np.ndarray, np.ndarray]]:
    """(training rows, held-out rows) splits of the observed pairs that mimic the queried pairs.

    Only which pairs are queried is used, never their values. When a queried context has no training
    pair (a context held out entirely), every training context is held out in turn (at most ``max_folds``
    of them, drawn with ``seed``); when a queried perturbation has none, perturbations are held out in
    ``max_folds`` groups; otherwise one split holds out up to ``n_validation`` pairs (at most a fifth)
    whose perturbation and context keep other pairs. Folds that would leave nothing to train on are dropped.
    """
    rng = np.random.default_rng(seed)
    seen_c = np.bincount(grid.ctx, minlength=grid.n_contexts) > 0
    seen_p = np.bincount(grid.pert, minlength=grid.n_perts) > 0
    rows = np.arange(grid.n_obs)
    if len(qc) and not seen_c[np.asarray(qc)].all():
        groups = np.flatnonzero(seen_c)
        groups = rng.permutation(groups)[:max_folds]
        folds = [(rows[grid.ctx != g], rows[grid.ctx == g]) for g in np.sort(groups)]
    elif len(qp) and not seen_p[np.asarray(qp)].all():
        groups = rng.permutation(np.flatnonzero(seen_p))
        assign = np.full(grid.n_perts, -1)
        assign[groups] = np.arange(len(groups)) % max_folds
        fold = assign[grid.pert]
        folds = [(rows[fold != f], rows[fold == f]) for f in range(min(max_folds, len(groups)))]
    else:
        val = validation_pairs(grid, n_validation, seed)
        folds = [(np.setdiff1d(rows, val), val)] if len(val) else []
    return [(tr, va) for tr, va in folds if len(tr) and len(va)]


def group_agreement(grid: Grid, axis: str) -> np.ndarray:
    """How much the observed effects of every perturbation (``"pert"``) or context (``"ctx"``) agree.

    ``|mean effect|^2 / mean |effect|^2`` in ``[0, 1]``: 1 when all of the group's effects are the same,
    near 0 when they scatter around zero; NaN for groups with fewer than 2 observed pairs.
    """
    means, counts = grid.group_mean(axis)
    sq, _ = grid.group_mean(axis, (grid.y * grid.y).sum(1, keepdims=True))
    with np.errstate(invalid="ignore", divide="ignore"):
        out = (means * means).sum(1) / sq[:, 0]
    out[counts < 2] = np.nan
    return out


def randomized_svd(a: np.ndarray, rank: int, *, n_iter: int = 4, seed: int = 0) -> tuple[np.ndarray, ...]:
    """Truncated SVD by randomized range finding (Halko et al. 2011); exact when ``rank`` is near full."""
    m, n = a.shape
    rank = max(1, min(rank, m, n))
    if rank >= min(m, n) // 2:
        u, s, vt = np.linalg.svd(a, full_matrices=False)
        return u[:, :rank], s[:rank], vt[:rank]
    rng = np.random.default_rng(seed)
    q = np.linalg.qr(a @ rng.standard_normal((n, rank + 10)).astype(a.dtype))[0]
    for _ in range(n_iter):
        q = np.linalg.qr(a.T @ q)[0]
        q = np.linalg.qr(a @ q)[0]
    u, s, vt = np.linalg.svd(q.T @ a, full_matrices=False)
    return (q @ u)[:, :rank], s[:rank], vt[:rank]
