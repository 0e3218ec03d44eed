"""Directed-graph metrics and DAG utilities on adjacency matrices (numpy/scipy, dense or sparse).

Convention: ``adj[i, j] != 0`` is an edge ``i -> j`` (row = parent, column = child). Diagonal entries are
self loops: they count as edges in the metrics and as cycles in the acyclicity checks.
"""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp

Adjacency = np.ndarray | sp.spmatrix | sp.sparray


def _n_nodes(adj: Adjacency, *, what: str) -> int:
    shape = adj.shape if sp.issparse(adj) else np.shape(adj)
    if len(shape) != 2 or shape[0] != shape[1]:
        raise ValueError(f"{what} must be a square adjacency matrix, got shape {tuple(shape)}")
    return int(shape[0])


def _csr_edges(adj: Adjacency, *, what: str) -> sp.csr_matrix:
    """The edges (non-zero entries) of ``adj`` as a CSR pattern with sorted, unique column indices."""
    n = _n_nodes(adj, what=what)
    if sp.issparse(adj):
        A = sp.csr_matrix(adj, copy=True)
        A.sum_duplicates()
        data = A.data
    else:
        A = sp.csr_matrix(np.asarray(adj))
        data = A.data
    if np.issubdtype(data.dtype, np.floating) and np.isnan(data).any():
        raise ValueError(f"{what} holds NaN entries")
    keep = data != 0
    rows = np.repeat(np.arange(n), np.diff(A.indptr))[keep]
    pattern = sp.csr_matrix((np.ones(rows.size, dtype=bool), (rows, A.indices[keep])), shape=(n, n))
    pattern.sort_indices()
    return pattern


def _edge_codes(adj: Adjacency, *, what: str) -> tuple[np.ndarray, int]:
    """Sorted codes ``i * n + j`` of the edges of ``adj``, and ``n``."""
    A = _csr_edges(adj, what=what)
    n = A.shape[0]
    rows = np.repeat(np.arange(n, dtype=np.int64), np.diff(A.indptr))
    return rows * n + A.indices.astype(np.int64), n


def _pair(true_adj: Adjacency, est_adj: Adjacency) -> tuple[np.ndarray, np.ndarray, int]:
    t, n = _edge_codes(true_adj, what="true_adj")
    e, m = _edge_codes(est_adj, what="est_adj")
    if n != m:
        raise ValueError(f"true_adj has {n} nodes but est_adj has {m}")
    return t, e, n


def edge_errors(true_adj: Adjacency, est_adj: Adjacency) -> dict[str, int]:
    """Missing, extra and reversed edges of ``est_adj`` against ``true_adj``.

    An edge ``i -> j`` of the truth that the estimate has as ``j -> i`` (and not also as ``i -> j``), while the
    truth lacks ``j -> i``, is one **reversed** edge; the remaining true edges absent from the estimate are
    **missing** and the remaining estimated edges absent from the truth are **extra**. This is the accounting
    of DCD-FG's ``edge_errors`` (and of cdt's SHD without ``double_for_anticausal``).

    Returns
    -------
    ``{"missing": ..., "extra": ..., "reversed": ...}``.
    """
    t, e, n = _pair(true_adj, est_adj)
    missing = np.setdiff1d(t, e, assume_unique=True)
    extra = np.setdiff1d(e, t, assume_unique=True)
    flipped = (extra % n) * n + extra // n  # j -> i of each extra i -> j
    n_rev = int(np.isin(flipped, missing, assume_unique=True).sum())
    return {"missing": int(missing.size - n_rev), "extra": int(extra.size - n_rev), "reversed": n_rev}


