"""Figures of imputed perturbation x context grids and of predictions against the truth."""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import pandas as pd
import scipy.sparse as sp

from .._utils._names import pair_name
from .._utils._validate import _list, check_choice, is_mudata

if TYPE_CHECKING:
    from collections.abc import Sequence

    from anndata import AnnData
    from matplotlib.axes import Axes
    from matplotlib.colors import Colormap
    from matplotlib.figure import Figure
    from mudata import MuData

MAX_TICKS = 60  # above this many labels an axis gets no tick labels, only a count
_CBAR_W, _CBAR_PAD, _PANEL_PAD = 0.15, 0.1, 0.85  # inches: colour bar, its gap, gap before the next panel


# ---------------------------------------------------------------------------------------------
# shared helpers
# ---------------------------------------------------------------------------------------------
def _resolve(data: AnnData | MuData, key: str, *, argname: str) -> tuple[AnnData, str]:
    """The AnnData to plot (``data.mod[key]`` for a MuData) and a name for error messages."""
    from anndata import AnnData

    if is_mudata(data):
        if key not in data.mod:
            raise KeyError(
                f"key {key!r} is not a modality of the MuData passed as {argname}; modalities are: {_list(data.mod)}"
            )
        return data.mod[key], f"{argname}[{key!r}]"
    if isinstance(data, AnnData):
        return data, argname
    raise TypeError(f"{argname} must be an AnnData or MuData, got {type(data).__name__}")


def _labels(adata: AnnData, column: str, *, where: str) -> tuple[np.ndarray, pd.Index]:
    """Integer codes and ordered labels of an obs column (categorical order when categorical)."""
    if column not in adata.obs.columns:
        raise KeyError(
            f"{column!r} is not a column of {where}.obs (expected the output of pertcausal.tl.impute or "
            f"pertcausal.pp.signatures); columns are: {_list(adata.obs.columns)}"
        )
    values = adata.obs[column]
    cat = values if isinstance(values.dtype, pd.CategoricalDtype) else values.astype("category")
    cat = cat.cat.remove_unused_categories()
    return cat.cat.codes.to_numpy(np.int64), pd.Index(cat.cat.categories.astype(str))


def _dense_row(x: Any, i: int) -> np.ndarray:
    row = x[i]
    row = row.toarray() if sp.issparse(row) else np.asarray(row)
    return row.ravel().astype(np.float64)


def _finish(
    fig: Figure,
    axes: Any,
    *,
    show: bool | None,
    save: str | Path | None,
    return_fig: bool,
    ax_given: bool,
) -> Any:
    """Save and/or show as scanpy does; return the Figure, the axes or None."""
    import matplotlib.pyplot as plt

    if show is None:
        show = not (save is not None or return_fig or ax_given)
    if save is not None:
        fig.savefig(Path(save), bbox_inches="tight")
    if show:
        plt.show()
    if return_fig:
        return fig
    if not show:
        return axes
    return None


# ---------------------------------------------------------------------------------------------
# pl.imputation
# ---------------------------------------------------------------------------------------------
def _grid_values(
    adata: AnnData, gene: str | None, summary: str, *, where: str
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, pd.Index, pd.Index]:
    """Value per row, observed flag per row, row codes and the perturbation/context labels."""
    pc_, perts = _labels(adata, "perturbation", where=where)
    cc_, ctxs = _labels(adata, "context", where=where)
    if (pc_ < 0).any() or (cc_ < 0).any():
        raise ValueError(f"{where}.obs['perturbation'] and obs['context'] must not hold missing values")
    flat = pc_ * len(ctxs) + cc_
    if len(np.unique(flat)) != len(flat):
        raise ValueError(f"{where} holds a (perturbation, context) pair more than once; expected one row per pair")
    x = adata.X
    if x is None:
        raise ValueError(f"{where}.X is empty; expected the effects in X")
    if gene is not None:
        if gene not in adata.var_names:
            raise KeyError(f"gene {gene!r} is not in {where}.var_names; genes are: {_list(adata.var_names)}")
        col = x[:, int(adata.var_names.get_loc(gene))]
        values = (col.toarray() if sp.issparse(col) else np.asarray(col)).ravel().astype(np.float64)
    elif sp.issparse(x):
        if summary == "norm":
            values = np.sqrt(np.asarray(x.multiply(x).sum(axis=1), dtype=np.float64).ravel())
        else:
            values = np.asarray(x.sum(axis=1), dtype=np.float64).ravel() / max(1, x.shape[1])
    else:
        x = np.asarray(x)
        if summary == "norm":
            values = np.sqrt(np.einsum("ij,ij->i", x, x, dtype=np.float64))
        else:
            values = x.mean(axis=1, dtype=np.float64)
    if "observed" in adata.obs.columns:
        observed = adata.obs["observed"].to_numpy().astype(bool)
    else:  # a signatures AnnData: every row was measured
        observed = np.ones(adata.n_obs, dtype=bool)
    return values, observed, pc_, cc_, perts, ctxs


