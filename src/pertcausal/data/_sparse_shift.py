"""Simulated single-cell perturbation screen with sparse mechanism shifts in a latent space (sVAE+ ground truth)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

if TYPE_CHECKING:
    from anndata import AnnData

NEG_SLOPE = 0.2  # leaky ReLU slope of the decoder (as in Lachapelle et al. and Genentech/sVAE)


def _positive_int(value: object, name: str, *, minimum: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return int(value)


def _orthogonal(n_in: int, n_out: int, rng: np.random.Generator) -> np.ndarray:
    """An ``n_in x n_out`` Gaussian matrix with orthonormal rows (``n_in <= n_out``), via QR."""
    q, _ = np.linalg.qr(rng.standard_normal((n_out, n_in)))
    return q.T


def _decoder_weights(n_latent: int, n_hidden: int, n_genes: int, rng: np.random.Generator) -> list[np.ndarray]:
    """Weights of the injective decoder: latent -> hidden -> hidden -> hidden -> genes.

    Each matrix has orthonormal rows, scaled with the He/Glorot factor of the reference code, so that
    every layer is injective when ``n_latent <= n_hidden <= n_genes``.
    """
    gain = np.sqrt(2.0 / (1.0 + NEG_SLOPE**2))
    dims = [(n_latent, n_hidden), (n_hidden, n_hidden), (n_hidden, n_hidden), (n_hidden, n_genes)]
    return [_orthogonal(a, b, rng) * gain * np.sqrt(2.0 / (a + b)) for a, b in dims]


def _decode(z: np.ndarray, weights: list[np.ndarray]) -> np.ndarray:
    """Gene logits of latent states ``z`` (cells x latents), scaled to unit standard deviation overall."""
    h = z
    for w in weights[:-1]:
        h = h @ w
        h = np.maximum(NEG_SLOPE * h, h)
    logits = h @ weights[-1]
    sd = float(np.std(logits))
    return logits / sd if sd > 0 else logits


def _softmax_genes(logits: np.ndarray) -> np.ndarray:
    e = np.exp(logits - logits.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def simulate_sparse_shift(
    *,
    n_perturbations: int = 100,
    n_cells_per_perturbation: int = 500,
    n_control_cells: int | None = None,
    n_latent: int = 30,
    n_genes: int = 100,
    n_targets: tuple[int, int] = (1, 3),
    shift_mean: float = 5.0,
    shift_sd: float = 0.5,
    n_hidden: int = 40,
    library_size: float = 5000.0,
    library_cv: float = 0.3,
    perturbation_key: str = "perturbation",
    control: str = "control",
    random_state: int = 0,
) -> AnnData:
    """Counts of a perturbation screen in which each perturbation shifts a few latent variables.

    The generative model of sVAE+ (Lopez et al., CLeaR 2023), after ``svae.simulation.sparse_shift``
    of Genentech/sVAE with a control regime added and two quirks of the reference fixed:

    1. Control cells have latent states ``z ~ N(0, I)``.
    2. Perturbation ``p`` targets ``k`` distinct latents, ``k`` uniform on
       ``n_targets[0], ..., n_targets[1]`` (drawn without replacement; the reference draws with
       replacement, so a latent could be hit twice). Each target gets a shift
       ``s = ±N(shift_mean, shift_sd)`` with a random sign; its cells have ``z ~ N(s, I)``, with
       ``s`` 0 off target.
    3. A fixed random decoder maps ``z`` to gene logits: three leaky-ReLU layers of width
       ``n_hidden`` and a linear output layer, each weight matrix with orthonormal rows (QR) as in the
       reference, so the map is injective; the logits are divided by their overall standard deviation.
    4. A softmax across genes (the reference takes it across cells) gives each cell's expression
       proportions; a per-cell library size, log-normal with mean ``library_size`` and coefficient of
       variation ``library_cv``, scales them, and counts are Poisson.

    Cells are grouped by regime: the controls first, then perturbation by perturbation.

    Parameters
    ----------
    n_perturbations
        Number of perturbations (named ``"P0"``, ``"P1"``, ..., zero-padded to a common width).
    n_cells_per_perturbation
        Cells per perturbation.
    n_control_cells
        Control cells; ``None`` means ``n_cells_per_perturbation``.
    n_latent
        Dimension of the latent space.
    n_genes
        Genes.
    n_targets
        Smallest and largest number of latents a perturbation targets, ``1 <= lo <= hi <= n_latent``.
    shift_mean, shift_sd
        Mean and standard deviation of the absolute shift of a targeted latent (before its random sign).
    n_hidden
        Width of the decoder's hidden layers; ``n_latent <= n_hidden <= n_genes`` keeps the decoder injective,
        so the latents are identifiable.
    library_size
        Mean total count per cell.
    library_cv
        Coefficient of variation of the library size (0: every cell has ``library_size``).
    perturbation_key
        Name of the obs column holding the regime of each cell.
    control
        Label of the control cells.
    random_state
        Seed of :func:`numpy.random.default_rng`: the same seed gives the same data.

    Returns
    -------
    AnnData of ``n_control_cells + n_perturbations * n_cells_per_perturbation`` cells x ``n_genes``
    genes (``"gene0"``, ``"gene1"``, ...) with Poisson counts in ``X`` (sparse CSR, float32),

    ``obs[perturbation_key]``
        The regime, categorical with ``control`` first, then the perturbations in order.
    ``obs["n_counts"]``
        Total counts per cell.
    ``obsm["X_true_latent"]``
        The true latent states (float64, cells x ``n_latent``).
    ``uns["sparse_shift_truth"]``
        ``"perturbations"`` (the perturbation names, str array), ``"targets"`` (bool,
        perturbations x latents), ``"shift"`` (float, perturbations x latents, 0 off target, i.e. the
        latent mean of each perturbation's cells), ``"control"`` and ``"perturbation_key"``.
    ``uns["simulation_params"]``
        The arguments (``n_control_cells`` resolved).

    Examples
    --------
    >>> import pertcausal as pc
    >>> adata = pc.data.simulate_sparse_shift(
    ...     n_perturbations=5, n_cells_per_perturbation=20, n_latent=4, n_genes=30, n_hidden=10, random_state=0
    ... )
    >>> adata.shape
    (120, 30)
    >>> list(adata.obs["perturbation"].cat.categories)
    ['control', 'P0', 'P1', 'P2', 'P3', 'P4']
    >>> truth = adata.uns["sparse_shift_truth"]
    >>> truth["targets"].shape, bool(((truth["shift"] != 0) == truth["targets"]).all())
    ((5, 4), True)
    """
    import scipy.sparse as sp
    from anndata import AnnData

    n_perturbations = _positive_int(n_perturbations, "n_perturbations")
    n_cells_per_perturbation = _positive_int(n_cells_per_perturbation, "n_cells_per_perturbation")
    n_control_cells = (
        n_cells_per_perturbation if n_control_cells is None else _positive_int(n_control_cells, "n_control_cells")
    )
    n_latent = _positive_int(n_latent, "n_latent")
    n_genes = _positive_int(n_genes, "n_genes")
    n_hidden = _positive_int(n_hidden, "n_hidden")
    if not n_latent <= n_hidden <= n_genes:
        raise ValueError(
            f"need n_latent <= n_hidden <= n_genes for an injective decoder (identifiable latents), got "
            f"n_latent={n_latent}, n_hidden={n_hidden}, n_genes={n_genes}"
        )
    if isinstance(n_targets, str | bytes) or not isinstance(n_targets, Sequence | np.ndarray) or len(n_targets) != 2:
        raise ValueError(f"n_targets must be a pair (lo, hi) of integers, got {n_targets!r}")
    lo, hi = (_positive_int(v, f"n_targets[{i}]") for i, v in enumerate(n_targets))
    if not lo <= hi <= n_latent:
        raise ValueError(f"n_targets must satisfy 1 <= lo <= hi <= n_latent ({n_latent}), got {tuple(n_targets)!r}")
    for name, value in (("shift_mean", shift_mean), ("shift_sd", shift_sd), ("library_cv", library_cv)):
        if isinstance(value, bool) or not np.isfinite(value) or (name != "shift_mean" and value < 0):
            raise ValueError(f"{name} must be finite{'' if name == 'shift_mean' else ' and >= 0'}, got {value!r}")
    if isinstance(library_size, bool) or not np.isfinite(library_size) or library_size <= 0:
        raise ValueError(f"library_size must be a positive number, got {library_size!r}")
    if not isinstance(perturbation_key, str) or not perturbation_key:
        raise ValueError(f"perturbation_key must be a non-empty string, got {perturbation_key!r}")
    if perturbation_key == "n_counts":
        raise ValueError("perturbation_key 'n_counts' is taken by the total counts per cell; choose another name")
    width = len(str(n_perturbations - 1))
    perts = np.array([f"P{i:0{width}d}" for i in range(n_perturbations)], dtype=str)
    if not isinstance(control, str) or not control:
        raise ValueError(f"control must be a non-empty string, got {control!r}")
    if control in set(perts):
        raise ValueError(f"control {control!r} clashes with a perturbation name ({perts[0]!r} ... {perts[-1]!r})")
    random_state = _positive_int(random_state, "random_state", minimum=0)
    rng = np.random.default_rng(random_state)

    # ---- targets and shifts --------------------------------------------------------------------
    targets = np.zeros((n_perturbations, n_latent), dtype=bool)
    for p in range(n_perturbations):
        k = int(rng.integers(lo, hi + 1))
        targets[p, rng.choice(n_latent, size=k, replace=False)] = True
    sign = rng.choice([-1.0, 1.0], size=targets.shape)
    magnitude = rng.normal(shift_mean, shift_sd, size=targets.shape)
    shift = np.where(targets, sign * magnitude, 0.0)

    # ---- latent states, decoder, counts --------------------------------------------------------
    regime = np.repeat(np.arange(n_perturbations + 1), [n_control_cells] + [n_cells_per_perturbation] * n_perturbations)
    means = np.vstack([np.zeros((1, n_latent)), shift])
    z = means[regime] + rng.standard_normal((len(regime), n_latent))
    weights = _decoder_weights(n_latent, n_hidden, n_genes, rng)
    proportions = _softmax_genes(_decode(z, weights))
    sigma2 = np.log1p(float(library_cv) ** 2)
    library = rng.lognormal(np.log(library_size) - sigma2 / 2, np.sqrt(sigma2), size=len(regime))
    counts = rng.poisson(library[:, None] * proportions).astype(np.float32)

    # ---- AnnData --------------------------------------------------------------------------------
    categories = np.concatenate([[control], perts])
    obs = pd.DataFrame(
        {
            perturbation_key: pd.Categorical.from_codes(regime, categories=categories),
            "n_counts": counts.sum(axis=1).astype(np.float32),
        },
        index=pd.Index([f"cell{i}" for i in range(len(regime))], dtype=object),
    )
    adata = AnnData(
        X=sp.csr_matrix(counts), obs=obs, var=pd.DataFrame(index=pd.Index([f"gene{j}" for j in range(n_genes)]))
    )
    adata.obsm["X_true_latent"] = z
    adata.uns["sparse_shift_truth"] = {
        "perturbations": perts,
        "targets": targets,
        "shift": shift,
        "control": control,
        "perturbation_key": perturbation_key,
    }
    adata.uns["simulation_params"] = {
        "n_perturbations": n_perturbations,
        "n_cells_per_perturbation": n_cells_per_perturbation,
        "n_control_cells": n_control_cells,
        "n_latent": n_latent,
        "n_genes": n_genes,
        "n_targets": np.array([lo, hi], dtype=np.int64),
        "shift_mean": float(shift_mean),
        "shift_sd": float(shift_sd),
        "n_hidden": n_hidden,
        "library_size": float(library_size),
        "library_cv": float(library_cv),
        "perturbation_key": perturbation_key,
        "control": control,
        "random_state": random_state,
    }
    return adata