def structural_hamming_distance(true_adj: Adjacency, est_adj: Adjacency) -> int:
    """Structural Hamming distance between two directed graphs.

    The number of edge insertions, deletions and reversals that turn ``est_adj`` into ``true_adj``: a missing
    edge and an extra edge count 1 each, and a **reversed** edge counts 1 (not 2), as in the causal-discovery
    literature (Tsamardinos et al. 2006; DCDI/DCD-FG's ``shd_metric``). An estimated 2-cycle ``i <-> j`` against
    a true ``i -> j`` counts 1 (the extra ``j -> i``). See :func:`edge_errors` for the breakdown.

    Parameters
    ----------
    true_adj, est_adj
        Square adjacency matrices (dense or scipy sparse) of the same size; non-zero entries are edges.

    Returns
    -------
    The distance, an integer.

    Examples
    --------
    >>> import numpy as np
    >>> from pertcausal._engines.graph_metrics import structural_hamming_distance
    >>> true = np.array([[0, 1, 0], [0, 0, 1], [0, 0, 0]])  # 0 -> 1 -> 2
    >>> est = np.array([[0, 0, 1], [1, 0, 0], [0, 0, 0]])  # 1 -> 0 (reversed), 0 -> 2 (extra), 1 -> 2 missing
    >>> structural_hamming_distance(true, est)
    3
    """
    return sum(edge_errors(true_adj, est_adj).values())


def edge_precision_recall(true_adj: Adjacency, est_adj: Adjacency) -> dict[str, float | int]:
    """Precision, recall and F1 of the directed edges of ``est_adj`` against ``true_adj``.

    An estimated edge is a true positive only with the same direction (a reversed edge is a false positive
    and a false negative). Precision is NaN without estimated edges, recall NaN without true edges, F1 NaN
    when either is NaN and 0 when both are 0.

    Returns
    -------
    ``{"precision", "recall", "f1", "n_true", "n_est", "n_true_positive"}``.

    Examples
    --------
    >>> import numpy as np
    >>> from pertcausal._engines.graph_metrics import edge_precision_recall
    >>> true = np.array([[0, 1, 1], [0, 0, 1], [0, 0, 0]])
    >>> est = np.array([[0, 1, 0], [0, 0, 0], [0, 1, 0]])
    >>> edge_precision_recall(true, est)["precision"], edge_precision_recall(true, est)["recall"]
    (0.5, 0.3333333333333333)
    """
    t, e, _ = _pair(true_adj, est_adj)
    tp = int(np.intersect1d(t, e, assume_unique=True).size)
    precision = tp / e.size if e.size else float("nan")
    recall = tp / t.size if t.size else float("nan")
    if np.isnan(precision) or np.isnan(recall):
        f1 = float("nan")
    else:
        f1 = 0.0 if precision + recall == 0 else 2 * precision * recall / (precision + recall)
    return {
        "precision": float(precision),
        "recall": float(recall),
        "f1": float(f1),
        "n_true": int(t.size),
        "n_est": int(e.size),
        "n_true_positive": tp,
    }


def _kahn(indptr: np.ndarray, indices: np.ndarray, n: int) -> np.ndarray | None:
    """Kahn's algorithm, one frontier (all nodes of in-degree 0) at a time; each edge is visited once."""
    indeg = np.bincount(indices, minlength=n).astype(np.int64)
    frontier = np.flatnonzero(indeg == 0)
    order = []
    done = 0
    while frontier.size:
        order.append(frontier)
        done += frontier.size
        starts, ends = indptr[frontier], indptr[frontier + 1]
        lengths = ends - starts
        total = int(lengths.sum())
        if total == 0:
            break
        # indices[starts[k]:ends[k]] for every frontier node k, concatenated
        offsets = np.repeat(starts - np.concatenate([[0], np.cumsum(lengths)[:-1]]), lengths)
        children, counts = np.unique(indices[offsets + np.arange(total)], return_counts=True)
        indeg[children] -= counts
        frontier = children[indeg[children] == 0]
    if done < n:
        return None
    return np.concatenate(order).astype(np.int64) if order else np.zeros(0, dtype=np.int64)


