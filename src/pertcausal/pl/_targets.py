"""Figure of a sparse mechanism shift model: which latent variables each perturbation targets."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from .._utils._validate import _list, is_mudata, modality_holding_uns
from ._imputation import _CBAR_PAD, _CBAR_W, MAX_TICKS, _cmap, _finish, _label_axis

if TYPE_CHECKING:
    from anndata import AnnData
    from matplotlib.axes import Axes
    from matplotlib.colors import Colormap
    from matplotlib.figure import Figure
    from mudata import MuData

TABLE = "target_probability"  # entry of uns[key] holding the perturbations x latents table
_HINT = "run pertcausal.tl.sparse_shift first"


def _from_uns(uns: Mapping, key: str, where: str) -> pd.DataFrame:
    if key not in uns:
        raise KeyError(f"key {key!r} is not in {where}.uns ({_HINT}); uns keys are: {_list(uns)}")
    entry = uns[key]
    if not isinstance(entry, Mapping):
        raise TypeError(
            f"{where}.uns[{key!r}] must be a dict with the table under {TABLE!r}, got {type(entry).__name__}"
        )
    if TABLE not in entry:
        raise KeyError(f"{TABLE!r} is not in {where}.uns[{key!r}] ({_HINT}); its keys are: {_list(entry)}")
    table = entry[TABLE]
    if not isinstance(table, pd.DataFrame):
        raise TypeError(f"{where}.uns[{key!r}][{TABLE!r}] must be a pandas DataFrame, got {type(table).__name__}")
    return table


def _probability_table(data: pd.DataFrame | AnnData | MuData, key: str, mod: str | None) -> tuple[pd.DataFrame, str]:
    """The perturbations x latents table of target probabilities, and where it came from (for errors)."""
    from anndata import AnnData

    if isinstance(data, pd.DataFrame):
        return data, "data"
    if is_mudata(data):
        if mod is not None:
            if mod not in data.mod:
                raise KeyError(f"mod {mod!r} is not a modality of the MuData; modalities are: {_list(data.mod)}")
            where = f"mdata[{mod!r}]"
            return _from_uns(data.mod[mod].uns, key, where), f"{where}.uns[{key!r}][{TABLE!r}]"
        if key in data.uns:
            return _from_uns(data.uns, key, "mdata"), f"mdata.uns[{key!r}][{TABLE!r}]"
        mod = modality_holding_uns(
            data,
            key,
            missing=f"key {key!r} is not in mdata.uns nor in the uns of any modality ({_HINT}); "
            f"mdata.uns keys are: {_list(data.uns)}; modalities are: {_list(data.mod)}",
        )
        where = f"mdata[{mod!r}]"
        return _from_uns(data.mod[mod].uns, key, where), f"{where}.uns[{key!r}][{TABLE!r}]"
    if isinstance(data, AnnData):
        return _from_uns(data.uns, key, "adata"), f"adata.uns[{key!r}][{TABLE!r}]"
    raise TypeError(
        f"data must be a pandas DataFrame of target probabilities or an AnnData/MuData holding one in "
        f".uns[key][{TABLE!r}], got {type(data).__name__}"
    )


def _leaf_order(values: np.ndarray) -> np.ndarray:
    """Order of the rows by average-linkage hierarchical clustering (Euclidean); as given for <= 2 rows."""
    from scipy.cluster.hierarchy import leaves_list, linkage

    if values.shape[0] <= 2:
        return np.arange(values.shape[0])
    return leaves_list(linkage(values, method="average", metric="euclidean"))


def targets(
    data: pd.DataFrame | AnnData | MuData,
    *,
    key: str = "X_sparse_shift",
    mod: str | None = None,
    perturbations: Sequence[str] | None = None,
    threshold: float | None = 0.5,
    cluster: bool = True,
    cmap: str | Colormap = "viridis",
    ax: Axes | None = None,
    show: bool | None = None,
    save: str | Path | None = None,
    return_fig: bool = False,
    title: str | None = None,
) -> Axes | Figure | None:
    """Heatmap of the probability that each perturbation targets each latent variable.

    Rows are perturbations and columns latents of a sparse mechanism shift model (sVAE+); the colour is
    the probability of the target mask. Entries at or above ``threshold``, the targets the model calls,
    are marked with a dot. Rows and columns are ordered by hierarchical clustering so that perturbations
    with similar targets sit together.

    Parameters
    ----------
    data
        A DataFrame of target probabilities (perturbations x latents, values in [0, 1]), or an
        AnnData/MuData holding one in ``.uns[key]["target_probability"]`` (the output of
        :func:`pertcausal.tl.sparse_shift`). For a MuData the table is looked up in ``mdata.uns[key]``,
        then in the ``uns[key]`` of its modalities.
    key
        Key of ``.uns`` holding the results; ignored for a DataFrame.
    mod
        Modality of a MuData whose ``uns[key]`` to use; ``None`` looks in the MuData's ``uns`` first, then in
        the one modality that has ``key``.
    perturbations
        Perturbations (index labels of the table) to plot; ``None`` plots all.
    threshold
        Probability at or above which an entry is marked as a target; ``None`` marks nothing.
    cluster
        Order rows and columns by average-linkage hierarchical clustering of the probabilities
        (:func:`scipy.cluster.hierarchy.linkage`, Euclidean distance; an axis with at most 2 entries keeps
        its order). ``False`` keeps the order of ``perturbations`` (or of the table) and of the table's
        columns.
    cmap
        Colour map of the probabilities (from 0 to 1).
    ax
        Axes to draw in (the colour bar is carved out of it); ``None`` makes a new figure sized to the table.
    show
        Show the figure with :func:`matplotlib.pyplot.show`. ``None``: show unless ``save``, ``return_fig``
        or ``ax`` is given.
    save
        Write the figure to this path (format from the suffix, e.g. ``.png`` or ``.pdf``).
    return_fig
        Return the Figure.
    title
        Title of the axes; ``None`` says what the dots mark and how many there are.

    Returns
    -------
    The Figure when ``return_fig``; otherwise the heatmap Axes when not shown; otherwise ``None``. The
    image (``ax.images[0]``) holds the plotted matrix with row ``i`` the ``i``-th y tick label; its colour bar
    is ``ax.images[0].colorbar``; the dots are a collection with gid ``"targets"`` and offsets
    (column, row).

    Examples
    --------
    >>> import numpy as np, pandas as pd
    >>> import pertcausal as pc
    >>> prob = pd.DataFrame(
    ...     np.random.default_rng(0).uniform(size=(6, 4)),
    ...     index=[f"P{i}" for i in range(6)],
    ...     columns=[f"latent{j}" for j in range(4)],
    ... )
    >>> ax = pc.pl.targets(prob, perturbations=["P0", "P3", "P5"], cluster=False, show=False)
    >>> [t.get_text() for t in ax.get_yticklabels()]
    ['P0', 'P3', 'P5']
    """
    import matplotlib.pyplot as plt
    from mpl_toolkits.axes_grid1 import make_axes_locatable

    if threshold is not None and (isinstance(threshold, bool) or not 0.0 <= float(threshold) <= 1.0):
        raise ValueError(f"threshold must lie in [0, 1] (or be None), got {threshold!r}")
    table, where = _probability_table(data, key, mod)
    if table.shape[0] == 0 or table.shape[1] == 0:
        raise ValueError(f"{where} is empty (shape {table.shape}); nothing to plot")
    try:
        values = table.to_numpy(dtype=np.float64)
    except (TypeError, ValueError) as err:
        raise TypeError(f"{where} must hold numeric probabilities; dtypes are: {_list(table.dtypes)}") from err
    if not np.isfinite(values).all() or (values < 0).any() or (values > 1).any():
        bad = int((~np.isfinite(values) | (values < 0) | (values > 1)).sum())
        raise ValueError(f"{where} holds {bad} value(s) that are not probabilities in [0, 1] (or are NaN)")
    rows = pd.Index(table.index.astype(str))
    cols = pd.Index(table.columns.astype(str))
    if not rows.is_unique:
        raise ValueError(f"{where} has duplicated perturbation labels: {_list(rows[rows.duplicated()].unique())}")

    if perturbations is not None:
        wanted = [perturbations] if isinstance(perturbations, str) else [str(p) for p in perturbations]
        wanted = list(dict.fromkeys(wanted))
        if not wanted:
            raise ValueError("perturbations is empty; pass None to plot all")
        missing = [p for p in wanted if p not in rows]
        if missing:
            raise KeyError(f"perturbations {_list(missing)} are not in {where}; perturbations are: {_list(rows)}")
        take = rows.get_indexer(wanted)
        values, rows = values[take], rows[take]
    if cluster:
        r_order, c_order = _leaf_order(values), _leaf_order(values.T)
        values, rows, cols = values[np.ix_(r_order, c_order)], rows[r_order], cols[c_order]
    n_r, n_c = values.shape

    ax_given = ax is not None
    if ax is None:
        char = 0.6 * plt.rcParams["font.size"] / 72  # rough width of a character, inches
        panel_w = float(np.clip(0.3 * n_c, 2.2, 8.0))
        panel_h = float(np.clip(0.22 * n_r, 2.2, 9.0))
        left = 0.45 + (max(map(len, rows)) * char if n_r <= MAX_TICKS else 0.1) + 0.1
        bottom = 0.45 + (max(map(len, cols)) * char if n_c <= MAX_TICKS else 0.1) + 0.1
        top, right = 0.6, 0.85
        width = panel_w + _CBAR_PAD + _CBAR_W
        fig_w, fig_h = left + width + right, bottom + panel_h + top
        fig = plt.figure(figsize=(fig_w, fig_h))
        ax = fig.add_axes((left / fig_w, bottom / fig_h, width / fig_w, panel_h / fig_h))
    fig = ax.figure
    cax = make_axes_locatable(ax).append_axes("right", size=_CBAR_W, pad=_CBAR_PAD)
    im = ax.imshow(values, cmap=_cmap(cmap), vmin=0.0, vmax=1.0, aspect="auto", interpolation="nearest")
    fig.colorbar(im, cax=cax).set_label("target probability")
    _label_axis(ax, "x", cols, "latent")
    _label_axis(ax, "y", rows, "perturbation")

    label = "target probability"
    if threshold is not None:
        hit_r, hit_c = np.nonzero(values >= float(threshold))
        pos = ax.get_position()
        cell = min(pos.width * fig.get_figwidth() * 72 / n_c, pos.height * fig.get_figheight() * 72 / n_r)
        diameter = float(np.clip(0.35 * cell, 0.8, 6.0))
        ax.scatter(
            hit_c,
            hit_r,
            s=diameter**2,
            c="k",
            edgecolors="w",
            linewidths=0.3,
            marker="o",
            gid="targets",
            label=f"p >= {float(threshold):g}",
            rasterized=len(hit_r) > 5000,
        )
        label = f"target probability\n(dot: p ≥ {float(threshold):g}, {len(hit_r):,} of {n_r * n_c:,})"
    ax.set_xlim(-0.5, n_c - 0.5)
    ax.set_ylim(n_r - 0.5, -0.5)
    ax.set_title(label if title is None else title, fontsize=plt.rcParams["font.size"])
    return _finish(fig, ax, show=show, save=save, return_fig=return_fig, ax_given=ax_given)
