"""Metrics of a cross-modal integration on arrays: alignment of paired embeddings, label transfer and
per-feature accuracy of translations. Nothing here knows about AnnData.

Distances between paired rows are computed in blocks of rows whose size is bounded by memory
(``max_block_entries`` distances at a time), so FOSCTTM on 100k paired cells never holds the full
distance matrix.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import scipy.sparse as sp

MAX_BLOCK_ENTRIES = 1 << 23  # distances held at once (64 MiB in float64)
_COLUMN_BLOCK_ENTRIES = 1 << 22  # matrix entries densified at once by feature_correlation


def _as_2d(x: Any, name: str) -> np.ndarray:
    arr = np.asarray(x.toarray() if sp.issparse(x) else x, dtype=np.float64)
    if arr.ndim != 2:
        raise ValueError(f"{name} must be 2-D (samples x dimensions), got shape {arr.shape}")
    if arr.size and not np.isfinite(arr).all():
        raise ValueError(f"{name} holds NaN or infinite values")
    return arr


def _paired(a: Any, b: Any) -> tuple[np.ndarray, np.ndarray]:
    a, b = _as_2d(a, "a"), _as_2d(b, "b")
    if a.shape[0] != b.shape[0]:
        raise ValueError(f"a and b must hold the same samples (paired rows); got {a.shape[0]} and {b.shape[0]} rows")
    if a.shape[0] < 2:
        raise ValueError(f"need at least 2 paired samples, got {a.shape[0]}")
    return a, b


def _distances(x: np.ndarray, y: np.ndarray, metric: str) -> np.ndarray:
    from sklearn.metrics import pairwise_distances

    return pairwise_distances(x, y, metric=metric)


def matching_ranks(
    a: Any, b: Any, *, metric: str = "euclidean", max_block_entries: int = MAX_BLOCK_ENTRIES
) -> tuple[np.ndarray, np.ndarray]:
    """How many wrong partners are closer than the true one, per sample and in both directions.

    Parameters
    ----------
    a, b
        Paired embeddings, ``(n, d_a)`` and ``(n, d_b)`` with ``d_a == d_b`` (for most metrics):
        row ``i`` of ``a`` and row ``i`` of ``b`` are the same sample.
    metric
        Any metric of :func:`sklearn.metrics.pairwise_distances`.
    max_block_entries
        Distances computed at once; bounds the memory (blocks of rows of ``a`` against all of ``b``).

    Returns
    -------
    ``(ranks_ab, ranks_ba)``, integer arrays of length ``n``: ``ranks_ab[i]`` is the number of
    ``j != i`` with ``d(a_i, b_j) < d(a_i, b_i)`` and ``ranks_ba[i]`` the number of ``j != i`` with
    ``d(b_i, a_j) < d(b_i, a_i)``. Ties count in favour of the true partner.
    """
    a, b = _paired(a, b)
    n = a.shape[0]
    block = int(max(1, min(n, max_block_entries // n)))
    # distance of each true pair, from the same routine as the blocks below
    diag = np.empty(n)
    for start in range(0, n, block):
        stop = min(n, start + block)
        diag[start:stop] = np.diagonal(_distances(a[start:stop], b[start:stop], metric))
    ranks_ab = np.zeros(n, dtype=np.int64)
    ranks_ba = np.zeros(n, dtype=np.int64)
    for start in range(0, n, block):
        stop = min(n, start + block)
        d = _distances(a[start:stop], b, metric)  # rows: a_j for j in block; columns: b_i for all i
        rows = np.arange(stop - start)
        own = d[rows, rows + start].copy()
        d[rows, rows + start] = np.inf  # j == i never counts
        ranks_ab[start:stop] = (d < own[:, None]).sum(1)
        # d(b_i, a_j) = d[j, i]: counts for every column i over the a_j of this block
        ranks_ba += (d < diag[None, :]).sum(0)
    return ranks_ab, ranks_ba


def foscttm(a: Any, b: Any, *, metric: str = "euclidean", max_block_entries: int = MAX_BLOCK_ENTRIES) -> np.ndarray:
    """Fraction Of Samples Closer Than the True Match, per sample, averaged over both directions.

    For sample ``i``: the fraction of ``j != i`` with ``d(a_i, b_j) < d(a_i, b_i)``, averaged with the
    same fraction from ``b`` to ``a``. 0 is a perfect alignment, about 0.5 is no alignment.

    Parameters
    ----------
    a, b
        Paired embeddings with the same number of rows (row ``i`` of each is sample ``i``).
    metric
        Any metric of :func:`sklearn.metrics.pairwise_distances`.
    max_block_entries
        Distances computed at once (memory bound).

    Returns
    -------
    Array of length ``n`` with values in [0, 1]; its mean is the usual FOSCTTM score.

    Examples
    --------
    >>> import numpy as np
    >>> from pertcausal._engines.integration_metrics import foscttm
    >>> x = np.arange(4.0)[:, None]
    >>> foscttm(x, x).tolist()
    [0.0, 0.0, 0.0, 0.0]
    """
    ranks_ab, ranks_ba = matching_ranks(a, b, metric=metric, max_block_entries=max_block_entries)
    return (ranks_ab + ranks_ba) / (2.0 * (len(ranks_ab) - 1))


def knn_match_accuracy(
    a: Any, b: Any, *, k: int = 5, metric: str = "euclidean", max_block_entries: int = MAX_BLOCK_ENTRIES
) -> float:
    """Top-``k`` matching accuracy: the fraction of samples ``i`` whose partner ``b_i`` is among the
    ``k`` nearest neighbours of ``a_i`` in ``b``.

    Parameters
    ----------
    a, b
        Paired embeddings (row ``i`` of each is sample ``i``).
    k
        Number of nearest neighbours (``k=1``: the partner is the nearest one).
    metric
        Any metric of :func:`sklearn.metrics.pairwise_distances`.
    max_block_entries
        Distances computed at once (memory bound).

    Returns
    -------
    Accuracy in [0, 1] (ties with the partner count in its favour); about ``k / n`` for unrelated
    embeddings.
    """
    if int(k) < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    ranks_ab, _ = matching_ranks(a, b, metric=metric, max_block_entries=max_block_entries)
    return float(np.mean(ranks_ab < int(k)))


def feature_correlation(pred: Any, true: Any) -> np.ndarray:
    """Pearson correlation of each column of ``pred`` with the same column of ``true``.

    Parameters
    ----------
    pred, true
        Matrices of the same shape ``(n_samples, n_features)``, dense or sparse. Columns are
        densified a block at a time, so memory stays bounded.

    Returns
    -------
    Array of length ``n_features``; NaN where either column is constant (or ``n_samples < 2``).

    Examples
    --------
    >>> import numpy as np
    >>> from pertcausal._engines.integration_metrics import feature_correlation
    >>> feature_correlation(np.array([[1.0, 2], [2, 2], [3, 2]]), np.array([[2.0, 1], [4, 0], [6, 5]]))
    array([ 1., nan])
    """
    if pred.shape != true.shape or len(pred.shape) != 2:
        raise ValueError(f"pred and true must be 2-D with the same shape; got {pred.shape} and {true.shape}")
    n, p = pred.shape
    out = np.full(p, np.nan)
    if n < 2 or p == 0:
        return out
    if sp.issparse(pred):
        pred = pred.tocsc()
    if sp.issparse(true):
        true = true.tocsc()
    step = int(max(1, _COLUMN_BLOCK_ENTRIES // n))
    for start in range(0, p, step):
        stop = min(p, start + step)
        blocks = []
        for m in (pred, true):
            blk = m[:, start:stop]
            blocks.append(np.asarray(blk.toarray() if sp.issparse(blk) else blk, dtype=np.float64))
        x, y = blocks
        const = (np.ptp(x, axis=0) == 0) | (np.ptp(y, axis=0) == 0)
        x = x - x.mean(0)
        y = y - y.mean(0)
        den = np.sqrt((x * x).sum(0) * (y * y).sum(0))
        with np.errstate(invalid="ignore", divide="ignore"):
            r = (x * y).sum(0) / den
        r[const | ~(den > 0)] = np.nan
        out[start:stop] = np.clip(r, -1.0, 1.0)
    return out


def label_transfer_accuracy(
    ref: Any,
    ref_labels: Any,
    query: Any,
    query_labels: Any,
    *,
    k: int = 15,
    metric: str = "euclidean",
) -> float:
    """Accuracy of labels transferred from a reference embedding to a query by a kNN majority vote.

    Each query sample gets the most frequent label among its ``k`` nearest reference samples
    (ties: the label that sorts first); the accuracy is the fraction that match ``query_labels``.

    Parameters
    ----------
    ref, ref_labels
        Reference embedding ``(n_ref, d)`` and its labels (length ``n_ref``).
    query, query_labels
        Query embedding ``(n_query, d)`` in the same space and its true labels.
    k
        Number of neighbours (capped at ``n_ref``).
    metric
        Any metric of :class:`sklearn.neighbors.KNeighborsClassifier`.

    Returns
    -------
    Accuracy in [0, 1]; about the frequency of the commonest label for an uninformative embedding.
    """
    from sklearn.neighbors import KNeighborsClassifier

    ref, query = _as_2d(ref, "ref"), _as_2d(query, "query")
    ref_labels = np.asarray(ref_labels).astype(str)
    query_labels = np.asarray(query_labels).astype(str)
    if len(ref_labels) != ref.shape[0] or len(query_labels) != query.shape[0]:
        raise ValueError(
            f"labels must have one entry per sample; ref: {ref.shape[0]} samples, {len(ref_labels)} labels; "
            f"query: {query.shape[0]} samples, {len(query_labels)} labels"
        )
    if ref.shape[1] != query.shape[1]:
        raise ValueError(f"ref and query must share dimensions; got {ref.shape[1]} and {query.shape[1]}")
    if ref.shape[0] == 0 or query.shape[0] == 0:
        raise ValueError("ref and query must each hold at least one sample")
    if int(k) < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    clf = KNeighborsClassifier(n_neighbors=min(int(k), ref.shape[0]), metric=metric)
    clf.fit(ref, ref_labels)
    return float(np.mean(clf.predict(query) == query_labels))


def is_count_matrix(x: Any, *, max_block_entries: int = MAX_BLOCK_ENTRIES) -> bool:
    """Whether every value of ``x`` (dense or sparse) is a non-negative integer."""
    if sp.issparse(x):
        data = np.asarray(x.data)
        return bool(np.all(data >= 0) and np.all(data == np.round(data)))
    x = np.asarray(x)
    if np.issubdtype(x.dtype, np.integer):
        return bool(x.size == 0 or x.min() >= 0)
    if x.ndim < 2:
        return bool(np.all(x >= 0) and np.all(x == np.round(x)))
    step = int(max(1, max_block_entries // max(1, x.shape[1])))
    for start in range(0, x.shape[0], step):
        blk = x[start : start + step]
        if not (np.all(blk >= 0) and np.all(blk == np.round(blk))):
            return False
    return True


def log1p_normalize(x: Any, *, target_sum: float = 1e4) -> np.ndarray | sp.csr_matrix:
    """``log1p(target_sum * x / row total)`` per row (rows with total 0 stay 0); sparse stays sparse."""
    if sp.issparse(x):
        x = sp.csr_matrix(x, dtype=np.float64, copy=True)
        totals = np.asarray(x.sum(axis=1), dtype=np.float64).ravel()
        scale = np.divide(target_sum, totals, out=np.zeros_like(totals), where=totals > 0)
        x = sp.csr_matrix(sp.diags(scale) @ x)
        np.log1p(x.data, out=x.data)
        return x
    x = np.asarray(x, dtype=np.float64)
    totals = x.sum(axis=1)
    scale = np.divide(target_sum, totals, out=np.zeros_like(totals), where=totals > 0)
    return np.log1p(x * scale[:, None])
