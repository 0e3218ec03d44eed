"""Figures of a cross-modal integration: the latent space and translations against measurements."""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
import scipy.sparse as sp

from .._engines.integration_metrics import feature_correlation
from .._utils._validate import _list, is_mudata
from ..tl._evaluate_integration import TARGET_SUM, translation_arrays, translation_keys
from ._imputation import _finish

if TYPE_CHECKING:
    from anndata import AnnData
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure
    from mudata import MuData

_PANEL = 3.6  # inches per panel
_NA_COLOR = "0.85"


# ---------------------------------------------------------------------------------------------
# shared helpers
# ---------------------------------------------------------------------------------------------
def _panels(n: int, ax: Axes | Sequence[Axes] | None, ncols: int, *, extra_w: float = 0.0) -> tuple[Figure, list]:
    """``n`` Axes: those given (one Axes, or a sequence of ``n``), else a new grid of panels."""
    import matplotlib.pyplot as plt

    if ax is not None:
        axes = [ax] if not isinstance(ax, Sequence | np.ndarray) else list(np.ravel(ax))
        if len(axes) != n:
            raise ValueError(f"ax must hold one Axes per panel ({n}), got {len(axes)}")
        return axes[0].figure, axes
    if int(ncols) < 1:
        raise ValueError(f"ncols must be >= 1, got {ncols}")
    ncols = min(int(ncols), n)
    nrows = math.ceil(n / ncols)
    fig, grid = plt.subplots(
        nrows, ncols, figsize=((_PANEL + extra_w) * ncols, _PANEL * nrows), squeeze=False, layout="constrained"
    )
    flat = list(grid.ravel())
    for extra in flat[n:]:
        extra.remove()
    return fig, flat[:n]


def _point_size(n: int) -> float:
    return float(np.clip(120000.0 / max(n, 1), 1.0, 30.0))


# ---------------------------------------------------------------------------------------------
# pl.latent
# ---------------------------------------------------------------------------------------------
def _embedding(data: AnnData | MuData, mod: str | None, use_rep: str) -> tuple[AnnData | MuData, np.ndarray, str]:
    from anndata import AnnData

    if is_mudata(data):
        if mod is not None:
            if mod not in data.mod:
                raise KeyError(f"mod {mod!r} is not a modality of the MuData; modalities are: {_list(data.mod)}")
            obj, where = data.mod[mod], f"mdata[{mod!r}]"
        else:
            obj, where = data, "mdata"
    elif isinstance(data, AnnData):
        obj, where = data, "adata"
    else:
        raise TypeError(f"data must be an AnnData or MuData, got {type(data).__name__}")
    if use_rep not in obj.obsm:
        hint = ""
        if is_mudata(data):
            having = [m for m in data.mod if use_rep in data.mod[m].obsm]
            if having:
                hint = f"; the modalities {_list(having)} have it (pass mod=)"
        raise KeyError(f"use_rep {use_rep!r} is not in {where}.obsm; its keys are: {_list(obj.obsm)}{hint}")
    emb = obj.obsm[use_rep]
    emb = emb.to_numpy() if isinstance(emb, pd.DataFrame) else (emb.toarray() if sp.issparse(emb) else emb)
    emb = np.asarray(emb, dtype=np.float64)
    if emb.ndim != 2 or emb.shape[1] < 2:
        raise ValueError(f"{where}.obsm[{use_rep!r}] must have at least 2 dimensions to plot, got shape {emb.shape}")
    return obj, emb, where


def _column(x: Any, j: int) -> np.ndarray:
    col = x[:, j]
    return np.asarray(col.toarray() if sp.issparse(col) else col, dtype=np.float64).ravel()


