"""Figures of a learned gene regulatory graph: the strongest edges as a network, or the gene-module factor graph."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import pandas as pd
import scipy.sparse as sp

from .._utils._validate import _list, check_choice, is_mudata, modality_holding_uns
from ._imputation import _CBAR_PAD, _CBAR_W, MAX_TICKS, _cmap, _finish, _label_axis

if TYPE_CHECKING:
    from anndata import AnnData
    from matplotlib.axes import Axes
    from matplotlib.colors import Colormap
    from mudata import MuData

_HINT = "run pertcausal.tl.causal_graph first"
_KINDS = ("network", "modules")
_CENTRE_COLOR, _NODE_COLOR = "gold", "0.88"
_KK_MAX = 200  # more nodes than this: spring layout only


def _graph_adata(data: AnnData | MuData, key: str, mod: str | None) -> tuple[AnnData, str]:
    """The AnnData holding the graph (a modality of a MuData) and its name for error messages."""
    from anndata import AnnData

    if is_mudata(data):
        if mod is not None:
            if mod not in data.mod:
                raise KeyError(f"mod {mod!r} is not a modality of the MuData; modalities are: {_list(data.mod)}")
            return data.mod[mod], f"mdata[{mod!r}]"
        mod = modality_holding_uns(
            data,
            key,
            missing=f"key {key!r} is not in the uns of any modality of the MuData ({_HINT}, or pass mod=); "
            f"modalities are: {_list(data.mod)}",
        )
        return data.mod[mod], f"mdata[{mod!r}]"
    if isinstance(data, AnnData):
        return data, "adata"
    raise TypeError(f"data must be an AnnData or MuData, got {type(data).__name__}")


def _check_result(adata: AnnData, key: str, where: str) -> str:
    """Check ``uns[key]`` and return the method that learnt the graph (``""`` when unknown)."""
    if key not in adata.uns:
        raise KeyError(f"key {key!r} is not in {where}.uns ({_HINT}); uns keys are: {_list(adata.uns)}")
    entry = adata.uns[key]
    if not isinstance(entry, Mapping):
        raise TypeError(
            f"{where}.uns[{key!r}] must be a dict (from pertcausal.tl.causal_graph), got {type(entry).__name__}"
        )
    params = entry.get("params", {})
    method = entry.get("method", params.get("method", "") if isinstance(params, Mapping) else "")
    method = str(method) if method is not None else ""
    if method == "gaussian":
        raise ValueError(
            f"{where}.uns[{key!r}] holds a 'gaussian' model (its method), which learns no graph and so has "
            "nothing to draw; rerun pertcausal.tl.causal_graph with method='dcdfg' or 'notears_lowrank'"
        )
    return method


def _centre_genes(genes: str | Sequence[str] | None, var_names: pd.Index, where: str) -> list[str] | None:
    """The requested genes as a de-duplicated list, checked against ``var_names``."""
    if genes is None:
        return None
    wanted = list(dict.fromkeys([genes] if isinstance(genes, str) else [str(g) for g in genes]))
    if not wanted:
        raise ValueError("genes is empty; pass None to show the strongest edges overall")
    missing = [g for g in wanted if g not in var_names]
    if missing:
        raise KeyError(f"genes {_list(missing)} are not in {where}.var_names; genes are: {_list(var_names)}")
    return wanted


def _not_modelled(adata: AnnData, key: str, centre: list[str]) -> str:
    """A note naming the centre genes that the model left out (for error messages)."""
    modelled = adata.uns[key].get("genes")
    if modelled is None:
        return ""
    out = [g for g in centre if g not in set(map(str, np.asarray(modelled).ravel()))]
    return f" ({_list(out)} not modelled: not in uns[{key!r}]['genes'])" if out else ""


def _edges(adata: AnnData, key: str, where: str, method: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Parents, children and weights of the non-zero edges of ``varp[key]``."""
    if key not in adata.varp:
        note = f" (method {method!r})" if method else ""
        raise KeyError(f"key {key!r} is not in {where}.varp{note} ({_HINT}); varp keys are: {_list(adata.varp)}")
    w = adata.varp[key]
    w = sp.coo_matrix(w if sp.issparse(w) else np.asarray(w))
    if w.shape != (adata.n_vars, adata.n_vars):
        raise ValueError(f"{where}.varp[{key!r}] has shape {w.shape}, expected ({adata.n_vars}, {adata.n_vars})")
    data = np.asarray(w.data, dtype=np.float64)
    keep = np.isfinite(data) & (data != 0)
    return np.asarray(w.row)[keep], np.asarray(w.col)[keep], data[keep]


