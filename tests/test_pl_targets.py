"""pl.targets: heatmap of perturbation x latent target probabilities of a sparse mechanism shift model."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import pytest
from anndata import AnnData
from matplotlib.axes import Axes
from matplotlib.figure import Figure

from pertcausal.pl._targets import targets

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(autouse=True)
def _close_figures():
    yield
    plt.close("all")


def _table() -> pd.DataFrame:
    """8 perturbations x 5 latents in two blocks: P0-P3 target latents 1 and 3, P4-P7 latent 0 (shuffled rows)."""
    rng = np.random.default_rng(0)
    prob = rng.uniform(0.0, 0.1, size=(8, 5))
    prob[:4, [1, 3]] = rng.uniform(0.9, 1.0, size=(4, 2))
    prob[4:, 0] = rng.uniform(0.9, 1.0, size=4)
    prob[2, 4] = 0.5  # exactly at the threshold: marked
    order = [5, 0, 7, 2, 4, 1, 6, 3]
    return pd.DataFrame(
        prob[order], index=[f"P{i}" for i in order], columns=[f"latent{j}" for j in range(5)]
    ).rename_axis(index="perturbation")


def _ylabels(ax: Axes) -> list[str]:
    return [t.get_text() for t in ax.get_yticklabels()]


def _xlabels(ax: Axes) -> list[str]:
    return [t.get_text() for t in ax.get_xticklabels()]


def _dots(ax: Axes) -> np.ndarray:
    (coll,) = [c for c in ax.collections if c.get_gid() == "targets"]
    return np.asarray(coll.get_offsets())


def test_heatmap_values_follow_the_labels():
    prob = _table()
    ax = targets(prob, show=False)
    assert isinstance(ax, Axes)
    image = np.asarray(ax.images[0].get_array())
    assert image.shape == (8, 5)
    rows, cols = _ylabels(ax), _xlabels(ax)
    assert sorted(rows) == sorted(prob.index) and sorted(cols) == sorted(prob.columns)
    np.testing.assert_allclose(image, prob.loc[rows, cols].to_numpy())
    assert ax.images[0].colorbar is not None
    assert ax.images[0].colorbar.ax.get_ylabel() == "target probability"
    assert ax.images[0].get_clim() == (0.0, 1.0)


def test_clustering_groups_perturbations_with_the_same_targets():
    ax = targets(_table(), show=False)
    rows, cols = _ylabels(ax), _xlabels(ax)
    block = [int(r[1:]) < 4 for r in rows]
    assert block in ([True] * 4 + [False] * 4, [False] * 4 + [True] * 4)  # the two blocks are contiguous
    pos = {c: i for i, c in enumerate(cols)}
    assert abs(pos["latent1"] - pos["latent3"]) == 1  # co-targeted latents sit side by side


def test_cluster_false_and_perturbations_subset_keep_the_given_order():
    prob = _table()
    ax = targets(prob, cluster=False, show=False)
    assert _ylabels(ax) == list(prob.index) and _xlabels(ax) == list(prob.columns)
    np.testing.assert_allclose(np.asarray(ax.images[0].get_array()), prob.to_numpy())

    ax = targets(prob, perturbations=["P6", "P1", "P2"], cluster=False, show=False)
    assert _ylabels(ax) == ["P6", "P1", "P2"]
    np.testing.assert_allclose(np.asarray(ax.images[0].get_array()), prob.loc[["P6", "P1", "P2"]].to_numpy())

    ax = targets(prob, perturbations=["P6", "P1", "P2", "P0"], show=False)  # clustered subset: 4 rows
    assert sorted(_ylabels(ax)) == ["P0", "P1", "P2", "P6"]
    ax = targets(prob, perturbations="P3", show=False)
    assert _ylabels(ax) == ["P3"]


def test_dots_mark_entries_at_or_above_threshold():
    prob = _table()
    ax = targets(prob, cluster=False, show=False)
    dots = _dots(ax)
    expected = np.argwhere(prob.to_numpy() >= 0.5)  # (row, column)
    assert len(dots) == len(expected) == 4 * 2 + 4 + 1
    np.testing.assert_array_equal(np.sort(dots[:, ::-1], axis=0), np.sort(expected, axis=0))
    assert "13 of 40" in ax.get_title()
    assert len(_dots(targets(prob, threshold=0.95, show=False))) == int((prob.to_numpy() >= 0.95).sum())
    ax = targets(prob, threshold=None, show=False)
    assert not [c for c in ax.collections if c.get_gid() == "targets"]


def test_from_anndata_and_mudata():
    prob = _table()
    adata = AnnData(np.zeros((3, 2)))
    adata.uns["X_sparse_shift"] = {"target_probability": prob, "params": {}}
    ax = targets(adata, cluster=False, show=False)
    assert _ylabels(ax) == list(prob.index)
    adata.uns["svae"] = {"target_probability": prob.iloc[:3]}
    assert np.asarray(targets(adata, key="svae", show=False).images[0].get_array()).shape == (3, 5)

    mudata = pytest.importorskip("mudata")
    rna = AnnData(np.zeros((3, 2)), var=pd.DataFrame(index=["g0", "g1"]))
    rna.uns["X_sparse_shift"] = {"target_probability": prob.iloc[:5]}
    adt = AnnData(np.zeros((3, 2)), var=pd.DataFrame(index=["p0", "p1"]))
    mdata = mudata.MuData({"rna": rna, "adt": adt})
    # found in the one modality that has it
    assert np.asarray(targets(mdata, show=False).images[0].get_array()).shape == (5, 5)
    # mdata.uns comes first
    mdata.uns["X_sparse_shift"] = {"target_probability": prob.iloc[:2]}
    assert np.asarray(targets(mdata, show=False).images[0].get_array()).shape == (2, 5)
    assert np.asarray(targets(mdata, mod="rna", show=False).images[0].get_array()).shape == (5, 5)
    del mdata.uns["X_sparse_shift"]
    mdata.mod["adt"].uns["X_sparse_shift"] = {"target_probability": prob}
    with pytest.raises(ValueError, match=r"'rna', 'adt'.*pass mod="):
        targets(mdata, show=False)
    with pytest.raises(KeyError, match=r"mod 'atac'.*'rna', 'adt'"):
        targets(mdata, mod="atac", show=False)
    with pytest.raises(KeyError, match=r"key 'other' is not in mdata.uns nor.*tl.sparse_shift"):
        targets(mdata, key="other", show=False)


def test_errors():
    prob = _table()
    adata = AnnData(np.zeros((2, 2)))
    adata.uns["something"] = {}
    with pytest.raises(KeyError, match=r"key 'X_sparse_shift' is not in adata.uns.*tl.sparse_shift.*'something'"):
        targets(adata, show=False)
    adata.uns["X_sparse_shift"] = {"mask": prob}
    with pytest.raises(KeyError, match=r"'target_probability' is not in adata.uns\['X_sparse_shift'\].*'mask'"):
        targets(adata, show=False)
    with pytest.raises(KeyError, match=r"perturbations 'P9', 'KO' are not in data; perturbations are: .*'P5'"):
        targets(prob, perturbations=["P1", "P9", "KO"], show=False)
    with pytest.raises(ValueError, match="not probabilities"):
        targets(prob * 2, show=False)
    with pytest.raises(ValueError, match="not probabilities"):
        targets(prob.where(prob > 0.05), show=False)
    with pytest.raises(ValueError, match="threshold"):
        targets(prob, threshold=1.5, show=False)
    with pytest.raises(TypeError, match="DataFrame"):
        targets(prob.to_numpy(), show=False)
    with pytest.raises(ValueError, match="empty"):
        targets(prob.iloc[:0], show=False)


def test_two_rows_skip_clustering_and_many_rows_drop_labels():
    prob = _table()
    ax = targets(prob.iloc[[3, 0]], show=False)  # <= 2 rows: order kept
    assert _ylabels(ax) == [prob.index[3], prob.index[0]]
    big = pd.DataFrame(np.random.default_rng(1).uniform(size=(120, 6)), index=[f"G{i}" for i in range(120)])
    ax = targets(big, show=False)
    assert np.asarray(ax.images[0].get_array()).shape == (120, 6)
    assert _ylabels(ax) == [] and "n = 120" in ax.get_ylabel()
    assert sorted(_xlabels(ax)) == [str(j) for j in range(6)]  # integer column labels shown as str


def test_save_return_fig_and_ax(tmp_path):
    prob = _table()
    path = tmp_path / "targets.png"
    out = targets(prob, save=path)
    assert isinstance(out, Axes)
    assert path.read_bytes()[:8] == PNG_MAGIC
    assert isinstance(targets(prob, return_fig=True, show=False), Figure)
    fig, ax = plt.subplots()
    assert targets(prob, ax=ax, title="custom") is ax
    assert ax.get_title() == "custom"
