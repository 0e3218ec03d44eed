"""Figures of GWAS summary statistics: Manhattan and quantile-quantile plots."""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from .._utils._validate import _list, is_mudata
from ._imputation import _finish, _place_labels

if TYPE_CHECKING:
    from anndata import AnnData
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure
    from mudata import MuData

JOINT = "joint"  # phenotype= value that selects the multivariate test of uns[key]["joint"]
MAX_CURVES = 10  # qq draws at most this many phenotypes at once
_TINY = np.finfo(np.float64).tiny  # p == 0 is clipped here (-log10: about 307.7)
_THIN_BELOW = 2.0  # qq: points with -log10 p below this are thinned to quantiles
_N_QUANTILES = 2000  # ... about this many per spacing (linear in rank, linear in -log10 p)
_SPECIAL_CHROMS = {"X": 23, "Y": 24, "XY": 25, "M": 26, "MT": 26}


# ---------------------------------------------------------------------------------------------
# shared helpers
# ---------------------------------------------------------------------------------------------
def _summary_table(
    data: pd.DataFrame | AnnData | MuData, key: str, phenotype: str | None
) -> tuple[pd.DataFrame, str, bool]:
    """The summary-statistics table, where it came from (for errors), and whether it is the joint test."""
    from anndata import AnnData

    if isinstance(data, pd.DataFrame):
        return data, "data", phenotype == JOINT and "phenotype" not in data.columns
    if not (isinstance(data, AnnData) or is_mudata(data)):
        raise TypeError(
            f"data must be a pandas DataFrame of summary statistics or an AnnData/MuData holding one in "
            f".uns[key]['results'], got {type(data).__name__}"
        )
    if key not in data.uns:
        raise KeyError(
            f"key {key!r} is not in data.uns (expected the output of pertcausal.tl.gwas); "
            f"uns keys are: {_list(data.uns)}"
        )
    entry = data.uns[key]
    if not isinstance(entry, Mapping):
        raise TypeError(f"data.uns[{key!r}] must be a dict with the table under 'results', got {type(entry).__name__}")
    part = JOINT if phenotype == JOINT else "results"
    where = f"data.uns[{key!r}][{part!r}]"
    if part not in entry:
        raise KeyError(f"{part!r} is not in data.uns[{key!r}]; its keys are: {_list(entry)}")
    table = entry[part]
    if not isinstance(table, pd.DataFrame):
        raise TypeError(f"{where} must be a pandas DataFrame, got {type(table).__name__}")
    return table, where, part == JOINT


def _check_columns(table: pd.DataFrame, needed: Sequence[str], where: str) -> None:
    missing = [c for c in needed if c not in table.columns]
    if missing:
        raise KeyError(
            f"{where} lacks the column(s) {_list(missing)} of a GWAS summary-statistics table; "
            f"columns are: {_list(table.columns)}"
        )


def _p_values(table: pd.DataFrame, where: str) -> np.ndarray:
    """The ``p`` column as float64, checked to lie in [0, 1] (NaN kept)."""
    p = pd.to_numeric(table["p"], errors="coerce").to_numpy(np.float64)
    bad = np.isfinite(p) & ((p < 0) | (p > 1))
    if bad.any():
        raise ValueError(f"{where}['p'] holds {int(bad.sum())} value(s) outside [0, 1]; expected p values")
    if np.isinf(p).any():
        raise ValueError(f"{where}['p'] holds infinite values; expected p values")
    return p


def _phenotypes(table: pd.DataFrame) -> pd.Index:
    """Phenotypes present: in categorical order, else in order of first appearance."""
    if "phenotype" not in table.columns:
        return pd.Index([])
    col = table["phenotype"]
    if isinstance(col.dtype, pd.CategoricalDtype):
        return pd.Index(col.cat.remove_unused_categories().cat.categories.astype(str))
    return pd.Index(pd.unique(col.astype(str)))


def _select_phenotype(table: pd.DataFrame, phenotype: str, phenos: pd.Index, where: str, data_is_frame: bool) -> Any:
    if phenotype not in phenos:
        hint = ""
        if phenotype == JOINT and data_is_frame:
            hint = " (for the joint test of a DataFrame input, pass the joint table itself as data)"
        elif not data_is_frame:
            hint = f" (or {JOINT!r} for the joint test)"
        raise KeyError(f"phenotype {phenotype!r} is not in {where}['phenotype']; phenotypes are: {_list(phenos)}{hint}")
    return (table["phenotype"].astype(str) == phenotype).to_numpy()