def _module_maps(adata: AnnData, key: str, where: str, method: str) -> tuple[np.ndarray, np.ndarray]:
    """Inputs (gene -> module) and outputs (module -> gene), both genes x modules."""
    maps = []
    for suffix in ("inputs", "outputs"):
        name = f"{key}_{suffix}"
        if name not in adata.varm:
            note = f"; method {method!r} may learn no modules" if method and method != "dcdfg" else ""
            raise KeyError(
                f"key {name!r} is not in {where}.varm ({_HINT} with method='dcdfg'{note}); "
                f"varm keys are: {_list(adata.varm)}"
            )
        m = adata.varm[name]
        m = np.asarray(m.toarray() if sp.issparse(m) else m, dtype=np.float64)
        if m.ndim != 2 or m.shape[0] != adata.n_vars:
            raise ValueError(f"{where}.varm[{name!r}] has shape {m.shape}, expected ({adata.n_vars}, n_modules)")
        maps.append(np.where(np.isfinite(m), m, 0.0))
    inputs, outputs = maps
    if inputs.shape != outputs.shape:
        raise ValueError(
            f"{where}.varm[{key + '_inputs'!r}] and [{key + '_outputs'!r}] differ in shape: "
            f"{inputs.shape} and {outputs.shape}"
        )
    return inputs, outputs


