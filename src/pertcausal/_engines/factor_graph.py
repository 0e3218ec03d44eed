"""Differentiable causal discovery of factor graphs (DCD-FG) and its low-rank linear baseline, in PyTorch.

Genes are tied to ``n_modules`` modules. In ``FactorGraphNet`` (DCD-FG, Lopez et al., NeurIPS 2022) every
(gene, module) pair makes a three-way choice, learned by straight-through Gumbel-softmax: no edge, gene ->
module (the gene feeds the module) or module -> gene (the module writes the gene). A module is a small MLP of
the genes that feed it, and a gene's mean is a weighted sum of the modules that write it; each gene has a
Gaussian likelihood with a learned variance. In ``LowRankLinearNet`` (NOTEARS-low-rank) the gene graph is
``W = U V^T`` with an L1 penalty and the mean is linear. DCD-FG is kept acyclic by a cheap constraint on the
``n_modules x n_modules`` module graph ``M = V^T U`` of edge probabilities (a module writes a gene that feeds
another module): ``h = tr(exp(M / n_genes)) - n_modules``, zero exactly when the module graph, hence the gene
graph, is a DAG. NOTEARS-low-rank uses NOTEARS' exact ``tr(exp(W * W)) - n_genes`` (a continuous low-rank
``W`` is dense, so a constraint on its factors could only be met by shrinking them all).
With ``noise_rank > 0`` the exogenous noise of both is correlated, ``N(0, diag + L L^T)``, for hidden common
causes (:func:`gaussian_nll`, :func:`sample_noise`).

Training (:func:`fit_graph`) runs through Lightning 2: an augmented Lagrangian on ``h`` (``gamma h + mu/2 h^2``;
``gamma`` grows by ``mu h`` and ``mu`` doubles when ``h`` has not shrunk by 10% at each check), minibatches
densified from sparse rows, known perfect interventions (targeted genes are left out of each cell's
likelihood); then thresholding to an acyclic graph checked by topological sort, and fine-tuning with the graph
fixed and the constraint off. Torch and Lightning are imported by this module; import it lazily.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import scipy.sparse as sp
import torch
import torch.nn.functional as F
from lightning.pytorch import LightningModule, Trainer
from lightning.pytorch.callbacks import Callback
from torch import nn
from torch.utils.data import DataLoader, Dataset

from .graph_metrics import threshold_to_dag, topological_order

_LOG_2PI = math.log(2.0 * math.pi)
_MIN_LOG_VAR = math.log(1e-3)  # floor of a gene's own noise variance (standardised units): with correlated noise
# the loadings could otherwise take all of a gene's variance and send its own to zero (a Heywood case)
_NONE, _INPUT, _OUTPUT = 0, 1, 2  # the three-way choice of a (gene, module) pair
KNOCKOUT_MODELS = ("perfect", "activity")
_KNOCKOUT_ACTIVITY_INIT = -3.0  # start of the learned knockout activity (control sds): below most control cells


class FactorGraphNet(nn.Module):
    """DCD-FG: gene -> module -> gene factor graph with one MLP per module and Gaussian genes.

    Parameters
    ----------
    n_genes, n_modules
        Graph size.
    n_hidden, n_layers
        Width and number of hidden layers (leaky ReLU) of each module's MLP.
    """

    def __init__(self, n_genes: int, n_modules: int, *, n_hidden: int = 16, n_layers: int = 2,
                 noise_rank: int = 0, knockouts: str = "perfect") -> None:  # fmt: skip
        super().__init__()
        d, m, H = n_genes, n_modules, n_hidden
        self.n_genes, self.n_modules, self.n_hidden, self.n_layers = d, m, H, n_layers
        self.edge_logits = nn.Parameter(torch.zeros(d, m, 3))
        self.w_in = nn.Parameter(torch.randn(d, m, H) * math.sqrt(2.0 / max(d / 3.0, 1.0)))
        self.b_in = nn.Parameter(torch.zeros(m, H))
        self.w_hidden = nn.Parameter(torch.randn(max(n_layers - 1, 0), m, H, H) * math.sqrt(2.0 / H))
        self.b_hidden = nn.Parameter(torch.zeros(max(n_layers - 1, 0), m, H))
        self.w_module = nn.Parameter(torch.randn(m, H) / math.sqrt(H))
        self.w_out = nn.Parameter(torch.randn(d, m) * 0.1)
        self.bias = nn.Parameter(torch.zeros(d))
        self.log_var = nn.Parameter(torch.zeros(d))
        _add_noise_factors(self, d, noise_rank)
        _add_knockout_parameters(self, knockouts, n_genes)
        self.register_buffer("fixed_edges", torch.zeros(0))  # (d, m, 3) one-hot once the graph is fixed

    @property
    def is_fixed(self) -> bool:
        return self.fixed_edges.numel() > 0

    def edge_probabilities(self) -> torch.Tensor:
        """``(genes, modules, 3)`` probabilities of none / gene -> module / module -> gene."""
        return self.fixed_edges if self.is_fixed else torch.softmax(self.edge_logits, dim=-1)

    def sample_edges(self) -> torch.Tensor:
        """One straight-through Gumbel-softmax draw of the factor graph (training), else the most likely graph."""
        if self.is_fixed:
            return self.fixed_edges
        if self.training:
            return F.gumbel_softmax(self.edge_logits, tau=1.0, hard=True, dim=-1)
        return F.one_hot(self.edge_logits.argmax(-1), 3).to(self.edge_logits.dtype)

    def _module_outputs(self, x: torch.Tensor, inputs: torch.Tensor) -> torch.Tensor:
        d, m, H = self.n_genes, self.n_modules, self.n_hidden
        w = (self.w_in * inputs[..., None]).reshape(d, m * H)
        h = F.leaky_relu((x @ w).reshape(-1, m, H) + self.b_in)
        for layer in range(self.n_layers - 1):
            h = F.leaky_relu(torch.einsum("bmh,mhk->bmk", h, self.w_hidden[layer]) + self.b_hidden[layer])
        return torch.einsum("bmh,mh->bm", h, self.w_module)

    def forward(self, x: torch.Tensor, masked: torch.Tensor | None = None) -> torch.Tensor:
        """Mean of every gene given the others (cells x genes). ``masked`` marks each cell's knocked-out genes,
        which enter their children at the knockout activity (:func:`parent_values`)."""
        edges = self.sample_edges()
        s = self._module_outputs(parent_values(self, x, masked), edges[..., _INPUT])
        return self.bias + s @ (self.w_out * edges[..., _OUTPUT]).T

    def module_adjacencies(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Soft (or fixed) gene -> module ``U`` and module -> gene ``V``, both ``(genes, modules)``."""
        p = self.edge_probabilities()
        return p[..., _INPUT], p[..., _OUTPUT]

    def acyclicity(self) -> torch.Tensor:
        """The constraint on the module graph (see :func:`acyclicity`), from the edge probabilities."""
        return acyclicity(*self.module_adjacencies())

    def regulariser(self) -> torch.Tensor:
        """Mean probability of an edge over (gene, module) pairs."""
        return 1.0 - self.edge_probabilities()[..., _NONE].mean()

    def n_edges(self) -> int:
        e = self.sample_edges() if self.is_fixed else F.one_hot(self.edge_logits.argmax(-1), 3)
        return int(e[..., _INPUT].sum() + e[..., _OUTPUT].sum())

    # -- after training -------------------------------------------------------------------------------------
    def threshold(self) -> float:
        """Fix the graph: each pair keeps its most likely choice if its probability exceeds the smallest
        threshold that leaves the module graph acyclic (bisection, topological sort); returns the threshold."""
        with torch.no_grad():
            p = torch.softmax(self.edge_logits, dim=-1).double().cpu().numpy()
        choice = p.argmax(-1)
        best = p.max(-1)
        strength = np.zeros((self.n_modules, self.n_modules))
        # weight of a module edge k -> l: the best path k -> gene -> l (the weaker of its two gene edges)
        inp = np.where(choice == _INPUT, best, 0.0)
        out = np.where(choice == _OUTPUT, best, 0.0)
        for k in range(self.n_modules):
            strength[k] = np.max(np.minimum(out[:, k, None], inp), axis=0)
        t, _ = threshold_to_dag(strength)
        keep = best > t
        fixed = np.zeros_like(p)
        fixed[..., _NONE] = 1.0
        for c in (_INPUT, _OUTPUT):
            sel = (choice == c) & keep
            fixed[sel, _NONE] = 0.0
            fixed[sel, c] = 1.0
        self.fixed_edges = torch.as_tensor(fixed, dtype=self.edge_logits.dtype, device=self.edge_logits.device)
        return float(t)

    def binary_factors(self) -> tuple[np.ndarray, np.ndarray]:
        """Fixed gene -> module and module -> gene 0/1 matrices (genes x modules)."""
        e = self.sample_edges().detach().cpu().numpy()
        return e[..., _INPUT] > 0.5, e[..., _OUTPUT] > 0.5

    def mean_jacobian(self, x: torch.Tensor) -> np.ndarray:
        """Average over the rows of ``x`` of ``d mean_j / d x_i``: the ``(genes, genes)`` weighted direct effects."""
        edges = self.sample_edges().detach()
        x = x.detach().clone().requires_grad_(True)
        s = self._module_outputs(x, edges[..., _INPUT])
        G = torch.zeros(self.n_modules, self.n_genes, dtype=x.dtype, device=x.device)
        for k in range(self.n_modules):
            (g,) = torch.autograd.grad(s[:, k].sum(), x, retain_graph=k < self.n_modules - 1)
            G[k] = g.mean(0)
        J = G.T @ (self.w_out * edges[..., _OUTPUT]).detach().T
        return J.cpu().numpy()

    def propagate(self, noise: torch.Tensor, clamp: torch.Tensor, level: torch.Tensor) -> torch.Tensor:
        """Sample the structural equations in the topological order of the modules.

        ``noise`` (cells x genes) is the exogenous noise (e.g. from :func:`sample_noise`); genes where ``clamp``
        is True are set to ``level`` (genes,) and cut from their parents. Each module is evaluated once all
        genes that feed it are final (a module feeding on a gene comes after every module writing that gene).
        """
        U, V = (torch.as_tensor(a, device=noise.device) for a in self.binary_factors())
        order = topological_order((V.T.double() @ U.double()).cpu().numpy() > 0)
        if order is None:  # pragma: no cover - thresholding guarantees a DAG
            raise RuntimeError("the module graph has a cycle; threshold the model first")
        free = ~clamp
        x = torch.where(clamp, level, self.bias + noise)
        out = self.w_out * V
        for k in order:
            w = self.w_in[:, k, :] * U[:, k, None]
            h = F.leaky_relu(parent_values(self, x, clamp) @ w + self.b_in[k])
            for layer in range(self.n_layers - 1):
                h = F.leaky_relu(h @ self.w_hidden[layer, k] + self.b_hidden[layer, k])
            s = h @ self.w_module[k]
            x = x + free * (s[:, None] * out[:, k])
        return x


