"""Per-profile imputation metrics on effects (perturbed minus control), never on raw levels."""

from __future__ import annotations

import numpy as np


def _pearson_rows(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a = a - a.mean(1, keepdims=True)
    b = b - b.mean(1, keepdims=True)
    den = np.sqrt((a * a).sum(1) * (b * b).sum(1))
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(den > 0, (a * b).sum(1) / den, np.nan)


def profile_metrics(truth: np.ndarray, pred: np.ndarray, *, top_k: int = 50) -> dict[str, np.ndarray]:
    """Metrics per row of ``(n_pairs, n_genes)`` true and predicted effects.

    Returns ``pearson`` (across genes), ``r2`` (1 - SSE / SS of the true profile about its mean),
    ``cosine``, ``pearson_top_k`` (Pearson on the ``top_k`` genes with the largest absolute true
    effect), ``mse``, ``rel_error`` (squared error over the squared norm of the true effect: a scale-free
    error) and ``norm_ratio`` (predicted over true effect norm).
    """
    truth = np.asarray(truth, dtype=np.float64)
    pred = np.asarray(pred, dtype=np.float64)
    k = min(top_k, truth.shape[1])
    top = np.argsort(-np.abs(truth), axis=1)[:, :k]
    rows = np.arange(truth.shape[0])[:, None]
    ss = ((truth - truth.mean(1, keepdims=True)) ** 2).sum(1)
    sse = ((truth - pred) ** 2).sum(1)
    nt = np.linalg.norm(truth, axis=1)
    npred = np.linalg.norm(pred, axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return {
            "pearson": _pearson_rows(truth, pred),
            "r2": np.where(ss > 0, 1 - sse / ss, np.nan),
            "cosine": np.where(nt * npred > 0, (truth * pred).sum(1) / (nt * npred), np.nan),
            "pearson_top_k": _pearson_rows(truth[rows, top], pred[rows, top]),
            "mse": sse / truth.shape[1],
            "rel_error": np.where(nt > 0, sse / nt**2, np.nan),
            "norm_ratio": np.where(nt > 0, npred / nt, np.nan),
        }


def pooled_pearson(truth: np.ndarray, pred: np.ndarray) -> float:
    """Pearson correlation over all flattened entries (the reference's pooled r)."""
    t, p = np.ravel(truth), np.ravel(pred)
    if t.size < 2 or t.std() == 0 or p.std() == 0:
        return float("nan")
    return float(np.corrcoef(t, p)[0, 1])


def reliability_informativeness(reliability: np.ndarray, error: np.ndarray) -> dict[str, float]:
    """How well a reliability score ranks predictions by their error.

    Returns the Spearman correlation between reliability and error (negative when reliable
    predictions are more accurate), and the mean error of the more reliable half of the predictions
    and of the rest (ties at the median go to the less reliable half). NaN when fewer than 4
    predictions carry a finite reliability or the reliability is constant.
    """
    from scipy.stats import spearmanr

    r = np.asarray(reliability, dtype=np.float64)
    e = np.asarray(error, dtype=np.float64)
    ok = np.isfinite(r) & np.isfinite(e)
    nan = {"reliability_spearman": np.nan, "error_reliable_half": np.nan, "error_other_half": np.nan}
    if ok.sum() < 4 or np.ptp(r[ok]) == 0:
        return nan
    r, e = r[ok], e[ok]
    top = r > np.median(r)
    if not top.any():
        return nan
    return {
        "reliability_spearman": float(spearmanr(r, e)[0]),
        "error_reliable_half": float(e[top].mean()),
        "error_other_half": float(e[~top].mean()),
    }
