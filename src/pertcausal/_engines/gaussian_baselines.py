"""No-graph baselines for causal-graph models: Gaussian likelihoods and the average-shift mean prediction.

Every table that reports a causal-graph model's held-out likelihood or predicted intervention means should
carry these: a multivariate Gaussian with the training covariance (no graph), its diagonal version, and the
prediction of an unseen regime by the average shift of the training regimes. An independent re-analysis of
DCD-FG's Perturb-CITE-seq results found the full-covariance Gaussian ahead of DCD-FG on most held-out regimes.
Numpy/scipy only.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from numbers import Real
from typing import Literal

import numpy as np
import scipy.sparse as sp
from scipy import linalg

_LOG_2PI = float(np.log(2.0 * np.pi))


@dataclass(frozen=True)
class GaussianBaseline:
    """A fitted Gaussian over genes, with a full or a diagonal covariance.

    Attributes
    ----------
    mean
        Mean of each gene, shape ``(n_genes,)``.
    variances
        Variance of each gene (the diagonal of ``covariance`` for a full model), shape ``(n_genes,)``.
    covariance
        Full covariance ``(n_genes, n_genes)`` (positive definite), or ``None`` for a diagonal model.
    shrinkage
        Weight of the scaled identity in the full covariance (0 for a diagonal model).
    n_cells
        Number of cells the model was fitted on.
    """

    mean: np.ndarray
    variances: np.ndarray
    covariance: np.ndarray | None
    shrinkage: float
    n_cells: int

    @property
    def kind(self) -> Literal["full", "diagonal"]:
        return "diagonal" if self.covariance is None else "full"

    @property
    def n_genes(self) -> int:
        return int(self.mean.shape[0])


def _as_matrix(X: np.ndarray | sp.spmatrix, *, what: str = "X") -> np.ndarray:
    X = X.toarray() if sp.issparse(X) else np.asarray(X)
    if X.ndim != 2:
        raise ValueError(f"{what} must be a 2-D cells x genes matrix, got shape {X.shape}")
    X = X.astype(np.float64, copy=False)
    if not np.isfinite(X).all():
        raise ValueError(f"{what} holds {int((~np.isfinite(X)).sum())} NaN or infinite value(s)")
    return X


def ledoit_wolf_shrinkage(Xc: np.ndarray, S: np.ndarray | None = None) -> float:
    """Ledoit & Wolf (2004)'s optimal weight of ``trace(S)/p * I`` for centred data ``Xc`` (cells x genes).

    ``S = Xc^T Xc / n`` is the maximum-likelihood covariance (pass it when already computed); the shrunk
    estimate is ``(1 - a) S + a trace(S)/p I``. Same value as :func:`sklearn.covariance.ledoit_wolf_shrinkage`.
    """
    n, p = Xc.shape
    X2 = Xc**2
    trace = X2.sum(axis=0) / n  # diagonal of S
    mu = trace.sum() / p
    S = Xc.T @ Xc / n if S is None else S
    delta_ = float((S**2).sum())  # sum of squared entries of S
    beta_ = float((X2.sum(axis=1) ** 2).sum()) / n  # = sum of all entries of X2^T X2, in O(n p)
    beta = (beta_ - delta_) / (p * n)
    delta = (delta_ - 2.0 * mu * trace.sum() + p * mu**2) / p
    beta = min(beta, delta)
    return 0.0 if beta == 0.0 else float(beta / delta)


def fit_gaussian(
    X: np.ndarray | sp.spmatrix,
    *,
    covariance: Literal["full", "diagonal"] = "full",
    shrinkage: float | Literal["ledoit_wolf"] = "ledoit_wolf",
    min_variance: float = 1e-6,
) -> GaussianBaseline:
    """Fit a Gaussian to the cells of ``X`` (cells x genes) by maximum likelihood, with shrinkage.

    The mean is the gene mean and ``S`` the maximum-likelihood covariance (divided by ``n_cells``). A
    ``"full"`` model uses ``(1 - a) S + a (trace(S) / n_genes) I``, with ``a`` estimated by Ledoit & Wolf
    (``shrinkage="ledoit_wolf"``) or given; any ``a > 0`` makes it positive definite when there are more genes
    than cells. A ``"diagonal"`` model keeps only the variances (``shrinkage`` is ignored). Variances below
    ``min_variance`` (constant genes) are raised to it.

    Parameters
    ----------
    X
        Expression of the training cells, dense or sparse (densified), finite.
    covariance
        ``"full"`` or ``"diagonal"``.
    shrinkage
        ``"ledoit_wolf"`` or a weight in ``[0, 1]`` of the scaled identity (full models only).
    min_variance
        Floor of each gene's variance.

    Returns
    -------
    The fitted :class:`GaussianBaseline`.

    Examples
    --------
    >>> import numpy as np
    >>> from pertcausal._engines.gaussian_baselines import fit_gaussian
    >>> X = np.random.default_rng(0).normal(size=(50, 200))  # more genes than cells
    >>> model = fit_gaussian(X)
    >>> bool(np.linalg.eigvalsh(model.covariance).min() > 0), 0 < model.shrinkage < 1
    (True, True)
    """
    if covariance not in ("full", "diagonal"):
        raise ValueError(f"unknown covariance {covariance!r}; expected one of: 'full', 'diagonal'")
    if not (shrinkage == "ledoit_wolf" or (isinstance(shrinkage, Real) and 0.0 <= float(shrinkage) <= 1.0)):
        raise ValueError(f"shrinkage must be 'ledoit_wolf' or a number in [0, 1], got {shrinkage!r}")
    if not (isinstance(min_variance, Real) and min_variance >= 0.0):
        raise ValueError(f"min_variance must be a number >= 0, got {min_variance!r}")
    X = _as_matrix(X)
    n, p = X.shape
    if n < 2 or p < 1:
        raise ValueError(f"X must have at least 2 cells and 1 gene, got shape {X.shape}")
    mean = X.mean(axis=0)
    Xc = X - mean
    if covariance == "diagonal":
        variances = np.maximum((Xc**2).mean(axis=0), min_variance)
        return GaussianBaseline(mean=mean, variances=variances, covariance=None, shrinkage=0.0, n_cells=n)
    S = Xc.T @ Xc / n
    a = ledoit_wolf_shrinkage(Xc, S) if shrinkage == "ledoit_wolf" else float(shrinkage)
    mu = np.trace(S) / p
    cov = (1.0 - a) * S
    cov[np.diag_indices(p)] += a * mu
    diag = np.diag(cov)
    cov[np.diag_indices(p)] = np.maximum(diag, min_variance)
    try:
        linalg.cholesky(cov, lower=True)
    except linalg.LinAlgError as err:
        raise ValueError(
            f"the covariance of {p} genes from {n} cells is not positive definite with shrinkage={a:g}; "
            "use shrinkage='ledoit_wolf' or a value > 0"
        ) from err
    return GaussianBaseline(mean=mean, variances=np.diag(cov).copy(), covariance=cov, shrinkage=a, n_cells=n)


def as_mask(
    masked: np.ndarray | Sequence[Iterable[int]] | None, shape: tuple[int, int], *, argname: str = "masked"
) -> np.ndarray | None:
    """A rows x genes bool mask from a bool array of that shape or from per-row lists of gene indices.

    Negative indices in the lists are ignored (the ``-1`` padding of a targets table).
    """
    if masked is None:
        return None
    n, p = shape
    if isinstance(masked, np.ndarray):
        if masked.dtype == bool:
            if masked.shape != shape:
                raise ValueError(f"{argname} is a bool array of shape {masked.shape}; expected {shape}")
            return masked
        if masked.shape == shape:  # a 0/1 mask would otherwise be read as gene indices
            raise ValueError(
                f"{argname} is a {masked.dtype} array of shape {shape}; pass a bool mask ({argname}.astype(bool)) "
                "or one list of gene indices per row"
            )
    if len(masked) != n:
        raise ValueError(
            f"{argname} must be a bool array of shape {shape} or one list of gene indices per row ({n} rows); "
            f"got {len(masked)} rows"
        )
    mask = np.zeros(shape, dtype=bool)
    for i, idx in enumerate(masked):
        idx = np.atleast_1d(np.asarray(idx if idx is not None else [], dtype=np.int64))
        idx = idx[idx >= 0]
        if idx.size and idx.max() >= p:
            raise ValueError(f"{argname}[{i}] holds gene index {int(idx.max())}, but there are only {p} genes")
        mask[i, idx] = True
    return mask


def gaussian_nll_per_cell(
    model: GaussianBaseline, X: np.ndarray | sp.spmatrix, *, masked: np.ndarray | Sequence[Iterable[int]] | None = None
) -> np.ndarray:
    """Negative log-likelihood of each cell of ``X`` under ``model``, per non-masked gene.

    For cell ``c`` with kept genes ``K_c`` (all genes, or those not ``masked``), the value is
    ``-log N(x_c[K_c]; mean[K_c], cov[K_c, K_c]) / |K_c|``: the marginal Gaussian of the kept genes, which for
    a full covariance is computed once per distinct mask pattern (one Cholesky factor each), not per cell; for
    a diagonal model it is the mean of the kept genes' univariate NLLs. See :func:`gaussian_nll_per_gene`.

    Returns
    -------
    Array of shape ``(n_cells,)``.
    """
    X = _as_matrix(X)
    if X.shape[1] != model.n_genes:
        raise ValueError(f"X has {X.shape[1]} genes but the model was fitted on {model.n_genes}")
    mask = as_mask(masked, X.shape)
    R = X - model.mean
    if model.covariance is None:
        elem = 0.5 * (_LOG_2PI + np.log(model.variances) + R**2 / model.variances)
        if mask is None:
            return elem.mean(axis=1)
        kept = (~mask).sum(axis=1)
        _check_kept(kept)
        return np.where(mask, 0.0, elem).sum(axis=1) / kept
    if mask is None:
        patterns, inverse = np.zeros((1, model.n_genes), dtype=bool), np.zeros(X.shape[0], dtype=np.int64)
    else:
        _check_kept((~mask).sum(axis=1))
        patterns, inverse = _mask_patterns(mask)
    out = np.empty(X.shape[0])
    for k, pattern in enumerate(patterns):
        rows = np.flatnonzero(inverse == k)
        keep = np.flatnonzero(~pattern)
        L = linalg.cholesky(model.covariance[np.ix_(keep, keep)], lower=True)
        Z = linalg.solve_triangular(L, R[np.ix_(rows, keep)].T, lower=True)
        logdet = 2.0 * np.log(np.diag(L)).sum()
        out[rows] = 0.5 * (keep.size * _LOG_2PI + logdet + (Z**2).sum(axis=0)) / keep.size
    return out


def _mask_patterns(mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Distinct rows of a bool mask and the pattern index of each row (rows packed to bytes, then sorted)."""
    packed = np.ascontiguousarray(np.packbits(mask, axis=1))
    keys = packed.view(np.dtype((np.void, packed.shape[1]))).ravel()
    _, first, inverse = np.unique(keys, return_index=True, return_inverse=True)
    return mask[first], inverse.ravel()