def _cmap(cmap: str | Colormap, bad: str = "0.85") -> Colormap:
    import matplotlib as mpl

    base = mpl.colormaps[cmap] if isinstance(cmap, str) else cmap
    return base.with_extremes(bad=bad)


def _label_axis(ax: Axes, which: str, labels: pd.Index, name: str) -> None:
    n = len(labels)
    if n <= MAX_TICKS:
        if which == "x":
            ax.set_xticks(np.arange(n), labels=list(labels), rotation=90)
            ax.set_xlabel(name)
        else:
            ax.set_yticks(np.arange(n), labels=list(labels))
            ax.set_ylabel(name)
    elif which == "x":
        ax.set_xticks([])
        ax.set_xlabel(f"{name} (n = {n:,})")
    else:
        ax.set_yticks([])
        ax.set_ylabel(f"{name} (n = {n:,})")


def imputation(
    data: AnnData | MuData,
    *,
    key: str = "impute",
    gene: str | None = None,
    summary: Literal["norm", "mean"] = "norm",
    show_observed: bool = True,
    show_reliability: bool = True,
    cmap: str | Colormap | None = None,
    ax: Axes | None = None,
    show: bool | None = None,
    save: str | Path | None = None,
    return_fig: bool = False,
) -> Figure | dict[str, Axes] | None:
    """Heatmap of an imputed perturbation x context grid, with the measured pairs marked.

    Each cell is one (perturbation, context) pair: the effect of ``gene`` or a summary of the
    pair's effect profile. A dot marks the pairs that were measured, so the imputed ones (no dot)
    stand out. When the method gave a reliability score (``obs["reliability"]`` has a finite
    value), a second panel shows it per pair. Pairs absent from the data are drawn grey.

    Parameters
    ----------
    data
        The output of :func:`pertcausal.tl.impute`: an AnnData, or a MuData holding it as the
        modality ``key``. A signatures AnnData from :func:`pertcausal.pp.signatures` works too
        (every row counts as observed).
    key
        Modality of a MuData to plot; ignored for an AnnData.
    gene
        Plot this gene's effect (a name in ``var_names``). ``None`` plots ``summary``.
    summary
        Summary of the effect profile per pair when ``gene`` is None: ``"norm"`` (L2 norm over
        genes, a magnitude) or ``"mean"`` (mean effect over genes, signed).
    show_observed
        Mark the measured pairs (``obs["observed"]``) with a dot.
    show_reliability
        Add a panel with ``obs["reliability"]`` when it holds any finite value.
    cmap
        Colour map of the main panel. ``None``: ``"RdBu_r"`` centred on 0 for signed values
        (``gene`` or ``summary="mean"``) and ``"Reds"`` from 0 for ``summary="norm"``.
    ax
        Axes to draw in (the colour bar and the reliability panel are carved out of it).
        ``None`` makes a new figure sized to the grid.
    show
        Show the figure with :func:`matplotlib.pyplot.show`. ``None``: show unless ``save``,
        ``return_fig`` or ``ax`` is given.
    save
        Write the figure to this path (format from the suffix, e.g. ``.png`` or ``.pdf``).
    return_fig
        Return the Figure.

    Returns
    -------
    The Figure when ``return_fig``; otherwise, when not shown, a dict of Axes with keys
    ``"heatmap"`` and ``"colorbar"``, plus ``"reliability"`` and ``"reliability_colorbar"``
    when that panel is drawn; otherwise ``None``. In the heatmap, row ``i`` is the ``i``-th
    perturbation category and column ``j`` the ``j``-th context category; the observed dots are
    a collection with gid ``"observed"``.

    Examples
    --------
    >>> import pertcausal as pc
    >>> mdata = pc.data.simulate_screen(n_perturbations=8, n_contexts=4, n_genes=30, seed=0)
    >>> pc.tl.impute(
    ...     mdata, method="synthetic_interventions", perturbation_key="perturbation",
    ...     context_key="context", control="control", progress_bar=False,
    ... )
    >>> axes = pc.pl.imputation(mdata, show=False)
    >>> axes["heatmap"].images[0].get_array().shape
    (8, 4)
    >>> ax = pc.pl.imputation(mdata, gene="G0003", show_reliability=False, show=False)["heatmap"]
    """
    import matplotlib.pyplot as plt
    from mpl_toolkits.axes_grid1 import make_axes_locatable

    check_choice(summary, ("norm", "mean"), argname="summary")
    adata, where = _resolve(data, key, argname="data")
    values, observed, pc_, cc_, perts, ctxs = _grid_values(adata, gene, summary, where=where)
    n_p, n_c = len(perts), len(ctxs)
    grid = np.full((n_p, n_c), np.nan)
    grid[pc_, cc_] = values

    reliability = None
    if show_reliability and "reliability" in adata.obs.columns:
        rel = pd.to_numeric(adata.obs["reliability"], errors="coerce").to_numpy(np.float64)
        if np.isfinite(rel).any():
            reliability = np.full((n_p, n_c), np.nan)
            reliability[pc_, cc_] = rel

    signed = gene is not None or summary == "mean"
    finite = grid[np.isfinite(grid)]
    if signed:
        vmax = float(np.abs(finite).max()) if finite.size else 1.0
        vmin, vmax = -(vmax or 1.0), (vmax or 1.0)
    else:
        vmin, vmax = 0.0, (float(finite.max()) if finite.size else 1.0) or 1.0
    cmap = cmap if cmap is not None else ("RdBu_r" if signed else "Reds")
    if gene is not None:
        what = f"effect on {gene}"
    else:
        what = "L2 norm of effect" if summary == "norm" else "mean effect"

    # layout: heatmap | colour bar | reliability | colour bar, all carved out of one Axes
    ax_given = ax is not None
    if ax is None:
        char = 0.6 * plt.rcParams["font.size"] / 72  # rough width of a character, inches
        panel_w = float(np.clip(0.32 * n_c, 2.2, 7.0))
        panel_h = float(np.clip(0.24 * n_p, 2.2, 9.0))
        left = 0.45 + (max(map(len, perts)) * char if n_p <= MAX_TICKS else 0.1) + 0.1
        bottom = 0.45 + (max(map(len, ctxs)) * char if n_c <= MAX_TICKS else 0.1) + 0.1
        top, right = 0.6, 0.85  # right: tick labels and label of the last colour bar
        width = panel_w + _CBAR_PAD + _CBAR_W  # the divider carves exactly this up
        if reliability is not None:
            width += _PANEL_PAD + panel_w + _CBAR_PAD + _CBAR_W
        fig_w, fig_h = left + width + right, bottom + panel_h + top
        fig = plt.figure(figsize=(fig_w, fig_h))
        ax = fig.add_axes((left / fig_w, bottom / fig_h, width / fig_w, panel_h / fig_h))
    fig = ax.figure
    divider = make_axes_locatable(ax)
    cax = divider.append_axes("right", size=_CBAR_W, pad=_CBAR_PAD)

    im = ax.imshow(
        np.ma.masked_invalid(grid),
        cmap=_cmap(cmap),
        vmin=vmin,
        vmax=vmax,
        aspect="auto",
        interpolation="nearest",
    )
    cb = fig.colorbar(im, cax=cax)
    cb.set_label(what)
    _label_axis(ax, "x", ctxs, "context")
    _label_axis(ax, "y", perts, "perturbation")
    n_obs_pairs = int(observed.sum())
    title = what
    if show_observed and n_obs_pairs:
        # dot diameter follows the cell size (points), so large grids stay legible and fast
        pos = ax.get_position()
        w_in = pos.width * fig.get_figwidth() / (2 if reliability is not None else 1)
        h_in = pos.height * fig.get_figheight()
        cell = min(w_in * 72 / n_c, h_in * 72 / n_p)
        diameter = float(np.clip(0.35 * cell, 0.6, 6.0))
        ax.scatter(
            cc_[observed],
            pc_[observed],
            s=diameter**2,
            c="k",
            marker="o",
            linewidths=0,
            gid="observed",
            label="observed",
            rasterized=n_obs_pairs > 5000,
        )
        title = f"{what}\n(dot: observed, {n_obs_pairs:,} of {n_p * n_c:,} pairs)"
    ax.set_xlim(-0.5, n_c - 0.5)
    ax.set_ylim(n_p - 0.5, -0.5)
    ax.set_title(title, fontsize=plt.rcParams["font.size"])
    axes: dict[str, Axes] = {"heatmap": ax, "colorbar": cax}

    if reliability is not None:
        ax_rel = divider.append_axes("right", size="100%", pad=_PANEL_PAD, sharey=ax)
        cax_rel = divider.append_axes("right", size=_CBAR_W, pad=_CBAR_PAD)
        rfin = reliability[np.isfinite(reliability)]
        lo, hi = float(rfin.min()), float(rfin.max())
        if lo >= 0.0 and hi <= 1.0:
            lo, hi = 0.0, 1.0
        elif lo == hi:
            lo, hi = lo - 0.5, hi + 0.5
        im_rel = ax_rel.imshow(
            np.ma.masked_invalid(reliability),
            cmap=_cmap("viridis"),
            vmin=lo,
            vmax=hi,
            aspect="auto",
            interpolation="nearest",
        )
        cb_rel = fig.colorbar(im_rel, cax=cax_rel)
        cb_rel.set_label("reliability")
        _label_axis(ax_rel, "x", ctxs, "context")
        ax_rel.tick_params(axis="y", labelleft=False)
        ax_rel.set_ylabel("")
        ax_rel.set_title("reliability\n(grey: none, e.g. observed)", fontsize=plt.rcParams["font.size"])
        axes["reliability"] = ax_rel
        axes["reliability_colorbar"] = cax_rel

    return _finish(fig, axes, show=show, save=save, return_fig=return_fig, ax_given=ax_given)