class LowRankLinearNet(nn.Module):
    """NOTEARS-low-rank: linear Gaussian SEM ``x = b + x W + e`` with ``W = U V^T`` (zero diagonal) and L1."""

    def __init__(self, n_genes: int, n_modules: int, *, noise_rank: int = 0,
                 knockouts: str = "perfect") -> None:  # fmt: skip
        super().__init__()
        d, m = n_genes, n_modules
        self.n_genes, self.n_modules = d, m
        self.U = nn.Parameter(torch.randn(d, m) * 0.1)
        self.V = nn.Parameter(torch.randn(d, m) * 0.1)
        self.bias = nn.Parameter(torch.zeros(d))
        self.log_var = nn.Parameter(torch.zeros(d))
        _add_noise_factors(self, d, noise_rank)
        _add_knockout_parameters(self, knockouts, n_genes)
        self.register_buffer("fixed_mask", torch.zeros(0))  # (d, d) 0/1 once the graph is fixed

    @property
    def is_fixed(self) -> bool:
        return self.fixed_mask.numel() > 0

    def weights(self) -> torch.Tensor:
        W = self.U @ self.V.T
        if self.is_fixed:
            return W * self.fixed_mask
        return W * (1.0 - torch.eye(self.n_genes, dtype=W.dtype, device=W.device))

    def forward(self, x: torch.Tensor, masked: torch.Tensor | None = None) -> torch.Tensor:
        return self.bias + parent_values(self, x, masked) @ self.weights()

    def acyclicity(self) -> torch.Tensor:
        """NOTEARS' ``tr(exp(W * W)) - n_genes`` on the gene graph (``O(n_genes^3)`` per step): a continuous
        low-rank ``W`` is dense, so a constraint on its factors could only be met by shrinking them all."""
        W = self.weights()
        return torch.trace(torch.linalg.matrix_exp(W * W)) - self.n_genes

    def regulariser(self) -> torch.Tensor:
        return 0.5 * (self.U.abs().mean() + self.V.abs().mean())

    def n_edges(self) -> int:
        with torch.no_grad():
            return int((self.weights().abs() > 1e-3).sum()) if not self.is_fixed else int(self.fixed_mask.sum())

    def threshold(self, min_weight: float = 1e-2) -> float:
        """Fix the graph at the smallest ``|W|`` threshold (at least ``min_weight``) that leaves it acyclic."""
        with torch.no_grad():
            W = self.weights().double().cpu().numpy()
        W[np.abs(W) <= min_weight] = 0.0
        t, adj = threshold_to_dag(W)
        self.fixed_mask = torch.as_tensor(adj, dtype=self.U.dtype, device=self.U.device)
        return max(float(t), min_weight)

    def binary_factors(self) -> tuple[np.ndarray, np.ndarray]:
        U, V = (a.detach().cpu().numpy() for a in (self.U, self.V))
        return np.abs(U) > 1e-3, np.abs(V) > 1e-3

    def mean_jacobian(self, x: torch.Tensor) -> np.ndarray:
        with torch.no_grad():
            return self.weights().cpu().numpy()

    def propagate(self, noise: torch.Tensor, clamp: torch.Tensor, level: torch.Tensor) -> torch.Tensor:
        """Sample the linear SEM gene by gene in topological order (targets clamped to ``level``)."""
        with torch.no_grad():
            W = self.weights()
        order = topological_order(W.cpu().numpy())
        if order is None:  # pragma: no cover
            raise RuntimeError("the graph has a cycle; threshold the model first")
        x = torch.where(clamp, level, self.bias + noise)
        for j in order:
            col = W[:, j]
            if not bool(clamp[..., j].all()):
                x[:, j] = torch.where(clamp[:, j], x[:, j], x[:, j] + parent_values(self, x, clamp) @ col)
        return x


