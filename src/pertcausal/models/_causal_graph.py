"""A fitted causal graph over genes (DCD-FG, NOTEARS-low-rank or a no-graph Gaussian), as arrays.

:class:`CausalGraphModel` is what :func:`pertcausal.tl.causal_graph` returns. It works on plain arrays in the
order of its genes and knows nothing of AnnData, so it can be saved, reloaded, rebuilt from ``uns`` and scored
on any cells. Expression is modelled after standardising each gene with the control cells' mean and standard
deviation; likelihoods are reported in those units, so every method scored by one model's scaling is
comparable.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd
import scipy.sparse as sp

from .._engines.gaussian_baselines import GaussianBaseline, fit_gaussian, gaussian_nll_per_cell
from .._utils._params import h5_safe

METHODS = ("dcdfg", "notears_lowrank", "gaussian")


class CausalGraphModel:
    """A causal graph (or no-graph Gaussian) fitted to interventional expression data.

    Built by :func:`pertcausal.tl.causal_graph`; use :meth:`predict_intervention` for knockouts,
    :meth:`nll_per_cell` to score cells, :attr:`adjacency` for the weighted gene graph, and :meth:`save` /
    :meth:`load` to keep it.

    Attributes
    ----------
    method
        ``"dcdfg"``, ``"notears_lowrank"`` or ``"gaussian"``.
    genes
        Names of the modelled genes, in the model's order.
    mean, scale
        Per-gene standardisation (control cells' mean and standard deviation), original units.
    knockout_level
        Default level (original units) a gene is clamped to by :meth:`predict_intervention`.
    regimes
        Table of the regimes seen at fit time: label, targets, modelled targets, cells, whether held out.
    history
        Per-epoch training curve (graph methods): phase, NLL per gene, loss, acyclicity, mu, gamma, edges.
    threshold
        Edge-probability (``dcdfg``) or ``|weight|`` (``notears_lowrank``) threshold giving the acyclic graph.
    params
        The fitting parameters.
    """

    def __init__(
        self,
        method: Literal["dcdfg", "notears_lowrank", "gaussian"],
        genes: Sequence[str],
        *,
        mean: np.ndarray,
        scale: np.ndarray,
        knockout_level: np.ndarray,
        regimes: pd.DataFrame,
        params: Mapping[str, Any],
        net: Any = None,
        gaussian: GaussianBaseline | None = None,
        history: pd.DataFrame | None = None,
        threshold: float = float("nan"),
    ) -> None:
        if method not in METHODS:
            raise ValueError(f"method must be one of {list(METHODS)}, got {method!r}")
        self.method = method
        self.genes = [str(g) for g in genes]
        self.mean = np.asarray(mean, dtype=np.float64)
        self.scale = np.asarray(scale, dtype=np.float64)
        self.knockout_level = np.asarray(knockout_level, dtype=np.float64)
        self.regimes = regimes
        self.params = dict(params)
        self.net = net
        self.gaussian = gaussian
        self.history = history if history is not None else pd.DataFrame()
        self.threshold = float(threshold)
        self._adjacency: sp.csr_matrix | None = None

    def __repr__(self) -> str:
        edges = "" if self.method == "gaussian" else f", {self.adjacency.nnz} edges"
        return f"CausalGraphModel(method={self.method!r}, {len(self.genes)} genes{edges})"

    # -- basic views ------------------------------------------------------------------------------------------
    @property
    def n_genes(self) -> int:
        return len(self.genes)

    @property
    def heldout(self) -> list[str]:
        return [str(r) for r in self.regimes.index[self.regimes["heldout"].to_numpy(bool)]]

    def standardise(self, X: np.ndarray | sp.spmatrix) -> np.ndarray:
        """``(X - mean) / scale`` as a dense float64 array (cells x the model's genes)."""
        X = X.toarray() if sp.issparse(X) else np.asarray(X, dtype=np.float64)
        if X.ndim != 2 or X.shape[1] != self.n_genes:
            raise ValueError(f"X must be cells x {self.n_genes} genes (the model's genes), got shape {X.shape}")
        return (X - self.mean) / self.scale

    def gene_index(self, genes: str | Sequence[str], *, argname: str = "targets") -> np.ndarray:
        """Indices of ``genes`` among the model's genes; unknown names are an error that lists them."""
        names = [genes] if isinstance(genes, str) else [str(g) for g in genes]
        where = {g: i for i, g in enumerate(self.genes)}
        unknown = [g for g in names if g not in where]
        if unknown:
            raise KeyError(
                f"{argname} {unknown} are not among the {self.n_genes} modelled genes (first: {self.genes[:5]}); "
                "an intervention can only clamp a modelled gene"
            )
        return np.array([where[g] for g in names], dtype=np.int64)

    @property
    def adjacency(self) -> sp.csr_matrix:
        """Weighted gene graph (genes x genes CSR, row = parent): the average direct effect of a parent on a
        child (standardised units; for ``dcdfg`` the mean Jacobian over the control cells). Empty for
        ``"gaussian"``."""
        if self._adjacency is None:
            self._adjacency = sp.csr_matrix((self.n_genes, self.n_genes), dtype=np.float32)
        return self._adjacency

    def set_adjacency(self, weights: np.ndarray) -> None:
        """Store the weighted graph, keeping only the edges of the fixed graph."""
        A = np.asarray(weights, dtype=np.float64).copy()
        if self.method == "dcdfg":
            U, V = self.net.binary_factors()
            A *= (U.astype(np.int64) @ V.T.astype(np.int64)) > 0
        np.fill_diagonal(A, 0.0)
        self._adjacency = sp.csr_matrix(A.astype(np.float32))
        self._adjacency.eliminate_zeros()

    def factors(self) -> tuple[np.ndarray, np.ndarray]:
        """Gene -> module strengths (>= 0) and module -> gene weights, both genes x modules (graph methods)."""
        if self.method == "gaussian":
            raise ValueError("method 'gaussian' has no graph and no modules")
        import torch

        net = self.net
        with torch.no_grad():
            if self.method == "dcdfg":
                U, V = (a.astype(np.float64) for a in net.binary_factors())
                inputs = U * net.w_in.norm(dim=-1).double().numpy()
                outputs = V * net.w_out.double().numpy()
            else:
                U, V = net.U.double().numpy(), net.V.double().numpy()
                inputs, outputs = np.abs(U), V
        return inputs, outputs

    # -- likelihood --------------------------------------------------------------------------------------------
    def nll_per_cell(self, X: np.ndarray | sp.spmatrix, *, masked: np.ndarray | None = None) -> np.ndarray:
        """Negative log-likelihood of each cell per kept gene (standardised units, nats).

        ``masked`` (cells x genes bool) marks each cell's intervened genes, which are left out: a graph model
        scores each kept gene given its parents, the Gaussian the marginal of the kept genes.
        """
        Z = self.standardise(X)
        if masked is not None and masked.shape != Z.shape:
            raise ValueError(f"masked has shape {masked.shape}; expected {Z.shape}")
        if self.method == "gaussian":
            return gaussian_nll_per_cell(self.gaussian, Z, masked=masked)
        import torch

        from .._engines.factor_graph import cell_nll

        kept = np.ones(Z.shape, dtype=bool) if masked is None else ~masked
        n_kept = kept.sum(1)
        if (n_kept == 0).any():
            raise ValueError(f"masked leaves no gene in {int((n_kept == 0).sum())} cell(s)")
        out = np.empty(Z.shape[0])
        with torch.no_grad():
            for start in range(0, Z.shape[0], 4096):
                x = torch.as_tensor(Z[start : start + 4096], dtype=torch.float32)
                m = torch.as_tensor(~kept[start : start + 4096])
                nll = cell_nll(self.net, x, m)
                out[start : start + 4096] = nll.double().numpy()
        return out / n_kept

    # -- interventions -----------------------------------------------------------------------------------------
    def predict_intervention(
        self,
        targets: Sequence[str],
        *,
        level: float | Sequence[float] | None = None,
        n_samples: int = 1000,
        random_state: int = 0,
    ) -> dict[str, np.ndarray]:
        """Mean and spread of every modelled gene when ``targets`` are clamped (a perfect intervention).

        Graph models sample their structural equations in topological order with the targets set to ``level``
        (default: :attr:`knockout_level`); the shift is taken against the unintervened model with the same
        noise draws. The ``"gaussian"`` model conditions its Gaussian on the targets' levels instead (no graph:
        it cannot tell intervening from observing).

        Returns
        -------
        dict with ``"mean"``, ``"sd"`` and ``"shift"`` (each ``(n_genes,)``, original units; shift = mean -
        unintervened mean) and ``"level"`` (the clamped levels).
        """
        idx = self.gene_index(targets)
        if level is None:
            lev = self.knockout_level[idx]
        else:
            lev = np.broadcast_to(np.asarray(level, dtype=np.float64), idx.shape).copy()
            if not np.isfinite(lev).all():
                raise ValueError(f"level must be finite, got {level!r}")
        z_level = (lev - self.mean[idx]) / self.scale[idx]
        if self.method == "gaussian":
            mean_z, sd_z = _conditional_gaussian(self.gaussian, idx, z_level)
            base = self.gaussian.mean
        else:
            mean_z, sd_z, base = self._sample(idx, z_level, n_samples=n_samples, random_state=random_state)
        mean = self.mean + self.scale * mean_z
        return {
            "mean": mean,
            "sd": self.scale * sd_z,
            "shift": self.scale * (mean_z - base),
            "level": lev,
        }

    def _sample(self, idx: np.ndarray, z_level: np.ndarray, *, n_samples: int, random_state: int) -> tuple:
        import torch

        from .._engines.factor_graph import sample_noise

        if n_samples < 2:
            raise ValueError(f"n_samples must be >= 2, got {n_samples}")
        gen = torch.Generator().manual_seed(int(random_state))
        noise = sample_noise(self.net, n_samples, gen)
        clamp = torch.zeros(n_samples, self.n_genes, dtype=torch.bool)
        clamp[:, torch.as_tensor(idx)] = True
        level = torch.zeros(self.n_genes)
        level[torch.as_tensor(idx)] = torch.as_tensor(z_level, dtype=torch.float32)
        none = torch.zeros_like(clamp)
        with torch.no_grad():
            x = self.net.propagate(noise, clamp, level).double()
            x0 = self.net.propagate(noise, none, level).double()
        return x.mean(0).numpy(), x.std(0).numpy(), x0.mean(0).numpy()

    # -- persistence ---------------------------------------------------------------------------------------------
    def state(self) -> dict[str, np.ndarray]:
        """Every array needed to rebuild the model (network weights or Gaussian), as numpy."""
        out = {f"arr_{k}": getattr(self, k) for k in ("mean", "scale", "knockout_level")}
        if self.net is not None:
            out.update({f"net_{k}": v.detach().cpu().numpy() for k, v in self.net.state_dict().items()})
        if self.gaussian is not None:
            out["gauss_mean"] = self.gaussian.mean
            out["gauss_cov"] = self.gaussian.covariance
            out["gauss_meta"] = np.array([self.gaussian.shrinkage, self.gaussian.n_cells], dtype=np.float64)
        A = self.adjacency.tocoo()
        out.update(adj_row=A.row.astype(np.int64), adj_col=A.col.astype(np.int64), adj_data=A.data)
        return out

    def to_uns(self) -> dict[str, Any]:
        """A dict of arrays, tables and scalars that survives h5ad/h5mu and rebuilds the model (:meth:`from_uns`)."""
        return {
            "method": self.method,
            "genes": np.asarray(self.genes, dtype=object),
            "state": self.state(),
            "threshold": self.threshold,
            "regimes": self.regimes,
            "history": self.history,
            "params": h5_safe(self.params),
        }

    @classmethod
    def from_uns(cls, entry: Mapping[str, Any]) -> CausalGraphModel:
        """Rebuild a model from :meth:`to_uns`'s dict (e.g. ``adata.uns["causal_graph"]`` after reading a file)."""
        missing = [k for k in ("method", "genes", "state", "regimes", "params") if k not in entry]
        if missing:
            raise KeyError(f"the causal-graph entry lacks {missing}; it must come from pertcausal.tl.causal_graph")
        return cls._build(
            str(entry["method"]),
            [str(g) for g in entry["genes"]],
            {k: np.asarray(v) for k, v in entry["state"].items()},
            regimes=entry["regimes"],
            params=dict(entry["params"]),
            history=entry.get("history"),
            threshold=float(entry.get("threshold", np.nan)),
        )

    @classmethod
    def _build(cls, method: str, genes: list[str], state: dict[str, np.ndarray], **kw: Any) -> CausalGraphModel:
        net = gaussian = None
        if method == "gaussian":
            shrink, n_cells = state["gauss_meta"]
            cov = state["gauss_cov"]
            gaussian = GaussianBaseline(mean=state["gauss_mean"], variances=np.diag(cov).copy(), covariance=cov,
                                        shrinkage=float(shrink), n_cells=int(n_cells))  # fmt: skip
        else:
            import torch

            from .._engines.factor_graph import build_net

            p = kw["params"]
            net_kw = {"n_hidden": int(p["n_hidden"]), "n_layers": int(p["n_layers"])} if method == "dcdfg" else {}
            net = build_net(method, len(genes), int(p["n_modules"]), noise_rank=int(p.get("noise_rank", 0)),
                            knockouts=str(p.get("knockouts", "perfect")), **net_kw)  # fmt: skip
            sd = {k[4:]: torch.as_tensor(np.asarray(v)) for k, v in state.items() if k.startswith("net_")}
            for name in ("fixed_edges", "fixed_mask"):  # buffers whose shape changes once the graph is fixed
                if name in sd:
                    setattr(net, name, torch.zeros_like(sd[name]))
            net.load_state_dict(sd)
            net.eval()
        model = cls(
            method,  # type: ignore[arg-type]
            genes,
            mean=state["arr_mean"],
            scale=state["arr_scale"],
            knockout_level=state["arr_knockout_level"],
            net=net,
            gaussian=gaussian,
            **kw,
        )
        if "adj_data" in state:
            n = len(genes)
            model._adjacency = sp.csr_matrix((state["adj_data"], (state["adj_row"], state["adj_col"])), shape=(n, n))
        return model

    def save(self, dir_path: str | Path, *, overwrite: bool = False) -> None:
        """Write the model to ``dir_path`` (``model.npz`` with every array, ``model.json``, two CSV tables)."""
        path = Path(dir_path)
        if path.exists() and any(path.iterdir()) and not overwrite:
            raise FileExistsError(f"{path} exists and is not empty; pass overwrite=True to replace it")
        path.mkdir(parents=True, exist_ok=True)
        np.savez(path / "model.npz", **self.state())
        meta = {"method": self.method, "genes": self.genes, "threshold": self.threshold, "params": h5_safe(self.params)}
        (path / "model.json").write_text(json.dumps(meta, indent=1))
        self.regimes.to_csv(path / "regimes.csv")
        self.history.to_csv(path / "history.csv", index=False)

    @classmethod
    def load(cls, dir_path: str | Path) -> CausalGraphModel:
        """Read a model written by :meth:`save`."""
        path = Path(dir_path)
        if not (path / "model.json").exists():
            raise FileNotFoundError(f"{path} holds no model.json; save a model there with CausalGraphModel.save")
        meta = json.loads((path / "model.json").read_text())
        with np.load(path / "model.npz", allow_pickle=False) as f:
            state = {k: f[k] for k in f.files}
        regimes = pd.read_csv(path / "regimes.csv", index_col=0, keep_default_na=False)
        regimes.index = regimes.index.astype(str)
        history = pd.read_csv(path / "history.csv") if (path / "history.csv").stat().st_size > 1 else None
        return cls._build(meta["method"], meta["genes"], state, regimes=regimes, params=meta["params"],
                          history=history, threshold=float(meta["threshold"]))  # fmt: skip


def fit_gaussian_model(Z: np.ndarray) -> GaussianBaseline:
    """The no-graph full-covariance Gaussian (Ledoit-Wolf shrinkage) on standardised training cells."""
    return fit_gaussian(Z, covariance="full")


def _conditional_gaussian(g: GaussianBaseline, idx: np.ndarray, value: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean and sd of every gene given ``x[idx] = value`` under a full Gaussian (the targets get their value)."""
    S = g.covariance
    rest = np.setdiff1d(np.arange(g.n_genes), idx)
    K = np.linalg.solve(S[np.ix_(idx, idx)], S[np.ix_(idx, rest)]).T  # (rest, targets)
    mean = g.mean.copy()
    mean[rest] = g.mean[rest] + K @ (value - g.mean[idx])
    mean[idx] = value
    var = np.zeros(g.n_genes)
    var[rest] = np.diag(S)[rest] - np.einsum("rt,tr->r", K, S[np.ix_(idx, rest)])
    return mean, np.sqrt(np.maximum(var, 0.0))
