"""Simulated interventional data from a random factor DAG (the DCD-FG setting), with the true graph."""

from __future__ import annotations

from math import comb
from numbers import Integral, Real
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import pandas as pd
import scipy.sparse as sp

from .._utils._validate import check_choice

if TYPE_CHECKING:
    from anndata import AnnData

_N_HIDDEN = 4  # tanh units per module in the nonlinear mechanism
_N_PILOT = 20_000  # observational cells used to standardise the nonlinear mechanism


def _check_int(value: Any, name: str, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, Integral):
        raise TypeError(f"{name} must be an integer, got {value!r}")
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")
    return int(value)


def _check_targets(n_targets: int | tuple[int, int], n_genes: int) -> tuple[int, int]:
    if isinstance(n_targets, Integral) and not isinstance(n_targets, bool):
        lo = hi = int(n_targets)
    else:
        try:
            lo, hi = (_check_int(v, "n_targets", 1) for v in n_targets)
        except (TypeError, ValueError) as err:
            raise ValueError(
                f"n_targets must be an integer or a pair (min, max) of integers, got {n_targets!r}"
            ) from err
    if not 1 <= lo <= hi <= n_genes:
        raise ValueError(f"n_targets must satisfy 1 <= min <= max <= n_genes ({n_genes}), got {n_targets!r}")
    return lo, hi


def _check_probability(edge_probability: float | tuple[float, float]) -> tuple[float, float]:
    try:
        values = (edge_probability,) * 2 if isinstance(edge_probability, Real) else tuple(edge_probability)
    except TypeError:
        values = ()
    if len(values) != 2 or not all(isinstance(v, Real) and 0.0 < float(v) <= 1.0 for v in values):
        raise ValueError(
            "edge_probability must be a probability in (0, 1] or a pair (gene -> module, module -> gene) of them, "
            f"got {edge_probability!r}"
        )
    return float(values[0]), float(values[1])


def _signed_uniform(rng: np.random.Generator, size: Any) -> np.ndarray:
    """Weights uniform on [-1, -0.25] U [0.25, 1], as in the DCD-FG and DCDI simulators."""
    return rng.uniform(0.25, 1.0, size) * rng.choice([-1.0, 1.0], size)