def _add_noise_factors(net: nn.Module, n_genes: int, rank: int) -> None:
    """Give ``net`` a ``(genes, rank)`` loading ``noise_factors`` of correlated exogenous noise (``None`` for
    rank 0): ``e ~ N(0, diag(exp(log_var)) + L L^T)``, hidden common causes the gene graph does not carry."""
    net.noise_rank = int(rank)
    net.register_parameter("noise_factors", nn.Parameter(torch.randn(n_genes, rank) * 0.01) if rank > 0 else None)


def _add_knockout_parameters(net: nn.Module, knockouts: str, n_genes: int) -> None:
    """Give ``net`` its knockout model: with ``"activity"`` a parameter ``knockout_activity``, the learned value
    (standardised units) with which a knocked-out gene enters its children in place of its measured mRNA, and a
    buffer ``activity_genes`` (bool, genes) of the genes it applies to (all until :func:`set_activity_genes`);
    both ``None`` with ``"perfect"`` (a knocked-out gene enters its children at its measured level)."""
    if knockouts not in KNOCKOUT_MODELS:
        raise ValueError(f"knockouts must be one of {KNOCKOUT_MODELS}, got {knockouts!r}")
    on = knockouts == "activity"
    net.register_parameter("knockout_activity", nn.Parameter(torch.tensor(_KNOCKOUT_ACTIVITY_INIT)) if on else None)
    net.register_buffer("activity_genes", torch.ones(n_genes, dtype=torch.bool) if on else None)