def _color_values(obj: AnnData | MuData, key: str, where: str) -> tuple[pd.Series, dict[str, Any]]:
    """Values of ``key`` per cell of ``obj``: an obs column, else a feature (a column of X, of the
    MuData's modalities for a MuData, also written ``"mod:feature"``). Also the ``uns`` to look up
    ``f"{key}_colors"`` in."""
    names = obj.obs_names
    if key in obj.obs.columns:
        return obj.obs[key], obj.uns
    if is_mudata(obj):
        for ad_m in obj.mod.values():
            if key in ad_m.obs.columns:
                return ad_m.obs[key].reindex(names), ad_m.uns
        mod_feature = key.split(":", 1) if ":" in key else None
        for m, ad_m in obj.mod.items():
            feature = key
            if mod_feature is not None and mod_feature[0] == m:
                feature = mod_feature[1]
            if feature in ad_m.var_names and ad_m.X is not None:
                vals = pd.Series(_column(ad_m.X, int(ad_m.var_names.get_loc(feature))), index=ad_m.obs_names)
                return vals.reindex(names), {}
    elif key in obj.var_names:
        if obj.X is None:
            raise ValueError(f"{where}.X is empty; cannot colour by feature {key!r}")
        return pd.Series(_column(obj.X, int(obj.var_names.get_loc(key))), index=names), {}
    features = "a feature of its modalities" if is_mudata(obj) else "a feature (var_names)"
    raise KeyError(
        f"color {key!r} is neither a column of {where}.obs nor {features}; obs columns are: {_list(obj.obs.columns)}"
    )


def _is_categorical(values: pd.Series) -> bool:
    dtype = values.dtype
    return isinstance(dtype, pd.CategoricalDtype) or not (
        pd.api.types.is_numeric_dtype(dtype) and not pd.api.types.is_bool_dtype(dtype)
    )


def _umap(emb: np.ndarray, n_neighbors: int, random_state: int) -> np.ndarray:
    try:
        import scanpy as sc
    except ImportError as err:  # pragma: no cover - depends on the environment
        raise ImportError("pl.latent(umap=True) needs scanpy: pip install scanpy (or pertcausal[all])") from err
    from anndata import AnnData

    n = emb.shape[0]
    if n < 3:
        raise ValueError(f"a UMAP needs at least 3 cells, got {n}")
    tmp = AnnData(obs=pd.DataFrame(index=pd.Index(np.arange(n).astype(str))), obsm={"rep": emb})
    sc.pp.neighbors(tmp, use_rep="rep", n_neighbors=int(min(n_neighbors, n - 1)), random_state=random_state)
    sc.tl.umap(tmp, random_state=random_state)
    return np.asarray(tmp.obsm["X_umap"], dtype=np.float64)


