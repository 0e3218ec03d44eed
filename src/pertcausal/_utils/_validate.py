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


def get_matrix(
    adata: AnnData, layer: str | None, *, where: str = "adata", backed_ok: bool = False, tool: str | None = None
) -> np.ndarray | sp.spmatrix:
    """Return ``adata.X`` or ``adata.layers[layer]``, with a clear error for a missing layer.

    A sparse matrix comes back canonical (:func:`canonical`: duplicate entries summed, on a copy), so
    elementwise transforms of its stored values see each matrix entry once. A backed AnnData is refused
    (:func:`check_in_memory`) unless ``backed_ok`` (the caller streams the rows itself).
    """
    if not backed_ok:
        check_in_memory(adata, where=where, tool=tool)
    if layer is None:
        if adata.X is None:
            raise ValueError(f"{where}.X is empty; pass layer= to use one of: {_list(adata.layers)}")
        return canonical(adata.X)
    if layer not in adata.layers:
        raise KeyError(f"layer {layer!r} is not in {where}.layers; layers are: {_list(adata.layers)}")
    return canonical(adata.layers[layer])


def canonical(x: Any) -> Any:
    """``x`` with each stored sparse entry unique (duplicates summed), never modifying ``x`` itself.

    scipy allows a CSR/CSC matrix to store one entry several times (the matrix holds their sum) and COO
    matrices to repeat coordinates; a transform applied per stored value (``log1p``, squaring) would
    then see the parts instead of the entry. CSR/CSC input already canonical is returned as is; other
    sparse formats become CSR, which sums duplicates. Dense input is returned unchanged.
    """
    if not sp.issparse(x):
        return x
    if x.format in ("csr", "csc"):
        if x.has_canonical_format:
            return x
        out = x.copy()
        out.sum_duplicates()
        return out
    return x.tocsr()


def row_sums(x: Any) -> np.ndarray:
    """Sum of each row in float64, whatever the input dtype (float16 library sizes overflow at 65,504)."""
    return np.asarray(x.sum(axis=1, dtype=np.float64)).ravel()


def check_in_memory(data: Any, *, where: str = "adata", tool: str | None = None) -> None:
    """Refuse a backed AnnData or MuData (``backed="r"``), naming its file and how to load it."""
    if getattr(data, "isbacked", False):
        filename = getattr(data, "filename", None)
        what = f"{tool} reads" if tool else "this function reads"
        raise ValueError(
            f"{where} is backed (opened with backed= from {str(filename)!r}); {what} the whole matrix into "
            "memory, so load it first: data = data.to_memory() (AnnData) or read the file without backed= "
            "(pertcausal.pp.signatures streams backed input itself)"
        )


def check_unique_var_names(adata: AnnData, *, where: str = "adata", subset: np.ndarray | None = None) -> None:
    """Refuse duplicated ``var_names`` (common in 10x data before ``var_names_make_unique()``), among the
    ``subset`` of positions that will be used (default all)."""
    names = adata.var_names if subset is None else adata.var_names[subset]
    if names.has_duplicates:
        dup = names[names.duplicated()].unique()
        raise ValueError(
            f"{where}.var_names holds {len(dup)} duplicated name(s) (e.g. {_list(dup[:5])}); a result per gene "
            f"would be ambiguous: make them unique first ({where}.var_names_make_unique())"
        )


def check_no_missing(values: pd.Series, *, argname: str, key: str, where: str, rows: np.ndarray | None = None) -> None:
    """Refuse missing labels (NaN, None) in ``values`` (at the ``rows`` mask that matters, default all)."""
    bad = values.isna().to_numpy()
    if rows is not None:
        bad &= rows
    if bad.any():
        raise ValueError(
            f"{argname} {key!r} has {int(bad.sum())} missing value(s) in obs of {where} "
            f"(e.g. {_list(values.index[bad][:5])}); fill or drop them first"
        )


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


def obs_column(
    data: AnnData | MuData, adata: AnnData, key: str, argname: str, *, where: str | None = None
) -> pd.Series:
    """``key`` for the cells of ``adata``: from its own obs, else (MuData) from ``data.obs``.

    The one rule of every function that takes an obs key: the modality's obs first, then the MuData's.
    """
    if key in adata.obs.columns:
        return adata.obs[key]
    mu = is_mudata(data) and adata is not data
    if mu and key in data.obs.columns:
        return data.obs.loc[adata.obs_names, key]
    where = where or ("the modality" if mu else "adata")
    if mu:
        raise KeyError(
            f"{argname} {key!r} is not a column of {where}.obs or of mdata.obs; {where}.obs columns are: "
            f"{_list(adata.obs.columns) or '(none)'}; mdata.obs columns are: {_list(data.obs.columns) or '(none)'}"
        )
    raise KeyError(f"{argname} {key!r} is not a column of {where}.obs; columns are: {_list(adata.obs.columns)}")