# ---------------------------------------------------------------------------------------------
# pl.prediction_scatter
# ---------------------------------------------------------------------------------------------
def _pair_row(adata: AnnData, perturbation: str, context: str, *, where: str) -> int:
    """Row of ``adata`` holding the pair, with an error that names it and lists available pairs."""
    name = pair_name(perturbation, context)
    names = pd.Index(adata.obs_names.astype(str))
    has_cols = {"perturbation", "context"} <= set(adata.obs.columns)
    if has_cols:
        p = adata.obs["perturbation"].astype(str).to_numpy()
        c = adata.obs["context"].astype(str).to_numpy()
        hits = np.flatnonzero((p == str(perturbation)) & (c == str(context)))
        if len(hits):
            return int(hits[0])
    elif name in names:
        return int(names.get_loc(name))
    # not found: say why and list a few pairs, those sharing a label first
    hint = ""
    if has_cols:
        unknown = []
        if str(perturbation) not in set(p):
            unknown.append(f"perturbation {perturbation!r}")
        if str(context) not in set(c):
            unknown.append(f"context {context!r}")
        if unknown:
            hint = f" ({' and '.join(unknown)} not in it at all)"
        related = [pair_name(a, b) for a, b in zip(p, c) if a == str(perturbation) or b == str(context)]
    else:
        head, tail = pair_name(perturbation, ""), pair_name("", context)
        related = [n for n in names if n.startswith(head) or n.endswith(tail)]
    others = related + [n for n in names if n not in set(related)]
    raise KeyError(
        f"pair {name!r} (perturbation {perturbation!r}, context {context!r}) is not in {where}{hint}; "
        f"available pairs include: {_list(others, limit=6)}"
    )


