"""Metrics of a learned latent space against a known one: mean correlation coefficient (MCC) after matching
latents, and identification of the latents each perturbation targets. Nothing here knows about AnnData.

Learned latents are identifiable at best up to permutation and element-wise invertible maps, so latents are
first matched one-to-one to the true ones (Hungarian algorithm on absolute correlations, as in
Genentech/sVAE ``svae/metrics.py``); target sets are then compared through that matching.
"""

from __future__ import annotations

from typing import Any, Literal

import numpy as np
from scipy.optimize import linear_sum_assignment
from scipy.stats import rankdata

from .._utils._validate import check_choice


def _as_2d(x: Any, name: str) -> np.ndarray:
    arr = np.asarray(x, dtype=np.float64)
    if arr.ndim != 2:
        raise ValueError(f"{name} must be 2-D (samples x latents), got shape {arr.shape}")
    if arr.shape[1] == 0:
        raise ValueError(f"{name} has no columns (latents), got shape {arr.shape}")
    if not np.isfinite(arr).all():
        bad = int(arr.size - np.isfinite(arr).sum())
        raise ValueError(f"{name} holds {bad} NaN or infinite value(s)")
    return arr


def _standardise(x: np.ndarray) -> np.ndarray:
    """Columns centred and scaled to unit norm; constant columns become 0 (so their correlations are 0)."""
    xc = x - x.mean(axis=0)
    norm = np.sqrt((xc**2).sum(axis=0))
    scale = np.abs(x).max(axis=0) * np.sqrt(x.shape[0]) * 1e-12  # constant up to rounding counts as constant
    ok = norm > np.maximum(scale, np.finfo(np.float64).tiny)
    return np.where(ok, xc / np.where(ok, norm, 1.0), 0.0)


def correlation_matrix(
    z_learned: Any, z_true: Any, *, method: Literal["pearson", "spearman"] = "pearson"
) -> np.ndarray:
    """Correlations between every learned and every true latent, ``(d_learned, d_true)``.

    Parameters
    ----------
    z_learned, z_true
        Latent states of the same samples, ``(n, d_learned)`` and ``(n, d_true)``.
    method
        ``"pearson"`` or ``"spearman"`` (Pearson correlation of the ranks, ties averaged).

    Returns
    -------
    Signed correlations; a constant column has correlation 0 with everything (not NaN).
    """
    check_choice(method, ("pearson", "spearman"), argname="method")
    a, b = _as_2d(z_learned, "z_learned"), _as_2d(z_true, "z_true")
    if a.shape[0] != b.shape[0]:
        raise ValueError(
            f"z_learned and z_true must hold the same samples (rows); got {a.shape[0]} and {b.shape[0]} rows"
        )
    if a.shape[0] < 2:
        raise ValueError(f"need at least 2 samples to correlate latents, got {a.shape[0]}")
    if method == "spearman":
        a, b = rankdata(a, axis=0), rankdata(b, axis=0)
    corr = _standardise(a).T @ _standardise(b)
    return np.clip(corr, -1.0, 1.0)