def _check_kept(kept: np.ndarray) -> None:
    if (kept == 0).any():
        raise ValueError(
            f"masked leaves no gene in {int((kept == 0).sum())} cell(s) (first: row {int(np.argmax(kept == 0))})"
        )


def gaussian_nll_per_gene(
    model: GaussianBaseline, X: np.ndarray | sp.spmatrix, *, masked: np.ndarray | Sequence[Iterable[int]] | None = None
) -> float:
    """Mean negative log-likelihood per gene of the cells of ``X`` (natural log).

    Without ``masked``: ``mean_c -log N(x_c; mean, cov) / n_genes``. With ``masked`` (a bool cells x genes array,
    True = left out, or one list of gene indices per cell, e.g. its intervention targets), each cell's targeted
    genes are left out of the likelihood, as DCD-FG does for known interventions: the cell scores the marginal
    Gaussian of its non-targeted genes (for a full covariance, the sub-matrix of the covariance; for a diagonal
    one, the other genes' terms), divided by its number of non-targeted genes, and the result is the mean over
    cells. (DCD-FG's own loss divides the sum over non-targeted genes by all ``n_genes``, which differs by the
    factor ``(n_genes - n_targets) / n_genes``.) A cell with every gene masked is an error.

    Parameters
    ----------
    model
        A :class:`GaussianBaseline` from :func:`fit_gaussian`.
    X
        Cells x genes to score, with the model's genes in the same order.
    masked
        Genes left out of each cell's likelihood, or ``None`` to score all.

    Returns
    -------
    The mean NLL per gene (nats), a float.

    Examples
    --------
    >>> import numpy as np
    >>> from pertcausal._engines.gaussian_baselines import fit_gaussian, gaussian_nll_per_gene
    >>> X = np.random.default_rng(0).normal(size=(5000, 3))
    >>> round(gaussian_nll_per_gene(fit_gaussian(X, covariance="diagonal"), X), 2)  # 0.5 log(2 pi e) = 1.42
    1.42
    """
    return float(gaussian_nll_per_cell(model, X, masked=masked).mean())