def _chrom_key(label: str) -> tuple[int, int, str]:
    """Natural order: 1..22, X, Y, XY, MT; anything else after, alphabetically."""
    s = re.sub(r"^chr", "", str(label).strip(), flags=re.IGNORECASE)
    if s.isdigit():
        return (0, int(s), "")
    if s.upper() in _SPECIAL_CHROMS:
        return (1, _SPECIAL_CHROMS[s.upper()], "")
    return (2, 0, s)


def _neglog10(p: np.ndarray) -> np.ndarray:
    return -np.log10(np.clip(p, _TINY, 1.0))


def _check_prob(value: float | None, name: str) -> None:
    if value is not None and not (0.0 < float(value) < 1.0):
        raise ValueError(f"{name} must lie strictly between 0 and 1 (or be None), got {value}")


# ---------------------------------------------------------------------------------------------
# pl.manhattan
# ---------------------------------------------------------------------------------------------
def manhattan(
    data: pd.DataFrame | AnnData | MuData,
    *,
    key: str = "gwas",
    phenotype: str | None = None,
    significance: float | None = 5e-8,
    suggestive: float | None = 1e-5,
    highlight: Sequence[str] | None = None,
    annotate: int = 0,
    ax: Axes | None = None,
    show: bool | None = None,
    save: str | Path | None = None,
    return_fig: bool = False,
    colors: Sequence[str] = ("#1f4e79", "#8fb3d9"),
    s: float = 6,
    title: str | None = None,
) -> Axes | Figure | None:
    """Manhattan plot: -log10 p of every variant along the genome.

    Chromosomes are laid end to end in natural order (1..22, X, Y, MT; other labels after them,
    sorted), each spanning its first to its last variant, in alternating colours and labelled
    under its centre. Rows with a NaN p value are dropped; p = 0 is drawn at the smallest
    positive float (-log10 p of about 307.7).

    Parameters
    ----------
    data
        A tidy table of summary statistics (one row per variant and phenotype, with at least the
        columns ``variant``, ``chrom``, ``pos`` and ``p``, plus ``phenotype`` when it holds
        several), or an AnnData/MuData holding one in ``.uns[key]["results"]`` and the joint test
        in ``.uns[key]["joint"]``.
    key
        Key of ``.uns`` holding the results; ignored for a DataFrame.
    phenotype
        Phenotype to plot. ``None``: the only phenotype of the table, or, when it holds several,
        for each variant the minimum p over phenotypes (not corrected for their number).
        ``"joint"``: the multivariate test across phenotypes, ``.uns[key]["joint"]`` (for a
        DataFrame, pass that table as ``data``).
    significance, suggestive
        p values at which to draw a horizontal line (red dashed, grey dotted); ``None`` omits it.
    highlight
        Variant ids to draw in a contrasting colour (orange) on top of the others.
    annotate
        Label the ``annotate`` most significant variants with their id (and, for the minimum over
        phenotypes, the phenotype that gave it).
    ax
        Axes to draw in; ``None`` makes a new figure.
    show
        Show the figure with :func:`matplotlib.pyplot.show`. ``None``: show unless ``save``,
        ``return_fig`` or ``ax`` is given.
    save
        Write the figure to this path (format from the suffix, e.g. ``.png`` or ``.pdf``).
    return_fig
        Return the Figure.
    colors
        Colours that alternate between consecutive chromosomes.
    s
        Marker size (points squared).
    title
        Title of the axes; ``None`` names the phenotype (or the summary drawn).

    Returns
    -------
    The Figure when ``return_fig``; otherwise the Axes when not shown; otherwise ``None``. The
    variants are drawn as one collection per colour, each with gid ``"variants"`` and offsets
    (genome position, -log10 p); highlighted ones are a collection with gid
    ``"highlight"``; the threshold lines have gids ``"significance"`` and ``"suggestive"``; the
    x tick labels are the chromosomes in plotted order.

    Examples
    --------
    >>> import numpy as np, pandas as pd
    >>> import pertcausal as pc
    >>> rng = np.random.default_rng(0)
    >>> res = pd.DataFrame({
    ...     "variant": [f"rs{i}" for i in range(300)], "chrom": np.repeat(["1", "2", "X"], 100),
    ...     "pos": np.tile(np.arange(100) * 1000, 3), "phenotype": "height", "p": rng.uniform(size=300),
    ... })
    >>> res.loc[150, "p"] = 1e-12
    >>> ax = pc.pl.manhattan(res, annotate=1, show=False)
    >>> [t.get_text() for t in ax.get_xticklabels()]
    ['1', '2', 'X']
    """
    import matplotlib.pyplot as plt
    from matplotlib.colors import to_rgba_array

    _check_prob(significance, "significance")
    _check_prob(suggestive, "suggestive")
    if isinstance(annotate, bool) or int(annotate) != annotate or annotate < 0:
        raise ValueError(f"annotate must be an integer >= 0, got {annotate!r}")
    if isinstance(colors, str) or len(colors) == 0:
        raise ValueError(f"colors must be a non-empty sequence of colours, got {colors!r}")
    if isinstance(highlight, str):
        highlight = [highlight]

    table, where, is_joint = _summary_table(data, key, phenotype)
    _check_columns(table, ("variant", "chrom", "pos", "p"), where)
    p_all = _p_values(table, where)
    phenos = _phenotypes(table)
    min_over: int | None = None  # number of phenotypes when drawing the minimum p
    rows = np.ones(len(table), dtype=bool)
    if is_joint:
        label = "joint test across phenotypes"
    elif phenotype is not None:
        rows = _select_phenotype(table, phenotype, phenos, where, isinstance(data, pd.DataFrame))
        label = str(phenotype)
    elif len(phenos) > 1:
        min_over = len(phenos)
        label = f"min p over {min_over} phenotypes"
    else:
        label = str(phenos[0]) if len(phenos) else ""

    cols = ["variant", "chrom", "pos"] + (["phenotype"] if min_over else [])
    df = table.loc[rows, cols].copy()
    df["p"] = p_all[rows]
    df = df[np.isfinite(df["p"].to_numpy())]
    if highlight is not None:
        present = set(table["variant"].astype(str))
        missing = [v for v in highlight if str(v) not in present]
        if missing:
            raise KeyError(f"highlight variant(s) {_list(missing)} are not in {where}['variant']")
    if min_over:  # one row per variant: the one with the smallest p
        df = df.sort_values("p", kind="stable").drop_duplicates("variant", keep="first")
    if df.empty:
        raise ValueError(f"no variant with a finite p value to plot in {where} ({label or 'all rows'})")

    # genome coordinate: chromosomes end to end in natural order, each from its first variant
    df["chrom"] = df["chrom"].astype(str)
    chroms = sorted(pd.unique(df["chrom"]), key=_chrom_key)
    df["_c"] = pd.Categorical(df["chrom"], categories=chroms).codes
    df["pos"] = pd.to_numeric(df["pos"], errors="coerce")
    if df["pos"].isna().any():
        raise ValueError(f"{where}['pos'] holds missing or non-numeric positions")
    df = df.sort_values(["_c", "pos"], kind="stable")
    bounds = df.groupby("_c", sort=True)["pos"].agg(["min", "max"])
    span = (bounds["max"] - bounds["min"]).to_numpy(np.float64)
    gap = max(0.01 * span.sum(), 1.0)
    start = np.concatenate([[0.0], np.cumsum(span + gap)[:-1]])
    code = df["_c"].to_numpy()
    x = start[code] + (df["pos"].to_numpy(np.float64) - bounds["min"].to_numpy(np.float64)[code])
    y = _neglog10(df["p"].to_numpy())
    palette = to_rgba_array(list(colors))
    shade = code % len(palette)

    ax_given = ax is not None
    if ax is None:
        fig, ax = plt.subplots(figsize=(10.0, 3.6))
    fig = ax.figure
    big = len(x) > 5000
    for i, colour in enumerate(palette):  # one collection per colour: Agg draws those ~10x faster
        sel = shade == i
        if sel.any():
            ax.scatter(x[sel], y[sel], s=s, color=colour, linewidths=0, gid="variants", rasterized=big, zorder=2)
    variants = df["variant"].astype(str).to_numpy()
    if highlight:
        hit = np.isin(variants, np.asarray(list(highlight), dtype=str))
        ax.scatter(
            x[hit], y[hit], s=max(2.5 * s, 12), c="#ff7f0e", linewidths=0, gid="highlight", zorder=3, label="highlight"
        )

    top = float(y.max())
    for value, style, gid in (
        (significance, ("tab:red", "--"), "significance"),
        (suggestive, ("0.5", ":"), "suggestive"),
    ):
        if value is not None:
            ax.axhline(-np.log10(value), color=style[0], ls=style[1], lw=0.8, zorder=1, gid=gid)
            top = max(top, -np.log10(value))
    ax.set_xlim(-gap, start[-1] + span[-1] + gap)
    ax.set_ylim(0, top * 1.08 + 0.1)
    ax.set_xticks(start + span / 2, labels=chroms, rotation=90 if len(chroms) > 30 else 0)
    ax.tick_params(axis="x", length=0)
    ax.set_xlabel("chromosome")
    ax.set_ylabel((r"$-\log_{10}$ min p over " + f"{min_over} phenotypes") if min_over else r"$-\log_{10}\,p$")
    for side in ("top", "right"):
        ax.spines[side].set_visible(False)
    if annotate:
        best = np.argsort(-y, kind="stable")[: int(annotate)]
        if min_over:
            names = [f"{v} ({ph})" for v, ph in zip(variants[best], df["phenotype"].astype(str).to_numpy()[best])]
        else:
            names = [str(v) for v in variants[best]]
        _place_labels(ax, x[best], y[best], names)
    ax.set_title(label if title is None else title, fontsize=plt.rcParams["font.size"])
    return _finish(fig, ax, show=show, save=save, return_fig=return_fig, ax_given=ax_given)


