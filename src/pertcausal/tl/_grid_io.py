"""Conversion between a signatures AnnData and the engines' :class:`Grid`."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from .._engines import METHODS, Grid
from .._utils._validate import _list, check_choice, check_finite, check_no_missing, check_unique_var_names

if TYPE_CHECKING:
    from anndata import AnnData

logger = logging.getLogger("pertcausal")

TORCH_METHODS = {"ntk"}


def _labels(sig: AnnData, key: str, extra: pd.Index | None = None) -> pd.Categorical:
    """``obs[key]`` as a categorical over the labels that occur and those of ``extra``.

    A categorical column keeps its order of levels; labels of ``extra`` that are not levels follow, sorted.
    A level that occurs in no row and is not in ``extra`` is dropped, with a warning naming it: a context
    with a control mean and no observed pair is what a user wants predicted, one with neither has
    nothing to predict from.
    """
    col = sig.obs[key]
    check_no_missing(col, argname="obs column", key=key, where="the signatures AnnData")
    values = col.astype(str)
    keep = set(values).union([] if extra is None else map(str, extra))
    order = list(col.cat.categories.astype(str)) if isinstance(col.dtype, pd.CategoricalDtype) else []
    unused = [c for c in order if c not in keep]
    if unused:
        logger.warning(
            "obs[%r] has %d level(s) with no observed pair%s, left out of the grid: %s",
            key, len(unused), " and no control mean" if extra is not None else "", _list(unused),
        )  # fmt: skip
    levels = [c for c in order if c in keep] + sorted(keep.difference(order))
    return pd.Categorical(values, categories=levels)


def grid_from_signatures(
    sig: AnnData,
    *,
    perturbation_features: pd.DataFrame | np.ndarray | None = None,
    context_features: pd.DataFrame | np.ndarray | None = None,
) -> tuple[Grid, pd.Index, pd.Index]:
    """Validate a signatures AnnData and build the engines' grid from it."""
    for key in ("perturbation", "context"):
        if key not in sig.obs.columns:
            raise KeyError(
                f"signatures AnnData needs obs[{key!r}] (as made by pertcausal.pp.signatures); "
                f"obs columns are: {_list(sig.obs.columns)}. For cell-level data pass perturbation_key=, "
                "context_key= and control="
            )
    if sig.n_obs == 0:
        raise ValueError("the signatures AnnData has no observed pair")
    check_unique_var_names(sig, where="the signatures AnnData")
    # the grid's contexts: those of the observed pairs and, when control means cover them, every context
    # with a control mean (controls measured, no perturbation yet: what a user wants predicted)
    cm = sig.uns.get("control_mean")
    if isinstance(cm, pd.DataFrame):
        cm = cm.set_axis(cm.index.astype(str))
        if not set(sig.obs["context"].astype(str)) <= set(cm.index):
            cm = None
    pert = _labels(sig, "perturbation")
    ctx = _labels(sig, "context", extra=cm.index if isinstance(cm, pd.DataFrame) else None)
    perts = pd.Index(pert.categories.astype(str))
    ctxs = pd.Index(ctx.categories.astype(str))
    pc = pd.Series(pert.codes.astype(np.int64) * len(ctxs) + ctx.codes.astype(np.int64))
    if pc.duplicated().any():
        dup = sig.obs_names[pc.duplicated(keep=False).to_numpy()]
        raise ValueError(f"signatures hold several rows for the same (perturbation, context) pair: {_list(dup)}")
    y = np.asarray(sig.X.toarray() if hasattr(sig.X, "toarray") else sig.X, dtype=np.float64)
    check_finite(y, what="signatures .X")
    baseline = None
    if isinstance(cm, pd.DataFrame):
        baseline = cm.loc[list(ctxs), sig.var_names].to_numpy(np.float64)
        check_finite(baseline, what="signatures uns['control_mean']")
    grid = Grid(
        y,
        pert.codes,
        ctx.codes,
        len(perts),
        len(ctxs),
        baseline,
        _align(perturbation_features, perts, "perturbation_features"),
        _align(context_features, ctxs, "context_features"),
    )
    return grid, perts, ctxs


def _align(features: Any, labels: pd.Index, name: str) -> np.ndarray | None:
    if features is None:
        return None
    if isinstance(features, pd.DataFrame):
        idx = features.index.astype(str)
        missing = [lab for lab in labels if lab not in set(idx)]
        if missing:
            raise KeyError(f"{name} has no row for {_list(missing)}; its index must hold every label")
        out = features.set_axis(idx).loc[list(labels)].to_numpy(np.float64)
    else:
        out = np.asarray(features, dtype=np.float64)
        if out.ndim != 2 or out.shape[0] != len(labels):
            raise ValueError(f"{name} must have one row per label ({len(labels)}), got shape {out.shape}")
    check_finite(out, what=name)
    return out


def check_method(method: str, device: str) -> None:
    """Fail early on an unknown method or an unusable device, before any work or write."""
    check_choice(method, METHODS, argname="method")
    if method in TORCH_METHODS or device != "auto":
        from .._utils._device import resolve_device

        resolve_device(device)