def _truth_vector(
    truth: AnnData | np.ndarray | Sequence[float] | pd.Series | None,
    pred_data: AnnData | MuData,
    pred: AnnData,
    perturbation: str,
    context: str,
) -> np.ndarray:
    """True effects aligned with ``pred.var_names`` (NaN for genes the truth lacks)."""
    from anndata import AnnData

    if truth is None:
        uns = pred_data.uns if is_mudata(pred_data) else pred.uns
        if "true_effect" not in uns:
            raise ValueError(
                "truth is None and pred holds no simulated truth (uns['true_effect'] of a MuData from "
                "pertcausal.data.simulate_screen); pass truth= (an AnnData of observed effects or an array)"
            )
        perts = [str(v) for v in np.asarray(uns["true_perturbations"])]
        ctxs = [str(v) for v in np.asarray(uns["true_contexts"])]
        missing = [
            f"{n} {v!r}"
            for n, v, pool in (("perturbation", perturbation, perts), ("context", context, ctxs))
            if str(v) not in pool
        ]
        if missing:
            raise KeyError(f"{' and '.join(missing)} not in the simulated truth (uns['true_effect'])")
        vec = np.asarray(uns["true_effect"])[perts.index(str(perturbation)), ctxs.index(str(context))]
        if vec.shape != (pred.n_vars,):
            raise ValueError(
                f"uns['true_effect'] has {vec.shape[-1]} genes but pred has {pred.n_vars}; pass truth= explicitly"
            )
        return vec.astype(np.float64)
    if isinstance(truth, AnnData):
        i = _pair_row(truth, perturbation, context, where="truth")
        if "observed" in truth.obs.columns and not bool(truth.obs["observed"].iloc[i]):
            warnings.warn(
                f"pair {pair_name(perturbation, context)} is imputed, not observed, in truth "
                "(obs['observed'] is False): comparing two predictions",
                UserWarning,
                stacklevel=3,
            )
        row = _dense_row(truth.X, i)
        pos = truth.var_names.get_indexer(pred.var_names)
        if (pos < 0).all():
            raise ValueError(
                f"truth and pred share no gene; pred genes: {_list(pred.var_names, 5)}, "
                f"truth genes: {_list(truth.var_names, 5)}"
            )
        return np.where(pos >= 0, row[np.maximum(pos, 0)], np.nan)
    if isinstance(truth, pd.Series):
        vec = truth.reindex(pred.var_names).to_numpy(np.float64)
        if not np.isfinite(vec).any():
            raise ValueError("truth (a Series) shares no gene of its index with pred.var_names")
        return vec
    vec = np.asarray(truth, dtype=np.float64)
    if vec.ndim != 1 or len(vec) != pred.n_vars:
        raise ValueError(
            f"truth as an array must be 1-D with one value per gene of pred ({pred.n_vars}); got shape {vec.shape}"
        )
    return vec