# ---------------------------------------------------------------------------------------------
# pl.qq
# ---------------------------------------------------------------------------------------------
def _thin(expected: np.ndarray, observed: np.ndarray) -> np.ndarray:
    """Indices of the sorted points to draw: all with observed -log10 p >= 2, quantiles of the rest."""
    n = len(observed)
    low = np.flatnonzero(observed < _THIN_BELOW)
    if len(low) <= 5 * _N_QUANTILES:
        return np.arange(n)
    lo, hi = low[0], low[-1]
    by_rank = np.linspace(lo, hi, _N_QUANTILES)
    # evenly spaced in expected -log10 p too, so the bend towards the tail keeps its detail
    grid = np.linspace(expected[hi], expected[lo], _N_QUANTILES)
    by_log = (n + 1) * 10.0 ** (-grid) - 1  # rank (0-based) whose expected value is on the grid
    keep = np.unique(np.clip(np.round(np.concatenate([by_rank, by_log])).astype(np.int64), lo, hi))
    return np.union1d(keep, np.flatnonzero(observed >= _THIN_BELOW))


def qq(
    data: pd.DataFrame | AnnData | MuData,
    *,
    key: str = "gwas",
    phenotype: str | None = None,
    ci: float | None = 0.95,
    ax: Axes | None = None,
    show: bool | None = None,
    save: str | Path | None = None,
    return_fig: bool = False,
    title: str | None = None,
) -> Axes | Figure | None:
    """Quantile-quantile plot of p values: observed against expected -log10 p under the null.

    The i-th smallest of n p values is drawn against ``-log10(i / (n + 1))``, the mean of the i-th
    uniform order statistic. The shaded band is the pointwise ``ci`` interval of that order
    statistic, Beta(i, n - i + 1); points above it are more significant than chance allows. The
    legend gives the genomic inflation factor lambda (median chi-square over its null median)
    of every curve. Points with -log10 p below 2 are thinned to a few thousand quantiles, so
    millions of variants plot fast and look the same.

    Parameters
    ----------
    data
        A tidy table of summary statistics (column ``p``, plus ``phenotype`` when it holds
        several), or an AnnData/MuData holding one in ``.uns[key]["results"]`` and the joint test
        in ``.uns[key]["joint"]``. NaN p values are dropped; p = 0 is drawn at the smallest
        positive float.
    key
        Key of ``.uns`` holding the results; ignored for a DataFrame.
    phenotype
        Phenotype to plot. ``None``: one curve per phenotype (at most 10). ``"joint"``: the
        multivariate test across phenotypes, ``.uns[key]["joint"]`` (for a DataFrame, pass that
        table as ``data``).
    ci
        Coverage of the confidence band (for the largest number of p values among the curves);
        ``None`` omits it.
    ax
        Axes to draw in; ``None`` makes a new figure.
    show
        Show the figure with :func:`matplotlib.pyplot.show`. ``None``: show unless ``save``,
        ``return_fig`` or ``ax`` is given.
    save
        Write the figure to this path (format from the suffix, e.g. ``.png`` or ``.pdf``).
    return_fig
        Return the Figure.
    title
        Title of the axes; ``None`` names the phenotype and, for a single curve, its lambda.

    Returns
    -------
    The Figure when ``return_fig``; otherwise the Axes when not shown; otherwise ``None``. Each
    curve is a collection with gid ``"qq:<phenotype>"`` (``"qq"`` for a table without
    phenotypes) whose offsets are (expected, observed) -log10 p; the diagonal has gid
    ``"diagonal"`` and the band gid ``"ci"``. Legend entries read ``"<phenotype> (λ = 1.012)"``.

    Examples
    --------
    >>> import numpy as np, pandas as pd
    >>> import pertcausal as pc
    >>> rng = np.random.default_rng(0)
    >>> res = pd.DataFrame({"phenotype": np.repeat(["a", "b"], 2000), "p": rng.uniform(size=4000)})
    >>> ax = pc.pl.qq(res, show=False)
    >>> [t.get_text().split(" (")[0] for t in ax.get_legend().get_texts()]
    ['95% interval', 'a', 'b']
    """
    import matplotlib.pyplot as plt
    from scipy import stats

    from .._engines.gwas import genomic_inflation

    _check_prob(ci, "ci")
    table, where, is_joint = _summary_table(data, key, phenotype)
    _check_columns(table, ("p",), where)
    p_all = _p_values(table, where)
    phenos = _phenotypes(table)
    curves: list[tuple[str, np.ndarray]]
    if is_joint:
        curves = [(JOINT, p_all)]
    elif phenotype is not None:
        rows = _select_phenotype(table, phenotype, phenos, where, isinstance(data, pd.DataFrame))
        curves = [(str(phenotype), p_all[rows])]
    elif len(phenos) > MAX_CURVES:
        raise ValueError(
            f"{where} holds {len(phenos)} phenotypes; qq draws at most {MAX_CURVES} curves at once: pass "
            f"phenotype= to pick one of: {_list(phenos)}"
        )
    elif len(phenos):
        labels = table["phenotype"].astype(str).to_numpy()
        curves = [(ph, p_all[labels == ph]) for ph in phenos]
    else:
        curves = [("", p_all)]
    curves = [(name, np.sort(p[np.isfinite(p)])) for name, p in curves]
    empty = [name or "all rows" for name, p in curves if p.size == 0]
    if empty:
        raise ValueError(f"no finite p value to plot in {where} for: {_list(empty)}")

    ax_given = ax is not None
    if ax is None:
        fig, ax = plt.subplots(figsize=(4.4, 4.4))
    fig = ax.figure
    n_max = max(len(p) for _, p in curves)
    e_max = -np.log10(1.0 / (n_max + 1))
    o_max = e_max
    if ci is not None:  # band on a grid of ranks, log-spaced so the tail is smooth
        ranks = np.unique(np.round(np.geomspace(1, n_max, min(n_max, 2000))).astype(np.int64))
        lo = stats.beta.ppf((1 - ci) / 2, ranks, n_max - ranks + 1)
        hi = stats.beta.ppf((1 + ci) / 2, ranks, n_max - ranks + 1)
        ax.fill_between(
            -np.log10(ranks / (n_max + 1)),
            -np.log10(hi),
            -np.log10(lo),
            color="0.88",
            lw=0,
            zorder=0,
            gid="ci",
            label=f"{ci:.0%} interval",
        )
    lambdas = []
    for i, (name, p) in enumerate(curves):
        n = len(p)
        expected = -np.log10(np.arange(1, n + 1) / (n + 1))
        observed = _neglog10(p)
        keep = _thin(expected, observed)
        lam = genomic_inflation(p)
        lambdas.append(lam)
        lab = f"{name} (λ = {lam:.3f})" if name else f"λ = {lam:.3f}"
        ax.scatter(
            expected[keep],
            observed[keep],
            s=6,
            color=f"C{i}",
            linewidths=0,
            gid=f"qq:{name}" if name else "qq",
            label=lab,
            rasterized=len(keep) > 5000,
            zorder=2,
        )
        o_max = max(o_max, float(observed.max()))
    ax.plot([0, e_max * 1.05], [0, e_max * 1.05], ls="--", lw=1, c="0.5", zorder=1, gid="diagonal")
    ax.set_xlim(0, e_max * 1.05)
    ax.set_ylim(0, o_max * 1.05)
    ax.set_xlabel(r"expected $-\log_{10}\,p$")
    ax.set_ylabel(r"observed $-\log_{10}\,p$")
    ax.legend(fontsize="small", frameon=False, loc="upper left")
    if title is None:
        name = "joint test across phenotypes" if is_joint else curves[0][0]
        if len(curves) > 1:
            title = f"QQ plot of {len(curves)} phenotypes"
        else:
            title = f"{name}: λ = {lambdas[0]:.3f}" if name else f"λ = {lambdas[0]:.3f}"
    ax.set_title(title, fontsize=plt.rcParams["font.size"])
    return _finish(fig, ax, show=show, save=save, return_fig=return_fig, ax_given=ax_given)