def mean_correlation_coefficient(
    z_learned: Any, z_true: Any, *, method: Literal["pearson", "spearman"] = "pearson"
) -> tuple[float, np.ndarray]:
    """Mean correlation coefficient (MCC) between learned and true latents after a one-to-one matching.

    The absolute correlation between every learned and every true latent is computed, latents are matched
    one-to-one to maximise the summed absolute correlation (Hungarian algorithm,
    :func:`scipy.optimize.linear_sum_assignment`), and the MCC is the mean absolute correlation over the
    ``min(d_learned, d_true)`` matched pairs. It is 1 when the learned latents are the true ones up to
    permutation, sign and scale (Pearson) or any monotone map (Spearman).

    Parameters
    ----------
    z_learned
        Learned latent states, ``(n, d_learned)``.
    z_true
        True latent states of the same samples, ``(n, d_true)``.
    method
        ``"pearson"`` (linear correlation) or ``"spearman"`` (rank correlation).

    Returns
    -------
    The MCC, and the matching as an int array of shape ``(min(d_learned, d_true), 2)`` whose rows are
    ``(learned index, true index)``, sorted by the learned index. Constant columns correlate 0 with
    everything.

    Examples
    --------
    >>> import numpy as np
    >>> from pertcausal._engines.latent_metrics import mean_correlation_coefficient
    >>> z = np.random.default_rng(0).standard_normal((500, 3))
    >>> mcc, assignment = mean_correlation_coefficient(-2 * z[:, [2, 0, 1]], z)
    >>> round(mcc, 6), assignment.tolist()
    (1.0, [[0, 2], [1, 0], [2, 1]])
    """
    corr = np.abs(correlation_matrix(z_learned, z_true, method=method))
    rows, cols = linear_sum_assignment(corr, maximize=True)
    assignment = np.column_stack([rows, cols]).astype(np.int64)
    return float(corr[rows, cols].mean()), assignment


def _as_bool(x: Any, name: str) -> np.ndarray:
    arr = np.asarray(x)
    if arr.ndim != 2:
        raise ValueError(f"{name} must be 2-D (perturbations x latents), got shape {arr.shape}")
    if arr.dtype != bool:
        if not np.issubdtype(arr.dtype, np.number) or not np.isin(arr, (0, 1)).all():
            raise ValueError(
                f"{name} must be boolean (or 0/1); threshold probabilities first, e.g. {name} >= 0.5, "
                f"or use top_k_targets for shifts"
            )
        arr = arr.astype(bool)
    return arr


def target_identification(predicted: Any, truth: Any, assignment: Any) -> dict[str, float | int]:
    """Precision, recall and F1 of predicted perturbation targets against the true ones, through a latent matching.

    Learned latent ``i`` matched to true latent ``j`` by ``assignment`` counts as the same variable: a
    perturbation predicted to target ``i`` is a true positive when it truly targets ``j``, else a false
    positive, and a true target ``j`` not predicted on ``i`` is a false negative. A predicted target on a
    learned latent with no match is a false positive; a true target on a true latent with no match is a false
    negative.

    Parameters
    ----------
    predicted
        Boolean (or 0/1) ``(n_perturbations, d_learned)``: which learned latents each perturbation targets,
        e.g. a thresholded sVAE+ mask or :func:`top_k_targets` of the learned shifts.
    truth
        Boolean (or 0/1) ``(n_perturbations, d_true)``: the true targets, rows in the same perturbation order.
    assignment
        Integer ``(m, 2)`` array of ``(learned index, true index)`` pairs, e.g. from
        :func:`mean_correlation_coefficient`; each index at most once per column.

    Returns
    -------
    ``{"precision", "recall", "f1", "n_true_positive", "n_false_positive", "n_false_negative"}``. Precision
    is ``TP / (TP + FP)`` and recall ``TP / (TP + FN)``, each defined as 0.0 when its denominator is 0
    (nothing predicted, nothing true); F1 is their harmonic mean, 0.0 when both are 0.

    Examples
    --------
    >>> import numpy as np
    >>> from pertcausal._engines.latent_metrics import target_identification
    >>> truth = np.array([[True, False], [False, True]])
    >>> predicted = truth[:, ::-1]  # learned latents are the true ones swapped
    >>> target_identification(predicted, truth, np.array([[0, 1], [1, 0]]))["f1"]
    1.0
    """
    pred, true = _as_bool(predicted, "predicted"), _as_bool(truth, "truth")
    if pred.shape[0] != true.shape[0]:
        raise ValueError(
            f"predicted and truth must have one row per perturbation in the same order; got {pred.shape[0]} and "
            f"{true.shape[0]} rows"
        )
    asg = np.asarray(assignment)
    if asg.size == 0:
        asg = asg.reshape(0, 2)
    if asg.ndim != 2 or asg.shape[1] != 2:
        raise ValueError(f"assignment must be an (m, 2) array of (learned, true) index pairs, got shape {asg.shape}")
    if asg.size and (not np.issubdtype(asg.dtype, np.number) or not np.array_equal(asg, np.round(asg))):
        raise ValueError("assignment must hold integer indices")
    asg = asg.astype(np.int64)
    for col, (name, d) in enumerate((("learned", pred.shape[1]), ("true", true.shape[1]))):
        idx = asg[:, col]
        if ((idx < 0) | (idx >= d)).any():
            raise ValueError(f"assignment column {col} ({name} indices) must lie in [0, {d}), got {idx.tolist()}")
        if len(np.unique(idx)) != len(idx):
            raise ValueError(f"assignment column {col} ({name} indices) repeats an index: {idx.tolist()}")

    li, tj = asg[:, 0], asg[:, 1]
    p_m, t_m = pred[:, li], true[:, tj]
    unmatched_learned = np.setdiff1d(np.arange(pred.shape[1]), li)
    unmatched_true = np.setdiff1d(np.arange(true.shape[1]), tj)
    tp = int((p_m & t_m).sum())
    fp = int((p_m & ~t_m).sum() + pred[:, unmatched_learned].sum())
    fn = int((~p_m & t_m).sum() + true[:, unmatched_true].sum())
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / (tp + fn) if tp + fn else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {
        "precision": float(precision),
        "recall": float(recall),
        "f1": float(f1),
        "n_true_positive": tp,
        "n_false_positive": fp,
        "n_false_negative": fn,
    }