def _count(value: int, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < 1:
        raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
    return int(value)


def _layout(graph: Any) -> dict[str, np.ndarray]:
    """Node positions: Kamada-Kawai (stress on hop distances, unreachable pairs one hop beyond the longest path)
    started from a spring layout with a fixed seed, so the same graph always gives the same layout; the spring
    layout alone above ``_KK_MAX`` nodes."""
    import networkx as nx

    if graph.number_of_nodes() <= 2 or graph.number_of_nodes() > _KK_MAX:  # Kamada-Kawai is quadratic
        return nx.spring_layout(graph, seed=0, weight=None)
    und = graph.to_undirected(as_view=True)
    dist = {u: dict(d) for u, d in nx.all_pairs_shortest_path_length(und)}
    far = max((max(d.values()) for d in dist.values()), default=1) + 1
    full = {u: {v: dist[u].get(v, far) for v in graph.nodes} for u in graph.nodes}
    start = nx.spring_layout(graph, seed=0, weight=None)
    return nx.kamada_kawai_layout(graph, dist=full, pos=start, weight=None)


@dataclass(frozen=True)
class _Graph:
    """The stored graph a plot draws: the modality holding it, its key, where that is (for messages), the
    method that fitted it and the modality's gene names."""

    adata: AnnData
    key: str
    where: str
    method: str
    var_names: pd.Index


def causal_graph(
    data: AnnData | MuData,
    *,
    genes: str | Sequence[str] | None = None,
    kind: Literal["network", "modules"] = "network",
    key: str = "causal_graph",
    mod: str | None = None,
    n_edges: int = 30,
    n_genes: int = 50,
    ax: Axes | None = None,
    figsize: tuple[float, float] | None = None,
    cmap: str | Colormap = "RdBu_r",
    save: str | Path | None = None,
    show: bool | None = None,
) -> Axes | None:
    """Plot a gene regulatory graph learnt by :func:`pertcausal.tl.causal_graph`.

    ``kind="network"`` draws the ``n_edges`` edges of largest absolute weight of the weighted directed gene graph
    ``varp[key]`` (row = regulator, column = target) as a network: arrows point from regulator to target, are
    coloured by their signed weight on a colour scale symmetric about 0 (with ``"RdBu_r"`` red = activation,
    blue = repression) and are wider the stronger they are. With ``genes``, only edges into or out of these genes
    are considered (one hop) and the genes are highlighted. Nodes are placed by a Kamada-Kawai layout started from a
    spring layout with a fixed seed (spring only above 200 nodes), so the same graph always gives the same figure.

    ``kind="modules"`` draws the factor graph of a DCD-FG model as two heatmaps of modules (rows) x genes
    (columns): on top the inputs, the strength with which each gene feeds each module (gene → module,
    ``varm[key + "_inputs"]``, >= 0), below the outputs, the signed weight with which each module writes each
    gene (module → gene, ``varm[key + "_outputs"]``). Zero, no edge, is the centre colour of ``cmap`` in both
    panels; the inputs use its upper half.

    Parameters
    ----------
    data
        An AnnData holding the output of :func:`pertcausal.tl.causal_graph` (``uns[key]``, ``varp[key]`` and, for
        DCD-FG, ``varm[key + "_inputs"]`` and ``varm[key + "_outputs"]``), or a MuData with it in a modality.
    genes
        Gene name(s) of ``var_names``. Network: centre genes, whose incoming and outgoing edges are shown.
        Modules: the genes (columns) to show, in this order. ``None``: the strongest edges overall (network) or
        the ``n_genes`` genes with the most module edges (modules).
    kind
        ``"network"`` or ``"modules"``.
    key
        The ``key_added`` of :func:`pertcausal.tl.causal_graph`.
    mod
        Modality of a MuData holding the graph; ``None`` takes the only modality whose ``uns`` holds ``key``.
        Ignored for an AnnData.
    n_edges
        Network: number of edges of largest ``|weight|`` drawn (fewer when fewer exist).
    n_genes
        Modules: number of genes with the most module edges (inputs plus outputs, ties broken by total absolute
        strength) shown when ``genes`` is ``None``; they are ordered by the module they are most strongly tied to.
    ax
        Axes to draw in. Network: the colour bar is carved out of it. Modules: it is split into the two panels and
        their colour bars. ``None`` makes a new figure.
    figsize
        Size of a new figure (inches); ``None`` sizes it to the content. Ignored when ``ax`` is given.
    cmap
        Diverging colour map of the signed weights, centred on 0.
    save
        Write the figure to this path (format from the suffix, e.g. ``.png`` or ``.pdf``).
    show
        Show the figure with :func:`matplotlib.pyplot.show`. ``None``: show unless ``save`` or ``ax`` is given.

    Returns
    -------
    ``None`` when shown, else an Axes. Network: the Axes of the network; each drawn edge is a
    :class:`~matplotlib.patches.FancyArrowPatch` in ``ax.patches`` with gid ``"edge:PARENT->CHILD"``, the nodes are
    collections with gid ``"genes"`` and, with ``genes``, ``"centre"``, the node labels texts with gid ``"label"``.
    Modules: the Axes of the top (inputs) panel, gid ``"inputs"``; the outputs panel is the Axes of
    ``ax.figure.axes`` with gid ``"outputs"``. In both, ``images[0]`` holds the modules x genes matrix, rows
    labelled ``"module 0"``, ``"module 1"``, ... and columns named by the x tick labels of the outputs panel.

    Examples
    --------
    >>> import numpy as np, pandas as pd, scipy.sparse as sp
    >>> from anndata import AnnData
    >>> import pertcausal as pc
    >>> names = [f"g{i}" for i in range(6)]
    >>> adata = AnnData(np.zeros((4, 6), dtype=np.float32), var=pd.DataFrame(index=names))
    >>> w = np.zeros((6, 6), dtype=np.float32)
    >>> w[0, 1], w[0, 2], w[3, 2], w[2, 4], w[4, 5] = 1.5, -0.8, 0.6, -1.2, 0.3  # regulator -> target
    >>> adata.varp["causal_graph"] = sp.csr_matrix(w)
    >>> inputs, outputs = np.zeros((6, 2), dtype=np.float32), np.zeros((6, 2), dtype=np.float32)
    >>> inputs[[0, 3], 0], outputs[[1, 2], 0] = 1.0, [1.5, -0.5]  # g0, g3 -> module 0 -> g1, g2
    >>> inputs[[2, 4], 1], outputs[[4, 5], 1] = 0.8, [-1.2, 0.3]  # g2, g4 -> module 1 -> g4, g5
    >>> adata.varm["causal_graph_inputs"], adata.varm["causal_graph_outputs"] = inputs, outputs
    >>> adata.uns["causal_graph"] = {"genes": np.array(names), "params": {"method": "dcdfg"}}
    >>> ax = pc.pl.causal_graph(adata, genes="g2", show=False)  # edges into and out of g2
    >>> sorted(p.get_gid() for p in ax.patches)
    ['edge:g0->g2', 'edge:g2->g4', 'edge:g3->g2']
    >>> ax = pc.pl.causal_graph(adata, kind="modules", show=False)
    >>> ax.images[0].get_array().shape  # 2 modules x 6 genes
    (2, 6)
    """
    check_choice(kind, _KINDS, argname="kind")
    n_edges = _count(n_edges, "n_edges")
    n_genes = _count(n_genes, "n_genes")
    adata, where = _graph_adata(data, key, mod)
    method = _check_result(adata, key, where)
    var_names = pd.Index(adata.var_names.astype(str))
    centre = _centre_genes(genes, var_names, where)
    stored = _Graph(adata, key, where, method, var_names)
    draw = _network if kind == "network" else _modules
    return draw(stored, centre, n_edges if kind == "network" else n_genes, ax, figsize, cmap, save=save, show=show)


def _network(
    stored: _Graph,
    centre: list[str] | None,
    n_edges: int,
    ax: Axes | None,
    figsize: tuple[float, float] | None,
    cmap: str | Colormap,
    *,
    save: str | Path | None,
    show: bool | None,
) -> Axes | None:
    import matplotlib.pyplot as plt
    from matplotlib.cm import ScalarMappable
    from matplotlib.colors import Normalize
    from mpl_toolkits.axes_grid1 import make_axes_locatable

    adata, key, where, method, var_names = stored.adata, stored.key, stored.where, stored.method, stored.var_names

    try:
        import networkx as nx
    except ImportError as err:  # pragma: no cover
        raise ImportError("pertcausal.pl.causal_graph(kind='network') needs networkx: pip install networkx") from err

    parent, child, weight = _edges(adata, key, where, method)
    if len(weight) == 0:
        raise ValueError(f"the graph {where}.varp[{key!r}] has no edges (all weights are zero); nothing to plot")
    n_total = len(weight)
    if centre is not None:
        idx = var_names.get_indexer(centre)
        touch = np.isin(parent, idx) | np.isin(child, idx)
        if not touch.any():
            raise ValueError(
                f"no edge of {where}.varp[{key!r}] goes into or out of genes {_list(centre)}"
                f"{_not_modelled(adata, key, centre)}; the graph has {n_total:,} edges"
            )
        parent, child, weight = parent[touch], child[touch], weight[touch]
    n_around = len(weight)
    order = np.lexsort((child, parent, -np.abs(weight)))[:n_edges]  # strongest first, ties by (parent, child)
    parent, child, weight = parent[order], child[order], weight[order]
    edges = [(str(var_names[p]), str(var_names[c])) for p, c in zip(parent, child)]

    graph = nx.DiGraph()
    graph.add_nodes_from(centre or [])
    graph.add_edges_from(edges)
    nodes = list(graph.nodes)
    pos = _layout(graph)

    ax_given = ax is not None
    if ax is None:
        n = len(nodes)
        size = float(np.clip(3.0 + 0.35 * np.sqrt(n) * 2, 4.5, 10.0))
        fig, ax = plt.subplots(figsize=figsize if figsize is not None else (size + 1.0, size))
    fig = ax.figure
    vmax = float(np.abs(weight).max())
    norm = Normalize(vmin=-vmax, vmax=vmax)
    colormap = _cmap(cmap)
    is_centre = {g: centre is not None and g in centre for g in nodes}
    node_size = [520.0 if is_centre[g] else 340.0 for g in nodes]

    for gid, chosen, color, edge in (
        ("genes", [g for g in nodes if not is_centre[g]], _NODE_COLOR, "0.35"),
        ("centre", [g for g in nodes if is_centre[g]], _CENTRE_COLOR, "k"),
    ):
        if chosen:
            coll = nx.draw_networkx_nodes(
                graph,
                pos,
                nodelist=chosen,
                node_size=[520.0 if is_centre[g] else 340.0 for g in chosen],
                node_color=color,
                edgecolors=edge,
                linewidths=1.2 if gid == "centre" else 0.6,
                ax=ax,
            )
            coll.set_gid(gid)
            coll.set_zorder(2)
    arrows = nx.draw_networkx_edges(
        graph,
        pos,
        edgelist=edges,
        width=list(0.8 + 2.4 * np.abs(weight) / vmax),
        edge_color=[tuple(c) for c in colormap(norm(weight))],
        arrows=True,
        arrowstyle="-|>",
        arrowsize=12,
        nodelist=nodes,
        node_size=node_size,
        connectionstyle="arc3,rad=0.12",
        ax=ax,
    )
    for patch, (u, v) in zip(arrows, edges):
        patch.set_gid(f"edge:{u}->{v}")
    labels = nx.draw_networkx_labels(graph, pos, font_size=7, ax=ax)
    for g, text in labels.items():
        text.set_gid("label")
        text.set_zorder(4)
        if is_centre[g]:
            text.set_fontweight("bold")

    xy = np.array([pos[g] for g in nodes], dtype=np.float64).reshape(-1, 2)
    lo, hi = xy.min(axis=0), xy.max(axis=0)
    pad = np.maximum(0.12 * (hi - lo), 0.25)
    ax.set_xlim(lo[0] - pad[0], hi[0] + pad[0])
    ax.set_ylim(lo[1] - pad[1], hi[1] + pad[1])
    ax.set_xticks([])
    ax.set_yticks([])
    for spine in ax.spines.values():
        spine.set_visible(False)

    cax = make_axes_locatable(ax).append_axes("right", size=_CBAR_W, pad=_CBAR_PAD)
    fig.colorbar(ScalarMappable(norm=norm, cmap=colormap), cax=cax).set_label(
        "edge weight (> 0 activation, < 0 repression)"
    )
    shown = f"{len(edges)} strongest"
    if centre is not None:
        title = f"{shown} of {n_around:,} edges into or out of {_list(centre, 5)}"
    else:
        title = f"{shown} of {n_total:,} edges"
    ax.set_title(title + (f" ({method})" if method else ""), fontsize=plt.rcParams["font.size"])
    return _finish(fig, ax, show=show, save=save, return_fig=False, ax_given=ax_given)


def _modules(
    stored: _Graph,
    centre: list[str] | None,
    n_genes: int,
    ax: Axes | None,
    figsize: tuple[float, float] | None,
    cmap: str | Colormap,
    *,
    save: str | Path | None,
    show: bool | None,
) -> Axes | None:
    import matplotlib.pyplot as plt
    from matplotlib.colors import ListedColormap
    from mpl_toolkits.axes_grid1 import Divider, Size

    adata, key, where, method, var_names = stored.adata, stored.key, stored.where, stored.method, stored.var_names

    inputs, outputs = _module_maps(adata, key, where, method)
    n_modules = inputs.shape[1]
    links = (inputs != 0).sum(axis=1) + (outputs != 0).sum(axis=1)
    strength = np.abs(inputs) + np.abs(outputs)
    if n_modules == 0 or not links.any():
        raise ValueError(
            f"the factor graph in {where}.varm[{key + '_inputs'!r}] and [{key + '_outputs'!r}] has no edges "
            f"(all zero, {n_modules} modules); nothing to plot"
        )
    if centre is not None:
        take = var_names.get_indexer(centre)
        if not links[take].any():
            raise ValueError(
                f"genes {_list(centre)} have no module edge in {where}.varm[{key + '_inputs'!r}] or "
                f"[{key + '_outputs'!r}]{_not_modelled(adata, key, centre)}"
            )
    else:
        cand = np.flatnonzero(links > 0)
        top = cand[np.lexsort((cand, -strength[cand].sum(axis=1), -links[cand]))][:n_genes]
        primary = strength[top].argmax(axis=1)
        take = top[np.lexsort((-strength[top, primary], primary))]  # grouped by their strongest module
    names = pd.Index(var_names[take])
    values_in, values_out = inputs[take].T, outputs[take].T  # modules x genes
    modules = pd.Index([f"module {j}" for j in range(n_modules)])
    n_g = len(take)

    gap = 0.45  # inches between the panels, room for the lower title
    ax_given = ax is not None
    if ax is None:
        char = 0.6 * plt.rcParams["font.size"] / 72
        panel_w = float(np.clip(0.24 * n_g, 2.5, 12.0))
        panel_h = float(np.clip(0.24 * n_modules, 0.9, 4.5))
        left = 0.45 + (max(map(len, modules)) * char if n_modules <= MAX_TICKS else 0.1) + 0.1
        bottom = 0.45 + (max(map(len, names)) * char if n_g <= MAX_TICKS else 0.1) + 0.1
        top_m, right = 0.45, 1.1
        width, height = panel_w + _CBAR_PAD + _CBAR_W, 2 * panel_h + gap
        if figsize is None:
            fig_w, fig_h = left + width + right, bottom + height + top_m
            rect = (left / fig_w, bottom / fig_h, width / fig_w, height / fig_h)
        else:
            fig_w, fig_h = figsize
            rect = (0.18, 0.2, 0.62, 0.72)
        fig = plt.figure(figsize=(fig_w, fig_h))
        ax = fig.add_axes(rect)
    fig = ax.figure
    divider = Divider(
        fig,
        tuple(ax.get_position().bounds),
        [Size.Scaled(1), Size.Fixed(_CBAR_PAD), Size.Fixed(_CBAR_W)],
        [Size.Scaled(1), Size.Fixed(gap), Size.Scaled(1)],  # from the bottom: outputs, gap, inputs
        aspect=False,
    )
    ax_out = fig.add_axes(ax.get_position())
    cax_in, cax_out = fig.add_axes(ax.get_position()), fig.add_axes(ax.get_position())
    for a, nx_, ny in ((ax, 0, 2), (ax_out, 0, 0), (cax_in, 2, 2), (cax_out, 2, 0)):
        a.set_axes_locator(divider.new_locator(nx=nx_, ny=ny))
    ax.set_gid("inputs")
    ax_out.set_gid("outputs")

    colormap = _cmap(cmap)
    upper = ListedColormap(colormap(np.linspace(0.5, 1.0, 128)), name="inputs")
    vmax_in = float(values_in.max()) if values_in.max() > 0 else 1.0
    vmax_out = float(np.abs(values_out).max()) if np.abs(values_out).max() > 0 else 1.0
    small = plt.rcParams["font.size"]
    for a, cax, values, cm, lim, label, title in (
        (ax, cax_in, values_in, upper, (0.0, vmax_in), "input strength", "inputs: gene → module"),
        (ax_out, cax_out, values_out, colormap, (-vmax_out, vmax_out), "output weight", "outputs: module → gene"),
    ):
        im = a.imshow(values, cmap=cm, vmin=lim[0], vmax=lim[1], aspect="auto", interpolation="nearest")
        fig.colorbar(im, cax=cax).set_label(label, fontsize=0.85 * small)
        _label_axis(a, "y", modules, "module")
        a.set_xlim(-0.5, n_g - 0.5)
        a.set_ylim(n_modules - 0.5, -0.5)
        a.set_title(title, fontsize=small)
    _label_axis(ax_out, "x", names, "gene")
    ax.set_xticks(ax_out.get_xticks())
    ax.tick_params(axis="x", labelbottom=False)
    ax.set_xlim(-0.5, n_g - 0.5)
    return _finish(fig, ax, show=show, save=save, return_fig=False, ax_given=ax_given)
