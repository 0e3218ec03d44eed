from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp

from pertcausal._engines.graph_metrics import (
    edge_errors,
    edge_precision_recall,
    is_acyclic,
    structural_hamming_distance,
    threshold_to_dag,
    topological_order,
)


def _shd_by_diff(true: np.ndarray, est: np.ndarray) -> int:
    """DCD-FG's edge_errors formula on dense 0/1 matrices, as an independent reference."""
    diff = true.astype(int) - est.astype(int)
    rev = int((((diff + diff.T) == 0) & (diff != 0)).sum() // 2)
    return int((diff == 1).sum() - rev + (diff == -1).sum() - rev + rev)


def _random_dag(n: int, p: float, rng: np.random.Generator) -> np.ndarray:
    perm = rng.permutation(n)
    upper = np.triu(rng.random((n, n)) < p, k=1)
    return upper[np.ix_(np.argsort(perm), np.argsort(perm))]


# ------------------------------------------------------------------ SHD, precision, recall
def test_shd_hand_made_with_reversed_edge():
    true = np.array([[0, 1, 0], [0, 0, 1], [0, 0, 0]])  # 0 -> 1 -> 2
    est = np.array([[0, 0, 1], [1, 0, 0], [0, 0, 0]])  # 1 -> 0 reversed, 0 -> 2 extra, 1 -> 2 missing
    assert edge_errors(true, est) == {"missing": 1, "extra": 1, "reversed": 1}
    assert structural_hamming_distance(true, est) == 3
    assert structural_hamming_distance(true, true) == 0
    assert structural_hamming_distance(true, np.zeros((3, 3))) == 2
    assert structural_hamming_distance(np.zeros((3, 3)), true) == 2
    # only a reversal: 1, not 2
    assert structural_hamming_distance(true, true.T) == 2  # both edges reversed
    assert edge_errors(true, true.T) == {"missing": 0, "extra": 0, "reversed": 2}
    # an estimated 2-cycle against a single true edge: one extra edge
    two_cycle = np.array([[0, 1, 0], [1, 0, 1], [0, 0, 0]])
    assert edge_errors(true, two_cycle) == {"missing": 0, "extra": 1, "reversed": 0}


def test_shd_matches_difference_formula_dense_and_sparse():
    rng = np.random.default_rng(0)
    for _ in range(20):
        true = rng.random((12, 12)) < 0.2
        est = rng.random((12, 12)) < 0.2
        expected = _shd_by_diff(true, est)
        assert structural_hamming_distance(true, est) == expected
        assert structural_hamming_distance(sp.csr_matrix(true), sp.coo_matrix(est)) == expected


def test_precision_recall_directed():
    true = np.array([[0, 1, 1], [0, 0, 1], [0, 0, 0]])  # 0->1, 0->2, 1->2
    est = np.array([[0, 1, 0], [0, 0, 0], [0, 1, 0]])  # 0->1 right, 2->1 reversed
    res = edge_precision_recall(true, est)
    assert res["n_true"] == 3 and res["n_est"] == 2 and res["n_true_positive"] == 1
    assert res["precision"] == pytest.approx(0.5)
    assert res["recall"] == pytest.approx(1 / 3)
    assert res["f1"] == pytest.approx(2 * 0.5 * (1 / 3) / (0.5 + 1 / 3))
    # weights count as edges where non-zero, whatever their sign
    assert edge_precision_recall(true * -0.3, est * 2.0)["n_true_positive"] == 1
    empty = edge_precision_recall(true, np.zeros((3, 3)))
    assert np.isnan(empty["precision"]) and empty["recall"] == 0.0 and np.isnan(empty["f1"])
    disjoint = edge_precision_recall(true, true.T)
    assert disjoint["precision"] == 0.0 and disjoint["recall"] == 0.0 and disjoint["f1"] == 0.0


def test_metrics_validate_shapes():
    with pytest.raises(ValueError, match="square"):
        structural_hamming_distance(np.zeros((2, 3)), np.zeros((2, 3)))
    with pytest.raises(ValueError, match="3 nodes but est_adj has 4"):
        edge_precision_recall(np.zeros((3, 3)), np.zeros((4, 4)))
    with pytest.raises(ValueError, match="NaN"):
        is_acyclic(np.array([[0.0, np.nan], [0.0, 0.0]]))


# ------------------------------------------------------------------ topological sort
def test_topological_order_dag_cycle_self_loop():
    chain = np.array([[0, 0, 0], [1, 0, 0], [1, 1, 0]])  # 2 -> 1 -> 0, 2 -> 0
    np.testing.assert_array_equal(topological_order(chain), [2, 1, 0])
    cycle = np.zeros((4, 4))
    cycle[0, 1] = cycle[1, 2] = cycle[2, 0] = 1.0  # 3 is isolated
    assert topological_order(cycle) is None
    assert not is_acyclic(cycle)
    assert not is_acyclic(sp.csr_matrix(cycle))
    self_loop = np.zeros((3, 3))
    self_loop[1, 1] = 1
    assert topological_order(self_loop) is None
    np.testing.assert_array_equal(topological_order(np.zeros((3, 3))), [0, 1, 2])
    assert topological_order(np.zeros((0, 0))).size == 0


def test_topological_order_respects_every_edge():
    rng = np.random.default_rng(1)
    for n in (1, 5, 40):
        dag = _random_dag(n, 0.3, rng)
        for adj in (dag, sp.csr_matrix(dag), sp.csc_matrix(dag.astype(float))):
            order = topological_order(adj)
            assert order is not None and sorted(order.tolist()) == list(range(n))
            pos = np.empty(n, dtype=int)
            pos[order] = np.arange(n)
            parents, children = np.nonzero(dag)
            assert (pos[parents] < pos[children]).all()


def test_topological_order_ignores_explicit_zeros_and_scales():
    # a stored zero is not an edge: without it the graph is a DAG
    A = sp.csr_matrix((np.array([1.0, 0.0]), (np.array([0, 1]), np.array([1, 0]))), shape=(2, 2))
    assert A.nnz == 2
    np.testing.assert_array_equal(topological_order(A), [0, 1])
    # a long chain (deep frontier sequence) and its closing edge
    n = 20_000
    chain = sp.csr_matrix((np.ones(n - 1), (np.arange(n - 1), np.arange(1, n))), shape=(n, n))
    np.testing.assert_array_equal(topological_order(chain), np.arange(n))
    closed = chain.tolil()
    closed[n - 1, 0] = 1
    assert topological_order(closed.tocsr()) is None


# ------------------------------------------------------------------ threshold to DAG
def test_threshold_to_dag_hand_made_minimal():
    W = np.zeros((4, 4))
    W[0, 1], W[1, 2], W[2, 0], W[0, 2], W[3, 0] = 0.9, -0.5, 0.3, 0.2, 0.1  # cycle 0 -> 1 -> 2 -> 0
    t, adj = threshold_to_dag(W)
    assert t == pytest.approx(0.3)  # keeps |w| > 0.3: 0 -> 1 and 1 -> 2 (the negative weight counts by size)
    assert adj.dtype == bool
    expected = np.zeros((4, 4), dtype=bool)
    expected[0, 1] = expected[1, 2] = True
    np.testing.assert_array_equal(adj, expected)
    assert is_acyclic(adj)
    assert not is_acyclic(np.abs(W) > 0.2)  # the next smaller candidate still has the cycle
    t_sparse, adj_sparse = threshold_to_dag(sp.csr_matrix(W))
    assert t_sparse == t and sp.issparse(adj_sparse)
    np.testing.assert_array_equal(adj_sparse.toarray(), expected)


def test_threshold_to_dag_keeps_an_acyclic_graph_whole():
    rng = np.random.default_rng(2)
    dag = _random_dag(15, 0.3, rng)
    W = dag * rng.uniform(0.1, 1.0, dag.shape)
    t, adj = threshold_to_dag(W)
    assert t == 0.0
    np.testing.assert_array_equal(adj, dag)


def test_threshold_to_dag_random_graphs_is_minimal():
    rng = np.random.default_rng(3)
    for _ in range(10):
        W = rng.random((25, 25)) * (rng.random((25, 25)) < 0.3)
        t, adj = threshold_to_dag(W)
        assert is_acyclic(adj)
        np.testing.assert_array_equal(adj, np.abs(W) > t)
        values = np.unique(np.abs(W[W != 0]))
        smaller = values[values < t]
        below = smaller[-1] if smaller.size else 0.0
        assert not is_acyclic(np.abs(W) > below)  # one step lower there is a cycle


def test_threshold_to_dag_self_loop_and_errors():
    W = np.array([[0.4, 0.8], [0.0, 0.0]])  # a self loop is a cycle
    t, adj = threshold_to_dag(W)
    assert t == pytest.approx(0.4)
    np.testing.assert_array_equal(adj, [[False, True], [False, False]])
    with pytest.raises(ValueError, match="NaN"):
        threshold_to_dag(np.array([[0.0, np.nan], [0.0, 0.0]]))
    with pytest.raises(ValueError, match="square"):
        threshold_to_dag(np.zeros(3))