def top_k_targets(shift: Any, k: int | Any) -> np.ndarray:
    """Targets of models without a mask (a plain VAE or iVAE): the ``k`` latents with the largest ``|shift|``.

    Parameters
    ----------
    shift
        ``(n_perturbations, d)`` learned prior means (shifts) of each perturbation.
    k
        Targets per perturbation: one integer for all rows, or one per row (each in ``[0, d]``). Ties are
        broken towards the lower latent index.

    Returns
    -------
    Boolean ``(n_perturbations, d)``, True on the ``k[i]`` latents of row ``i`` with the largest
    ``|shift|``.

    Examples
    --------
    >>> import numpy as np
    >>> from pertcausal._engines.latent_metrics import top_k_targets
    >>> top_k_targets(np.array([[0.1, -3.0, 2.0], [1.0, 0.0, 0.5]]), [2, 1]).astype(int).tolist()
    [[0, 1, 1], [1, 0, 0]]
    """
    s = np.asarray(shift, dtype=np.float64)
    if s.ndim != 2:
        raise ValueError(f"shift must be 2-D (perturbations x latents), got shape {s.shape}")
    if not np.isfinite(s).all():
        raise ValueError("shift holds NaN or infinite values")
    n, d = s.shape
    k_arr = np.asarray(k)
    if k_arr.dtype == bool or not np.issubdtype(k_arr.dtype, np.number) or not np.array_equal(k_arr, np.round(k_arr)):
        raise ValueError(f"k must be an integer or an integer array with one value per row, got {k!r}")
    if k_arr.ndim == 0:
        k_arr = np.full(n, int(k_arr))
    elif k_arr.shape != (n,):
        raise ValueError(f"k must be an integer or hold one value per row of shift ({n}), got shape {k_arr.shape}")
    k_arr = k_arr.astype(np.int64)
    if ((k_arr < 0) | (k_arr > d)).any():
        raise ValueError(f"k must lie in [0, {d}] (the number of latents), got {np.unique(k_arr).tolist()}")
    order = np.argsort(-np.abs(s), axis=1, kind="stable")
    rank = np.empty_like(order)
    np.put_along_axis(rank, order, np.arange(d)[None, :].repeat(n, axis=0), axis=1)
    return rank < k_arr[:, None]