def set_activity_genes(net: nn.Module, genes: np.ndarray) -> None:
    """Restrict the knockout activity to ``genes`` (bool, genes): those knocked out in training. The children
    of any other gene were only seen at its measured levels, and the learned activity (often many sds below
    them) would be an extrapolation of their mechanisms, so such a gene enters at its measured (or clamped)
    level, as under ``"perfect"``. No-op without an activity."""
    if net.activity_genes is not None:
        net.activity_genes.copy_(torch.as_tensor(np.asarray(genes, dtype=bool)))


def parent_values(net: nn.Module, x: torch.Tensor, masked: torch.Tensor | None) -> torch.Tensor:
    """The genes' values as inputs of their children: a knocked-out gene (``masked``) enters at the learned
    knockout activity when ``net`` has one and the gene is among its ``activity_genes``, else at its measured
    level."""
    a = net.knockout_activity
    if a is None or masked is None:
        return x
    return torch.where(masked & net.activity_genes, a.to(x.dtype), x)


def cell_nll(net: nn.Module, x: torch.Tensor, masked: torch.Tensor) -> torch.Tensor:
    """Per-cell NLL (nats) of the non-targeted genes of standardised cells ``x`` given their knockouts (perfect
    interventions: each gene given its parents, the targeted genes left out of the likelihood)."""
    kept = (~masked).to(x.dtype)
    return gaussian_nll(net(x, masked), net.log_var, x, kept, net.noise_factors)