def latent(
    data: MuData | AnnData,
    *,
    use_rep: str = "X_pertcausal",
    color: str | Sequence[str] | None = None,
    mod: str | None = None,
    umap: bool = False,
    n_neighbors: int = 15,
    random_state: int = 0,
    ncols: int = 3,
    ax: Axes | Sequence[Axes] | None = None,
    show: bool | None = None,
    save: str | Path | None = None,
    return_fig: bool = False,
    **scatter_kwargs: Any,
) -> Figure | Axes | list[Axes] | None:
    """Scatter of the cells in a latent space, coloured by annotations or features.

    Draws the first two dimensions of ``obsm[use_rep]`` or, with ``umap=True``, a UMAP of it made
    by scanpy (``pp.neighbors(use_rep=...)`` and ``tl.umap``) on a temporary AnnData, so ``data``
    is never modified. One panel per colour key: a categorical key gets a legend (missing values
    grey), a numeric one a colour bar (higher values drawn on top).

    Parameters
    ----------
    data
        MuData whose ``obsm[use_rep]`` holds the joint latent of all cells (from
        :func:`pertcausal.tl.integrate`), or an AnnData.
    use_rep
        Key of the embedding in ``obsm``.
    color
        Key(s) to colour by: ``obs`` columns (of the MuData or, failing that, of a modality) or
        features (``var_names`` of the AnnData, or of a modality of the MuData, also as
        ``"mod:feature"``; cells without that modality are grey). ``None``: one grey panel.
        Categorical colours come from ``uns[f"{key}_colors"]`` when it has one per category.
    mod
        Plot the embedding of this modality's cells (``mdata.mod[mod].obsm[use_rep]``, its own
        encoder's embedding) instead of the MuData's joint latent.
    umap
        Plot a UMAP of the embedding instead of its first two dimensions (needs scanpy).
    n_neighbors
        Neighbours of the kNN graph behind the UMAP.
    random_state
        Seed of the UMAP.
    ncols
        Panels per row.
    ax
        Axes to draw in: one Axes, or one per colour key. ``None`` makes a new figure.
    show, save, return_fig
        As in scanpy: show the figure, write it to ``save`` (format from the suffix), return it.
    **scatter_kwargs
        Passed to :meth:`matplotlib.axes.Axes.scatter` (e.g. ``s``, ``alpha``, ``cmap``).

    Returns
    -------
    The Figure with ``return_fig``; otherwise, when not shown, the Axes (one colour key) or a list
    of Axes (one per key); otherwise ``None``. The cells are the collection with gid ``"cells"``
    of each panel; cells with a non-finite embedding are left out.

    Examples
    --------
    >>> import numpy as np, anndata as ad
    >>> from pertcausal.pl._latent import latent
    >>> adata = ad.AnnData(np.zeros((30, 2)))
    >>> adata.obsm["X_pertcausal"] = np.random.default_rng(0).normal(size=(30, 4))
    >>> adata.obs["group"] = np.repeat(["a", "b", "c"], 10)
    >>> ax = latent(adata, color="group", show=False)
    >>> len(ax.collections[0].get_offsets())
    30
    """
    import matplotlib as mpl

    obj, emb, where = _embedding(data, mod, use_rep)
    keys: list[str | None] = [color] if color is None or isinstance(color, str) else list(color)
    if not keys:
        keys = [None]
    values = [None if k is None else _color_values(obj, k, where) for k in keys]  # validate first
    ok = np.isfinite(emb).all(axis=1)
    if not ok.all():
        warnings.warn(
            f"{int((~ok).sum())} cell(s) of {where} have a non-finite obsm[{use_rep!r}] and are not drawn",
            UserWarning,
            stacklevel=2,
        )
    if ok.sum() == 0:
        raise ValueError(f"no cell of {where} has a finite obsm[{use_rep!r}]")
    if umap:
        coords = np.full((emb.shape[0], 2), np.nan)
        coords[ok] = _umap(emb[ok], n_neighbors, random_state)
        xlabel, ylabel = "UMAP 1", "UMAP 2"
    else:
        coords = emb[:, :2]
        xlabel, ylabel = f"{use_rep} 1", f"{use_rep} 2"

    ax_given = ax is not None
    fig, axes = _panels(len(keys), ax, ncols, extra_w=1.0 if any(v is not None for v in values) else 0.0)
    kw = {"s": _point_size(int(ok.sum())), "linewidths": 0, "rasterized": bool(ok.sum() > 5000)}
    kw.update(scatter_kwargs)
    for a, key, val in zip(axes, keys, values):
        xy = coords[ok]
        if val is None:
            a.scatter(xy[:, 0], xy[:, 1], c="0.4", gid="cells", **kw)
            a.set_title(where if mod is not None else use_rep)
        else:
            series, uns = val
            series = series[ok]
            if _is_categorical(series):
                cat = series.astype("category") if not isinstance(series.dtype, pd.CategoricalDtype) else series
                cat = cat.cat.remove_unused_categories()
                cats = list(cat.cat.categories)
                palette = uns.get(f"{key}_colors") if uns is not None else None
                if palette is None or len(palette) != len(cats):
                    base = mpl.colormaps["tab10" if len(cats) <= 10 else "tab20"]
                    palette = [mpl.colors.to_hex(base(i % base.N)) for i in range(len(cats))]
                codes = cat.cat.codes.to_numpy()
                colors = np.array([_NA_COLOR] + [mpl.colors.to_hex(c) for c in palette], dtype=object)[codes + 1]
                a.scatter(xy[:, 0], xy[:, 1], c=list(colors), gid="cells", **kw)
                handles = [
                    mpl.lines.Line2D([], [], ls="", marker="o", color=palette[i], label=str(c))
                    for i, c in enumerate(cats)
                ]
                if (codes < 0).any():
                    handles.append(mpl.lines.Line2D([], [], ls="", marker="o", color=_NA_COLOR, label="NA"))
                a.legend(
                    handles=handles,
                    loc="center left",
                    bbox_to_anchor=(1.0, 0.5),
                    frameon=False,
                    fontsize="small",
                    ncols=1 if len(handles) <= 14 else 2,
                )
            else:
                v = pd.to_numeric(series, errors="coerce").to_numpy(np.float64)
                fin = np.isfinite(v)
                if (~fin).any():
                    a.scatter(xy[~fin, 0], xy[~fin, 1], c=_NA_COLOR, gid="cells_na", **kw)
                order = np.argsort(v[fin], kind="stable")  # high values on top
                kw_c = {"cmap": "viridis", **kw}
                sc_ = a.scatter(xy[fin][order, 0], xy[fin][order, 1], c=v[fin][order], gid="cells", **kw_c)
                fig.colorbar(sc_, ax=a, shrink=0.8)
            a.set_title(str(key))
        a.set_xlabel(xlabel)
        a.set_ylabel(ylabel)
        a.set_xticks([])
        a.set_yticks([])
    out = axes[0] if len(axes) == 1 else axes
    return _finish(fig, out, show=show, save=save, return_fig=return_fig, ax_given=ax_given)