_OFFSETS = (
    (4, 3, "left", "bottom"),
    (4, -3, "left", "top"),
    (-4, 3, "right", "bottom"),
    (-4, -3, "right", "top"),
    (0, 7, "center", "bottom"),
    (0, -7, "center", "top"),
    (10, 10, "left", "bottom"),
    (-10, -10, "right", "top"),
)


def _place_labels(ax: Axes, x: np.ndarray, y: np.ndarray, names: list[str]) -> None:
    """Label points in order, each at the first of a few offsets that stays inside the axes and
    overlaps no earlier label (else the first that overlaps none, else the first offset)."""
    fig = ax.figure
    try:
        renderer = fig.canvas.get_renderer()
    except AttributeError:  # a backend without a renderer: no overlap check
        renderer = None
    frame = ax.get_window_extent(renderer) if renderer is not None else None
    placed: list[Any] = []
    for xi, yi, name in zip(x, y, names):
        best, best_score = _OFFSETS[0], -1
        if renderer is not None:
            for offset in _OFFSETS:
                dx, dy, ha, va = offset
                text = ax.annotate(
                    name, (xi, yi), xytext=(dx, dy), textcoords="offset points", ha=ha, va=va, fontsize=7
                )
                box = text.get_window_extent(renderer)
                text.remove()
                free = not any(box.expanded(1.05, 1.1).overlaps(b) for b in placed)
                inside = frame.x0 <= box.x0 and box.x1 <= frame.x1 and frame.y0 <= box.y0 and box.y1 <= frame.y1
                score = 2 * free + inside
                if score > best_score:
                    best, best_score = offset, score
                if score == 3:
                    break
        dx, dy, ha, va = best
        text = ax.annotate(
            name,
            (xi, yi),
            xytext=(dx, dy),
            textcoords="offset points",
            ha=ha,
            va=va,
            fontsize=7,
            color="tab:red",
            zorder=4,
            gid="label",
        )
        if renderer is not None:
            placed.append(text.get_window_extent(renderer))


