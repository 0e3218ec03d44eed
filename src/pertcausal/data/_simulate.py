"""Simulators of perturbation x context screens whose true effects are known."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from .._utils._names import pair_names

if TYPE_CHECKING:
    from anndata import AnnData
    from mudata import MuData


def _factors(n_perturbations: int, n_contexts: int, n_genes: int, rank: int, rng: np.random.Generator) -> dict:
    """Low-rank causal model: context factors drive both the control baseline and the response.

    ``effect[p, c] = (A[p] * B[c]) @ W`` (a CP tensor of rank ``rank``) with
    ``B[c] = 1 + 0.5 * u[c] @ T`` tied to the context's latent state ``u[c]``, which also sets the
    baseline ``log_rate[c] = m + u[c] @ V``. So the control baseline is informative of the response.
    """
    u = rng.standard_normal((n_contexts, rank))
    a = rng.standard_normal((n_perturbations, rank)) * rng.uniform(0.3, 1.0, (n_perturbations, 1))
    t = rng.standard_normal((rank, rank)) / np.sqrt(rank)
    b = 1.0 + 0.5 * u @ t
    w = rng.standard_normal((rank, n_genes)) * (rng.random((rank, n_genes)) < 0.3) * 0.6
    v = rng.standard_normal((rank, n_genes)) * 0.5
    m = rng.normal(-np.log(n_genes), 1.0, n_genes)
    return {
        "perturbation_factors": a,
        "context_factors": b,
        "gene_loadings": w,
        "context_state": u,
        "baseline_loadings": v,
        "gene_mean": m,
    }


def _observed_pattern(n_perturbations: int, n_contexts: int, frac: float, rng: np.random.Generator) -> np.ndarray:
    obs = rng.random((n_perturbations, n_contexts)) < frac
    obs[np.arange(n_perturbations), rng.integers(n_contexts, size=n_perturbations)] = True
    obs[rng.integers(n_perturbations, size=n_contexts), np.arange(n_contexts)] = True
    return obs


def true_effects(sim: dict, perturbations: np.ndarray, contexts: np.ndarray) -> np.ndarray:
    """True effects of (perturbation, context) code pairs from a simulation's ``uns["simulation"]`` factors."""
    a = np.asarray(sim["perturbation_factors"])[np.asarray(perturbations)]
    b = np.asarray(sim["context_factors"])[np.asarray(contexts)]
    return (a * b) @ np.asarray(sim["gene_loadings"])


def simulate_effects(
    n_perturbations: int = 100,
    n_contexts: int = 10,
    n_genes: int = 100,
    *,
    rank: int = 5,
    frac_observed: float = 0.5,
    noise: float = 0.05,
    seed: int = 0,
    dtype: type = np.float32,
) -> AnnData:
    """Signature-level simulation: observed effects of a low-rank causal screen, with the truth.

    Parameters
    ----------
    n_perturbations, n_contexts, n_genes
        Size of the perturbation x context x gene tensor.
    rank
        Rank of the effect tensor (and of the latent context state).
    frac_observed
        Probability that a pair is measured (every perturbation and context has at least one pair).
    noise
        Standard deviation of Gaussian measurement noise added to observed effects.
    seed
        Random seed.
    dtype
        Float type of ``X``.

    Returns
    -------
    Signatures AnnData in the layout of :func:`pertcausal.pp.signatures` (observed pairs only):
    ``X`` effects, ``obs["perturbation"]``, ``obs["context"]``, ``obs["n_cells"]``,
    ``uns["control_mean"]`` (log baseline per context) and ``uns["simulation"]`` with the factors
    (use :func:`true_effects` for the noise-free effect of any pair) and ``uns["simulation"]["observed"]``.

    Examples
    --------
    >>> import pertcausal as pc
    >>> sig = pc.data.simulate_effects(n_perturbations=10, n_contexts=4, n_genes=20, seed=0)
    >>> sig.n_vars
    20
    """
    from anndata import AnnData

    rng = np.random.default_rng(seed)
    sim = _factors(n_perturbations, n_contexts, n_genes, rank, rng)
    obs_mask = _observed_pattern(n_perturbations, n_contexts, frac_observed, rng)
    p, c = np.nonzero(obs_mask)
    y = np.empty((len(p), n_genes), dtype=dtype)
    for s in range(0, len(p), 65_536):  # bounded memory at Connectivity Map scale
        blk = true_effects(sim, p[s : s + 65_536], c[s : s + 65_536])
        y[s : s + 65_536] = blk + noise * rng.standard_normal(blk.shape)
    perts = [f"P{i:05d}" for i in range(n_perturbations)]
    ctxs = [f"C{i:03d}" for i in range(n_contexts)]
    genes = [f"G{i:04d}" for i in range(n_genes)]
    baseline = np.log1p(1e4 * np.exp(sim["gene_mean"] + sim["context_state"] @ sim["baseline_loadings"]))
    obs = pd.DataFrame(
        {
            "perturbation": pd.Categorical.from_codes(p, categories=perts),
            "context": pd.Categorical.from_codes(c, categories=ctxs),
            "n_cells": np.full(len(p), 1, dtype=np.int64),
        },
        index=pair_names([perts[i] for i in p], [ctxs[j] for j in c]),
    )
    sig = AnnData(X=y, obs=obs, var=pd.DataFrame(index=genes))
    sig.uns["control_mean"] = pd.DataFrame(baseline.astype(np.float32), index=ctxs, columns=genes)
    sig.uns["simulation"] = {k: np.asarray(v, dtype=np.float64) for k, v in sim.items()}
    sig.uns["simulation"]["observed"] = obs_mask
    sig.uns["simulation"]["noise"] = float(noise)
    return sig