def _vector(x: np.ndarray, *, what: str, n: int | None = None) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    if x.ndim != 1 or (n is not None and x.shape[0] != n):
        raise ValueError(f"{what} must be a vector of {n if n is not None else 'n_genes'} genes, got shape {x.shape}")
    return x


def average_shift_prediction(train_means_by_regime: np.ndarray, control_mean: np.ndarray) -> np.ndarray:
    """Predict an unseen regime's mean as control plus the average shift of the training regimes.

    ``control_mean + mean_r (train_means_by_regime[r] - control_mean)``: the "average knockout shift"
    baseline that needs no graph (it equals the mean of the training regime means).

    Parameters
    ----------
    train_means_by_regime
        Mean expression of each training regime, ``(n_regimes, n_genes)``.
    control_mean
        Mean expression of control cells, ``(n_genes,)``.

    Returns
    -------
    The predicted mean, ``(n_genes,)``; the same prediction serves every unseen regime.

    Examples
    --------
    >>> import numpy as np
    >>> from pertcausal._engines.gaussian_baselines import average_shift_prediction
    >>> average_shift_prediction(np.array([[1.0, 2.0], [3.0, 2.0]]), np.array([0.0, 1.0]))
    array([2., 2.])
    """
    train = np.asarray(train_means_by_regime, dtype=np.float64)
    if train.ndim != 2 or train.shape[0] < 1:
        raise ValueError(f"train_means_by_regime must be (n_regimes >= 1, n_genes), got shape {train.shape}")
    control = _vector(control_mean, what="control_mean", n=train.shape[1])
    return control + (train - control).mean(axis=0)