def prediction_scatter(
    pred: AnnData | MuData,
    truth: AnnData | np.ndarray | Sequence[float] | pd.Series | None = None,
    *,
    perturbation: str,
    context: str,
    key: str = "impute",
    top_k: int | None = None,
    highlight: int = 10,
    ax: Axes | None = None,
    show: bool | None = None,
    save: str | Path | None = None,
    return_fig: bool = False,
) -> Figure | Axes | None:
    """Predicted against true effect, one point per gene, for one (perturbation, context) pair.

    Parameters
    ----------
    pred
        Predictions: the output of :func:`pertcausal.tl.impute` (an AnnData, or a MuData holding
        it as the modality ``key``) or any AnnData with a row ``"perturbation|context"`` (e.g.
        signatures). Rows are found through ``obs["perturbation"]`` and ``obs["context"]`` when
        present, else through ``obs_names``.
    truth
        True effects of the pair: an AnnData holding the pair (signatures from
        :func:`pertcausal.pp.signatures`, or the imputed AnnData of a run where the pair was
        measured), genes matched by name; a 1-D array aligned with ``pred.var_names``; or a
        Series indexed by gene. ``None`` takes the simulated truth ``uns["true_effect"]`` of a
        MuData from :func:`pertcausal.data.simulate_screen` passed as ``pred``.
    perturbation, context
        The pair to plot.
    key
        Modality of a MuData ``pred`` that holds the predictions.
    top_k
        Plot only the ``top_k`` genes with the largest absolute true effect (``None``: all genes
        with a finite value in both).
    highlight
        Label this many genes with the largest absolute true effect among those plotted (0: none).
    ax
        Axes to draw in; ``None`` makes a new figure.
    show
        Show the figure with :func:`matplotlib.pyplot.show`. ``None``: show unless ``save``,
        ``return_fig`` or ``ax`` is given.
    save
        Write the figure to this path (format from the suffix).
    return_fig
        Return the Figure.

    Returns
    -------
    The Figure when ``return_fig``; otherwise the Axes when not shown; otherwise ``None``. The
    points are a collection with gid ``"genes"`` whose offsets are (true, predicted) in the order
    of ``pred.var_names``; the title gives the Pearson r over the plotted genes.

    Examples
    --------
    >>> import pertcausal as pc
    >>> mdata = pc.data.simulate_screen(n_perturbations=8, n_contexts=4, n_genes=30, seed=0)
    >>> pc.tl.impute(
    ...     mdata, method="additive", perturbation_key="perturbation", context_key="context",
    ...     control="control", progress_bar=False,
    ... )
    >>> imp = mdata["impute"]
    >>> p, c = imp.obs.loc[~imp.obs["observed"], ["perturbation", "context"]].iloc[0]
    >>> ax = pc.pl.prediction_scatter(mdata, perturbation=p, context=c, top_k=20, show=False)
    >>> len(ax.collections[0].get_offsets())
    20
    """
    import matplotlib.pyplot as plt

    if top_k is not None and int(top_k) < 1:
        raise ValueError(f"top_k must be >= 1 or None, got {top_k}")
    if highlight is None or int(highlight) < 0:
        raise ValueError(f"highlight must be >= 0, got {highlight}")
    adata, where = _resolve(pred, key, argname="pred")
    i = _pair_row(adata, str(perturbation), str(context), where=where)
    if "observed" in adata.obs.columns and bool(adata.obs["observed"].iloc[i]):
        warnings.warn(
            f"pair {pair_name(perturbation, context)} is observed in pred (obs['observed'] is True): its X is the "
            "measured effect, not a prediction; hold the pair out before imputing to assess the method",
            UserWarning,
            stacklevel=2,
        )
    y_all = _dense_row(adata.X, i)
    x_all = _truth_vector(truth, pred, adata, str(perturbation), str(context))
    genes = np.asarray(adata.var_names.astype(str))
    keep = np.isfinite(x_all) & np.isfinite(y_all)
    if not keep.any():
        raise ValueError(f"no gene has a finite true and predicted effect for pair {pair_name(perturbation, context)}")
    if top_k is not None and int(top_k) < keep.sum():
        cand = np.flatnonzero(keep)
        top = cand[np.argsort(-np.abs(x_all[cand]), kind="stable")[: int(top_k)]]
        keep = np.zeros_like(keep)
        keep[top] = True
    x, y, names = x_all[keep], y_all[keep], genes[keep]
    r = float(np.corrcoef(x, y)[0, 1]) if len(x) > 1 and x.std() > 0 and y.std() > 0 else float("nan")

    ax_given = ax is not None
    if ax is None:
        fig, ax = plt.subplots(figsize=(4.4, 4.4))
    fig = ax.figure
    big = len(x) > 5000
    ax.scatter(
        x, y, s=4 if len(x) > 2000 else 14, c="0.35", alpha=0.8, linewidths=0, gid="genes", rasterized=big, zorder=2
    )
    lo, hi = float(min(x.min(), y.min())), float(max(x.max(), y.max()))
    pad = 0.05 * (hi - lo) if hi > lo else 1.0
    lo, hi = lo - pad, hi + pad
    ax.plot([lo, hi], [lo, hi], ls="--", lw=1, c="0.6", zorder=1, gid="identity")
    ax.axhline(0, lw=0.5, c="0.85", zorder=0)
    ax.axvline(0, lw=0.5, c="0.85", zorder=0)
    ax.set_xlim(lo, hi)
    ax.set_ylim(lo, hi)
    ax.set_aspect("equal", adjustable="box")
    n_lab = min(int(highlight), len(x))
    if n_lab:
        ax.apply_aspect()
        top = np.argsort(-np.abs(x), kind="stable")[:n_lab]
        ax.scatter(
            x[top], y[top], s=26, facecolors="none", edgecolors="tab:red", linewidths=1, gid="highlight", zorder=3
        )
        _place_labels(ax, x[top], y[top], [str(n) for n in names[top]])
    ax.set_xlabel("true effect")
    ax.set_ylabel("predicted effect")
    scope = f"top {len(x)} genes by |true effect|" if top_k is not None else f"{len(x)} genes"
    ax.set_title(f"{perturbation} in {context}\nPearson r = {r:.2f} ({scope})", fontsize=plt.rcParams["font.size"])
    return _finish(fig, ax, show=show, save=save, return_fig=return_fig, ax_given=ax_given)