def simulate_screen(
    n_perturbations: int = 30,
    n_contexts: int = 8,
    n_genes: int = 200,
    *,
    rank: int = 3,
    frac_observed: float = 0.5,
    n_cells: int = 40,
    n_control_cells: int = 100,
    library_size: float = 5_000.0,
    seed: int = 0,
) -> MuData:
    """Cell-level simulation of a perturbation screen with known true effects.

    Log expression rates follow :func:`simulate_effects`' low-rank causal model; each cell's counts
    are Poisson with a log-normal library size around ``library_size``, drawn across genes from the
    softmax of its rates.

    Parameters
    ----------
    n_perturbations, n_contexts, n_genes
        Size of the screen.
    rank
        Rank of the effect tensor.
    frac_observed
        Probability that a (perturbation, context) pair was measured.
    n_cells, n_control_cells
        Cells per measured pair and control cells per context.
    library_size
        Mean total counts per cell.
    seed
        Random seed.

    Returns
    -------
    MuData with modality ``"rna"`` holding raw counts (sparse ``X``), ``obs["perturbation"]``
    (``"control"`` for controls) and ``obs["context"]``, and in ``uns``:
    ``"true_effect"`` (perturbations x contexts x genes, on the normalised log scale that
    :func:`pertcausal.pp.signatures` estimates), ``"true_perturbations"``, ``"true_contexts"`` and
    ``"observed"`` (perturbations x contexts booleans).

    Examples
    --------
    >>> import pertcausal as pc
    >>> mdata = pc.data.simulate_screen(n_perturbations=4, n_contexts=3, n_genes=10, seed=0)
    >>> mdata["rna"].obs["perturbation"].nunique()
    5
    """
    import mudata
    import scipy.sparse as sp
    from anndata import AnnData

    rng = np.random.default_rng(seed)
    sim = _factors(n_perturbations, n_contexts, n_genes, rank, rng)
    obs_mask = _observed_pattern(n_perturbations, n_contexts, frac_observed, rng)
    base = sim["gene_mean"] + sim["context_state"] @ sim["baseline_loadings"]  # (C, G) log rates
    eff = true_effects(sim, *np.meshgrid(np.arange(n_perturbations), np.arange(n_contexts), indexing="ij"))

    def probs(logit: np.ndarray) -> np.ndarray:
        e = np.exp(logit - logit.max(-1, keepdims=True))
        return e / e.sum(-1, keepdims=True)

    p_ctrl = probs(base)
    p_pert = probs(base[None] + eff)
    # truth on the scale signatures estimate: log1p of normalised mean expression, differenced
    truth = np.log1p(1e4 * p_pert) - np.log1p(1e4 * p_ctrl)[None]
    perts = [f"P{i:03d}" for i in range(n_perturbations)]
    ctxs = [f"C{i:02d}" for i in range(n_contexts)]
    labels_p, labels_c, rates = [], [], []
    for c in range(n_contexts):
        labels_p += ["control"] * n_control_cells
        labels_c += [ctxs[c]] * n_control_cells
        rates.append(np.repeat(p_ctrl[c][None], n_control_cells, 0))
    for p, c in zip(*np.nonzero(obs_mask)):
        labels_p += [perts[p]] * n_cells
        labels_c += [ctxs[c]] * n_cells
        rates.append(np.repeat(p_pert[p, c][None], n_cells, 0))
    rate = np.vstack(rates)
    lib = library_size * rng.lognormal(0.0, 0.3, size=len(rate))
    counts = rng.poisson(rate * lib[:, None]).astype(np.float32)
    order = rng.permutation(len(counts))
    obs = pd.DataFrame(
        {
            "perturbation": pd.Categorical(np.asarray(labels_p)[order], categories=["control", *perts]),
            "context": pd.Categorical(np.asarray(labels_c)[order], categories=ctxs),
        },
        index=[f"cell{i}" for i in range(len(counts))],
    )
    rna = AnnData(
        X=sp.csr_matrix(counts[order]), obs=obs, var=pd.DataFrame(index=[f"G{i:04d}" for i in range(n_genes)])
    )
    with mudata.set_options(pull_on_update=False):
        mdata = mudata.MuData({"rna": rna})
    mdata.uns["true_effect"] = truth.astype(np.float32)
    mdata.uns["true_perturbations"] = perts
    mdata.uns["true_contexts"] = ctxs
    mdata.uns["observed"] = obs_mask
    return mdata
