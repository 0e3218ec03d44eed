"""Simulated multimodal single cells (RNA + protein counts, or a continuous modality) with a known latent state."""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
import scipy.sparse as sp


def simulate_multimodal(
    n_cells: int = 1000,
    *,
    n_genes: int = 200,
    n_proteins: int = 30,
    n_latent: int = 5,
    n_cell_types: int = 4,
    paired: bool = True,
    continuous_second: bool = False,
    n_batches: int = 1,
    batch_effect: float = 0.5,
    random_state: int = 0,
) -> Any:
    """A MuData of RNA (``"rna"``) and protein-tag (``"adt"``) counts driven by one latent state per cell.

    Cells belong to ``n_cell_types`` clusters in an ``n_latent``-dimensional state; each modality maps the
    state through its own random nonlinear map to negative binomial counts (or, with
    ``continuous_second``, to Gaussian features in ``"adt"``). With ``paired=False`` the first half of the
    cells is measured only in RNA and the second half only in protein (distinct obs names). Batches shift
    the RNA expression of a random subset of genes. Ground truth: ``obs["cell_type"]``, ``obs["batch"]`` and
    the true state in ``obsm["X_true"]`` of the MuData (of each modality when unpaired).

    Examples
    --------
    >>> import pertcausal as pc
    >>> mdata = pc.data.simulate_multimodal(n_cells=100, random_state=0)
    >>> mdata.mod["rna"].shape, mdata.mod["adt"].shape
    ((100, 200), (100, 30))
    """
    import anndata as ad
    import mudata as md

    if n_cells < 2 or n_latent < 1 or n_cell_types < 1:
        raise ValueError("n_cells must be >= 2 and n_latent, n_cell_types >= 1")
    rng = np.random.default_rng(random_state)
    centres = rng.normal(scale=2.0, size=(n_cell_types, n_latent))
    types = rng.integers(n_cell_types, size=n_cells)
    state = centres[types] + rng.normal(scale=0.5, size=(n_cells, n_latent))
    batch = rng.integers(n_batches, size=n_cells)

    def counts(n_feat: int, depth: float, batch_shift: bool) -> np.ndarray:
        W1 = rng.normal(scale=1.0 / np.sqrt(n_latent), size=(n_latent, 32))
        W2 = rng.normal(scale=0.6, size=(32, n_feat))
        logits = np.tanh(state @ W1) @ W2 + rng.normal(scale=0.5, size=n_feat)
        if batch_shift and n_batches > 1:
            shifts = rng.normal(scale=batch_effect, size=(n_batches, n_feat)) * (rng.random(n_feat) < 0.3)
            logits = logits + shifts[batch]
        p = np.exp(logits - logits.max(axis=1, keepdims=True))
        p /= p.sum(axis=1, keepdims=True)
        lib = rng.lognormal(np.log(depth), 0.3, size=n_cells)
        mu = p * lib[:, None]
        theta = 10.0
        return rng.poisson(rng.gamma(theta, mu / theta)).astype(np.float32)

    rna = counts(n_genes, 2_000.0, True)
    if continuous_second:
        W = rng.normal(size=(n_latent, n_proteins))
        adt = (np.tanh(state) @ W + rng.normal(scale=0.3, size=(n_cells, n_proteins))).astype(np.float32)
    else:
        adt = counts(n_proteins, 1_000.0, False)
    names = np.array([f"cell{i}" for i in range(n_cells)])
    obs = pd.DataFrame(
        {"cell_type": pd.Categorical([f"type{t}" for t in types]), "batch": pd.Categorical([f"b{b}" for b in batch])},
        index=names,
    )
    if paired:
        rows_rna = rows_adt = np.arange(n_cells)
    else:
        half = n_cells // 2
        rows_rna, rows_adt = np.arange(half), np.arange(half, n_cells)
    a_rna = ad.AnnData(
        sp.csr_matrix(rna[rows_rna]),
        obs=obs.iloc[rows_rna].copy(),
        var=pd.DataFrame(index=[f"gene{j}" for j in range(n_genes)]),
    )
    a_adt = ad.AnnData(
        sp.csr_matrix(adt[rows_adt]) if not continuous_second else adt[rows_adt],
        obs=obs.iloc[rows_adt].copy(),
        var=pd.DataFrame(index=[f"protein{j}" for j in range(n_proteins)]),
    )
    a_rna.obsm["X_true"] = state[rows_rna]
    a_adt.obsm["X_true"] = state[rows_adt]
    with md.set_options(pull_on_update=False):
        mdata = md.MuData({"rna": a_rna, "adt": a_adt})
    mdata.obs["cell_type"] = obs["cell_type"].reindex(mdata.obs_names).to_numpy()
    mdata.obs["batch"] = obs["batch"].reindex(mdata.obs_names).to_numpy()
    mdata.obsm["X_true"] = state[pd.Index(names).get_indexer(mdata.obs_names)]
    return mdata