def sample_noise(net: nn.Module, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """``n`` draws of the exogenous noise ``e`` of ``net`` (cells x genes, standardised units)."""
    sd = torch.exp(0.5 * net.log_var.detach().clamp(min=_MIN_LOG_VAR))
    e = torch.randn(n, sd.shape[0], generator=generator) * sd
    if net.noise_factors is not None:
        L = net.noise_factors.detach()
        e = e + torch.randn(n, L.shape[1], generator=generator) @ L.T
    return e


def acyclicity(U: torch.Tensor, V: torch.Tensor) -> torch.Tensor:
    """``tr(exp(V^T U / n_genes)) - n_modules`` for non-negative ``U``, ``V`` (genes x modules): zero iff the
    module graph (module k -> module l when k writes a gene that feeds l) is acyclic."""
    M = V.T @ U / U.shape[0]
    return torch.trace(torch.linalg.matrix_exp(M)) - M.shape[0]


def gaussian_nll(mu: torch.Tensor, log_var: torch.Tensor, x: torch.Tensor, kept: torch.Tensor,
                 factors: torch.Tensor | None = None) -> torch.Tensor:  # fmt: skip
    """Per-cell Gaussian NLL of the residuals ``x - mu`` over the kept genes (cells x genes, 0/1), in nats.

    With ``factors`` ``L`` (genes x rank) the residuals are ``N(0, D + L L^T)`` (``D = diag(exp(log_var))``),
    scored on each cell's kept genes by Woodbury and the matrix determinant lemma (a rank x rank Cholesky per
    cell). The residuals of a DAG are a unit-triangular map of the genes, so this is the likelihood of the
    kept genes given the intervened ones.
    """
    r = x - mu
    log_var = log_var.clamp(min=_MIN_LOG_VAR)
    if factors is None:
        elem = 0.5 * (_LOG_2PI + log_var + r**2 * torch.exp(-log_var))
        return (elem * kept).sum(-1)
    w = kept * torch.exp(-log_var)  # D^-1 on the kept genes, 0 elsewhere
    Lw = factors * (kept * torch.exp(-0.5 * log_var))[..., None]  # D^-1/2 L per cell (no sqrt of 0 to backprop)
    cap = Lw.transpose(1, 2) @ Lw + torch.eye(factors.shape[1], dtype=r.dtype, device=r.device)
    chol = torch.linalg.cholesky(cap)
    y = (w * r) @ factors  # cells x rank
    v = torch.cholesky_solve(y[..., None], chol)[..., 0]
    quad = (w * r**2).sum(-1) - (y * v).sum(-1)
    logdet = (kept * log_var).sum(-1) + 2.0 * torch.log(torch.diagonal(chol, dim1=-2, dim2=-1)).sum(-1)
    return 0.5 * (kept.sum(-1) * _LOG_2PI + logdet + quad)


# -- data --------------------------------------------------------------------------------------------------------
class _Rows(Dataset):
    """Row indices; the collate function densifies a minibatch of rows from the (sparse) matrix."""

    def __init__(self, n: int) -> None:
        self.n = n

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> int:
        return i


class _Collate:
    def __init__(self, X: np.ndarray | sp.csr_matrix, masks: np.ndarray, codes: np.ndarray, mean: np.ndarray,
                 scale: np.ndarray) -> None:  # fmt: skip
        self.X, self.masks, self.codes, self.mean, self.scale = X, masks, codes, mean, scale

    def __call__(self, idx: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
        idx = np.sort(np.asarray(idx, dtype=np.int64))
        block = self.X[idx]
        block = block.toarray() if sp.issparse(block) else np.asarray(block)
        x = ((block - self.mean) / self.scale).astype(np.float32)
        return torch.from_numpy(x), torch.from_numpy(self.masks[self.codes[idx]])


def make_loader(X: Any, masks: np.ndarray, codes: np.ndarray, mean: np.ndarray, scale: np.ndarray, *,
                batch_size: int, shuffle: bool, seed: int) -> DataLoader:  # fmt: skip
    """Minibatches (standardised expression, targeted-gene mask) from the rows of ``X`` (dense or CSR)."""
    X = X.tocsr() if sp.issparse(X) else X
    gen = torch.Generator().manual_seed(seed)
    return DataLoader(
        _Rows(X.shape[0]),
        batch_size=batch_size,
        shuffle=shuffle,
        generator=gen if shuffle else None,
        collate_fn=_Collate(X, masks, codes, mean, scale),
    )


# -- training ----------------------------------------------------------------------------------------------------
class GraphTrainingPlan(LightningModule):
    """Augmented-Lagrangian training of a graph network (or plain fine-tuning once its graph is fixed)."""

    def __init__(self, net: nn.Module, *, lr: float, graph_lr: float, reg_weight: float, constrained: bool,
                 mu_init: float, update_every: int, h_tol: float, warmup_epochs: int = 0) -> None:  # fmt: skip
        super().__init__()
        self.warmup_epochs = warmup_epochs
        self.net, self.lr, self.graph_lr, self.reg_weight, self.constrained = net, lr, graph_lr, reg_weight, constrained
        self.update_every, self.h_tol = update_every, h_tol
        self.register_buffer("mu", torch.tensor(float(mu_init)))
        self.register_buffer("gamma", torch.tensor(0.0))
        self.h_previous = math.inf
        self.h_last = 0.0
        self.epoch_sums: dict[str, float] = {}

    def configure_optimizers(self) -> torch.optim.Optimizer:
        graph = [p for n, p in self.net.named_parameters() if n == "edge_logits"]
        rest = [p for n, p in self.net.named_parameters() if n != "edge_logits"]
        groups = [{"params": rest, "lr": self.lr}]
        if graph:
            groups.append({"params": graph, "lr": self.graph_lr})
        return torch.optim.Adam(groups)

    def acyclicity(self) -> torch.Tensor:
        return self.net.acyclicity()

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> torch.Tensor:
        x, masked = batch
        nll = cell_nll(self.net, x, masked).mean() / x.shape[1]
        loss = nll
        h = torch.zeros((), device=x.device)
        if self.constrained and self.current_epoch >= self.warmup_epochs:
            h = self.acyclicity()
            loss = loss + self.reg_weight * self.net.regulariser() + self.gamma * h + 0.5 * self.mu * h**2
        n = x.shape[0]
        for name, value in (("nll", nll), ("loss", loss)):
            self.epoch_sums[name] = self.epoch_sums.get(name, 0.0) + float(value.detach()) * n
        self.epoch_sums["n"] = self.epoch_sums.get("n", 0.0) + n
        self.h_last = float(h.detach())
        return loss

    def on_train_batch_end(self, outputs: Any, batch: Any, batch_idx: int) -> None:
        if self.constrained and self.current_epoch >= self.warmup_epochs and self.global_step % self.update_every == 0:
            self._update_lagrangian(self.h_last)

    def _update_lagrangian(self, h: float) -> None:
        """gamma += mu h; mu doubles when h has not shrunk by 10% since the last check."""
        if h <= self.h_tol:
            return
        self.gamma += self.mu * h
        if h > 0.9 * self.h_previous:
            self.mu *= 2.0
        self.h_previous = h


@dataclass
class _History:
    rows: list[dict[str, float]] = field(default_factory=list)


class _EpochRecorder(Callback):
    def __init__(self, history: _History, phase: str) -> None:
        self.history, self.phase = history, phase
        self.start = 0.0

    def on_train_epoch_start(self, trainer: Trainer, plan: GraphTrainingPlan) -> None:
        self.start = time.perf_counter()

    def on_train_epoch_end(self, trainer: Trainer, plan: GraphTrainingPlan) -> None:
        sums = plan.epoch_sums
        n = max(sums.pop("n", 0.0), 1.0)
        with torch.no_grad():
            h = float(plan.acyclicity()) if plan.constrained else 0.0
        self.history.rows.append(
            {
                "phase": self.phase,
                "epoch": len(self.history.rows),
                "nll_per_gene": sums.get("nll", np.nan) / n,
                "loss": sums.get("loss", np.nan) / n,
                "acyclicity": h,
                "mu": float(plan.mu),
                "gamma": float(plan.gamma),
                "n_edges": plan.net.n_edges(),
                "seconds": time.perf_counter() - self.start,
            }
        )
        plan.epoch_sums = {}


def build_net(method: Literal["dcdfg", "notears_lowrank"], n_genes: int, n_modules: int, *, noise_rank: int = 0,
              knockouts: str = "perfect", **kwargs: Any) -> nn.Module:  # fmt: skip
    if method == "dcdfg":
        return FactorGraphNet(n_genes, n_modules, noise_rank=noise_rank, knockouts=knockouts, **kwargs)
    return LowRankLinearNet(n_genes, n_modules, noise_rank=noise_rank, knockouts=knockouts)


def fit_graph(
    net: nn.Module,
    loader: DataLoader,
    *,
    max_epochs: int,
    finetune_epochs: int,
    lr: float = 1e-3,
    graph_lr: float = 1e-2,
    reg_weight: float = 0.1,
    warmup_epochs: int = 0,
    mu_init: float = 1.0,
    update_every: int = 50,
    h_tol: float = 1e-10,
    accelerator: str = "cpu",
    devices: Any = 1,
    strategy: Any = "auto",
    progress_bar: bool = True,
) -> tuple[nn.Module, list[dict[str, float]], float]:
    """Train ``net`` with the acyclicity constraint, fix an acyclic graph, fine-tune; returns the net on the CPU,
    the per-epoch history and the threshold used."""
    from .._utils._lightning import quiet_lightning

    history = _History()

    def trainer(epochs: int, phase: str) -> Trainer:
        return Trainer(
            max_epochs=epochs,
            accelerator=accelerator,
            devices=devices,
            strategy=strategy,
            logger=False,
            enable_checkpointing=False,
            enable_progress_bar=progress_bar,
            enable_model_summary=False,
            callbacks=[_EpochRecorder(history, phase)],
        )

    with quiet_lightning():
        plan = GraphTrainingPlan(net, lr=lr, graph_lr=graph_lr, reg_weight=reg_weight, constrained=True,
                                 mu_init=mu_init, update_every=update_every, h_tol=h_tol,
                                 warmup_epochs=warmup_epochs)  # fmt: skip
        trainer(max_epochs, "constrained").fit(plan, loader)
        net = plan.net.cpu()
        threshold = net.threshold()
        if finetune_epochs > 0:
            tune = GraphTrainingPlan(net, lr=lr, graph_lr=graph_lr, reg_weight=0.0, constrained=False, mu_init=0.0,
                                     update_every=update_every, h_tol=h_tol)  # fmt: skip
            trainer(finetune_epochs, "finetune").fit(tune, loader)
            net = tune.net.cpu()
    net.eval()
    return net, history.rows, threshold
