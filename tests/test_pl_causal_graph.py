"""pl.causal_graph: network of the strongest edges of a learned gene graph, and the gene-module factor graph."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
from anndata import AnnData
from matplotlib.axes import Axes

from pertcausal.pl import causal_graph

pytest.importorskip("networkx")

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
NAMES = [f"G{i}" for i in range(12)]  # G10 and G11 are not modelled: empty rows and columns


@pytest.fixture(autouse=True)
def _close_figures():
    yield
    plt.close("all")


def _factors() -> tuple[np.ndarray, np.ndarray]:
    """3 modules: G0, G1 -> m0 -> G2, G3, G4; G2, G5 -> m1 -> G6, G7; G6 -> m2 -> G8, G9, G0."""
    inputs = np.zeros((12, 3), dtype=np.float32)
    outputs = np.zeros((12, 3), dtype=np.float32)
    inputs[[0, 1], 0] = [1.0, 0.5]
    outputs[[2, 3, 4], 0] = [1.2, -0.7, 0.4]
    inputs[[2, 5], 1] = [0.8, 0.3]
    outputs[[6, 7], 1] = [-1.5, 0.9]
    inputs[6, 2] = 0.6
    outputs[[8, 9, 0], 2] = [0.2, -0.3, 1.1]
    return inputs, outputs


def _adata(key: str = "causal_graph", method: str = "dcdfg") -> AnnData:
    adata = AnnData(np.zeros((5, 12), dtype=np.float32), var=pd.DataFrame(index=NAMES))
    inputs, outputs = _factors()
    adata.varp[key] = sp.csr_matrix((inputs @ outputs.T).astype(np.float32))  # 13 edges, mixed signs
    adata.varm[f"{key}_inputs"] = inputs
    adata.varm[f"{key}_outputs"] = outputs
    adata.uns[key] = {"genes": np.array(NAMES[:10]), "params": {"method": method}}
    return adata


def _all_edges(adata: AnnData, key: str = "causal_graph") -> dict[str, float]:
    w = adata.varp[key].toarray()
    return {f"edge:{NAMES[i]}->{NAMES[j]}": float(w[i, j]) for i, j in zip(*np.nonzero(w))}


def _drawn(ax: Axes) -> dict[str, object]:
    return {p.get_gid(): p for p in ax.patches if str(p.get_gid()).startswith("edge:")}


def _nodes(ax: Axes, gid: str) -> np.ndarray:
    colls = [c for c in ax.collections if c.get_gid() == gid]
    return np.asarray(colls[0].get_offsets()) if colls else np.empty((0, 2))


def _cols(ax: Axes) -> list[str]:
    return [t.get_text() for t in ax.get_xticklabels()]


def _outputs_axes(ax: Axes) -> Axes:
    (out,) = [a for a in ax.figure.axes if a.get_gid() == "outputs"]
    return out


def test_network_draws_the_strongest_edges_coloured_by_sign():
    adata = _adata()
    edges = _all_edges(adata)
    assert len(edges) == 13
    ax = causal_graph(adata, show=False)
    assert isinstance(ax, Axes)
    drawn = _drawn(ax)
    assert set(drawn) == set(edges)  # min(30, 13) edges: all of them
    assert len(_nodes(ax, "genes")) == 10 and len(_nodes(ax, "centre")) == 0
    assert sorted(t.get_text() for t in ax.texts if t.get_gid() == "label") == NAMES[:10]
    assert "13 strongest of 13 edges" in ax.get_title()

    vmax = max(abs(v) for v in edges.values())
    cmap = plt.get_cmap("RdBu_r")
    for gid, patch in drawn.items():
        expected = cmap((edges[gid] / vmax + 1) / 2)
        np.testing.assert_allclose(patch.get_edgecolor(), expected, atol=0.01)
        red, _, blue, _ = patch.get_edgecolor()
        assert (red > blue) == (edges[gid] > 0)  # activation red, repression blue

    ax = causal_graph(adata, n_edges=5, show=False)
    top5 = sorted(edges, key=lambda g: -abs(edges[g]))[:5]
    assert set(_drawn(ax)) == set(top5)
    assert "5 strongest of 13 edges" in ax.get_title()


def test_network_around_centre_genes():
    adata = _adata()
    edges = _all_edges(adata)
    touching = {g for g in edges if any(n in ("G2", "G6") for n in g[5:].split("->"))}
    assert len(touching) == 8
    ax = causal_graph(adata, genes=["G2", "G6"], show=False)
    assert set(_drawn(ax)) == touching  # only edges with an endpoint in genes
    assert len(_nodes(ax, "centre")) == 2
    ax = causal_graph(adata, genes="G6", n_edges=3, show=False)
    drawn = _drawn(ax)
    assert len(drawn) == 3 and all("G6" in g[5:].split("->") for g in drawn)
    strongest = sorted((g for g in edges if "G6" in g[5:].split("->")), key=lambda g: -abs(edges[g]))[:3]
    assert set(drawn) == set(strongest)
    # an isolated centre gene still gets a node, highlighted
    ax = causal_graph(adata, genes=["G6", "G11"], n_edges=2, show=False)
    assert len(_drawn(ax)) == 2 and len(_nodes(ax, "centre")) == 2


def test_network_layout_is_deterministic():
    adata = _adata()
    a = _nodes(causal_graph(adata, show=False), "genes")
    b = _nodes(causal_graph(adata, show=False), "genes")
    np.testing.assert_array_equal(a, b)
    assert len(np.unique(np.round(a, 3), axis=0)) == len(a)  # no two nodes on top of each other


def test_modules_heatmap_matches_the_factor_graph():
    adata = _adata()
    inputs, outputs = _factors()
    ax = causal_graph(adata, kind="modules", show=False)
    assert ax.get_gid() == "inputs"
    out = _outputs_axes(ax)
    cols = _cols(out)
    assert sorted(cols) == NAMES[:10]  # genes with module edges only, at most n_genes
    idx = [NAMES.index(c) for c in cols]
    np.testing.assert_allclose(np.asarray(ax.images[0].get_array()), inputs[idx].T)
    np.testing.assert_allclose(np.asarray(out.images[0].get_array()), outputs[idx].T)
    assert [t.get_text() for t in ax.get_yticklabels()] == ["module 0", "module 1", "module 2"]
    assert [t.get_text() for t in out.get_yticklabels()] == ["module 0", "module 1", "module 2"]
    lo, hi = out.images[0].get_clim()
    assert lo == -hi == pytest.approx(-1.5)  # outputs: symmetric about 0
    assert ax.images[0].get_clim() == pytest.approx((0.0, 1.0))

    ax = causal_graph(adata, kind="modules", n_genes=3, show=False)
    assert sorted(_cols(_outputs_axes(ax))) == ["G0", "G2", "G6"]  # the genes with 2 module edges each

    ax = causal_graph(adata, kind="modules", genes=["G7", "G1", "G11"], show=False)
    assert _cols(_outputs_axes(ax)) == ["G7", "G1", "G11"]  # given order kept, unmodelled G11 all zero
    np.testing.assert_allclose(np.asarray(ax.images[0].get_array()), inputs[[7, 1, 11]].T)
    np.testing.assert_allclose(np.asarray(_outputs_axes(ax).images[0].get_array()), outputs[[7, 1, 11]].T)


def test_mudata_modality():
    mudata = pytest.importorskip("mudata")
    rna = _adata()
    atac = AnnData(np.zeros((5, 3)), var=pd.DataFrame(index=["p0", "p1", "p2"]))
    mdata = mudata.MuData({"rna": rna, "atac": atac})
    assert len(_drawn(causal_graph(mdata, show=False))) == 13  # the only modality holding it
    assert len(_drawn(causal_graph(mdata, mod="rna", n_edges=4, show=False))) == 4
    ax = causal_graph(mdata, mod="rna", kind="modules", show=False)
    assert np.asarray(ax.images[0].get_array()).shape == (3, 10)
    with pytest.raises(KeyError, match=r"mod 'prot'.*'rna', 'atac'"):
        causal_graph(mdata, mod="prot", show=False)
    with pytest.raises(KeyError, match=r"key 'causal_graph' is not in mdata\['atac'\].uns.*tl.causal_graph"):
        causal_graph(mdata, mod="atac", show=False)
    with pytest.raises(KeyError, match=r"key 'other' is not in the uns of any modality.*tl.causal_graph"):
        causal_graph(mdata, key="other", show=False)
    mdata.mod["atac"].uns["causal_graph"] = {"genes": np.array([]), "params": {"method": "dcdfg"}}
    with pytest.raises(ValueError, match=r"'rna', 'atac'.*pass mod="):
        causal_graph(mdata, show=False)


def test_errors():
    adata = _adata()
    with pytest.raises(KeyError, match=r"key 'grn' is not in adata.uns \(run pertcausal.tl.causal_graph first\).*"):
        causal_graph(adata, key="grn", show=False)
    with pytest.raises(KeyError, match=r"uns keys are: 'causal_graph'"):
        causal_graph(adata, key="grn", show=False)
    with pytest.raises(KeyError, match=r"genes 'FOO', 'BAR' are not in adata.var_names"):
        causal_graph(adata, genes=["G1", "FOO", "BAR"], show=False)
    with pytest.raises(ValueError, match=r"no edge .* genes 'G10'.*'G10' not modelled"):
        causal_graph(adata, genes="G10", show=False)
    with pytest.raises(ValueError, match=r"genes 'G10', 'G11' have no module edge"):
        causal_graph(adata, kind="modules", genes=["G10", "G11"], show=False)
    with pytest.raises(ValueError, match=r"unknown kind 'heatmap'; expected one of: 'network', 'modules'"):
        causal_graph(adata, kind="heatmap", show=False)
    for bad in (0, -3, 2.5, True):
        with pytest.raises(ValueError, match="n_edges must be an integer >= 1"):
            causal_graph(adata, n_edges=bad, show=False)
    with pytest.raises(ValueError, match="n_genes must be an integer >= 1"):
        causal_graph(adata, kind="modules", n_genes=0, show=False)
    with pytest.raises(ValueError, match="genes is empty"):
        causal_graph(adata, genes=[], show=False)

    gauss = AnnData(np.zeros((5, 12), dtype=np.float32), var=pd.DataFrame(index=NAMES))
    gauss.uns["causal_graph"] = {"genes": np.array(NAMES), "params": {"method": "gaussian"}}
    for kind in ("network", "modules"):
        with pytest.raises(ValueError, match=r"'gaussian' model.*learns no graph"):
            causal_graph(gauss, kind=kind, show=False)
    gauss.uns["causal_graph"] = {"method": "gaussian", "genes": np.array(NAMES), "params": {}}  # top-level method
    with pytest.raises(ValueError, match=r"'gaussian' model.*learns no graph"):
        causal_graph(gauss, show=False)

    adata.uns["grn"] = {"genes": np.array(NAMES), "params": {"method": "notears_lowrank"}}
    with pytest.raises(KeyError, match=r"key 'grn' is not in adata.varp.*tl.causal_graph.*varp keys are: 'causal"):
        causal_graph(adata, key="grn", show=False)
    with pytest.raises(KeyError, match=r"'grn_inputs' is not in adata.varm.*varm keys are: 'causal_graph_inputs'"):
        causal_graph(adata, key="grn", kind="modules", show=False)

    empty = _adata()
    empty.varp["causal_graph"] = sp.csr_matrix((12, 12), dtype=np.float32)
    empty.varm["causal_graph_inputs"] = empty.varm["causal_graph_outputs"] = np.zeros((12, 3), dtype=np.float32)
    with pytest.raises(ValueError, match=r"has no edges"):
        causal_graph(empty, show=False)
    with pytest.raises(ValueError, match=r"has no edges"):
        causal_graph(empty, kind="modules", show=False)
    with pytest.raises(TypeError, match="AnnData or MuData"):
        causal_graph(adata.varp["causal_graph"], show=False)


def test_save_ax_and_figsize(tmp_path):
    adata = _adata()
    for kind in ("network", "modules"):
        path = tmp_path / f"{kind}.png"
        out = causal_graph(adata, kind=kind, save=path)  # saving without show= returns the Axes
        assert isinstance(out, Axes)
        assert path.read_bytes()[:8] == PNG_MAGIC
    fig, ax = plt.subplots()
    assert causal_graph(adata, ax=ax) is ax
    fig, ax = plt.subplots()
    assert causal_graph(adata, kind="modules", ax=ax) is ax
    assert len(fig.axes) == 4  # the two panels and their colour bars
    fig.canvas.draw()
    top, bottom = ax.get_position(), _outputs_axes(ax).get_position()
    assert top.y0 > bottom.y1 and top.x0 == pytest.approx(bottom.x0)
    ax = causal_graph(adata, figsize=(5.0, 4.0), show=False)
    assert tuple(ax.figure.get_size_inches()) == (5.0, 4.0)
