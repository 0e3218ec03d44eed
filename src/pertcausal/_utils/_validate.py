"""One place for input checks, so every error message reads the same."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import scipy.sparse as sp

if TYPE_CHECKING:
    import pandas as pd
    from anndata import AnnData
    from mudata import MuData


def _list(values: Iterable[Any], limit: int = 20) -> str:
    values = [str(v) for v in values]
    more = f", ... ({len(values) - limit} more)" if len(values) > limit else ""
    return ", ".join(repr(v) for v in values[:limit]) + more


def is_mudata(data: Any) -> bool:
    """Whether ``data`` is a MuData (imported lazily)."""
    try:
        from mudata import MuData
    except ImportError:  # pragma: no cover
        return False
    return isinstance(data, MuData)


def get_modality(data: AnnData | MuData, mod: str | None) -> AnnData:
    """Return the AnnData of modality ``mod`` (or ``data`` itself for an AnnData)."""
    from anndata import AnnData

    if is_mudata(data):
        if mod is None:
            raise ValueError(f"mod must name a modality of the MuData; modalities are: {_list(data.mod)}")
        if mod not in data.mod:
            raise KeyError(f"mod {mod!r} is not a modality of the MuData; modalities are: {_list(data.mod)}")
        return data.mod[mod]
    if isinstance(data, AnnData):
        return data
    raise TypeError(f"expected an AnnData or MuData, got {type(data).__name__}")


def modality_holding_uns(mdata: MuData, key: str, *, missing: str) -> str:
    """Name of the one modality of ``mdata`` whose ``uns`` holds ``key``; ValueError naming them when several
    do, KeyError with the message ``missing`` when none does."""
    having = [m for m in mdata.mod if key in mdata.mod[m].uns]
    if len(having) > 1:
        raise ValueError(f"the modalities {_list(having)} all hold uns[{key!r}]; pass mod= to choose one")
    if not having:
        raise KeyError(missing)
    return having[0]


def check_obs_key(adata: AnnData, key: str, *, argname: str, where: str = "adata") -> None:
    """Raise a KeyError naming ``key`` when it is not an obs column."""
    if key not in adata.obs.columns:
        raise KeyError(f"{argname} {key!r} is not a column of {where}.obs; columns are: {_list(adata.obs.columns)}")


def check_labels(present: Sequence[Any], wanted: Iterable[Any], *, argname: str, key: str) -> None:
    """Raise a ValueError naming labels of ``wanted`` that are absent from ``present``."""
    present_set = set(map(str, present))
    missing = [w for w in wanted if str(w) not in present_set]
    if missing:
        raise ValueError(
            f"{argname} {_list(missing)} not found in obs[{key!r}]; labels are: {_list(sorted(present_set))}"
        )


def get_matrix(adata: AnnData, layer: str | None, *, where: str = "adata") -> np.ndarray | sp.spmatrix:
    """Return ``adata.X`` or ``adata.layers[layer]``, with a clear error for a missing layer."""
    if layer is None:
        if adata.X is None:
            raise ValueError(f"{where}.X is empty; pass layer= to use one of: {_list(adata.layers)}")
        return adata.X
    if layer not in adata.layers:
        raise KeyError(f"layer {layer!r} is not in {where}.layers; layers are: {_list(adata.layers)}")
    return adata.layers[layer]


def check_finite(x: np.ndarray | sp.spmatrix, *, what: str) -> None:
    """Raise a ValueError when ``x`` holds NaN or inf, naming where."""
    data = x.data if sp.issparse(x) else np.asarray(x)
    if data.size and not np.isfinite(data).all():
        bad = int(np.size(data) - np.isfinite(data).sum())
        raise ValueError(f"{what} holds {bad} NaN or infinite value(s); remove or impute them first")


def check_choice(value: Any, choices: Iterable[Any], *, argname: str) -> None:
    """Raise a ValueError for an option outside ``choices``."""
    choices = list(choices)
    if value not in choices:
        raise ValueError(f"unknown {argname} {value!r}; expected one of: {_list(choices)}")


def obs_column(data: AnnData | MuData, adata: AnnData, key: str, argname: str) -> pd.Series:
    """``key`` for the cells of ``adata``: from its own obs, else (MuData) from ``data.obs``."""
    if key in adata.obs.columns:
        return adata.obs[key]
    if is_mudata(data) and key in data.obs.columns:
        return data.obs.loc[adata.obs_names, key]
    where = "the modality's obs or mdata.obs" if is_mudata(data) else "adata.obs"
    raise KeyError(f"{argname} {key!r} is not a column of {where}; columns are: {_list(adata.obs.columns)}")