def _sample_structure(
    n_genes: int, n_modules: int, p_in: float, p_out: float, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Topological order, module positions and the gene -> module / module -> gene masks.

    ``order[k]`` is the gene at position ``k``. Module ``m`` sits between positions ``cut[m] - 1`` and
    ``cut[m]``: it reads genes at positions ``< cut[m]`` and writes genes at positions ``>= cut[m]``, so every
    path gene -> module -> gene goes forward in the order and the gene graph is acyclic.
    """
    order = rng.permutation(n_genes)
    position = np.empty(n_genes, dtype=np.int64)
    position[order] = np.arange(n_genes)
    cut = np.sort(rng.integers(1, n_genes, size=n_modules))
    upstream = position[:, None] < cut[None, :]  # (genes, modules): may feed the module
    g2m = upstream & (rng.random((n_genes, n_modules)) < p_in)
    m2g = (~upstream.T) & (rng.random((n_modules, n_genes)) < p_out)
    for m in range(n_modules):  # every module reads at least one gene and writes at least one
        if not g2m[:, m].any():
            g2m[rng.choice(order[: cut[m]]), m] = True
        if not m2g[m].any():
            m2g[m, rng.choice(order[cut[m] :])] = True
    return order, cut, g2m, m2g


class _Mechanism:
    """Structural equations of the factor graph, evaluated in topological order on a block of cells."""

    def __init__(self, order: np.ndarray, cut: np.ndarray, g2m: np.ndarray, m2g: np.ndarray, mechanism: str) -> None:
        self.order, self.cut, self.g2m, self.m2g, self.mechanism = order, cut, g2m, m2g, mechanism
        self.n_genes, self.n_modules = g2m.shape
        self.has_parent = m2g.any(axis=0)
        # standardisation, filled by standardise(): x_j = scale_j * (h @ m2g_weight[:, j]) - offset_j + noise
        self.scale = np.ones(self.n_genes)
        self.offset = np.zeros(self.n_genes)

    def init_weights(self, rng: np.random.Generator) -> None:
        n_in = np.maximum(self.g2m.sum(axis=0), 1)
        if self.mechanism == "linear":
            self.g2m_weight = _signed_uniform(rng, self.g2m.shape) * self.g2m
        else:  # one tanh layer per module; inputs scaled so pre-activations are O(1) for unit-variance genes
            w = rng.standard_normal((self.n_genes, self.n_modules, _N_HIDDEN)) / np.sqrt(n_in)[None, :, None]
            self.hidden_in = w * self.g2m[:, :, None]
            self.hidden_bias = rng.standard_normal((self.n_modules, _N_HIDDEN))
            self.hidden_out = rng.standard_normal((self.n_modules, _N_HIDDEN)) / np.sqrt(_N_HIDDEN)
        self.m2g_raw = _signed_uniform(rng, self.m2g.shape) * self.m2g

    def module(self, m: int, X: np.ndarray) -> np.ndarray:
        if self.mechanism == "linear":
            return X @ self.g2m_weight[:, m]
        pre = X @ self.hidden_in[:, m, :] + self.hidden_bias[m]
        return np.tanh(pre) @ self.hidden_out[m]

    def standardise_linear(self, noise_sd: float) -> None:
        """Exact per-gene scales so that every gene has unit observational variance (linear mechanism)."""
        W = self.g2m_weight @ self.m2g_raw  # (genes, genes), row parent
        cov = np.zeros((self.n_genes, self.n_genes))
        for j in self.order:
            w = W[:, j]
            var = float(w @ cov @ w) if self.has_parent[j] else 0.0
            self.scale[j] = np.sqrt((1.0 - noise_sd**2) / var) if var > 1e-12 else 0.0
            col = cov @ (w * self.scale[j])
            cov[:, j] = col
            cov[j, :] = col
            cov[j, j] = 1.0

    def run(
        self,
        n_cells: int,
        rng: np.random.Generator,
        *,
        noise_scale: np.ndarray,
        targets: np.ndarray | None = None,
        intervened: np.ndarray | None = None,
        noise_sd: float = 1.0,
        standardise: bool = False,
    ) -> np.ndarray:
        """Sample ``n_cells`` cells; ``targets`` (cells x genes bool) are replaced by ``intervened(rows, j)``.

        With ``standardise``, each gene's signal is centred and scaled on these (observational) cells as it is
        produced, and the scales are kept for later runs.
        """
        X = np.zeros((n_cells, self.n_genes))
        H = np.zeros((n_cells, self.n_modules))
        next_module = 0
        for k, j in enumerate(self.order):
            while next_module < self.n_modules and self.cut[next_module] <= k:
                H[:, next_module] = self.module(next_module, X)
                next_module += 1
            signal = H @ self.m2g_raw[:, j] if self.has_parent[j] else np.zeros(n_cells)
            if standardise and self.has_parent[j]:
                sd = signal.std()
                self.scale[j] = np.sqrt(1.0 - noise_sd**2) / sd if sd > 1e-12 else 0.0
                self.offset[j] = self.scale[j] * signal.mean()
            x = self.scale[j] * signal - self.offset[j] + noise_scale[j] * rng.standard_normal(n_cells)
            if targets is not None:
                rows = np.flatnonzero(targets[:, j])
                if rows.size:
                    x[rows] = intervened(rows.size)
            X[:, j] = x
        return X

    def weights(self) -> dict[str, np.ndarray]:
        m2g_weight = self.m2g_raw * self.scale[None, :]
        if self.mechanism == "linear":
            return {"gene_to_module": self.g2m_weight, "module_to_gene": m2g_weight}
        return {
            "hidden_in": self.hidden_in,
            "hidden_bias": self.hidden_bias,
            "hidden_out": self.hidden_out,
            "module_to_gene": m2g_weight,
            "gene_offset": self.offset.copy(),
        }


def _pick_regimes(n_genes: int, n_regimes: int, lo: int, hi: int, rng: np.random.Generator) -> list[np.ndarray]:
    """``n_regimes`` distinct sorted target sets; the size is uniform on ``lo..hi``, then the genes uniformly."""
    possible = sum(comb(n_genes, k) for k in range(lo, hi + 1))
    if n_regimes > possible:
        raise ValueError(
            f"n_regimes ({n_regimes}) exceeds the {possible} distinct sets of {lo} to {hi} targets among "
            f"{n_genes} genes; lower n_regimes or widen n_targets"
        )
    seen: set[tuple[int, ...]] = set()
    regimes: list[np.ndarray] = []
    for _ in range(1000 * max(n_regimes, 1)):
        if len(regimes) == n_regimes:
            break
        k = int(rng.integers(lo, hi + 1))
        t = tuple(sorted(int(g) for g in rng.choice(n_genes, size=k, replace=False)))
        if t not in seen:
            seen.add(t)
            regimes.append(np.asarray(t, dtype=np.int64))
    if len(regimes) < n_regimes:  # pragma: no cover - only when n_regimes is close to the number of sets
        raise ValueError(f"could not draw {n_regimes} distinct target sets; lower n_regimes or widen n_targets")
    return regimes


def simulate_factor_graph(
    *,
    n_genes: int = 100,
    n_modules: int = 10,
    n_regimes: int = 100,
    n_cells_per_regime: int = 500,
    n_control_cells: int | None = None,
    n_targets: int | tuple[int, int] = (1, 3),
    mechanism: Literal["linear", "nonlinear"] = "linear",
    edge_probability: float | tuple[float, float] = (0.2, 0.1),
    noise_sd: float = 0.5,
    intervention: Literal["hard", "knockout"] = "hard",
    knockout_level: float = -3.0,
    perturbation_key: str = "perturbation",
    control: str = "control",
    separator: str = "+",
    random_state: int = 0,
) -> AnnData:
    """Cells from a random factor DAG under known single or combined gene interventions (DCD-FG's simulation).

    **Graph.** Genes get a random topological order. Each of ``n_modules`` modules is placed at a random
    position ``cut`` in that order (uniform on ``1 .. n_genes - 1``); it reads each gene before ``cut`` with
    probability ``edge_probability[0]`` and writes each gene from ``cut`` on with probability
    ``edge_probability[1]`` (at least one of each is forced). The gene graph
    ``W = gene_to_module @ module_to_gene`` (an edge ``i -> j`` when a module reads ``i`` and writes ``j``)
    therefore only points forward in the order: it is acyclic, has no self loops and rank at most
    ``n_modules``. This matches Lopez et al. (2022)'s generator, where modules are nodes inserted in the
    causal order of the genes.

    **Mechanisms** (evaluated in topological order, module value ``h_m`` from the genes it reads):

    - ``"linear"``: ``h_m = sum_i a_im x_i`` and ``x_j = s_j sum_m b_mj h_m + e_j``, with ``a``, ``b`` uniform on
      ``[-1, -0.25] U [0.25, 1]``.
    - ``"nonlinear"``: ``h_m = sum_k v_mk tanh(sum_i a_imk x_i + c_mk)`` (a one-layer tanh MLP of 4 units per
      module, ``a ~ N(0, 1/n_inputs)``, ``c, v ~ N(0, 1)``, the reference's ``"nonlinear"`` variant with modules
      as MLPs) and ``x_j = s_j sum_m b_mj h_m - o_j + e_j``.

    **Standardisation.** A gene without module parents is ``N(0, 1)``. For any other gene, ``s_j`` (and ``o_j``)
    make its signal mean 0 and variance ``1 - noise_sd**2`` in the control (observational) distribution, and
    ``e_j ~ N(0, noise_sd**2)``; so every gene has mean 0 and variance 1 in control cells (exactly for
    ``"linear"``, where the scales come from the covariance; up to the error of a 20,000-cell pilot sample for
    ``"nonlinear"``). Variances therefore do not grow along the order, and a regression of a gene on its parents
    has R^2 = ``1 - noise_sd**2``.

    **Regimes.** The control regime (no intervention) plus ``n_regimes`` regimes, each with a distinct set of
    ``n_targets`` genes (size uniform on the range, genes uniform). Interventions are perfect: a target is cut
    from its parents and replaced by

    - ``"hard"``: independent ``N(0, 1)`` noise, as in DCD-FG (the target keeps its control marginal, so the
      regime changes the joint distribution but, in the linear case, no means);
    - ``"knockout"``: ``knockout_level + N(0, noise_sd**2)``, a knockdown that also shifts the means of the
      target's descendants (by ``knockout_level`` times the total causal effect in the linear case).

    Parameters
    ----------
    n_genes
        Number of genes (variables), at least 2.
    n_modules
        Number of modules (the rank of the gene graph).
    n_regimes
        Number of interventional regimes besides control (0 for observational data only).
    n_cells_per_regime
        Cells drawn in each interventional regime.
    n_control_cells
        Control cells; ``None`` means ``n_cells_per_regime``, 0 means no control regime.
    n_targets
        Number of targets per regime: an integer or a range ``(min, max)``, inclusive.
    mechanism
        ``"linear"`` or ``"nonlinear"`` (tanh MLP per module), see above.
    edge_probability
        Probability of a gene -> module and of a module -> gene edge among the allowed ones, as one number for
        both or a pair ``(gene -> module, module -> gene)``; the default is the reference's ``(0.2, 0.1)``.
    noise_sd
        Standard deviation of the exogenous noise of a gene with parents, in units of its (unit) control
        standard deviation; in ``(0, 1)``.
    intervention
        ``"hard"`` (target ~ N(0, 1)) or ``"knockout"`` (target ~ N(``knockout_level``, ``noise_sd**2``)).
    knockout_level
        Mean of a knocked-out target, in control standard deviations (only used with ``"knockout"``).
    perturbation_key
        Name of the ``obs`` column holding each cell's regime.
    control
        Label of control cells.
    separator
        String joining the names of a regime's targets in its label (``"gene3+gene17"``).
    random_state
        Seed; the same seed gives the same graph, weights and cells.

    Returns
    -------
    AnnData with ``n_control_cells + n_regimes * n_cells_per_regime`` cells (control first, then regime by
    regime) and genes ``gene0 ... gene{n_genes-1}``:

    - ``X``: dense float32 expression.
    - ``obs[perturbation_key]``: categorical, ``control`` or the regime's target names (in gene index order)
      joined by ``separator``; ``obs["n_targets"]``: number of targets of the cell's regime (0 for control).
    - ``varp["true_graph"]``: the true gene graph as a 0/1 float32 CSR matrix, row = parent, column = child.
    - ``uns["factor_graph_truth"]``: ``"gene_to_module"`` (genes x modules bool), ``"module_to_gene"``
      (modules x genes bool), ``"order"`` (gene indices in topological order), ``"module_position"`` (each
      module's ``cut``), ``"mechanism"``, ``"intervention"``, ``"regimes"`` (labels of the interventional
      regimes), ``"targets"`` (n_regimes x max targets gene indices, padded with -1), ``"noise_scale"`` (per-gene
      exogenous noise sd: 1 for genes without parents, ``noise_sd`` otherwise), ``"weights"`` (for ``"linear"``:
      ``"gene_to_module"`` and ``"module_to_gene"``, whose product is the weighted gene graph ``B`` of the SEM
      ``x = x B + e``; for ``"nonlinear"``: ``"hidden_in"``, ``"hidden_bias"``, ``"hidden_out"``,
      ``"module_to_gene"``, ``"gene_offset"``) and ``"params"`` (the arguments).

    Examples
    --------
    >>> import pertcausal as pc
    >>> adata = pc.data.simulate_factor_graph(n_genes=20, n_modules=3, n_regimes=5, n_cells_per_regime=50)
    >>> adata.shape
    (300, 20)
    >>> adata.obs["perturbation"].nunique()
    6
    """
    from anndata import AnnData

    n_genes = _check_int(n_genes, "n_genes", 2)
    n_modules = _check_int(n_modules, "n_modules", 1)
    n_regimes = _check_int(n_regimes, "n_regimes", 0)
    n_cells_per_regime = _check_int(n_cells_per_regime, "n_cells_per_regime", 1)
    n_control = n_cells_per_regime if n_control_cells is None else _check_int(n_control_cells, "n_control_cells", 0)
    if n_control + n_regimes == 0:
        raise ValueError("no cells to simulate: n_control_cells is 0 and n_regimes is 0")
    lo, hi = _check_targets(n_targets, n_genes)
    check_choice(mechanism, ["linear", "nonlinear"], argname="mechanism")
    check_choice(intervention, ["hard", "knockout"], argname="intervention")
    p_in, p_out = _check_probability(edge_probability)
    if not isinstance(noise_sd, Real) or not 0.0 < float(noise_sd) < 1.0:
        raise ValueError(f"noise_sd must be in (0, 1) (a fraction of the unit control sd), got {noise_sd!r}")
    if not isinstance(knockout_level, Real) or not np.isfinite(knockout_level):
        raise ValueError(f"knockout_level must be a finite number, got {knockout_level!r}")
    for name, value in (("perturbation_key", perturbation_key), ("control", control), ("separator", separator)):
        if not isinstance(value, str) or not value:
            raise ValueError(f"{name} must be a non-empty string, got {value!r}")
    genes = [f"gene{j}" for j in range(n_genes)]
    if separator in control or any(separator in g for g in genes):
        raise ValueError(f"separator {separator!r} occurs in control {control!r} or in gene names ('gene0', ...)")
    if control in set(genes):
        raise ValueError(f"control {control!r} is also a gene name; choose another label")
    random_state = _check_int(random_state, "random_state", 0)
    noise_sd = float(noise_sd)

    rng_graph, rng_pilot, rng_cells = (np.random.default_rng(s) for s in np.random.SeedSequence(random_state).spawn(3))
    order, cut, g2m, m2g = _sample_structure(n_genes, n_modules, p_in, p_out, rng_graph)
    mech = _Mechanism(order, cut, g2m, m2g, mechanism)
    mech.init_weights(rng_graph)
    regimes = _pick_regimes(n_genes, n_regimes, lo, hi, rng_graph)
    noise_scale = np.where(mech.has_parent, noise_sd, 1.0)
    if mechanism == "linear":
        mech.standardise_linear(noise_sd)
    else:
        mech.run(_N_PILOT, rng_pilot, noise_scale=noise_scale, noise_sd=noise_sd, standardise=True)

    labels = [control] + [separator.join(genes[g] for g in t) for t in regimes]
    regime_mask = np.zeros((n_regimes + 1, n_genes), dtype=bool)
    for r, t in enumerate(regimes, start=1):
        regime_mask[r, t] = True
    sizes = np.array([n_control] + [n_cells_per_regime] * n_regimes)
    codes = np.repeat(np.arange(n_regimes + 1), sizes)
    if intervention == "hard":

        def intervened(size: int) -> np.ndarray:
            return rng_cells.standard_normal(size)
    else:

        def intervened(size: int) -> np.ndarray:
            return knockout_level + noise_sd * rng_cells.standard_normal(size)

    X = mech.run(codes.size, rng_cells, noise_scale=noise_scale, targets=regime_mask[codes], intervened=intervened)

    n_t = np.array([0] + [t.size for t in regimes])
    obs = pd.DataFrame(
        {
            perturbation_key: pd.Categorical.from_codes(codes, categories=labels),
            "n_targets": n_t[codes],
        },
        index=[f"cell{i}" for i in range(codes.size)],
    )
    adata = AnnData(X=X.astype(np.float32), obs=obs, var=pd.DataFrame(index=genes))
    adjacency = (g2m.astype(np.int64) @ m2g.astype(np.int64)) > 0
    adata.varp["true_graph"] = sp.csr_matrix(adjacency.astype(np.float32))
    targets = np.full((n_regimes, max(hi, 1)), -1, dtype=np.int64)
    for r, t in enumerate(regimes):
        targets[r, : t.size] = t
    adata.uns["factor_graph_truth"] = {
        "gene_to_module": g2m,
        "module_to_gene": m2g,
        "order": order.astype(np.int64),
        "module_position": cut.astype(np.int64),
        "mechanism": mechanism,
        "intervention": intervention,
        "regimes": np.asarray(labels[1:], dtype=object),
        "targets": targets,
        "noise_scale": noise_scale,
        "weights": mech.weights(),
        "params": {
            "n_genes": n_genes,
            "n_modules": n_modules,
            "n_regimes": n_regimes,
            "n_cells_per_regime": n_cells_per_regime,
            "n_control_cells": n_control,
            "n_targets": [lo, hi],
            "mechanism": mechanism,
            "edge_probability": [p_in, p_out],
            "noise_sd": noise_sd,
            "intervention": intervention,
            "knockout_level": float(knockout_level),
            "perturbation_key": perturbation_key,
            "control": control,
            "separator": separator,
            "random_state": int(random_state),
        },
    }
    return adata