def mean_absolute_shift_error(
    predicted_mean: np.ndarray,
    observed_mean: np.ndarray,
    control_mean: np.ndarray,
    *,
    exclude: np.ndarray | Iterable[int] | Sequence[Iterable[int]] | None = None,
) -> float | np.ndarray:
    """Mean over genes of ``|(predicted - control) - (observed - control)|``, the error of the predicted shift.

    The control mean cancels, so this is also the mean absolute error of the predicted mean; it is taken so
    that the call reads as the comparison of shifts (and its shape is checked). Genes in ``exclude`` (e.g. the
    regime's targets, whose shift a model does not predict under a perfect intervention) are left out.

    Parameters
    ----------
    predicted_mean, observed_mean
        ``(n_genes,)`` for one regime, or ``(n_regimes, n_genes)`` for several.
    control_mean
        ``(n_genes,)``.
    exclude
        For one regime: gene indices or a bool ``(n_genes,)`` mask. For several: a bool ``(n_regimes, n_genes)``
        mask or one list of gene indices per regime (negative indices are ignored).

    Returns
    -------
    A float for one regime, an array ``(n_regimes,)`` for several.

    Examples
    --------
    >>> import numpy as np
    >>> from pertcausal._engines.gaussian_baselines import mean_absolute_shift_error
    >>> mean_absolute_shift_error(np.array([1.0, 0.0, 5.0]), np.array([0.0, 0.0, -5.0]), np.zeros(3), exclude=[2])
    0.5
    """
    pred = np.asarray(predicted_mean, dtype=np.float64)
    obs = np.asarray(observed_mean, dtype=np.float64)
    if pred.shape != obs.shape or pred.ndim not in (1, 2):
        raise ValueError(
            f"predicted_mean {pred.shape} and observed_mean {obs.shape} must have the same shape, "
            "(n_genes,) or (n_regimes, n_genes)"
        )
    control = _vector(control_mean, what="control_mean", n=pred.shape[-1])
    err = np.abs((pred - control) - (obs - control))
    single = pred.ndim == 1
    err = err[None] if single else err
    if exclude is None:
        mask = np.zeros(err.shape, dtype=bool)
    elif single:
        ex = np.asarray(exclude)
        mask = as_mask(ex[None] if ex.dtype == bool else [ex], err.shape, argname="exclude")
    else:
        mask = as_mask(exclude, err.shape, argname="exclude")
    kept = (~mask).sum(axis=1)
    if (kept == 0).any():
        raise ValueError("exclude leaves no gene for at least one regime")
    out = np.where(mask, 0.0, err).sum(axis=1) / kept
    return float(out[0]) if single else out