# ---------------------------------------------------------------------------------------------
# pl.translation
# ---------------------------------------------------------------------------------------------
def translation(
    mdata: MuData,
    *,
    source: str,
    target: str,
    features: str | Sequence[str] | None = None,
    key: str | None = None,
    n_features: int = 6,
    cells: Sequence[str] | pd.Index | None = None,
    ncols: int = 3,
    ax: Axes | Sequence[Axes] | None = None,
    show: bool | None = None,
    save: str | Path | None = None,
    return_fig: bool = False,
    **scatter_kwargs: Any,
) -> Figure | Axes | list[Axes] | None:
    """Predicted against measured values of target features translated from a source modality.

    One panel per feature, one point per cell measured in the target, with the Pearson r across
    cells in the title and the identity line dashed. Measured counts are shown as
    ``log1p(1e4 * x / cell total)``, the scale of the predictions (as in
    :func:`pertcausal.tl.evaluate_integration`).

    Parameters
    ----------
    mdata
        MuData holding the modalities ``source`` and ``target`` and the translation ``key``.
    source, target
        Modalities translated from and to.
    features
        Features of the target to plot. ``None``: ``n_features`` of them, the best and the worst
        correlated (half each, the best first).
    key
        Modality holding the translation (default ``f"{target}_from_{source}"``, as written by
        :func:`pertcausal.tl.translate`).
    n_features
        Panels when ``features`` is None.
    cells
        Restrict to these cells (e.g. the held-out ones).
    ncols
        Panels per row.
    ax
        Axes to draw in: one Axes per panel (a single Axes for one feature). ``None``: a new figure.
    show, save, return_fig
        As in scanpy: show the figure, write it to ``save``, return it.
    **scatter_kwargs
        Passed to :meth:`matplotlib.axes.Axes.scatter`.

    Returns
    -------
    The Figure with ``return_fig``; otherwise, when not shown, the Axes (one feature) or a list of
    Axes, one per feature; otherwise ``None``. Points are the collection with gid ``"cells"``
    whose offsets are (measured, predicted).

    Examples
    --------
    >>> import numpy as np, anndata as ad, mudata as md
    >>> from pertcausal.pl._latent import translation
    >>> rng = np.random.default_rng(0)
    >>> prot = ad.AnnData(rng.normal(size=(40, 4)))
    >>> pred = ad.AnnData(prot.X + rng.normal(size=(40, 4)), obs=prot.obs.copy(), var=prot.var.copy())
    >>> mdata = md.MuData({"rna": ad.AnnData(np.zeros((40, 2)), obs=prot.obs.copy()), "prot": prot,
    ...                    "prot_from_rna": pred})
    >>> axes = translation(mdata, source="rna", target="prot", n_features=4, show=False)
    >>> len(axes)
    4
    """
    if not is_mudata(mdata):
        raise TypeError(f"mdata must be a MuData, got {type(mdata).__name__}")
    for what, name in (("source", source), ("target", target)):
        if name not in mdata.mod:
            raise KeyError(f"{what} {name!r} is not a modality of the MuData; modalities are: {_list(mdata.mod)}")
    key = f"{target}_from_{source}" if key is None else key
    if key not in mdata.mod:
        raise KeyError(
            f"translation {key!r} is not a modality of the MuData (run pertcausal.tl.translate, or pass key=); "
            f"translations present: {_list(translation_keys(mdata)) or 'none'}; modalities are: {_list(mdata.mod)}"
        )
    cell_index = None if cells is None else pd.Index(np.asarray(cells).astype(str))
    pred, true, _, shared, counts = translation_arrays(mdata, source, target, key, cell_index)
    if features is not None:
        wanted = [features] if isinstance(features, str) else list(features)
        missing = [f for f in wanted if f not in shared]
        if missing:
            raise KeyError(
                f"feature(s) {_list(missing)} are not among the features shared by {key!r} and {target!r}; "
                f"these include: {_list(shared, 10)}"
            )
        cols = shared.get_indexer(wanted)
        r_sel = feature_correlation(pred[:, cols], true[:, cols])
    else:
        if int(n_features) < 1:
            raise ValueError(f"n_features must be >= 1, got {n_features}")
        r_all = feature_correlation(pred, true)
        fin = np.flatnonzero(np.isfinite(r_all))
        if len(fin) == 0:
            cols = np.arange(min(int(n_features), len(shared)))
        else:
            ranked = fin[np.argsort(-r_all[fin], kind="stable")]
            n = min(int(n_features), len(ranked))
            n_best = math.ceil(n / 2)
            cols = np.concatenate([ranked[:n_best], ranked[len(ranked) - (n - n_best) :]])
        r_sel = r_all[cols]

    ax_given = ax is not None
    fig, axes = _panels(len(cols), ax, ncols)
    kw = {"s": _point_size(pred.shape[0]) / 2, "c": "0.3", "alpha": 0.6, "linewidths": 0}
    kw.update(scatter_kwargs)
    xlabel = f"measured (log1p, {TARGET_SUM:.0e} per cell)" if counts else "measured"
    for a, j, r in zip(axes, cols, r_sel):
        x, y = _column(true, int(j)), _column(pred, int(j))
        a.scatter(x, y, gid="cells", rasterized=len(x) > 5000, **kw)
        fin = np.isfinite(x) & np.isfinite(y)
        if fin.any():
            lo = float(min(x[fin].min(), y[fin].min()))
            hi = float(max(x[fin].max(), y[fin].max()))
            a.plot([lo, hi], [lo, hi], ls="--", lw=1, c="0.6", zorder=0, gid="identity")
        a.set_title(f"{shared[int(j)]}\nr = {r:.2f}" if np.isfinite(r) else f"{shared[int(j)]}\nr = n/a (constant)")
        a.set_xlabel(xlabel)
        a.set_ylabel("predicted")
    if not ax_given:
        fig.suptitle(f"{source} -> {target} ({pred.shape[0]:,} cells)")
    out = axes[0] if len(axes) == 1 else axes
    return _finish(fig, out, show=show, save=save, return_fig=return_fig, ax_given=ax_given)