# ---------------------------------------------------------------------------------------------
# pl.reliability
# ---------------------------------------------------------------------------------------------
def reliability(
    results: pd.DataFrame,
    *,
    metric: str = "rel_error",
    methods: Sequence[str] | None = None,
    n_points: int = 20,
    ax: Axes | None = None,
    show: bool | None = None,
    save: str | Path | None = None,
    return_fig: bool = False,
) -> Axes | Figure | None:
    """How much a method's reliability score is worth: error of its most reliable predictions.

    For every method of :func:`pertcausal.tl.evaluate_imputation` that gave a reliability, the
    held-out pairs are sorted from most to least reliable and the mean ``metric`` of the most
    reliable fraction is drawn against that fraction (a retention curve). An informative score
    gives a curve that falls towards the left for an error (rises for an accuracy such as
    ``pearson_top_k``); a flat curve means the score says nothing about the error.

    Parameters
    ----------
    results
        The DataFrame returned by :func:`pertcausal.tl.evaluate_imputation`.
    metric
        A per-pair column of ``results``: ``"rel_error"`` (default), ``"mse"``, ``"pearson_top_k"``, ...
    methods
        Methods to draw (default: every method with a finite reliability).
    n_points
        Points per curve, at evenly spaced retained fractions from ``1 / n_points`` to 1.
    ax, show, save, return_fig
        As in scanpy: draw into ``ax``, show the figure, save it, or return the Figure.

    Returns
    -------
    The Axes (``show=False``), the Figure (``return_fig=True``) or ``None``.

    Examples
    --------
    >>> import pertcausal as pc
    >>> sig = pc.data.simulate_effects(n_perturbations=30, n_contexts=6, n_genes=20, seed=0)
    >>> res = pc.tl.evaluate_imputation(sig, methods=["additive", "nearest_context"], n_folds=3, progress_bar=False)
    >>> ax = pc.pl.reliability(res, show=False)
    """
    import matplotlib.pyplot as plt

    for col in ("method", "reliability", metric):
        if col not in results.columns:
            raise KeyError(
                f"results have no column {col!r} (expected the output of pertcausal.tl.evaluate_imputation); "
                f"columns are: {_list(results.columns)}"
            )
    if n_points < 1:
        raise ValueError(f"n_points must be >= 1, got {n_points}")
    rel = pd.to_numeric(results["reliability"], errors="coerce")
    has = results.loc[np.isfinite(rel), "method"].astype(str).unique().tolist()
    if methods is None:
        methods = [m for m in results["method"].astype(str).unique() if m in has]
    else:
        unknown = [m for m in methods if m not in has]
        if unknown:
            raise ValueError(
                f"method(s) {_list(unknown)} have no finite reliability in results; those with one: {_list(has)}"
            )
    if not methods:
        raise ValueError("no method in results gave a reliability score")
    ax_given = ax is not None
    if ax is None:
        fig, ax = plt.subplots(figsize=(5.0, 3.6))
    fig = ax.figure
    fractions = np.linspace(1.0 / n_points, 1.0, n_points)
    for m in methods:
        part = results[results["method"].astype(str) == m]
        r = pd.to_numeric(part["reliability"], errors="coerce").to_numpy(np.float64)
        v = pd.to_numeric(part[metric], errors="coerce").to_numpy(np.float64)
        ok = np.isfinite(r) & np.isfinite(v)
        r, v = r[ok], v[ok]
        order = np.argsort(-r, kind="stable")
        csum = np.cumsum(v[order])
        keep = np.maximum(1, np.round(fractions * len(v)).astype(int))
        ax.plot(fractions, csum[keep - 1] / keep, marker="o", ms=3, label=m, gid=f"curve:{m}")
    ax.set_xlabel("fraction of held-out pairs kept (most reliable first)")
    ax.set_ylabel(f"mean {metric}")
    ax.set_xlim(0, 1.02)
    ax.legend(fontsize="small", frameon=False)
    ax.set_title("reliability versus error")
    return _finish(fig, ax, show=show, save=save, return_fig=return_fig, ax_given=ax_given)