def topological_order(adj: Adjacency) -> np.ndarray | None:
    """A topological order of the graph (parents before children), or ``None`` if it has a cycle.

    Kahn's algorithm on the CSR structure: repeatedly take every node with no remaining parent, in O(V + E)
    work up to the sort within each frontier. Nodes in the same frontier come in increasing index. A self loop
    is a cycle. Works on dense arrays and scipy sparse matrices alike.

    Examples
    --------
    >>> import numpy as np
    >>> from pertcausal._engines.graph_metrics import topological_order
    >>> topological_order(np.array([[0, 0, 0], [1, 0, 0], [1, 1, 0]]))  # 2 -> 1 -> 0, 2 -> 0
    array([2, 1, 0])
    >>> topological_order(np.array([[0, 1], [1, 0]])) is None
    True
    """
    A = _csr_edges(adj, what="adj")
    return _kahn(A.indptr, A.indices, A.shape[0])


def is_acyclic(adj: Adjacency) -> bool:
    """Whether the directed graph has no cycle (self loops included), by :func:`topological_order`."""
    return topological_order(adj) is not None


def threshold_to_dag(weights: Adjacency) -> tuple[float, np.ndarray | sp.csr_matrix]:
    """The smallest threshold on ``|weights|`` whose graph is acyclic, found by bisection.

    The graph at threshold ``t`` keeps the edges with ``|weights| > t``. Acyclicity is monotone in ``t``
    (removing edges cannot create a cycle), so a bisection over ``0`` and the sorted distinct non-zero
    ``|weights|`` finds, in ``O(log(n_values))`` topological sorts, the smallest candidate giving a DAG; any
    threshold between it and the next larger ``|weight|`` gives the same graph. Returns 0 when the graph of
    all non-zero weights is already acyclic. This is DCD-FG's post-training step, with a topological sort
    instead of matrix powers. Zero the diagonal first if self loops are not meant as edges.

    Parameters
    ----------
    weights
        Square matrix of edge weights or probabilities (dense or scipy sparse), row = parent.

    Returns
    -------
    ``(threshold, adj)``: the threshold (a float) and the acyclic graph, a bool array for dense ``weights``
    or a bool CSR matrix for sparse ones.

    Examples
    --------
    >>> import numpy as np
    >>> from pertcausal._engines.graph_metrics import threshold_to_dag
    >>> W = np.array([[0.0, 0.9, 0.0], [0.0, 0.0, 0.5], [0.3, 0.0, 0.0]])  # cycle 0 -> 1 -> 2 -> 0
    >>> t, adj = threshold_to_dag(W)
    >>> t, adj.astype(int).tolist()
    (0.3, [[0, 1, 0], [0, 0, 1], [0, 0, 0]])
    """
    n = _n_nodes(weights, what="weights")
    if sp.issparse(weights):
        coo = sp.csr_matrix(weights, copy=True)
        coo.sum_duplicates()
        coo = coo.tocoo()
        rows, cols, vals = coo.row, coo.col, np.abs(np.asarray(coo.data, dtype=np.float64))
    else:
        W = np.asarray(weights, dtype=np.float64)
        rows, cols = np.nonzero(W)
        vals = np.abs(W[rows, cols])
    if np.isnan(vals).any():
        raise ValueError("weights holds NaN entries")
    nz = vals > 0
    rows, cols, vals = rows[nz], cols[nz], vals[nz]

    def graph(t: float) -> sp.csr_matrix:
        keep = vals > t
        return sp.csr_matrix((np.ones(int(keep.sum()), dtype=bool), (rows[keep], cols[keep])), shape=(n, n))

    def acyclic(t: float) -> bool:
        g = graph(t)
        return _kahn(g.indptr, g.indices, n) is not None

    candidates = np.unique(vals)
    if acyclic(0.0):
        threshold = 0.0
    else:  # graph(candidates[-1]) is empty, hence acyclic
        lo, hi = 0, candidates.size - 1
        while lo < hi:
            mid = (lo + hi) // 2
            if acyclic(candidates[mid]):
                hi = mid
            else:
                lo = mid + 1
        threshold = float(candidates[lo])
    adj = graph(threshold)
    return threshold, adj if sp.issparse(weights) else adj.toarray()
