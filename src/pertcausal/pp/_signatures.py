"""Perturbation signatures: one effect profile per observed (perturbation, context) pair."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
import scipy.sparse as sp

from .._utils._validate import _list, check_finite, check_labels, check_obs_key, get_matrix, get_modality

if TYPE_CHECKING:
    from anndata import AnnData
    from mudata import MuData

logger = logging.getLogger("pertcausal")

SEP = "|"


def _looks_like_counts(x: np.ndarray | sp.spmatrix, n_check: int = 100_000) -> bool:
    values = x.data if sp.issparse(x) else np.asarray(x).ravel()
    values = values[:n_check]
    return bool(values.size) and bool(np.all(values >= 0)) and bool(np.all(np.mod(values, 1) == 0))


def _log_normalize(x: np.ndarray | sp.spmatrix, target_sum: float) -> np.ndarray | sp.spmatrix:
    """Library-size normalisation to ``target_sum`` followed by log1p (as ``sc.pp.normalize_total`` + ``log1p``)."""
    size = np.asarray(x.sum(axis=1)).ravel().astype(np.float64)
    scale = np.divide(target_sum, size, out=np.zeros_like(size), where=size > 0)
    if sp.issparse(x):
        out = sp.csr_matrix(x, dtype=np.float64, copy=True)
        out.data *= np.repeat(scale, np.diff(out.indptr))
        np.log1p(out.data, out=out.data)
        return out
    return np.log1p(np.asarray(x, dtype=np.float64) * scale[:, None])


def _codes(series: pd.Series) -> tuple[np.ndarray, pd.Index]:
    cat = pd.Categorical(series.astype(str))
    return cat.codes.astype(np.int64), pd.Index(cat.categories.astype(str))


def signatures(
    data: AnnData | MuData,
    *,
    mod: str = "rna",
    perturbation_key: str,
    context_key: str,
    control: str,
    layer: str | None = None,
    min_cells: int = 10,
    normalize: bool | None = None,
    target_sum: float = 1e4,
    chunk_size: int = 100_000,
) -> AnnData:
    """Mean effect of every perturbation in every context where it was measured.

    The effect of perturbation ``p`` in context ``c`` is the mean normalised log expression of
    the cells of ``(p, c)`` minus the mean of the control cells of context ``c``. All group means
    come from one pass over the cells in chunks, as products of a sparse group-indicator matrix
    with the (sparse) expression matrix: no loop over cells.

    Parameters
    ----------
    data
        Cell-level MuData (the modality ``mod`` is used) or AnnData.
    mod
        Modality of a MuData to read; ignored for an AnnData.
    perturbation_key
        ``obs`` column with the perturbation of each cell.
    context_key
        ``obs`` column with the context of each cell (cell type, cell line, donor, ...).
    control
        Label of the control cells in ``obs[perturbation_key]``.
    layer
        Layer to read (``None`` for ``.X``).
    min_cells
        Pairs with fewer cells are dropped (with a warning); a perturbation left with no pair,
        or a context whose controls have fewer cells, is an error.
    normalize
        Normalise counts per cell to ``target_sum`` and log1p them. ``None`` does so when the
        matrix holds non-negative integers (raw counts) and uses the values as they are otherwise.
    target_sum
        Library size after normalisation.
    chunk_size
        Cells per chunk; bounds the memory used beyond the group means.

    Returns
    -------
    AnnData with one row per observed (perturbation, context) pair (``obs_names`` are
    ``"perturbation|context"``), the genes of ``data`` as ``var``, and

    - ``X``: the effect (pair mean minus control mean of its context);
    - ``layers["mean"]``: the pair's mean normalised log expression;
    - ``obs["perturbation"]``, ``obs["context"]`` (categoricals) and ``obs["n_cells"]``;
    - ``uns["control_mean"]``: DataFrame of control means, contexts x genes;
    - ``uns["control_n_cells"]``: dict of control cell counts per context;
    - ``uns["signatures"]["params"]``: how the signatures were made.

    Examples
    --------
    >>> import pertcausal as pc
    >>> mdata = pc.data.simulate_screen(n_perturbations=5, n_contexts=3, n_genes=20, seed=0)
    >>> sig = pc.pp.signatures(
    ...     mdata, perturbation_key="perturbation", context_key="context", control="control"
    ... )
    >>> sig.obs[["perturbation", "context", "n_cells"]].head(2)  # doctest: +SKIP
    """
    from anndata import AnnData

    adata = get_modality(data, mod)
    where = f"mdata[{mod!r}]" if adata is not data else "adata"
    check_obs_key(adata, perturbation_key, argname="perturbation_key", where=where)
    check_obs_key(adata, context_key, argname="context_key", where=where)
    if min_cells < 1:
        raise ValueError(f"min_cells must be >= 1, got {min_cells}")
    pert_codes, perts = _codes(adata.obs[perturbation_key])
    ctx_codes, ctxs = _codes(adata.obs[context_key])
    check_labels(perts, [control], argname="control", key=perturbation_key)
    x = get_matrix(adata, layer, where=where)
    check_finite(x, what=f"{where}.{'X' if layer is None else f'layers[{layer!r}]'}")
    if normalize is None:
        normalize = _looks_like_counts(x)
    if sp.issparse(x):
        x = sp.csr_matrix(x)

    # one pass over the cells: sparse indicator (groups x cells) @ expression (cells x genes)
    n_ctx = len(ctxs)
    group = pert_codes * n_ctx + ctx_codes
    uniq, inv = np.unique(group, return_inverse=True)
    n_groups = len(uniq)
    sums = np.zeros((n_groups, adata.n_vars), dtype=np.float64)
    for start in range(0, adata.n_obs, chunk_size):
        stop = min(start + chunk_size, adata.n_obs)
        chunk = x[start:stop]
        if normalize:
            chunk = _log_normalize(chunk, target_sum)
        ind = sp.csr_matrix(
            (np.ones(stop - start), (inv[start:stop], np.arange(stop - start))), shape=(n_groups, stop - start)
        )
        prod = ind @ chunk
        sums += prod.toarray() if sp.issparse(prod) else np.asarray(prod)
    counts = np.bincount(inv, minlength=n_groups)
    means = sums / counts[:, None]
    g_pert, g_ctx = uniq // n_ctx, uniq % n_ctx

    ctrl = int(perts.get_loc(control))
    is_ctrl = g_pert == ctrl
    ctrl_row = np.full(n_ctx, -1)
    ctrl_row[g_ctx[is_ctrl]] = np.flatnonzero(is_ctrl)
    ctrl_count = np.where(ctrl_row >= 0, counts[np.maximum(ctrl_row, 0)], 0)
    treated_ctx = np.unique(g_ctx[~is_ctrl])
    no_ctrl = [ctxs[c] for c in treated_ctx if ctrl_count[c] == 0]
    if no_ctrl:
        raise ValueError(
            f"context(s) {_list(no_ctrl)} of obs[{context_key!r}] have perturbed cells but no control cells "
            f"({perturbation_key} == {control!r}); every context needs its own controls"
        )
    few_ctrl = [f"{ctxs[c]} ({ctrl_count[c]})" for c in treated_ctx if ctrl_count[c] < min_cells]
    if few_ctrl:
        raise ValueError(
            f"context(s) {_list(few_ctrl)} have fewer than min_cells={min_cells} control cells; "
            "lower min_cells or drop these contexts"
        )

    keep = ~is_ctrl & (counts >= min_cells)
    dropped = ~is_ctrl & ~keep
    treated_perts = np.unique(g_pert[~is_ctrl])
    kept_perts = set(g_pert[keep].tolist())
    empty = [perts[p] for p in treated_perts if p not in kept_perts]
    if empty:
        total = {perts[p]: int(counts[~is_ctrl & (g_pert == p)].sum()) for p in treated_perts if p not in kept_perts}
        raise ValueError(
            f"perturbation(s) {_list(empty)} have fewer than min_cells={min_cells} cells in every context "
            f"(cells in total: {total}); lower min_cells or remove them"
        )
    if dropped.any():
        names = [f"{perts[p]}{SEP}{ctxs[c]} ({n})" for p, c, n in zip(g_pert[dropped], g_ctx[dropped], counts[dropped])]
        logger.warning(
            "dropped %d pair(s) with fewer than min_cells=%d cells: %s", dropped.sum(), min_cells, _list(names)
        )

    rows = np.flatnonzero(keep)
    used_ctx = np.flatnonzero(ctrl_row >= 0)
    ctrl_means = means[ctrl_row[used_ctx]]
    ctrl_lookup = np.full(n_ctx, -1)
    ctrl_lookup[used_ctx] = np.arange(len(used_ctx))
    effect = means[rows] - ctrl_means[ctrl_lookup[g_ctx[rows]]]
    pert_cats = [p for p in perts if p != control]
    ctx_cats = list(ctxs[used_ctx])
    obs = pd.DataFrame(
        {
            "perturbation": pd.Categorical(perts[g_pert[rows]], categories=pert_cats),
            "context": pd.Categorical(ctxs[g_ctx[rows]], categories=ctx_cats),
            "n_cells": counts[rows].astype(np.int64),
        },
        index=[f"{p}{SEP}{c}" for p, c in zip(perts[g_pert[rows]], ctxs[g_ctx[rows]])],
    )
    out = AnnData(
        X=effect.astype(np.float32),
        obs=obs,
        var=pd.DataFrame(index=adata.var_names.copy()),
        layers={"mean": means[rows].astype(np.float32)},
    )
    out.uns["control_mean"] = pd.DataFrame(
        ctrl_means.astype(np.float32), index=ctx_cats, columns=adata.var_names.copy()
    )
    out.uns["control_n_cells"] = {c: int(n) for c, n in zip(ctx_cats, ctrl_count[used_ctx])}
    out.uns["signatures"] = {
        "params": {
            "mod": mod if adata is not data else "",
            "perturbation_key": perturbation_key,
            "context_key": context_key,
            "control": control,
            "layer": layer if layer is not None else "X",
            "min_cells": int(min_cells),
            "normalize": bool(normalize),
            "target_sum": float(target_sum),
        }
    }
    return out
