from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import re
import time

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import pytest
from anndata import AnnData
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from scipy import stats

from pertcausal._engines.gwas import genomic_inflation
from pertcausal.pl._gwas import manhattan, qq

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
CHROMS = ["X", "10", "2", "1"]  # deliberately not in natural (nor lexicographic) order
HIT = "rs_hit"


@pytest.fixture(autouse=True)
def _close_figures():
    yield
    plt.close("all")


def _variants(n_per_chrom: int = 200, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    chrom = np.repeat(CHROMS, n_per_chrom)
    pos = np.concatenate([np.sort(rng.choice(10_000_000, n_per_chrom, replace=False)) for _ in CHROMS])
    df = pd.DataFrame({"variant": [f"rs{i}" for i in range(len(chrom))], "chrom": chrom, "pos": pos})
    df.loc[n_per_chrom * 2 + 17, "variant"] = HIT  # on chromosome "2"
    return df


def _results(phenotypes=("height",), seed: int = 0, hit_in: str | None = None) -> pd.DataFrame:
    """Tidy table: one row per (variant, phenotype), uniform p, one planted hit, shuffled rows."""
    rng = np.random.default_rng(seed)
    var = _variants(seed=seed)
    parts = []
    for ph in phenotypes:
        part = var.copy()
        part["phenotype"] = ph
        part["a1"], part["a2"], part["a1_freq"], part["n"] = "A", "G", 0.3, 1000
        part["p"] = rng.uniform(0.001, 1.0, len(part))
        if hit_in is None or ph == hit_in:
            part.loc[part["variant"] == HIT, "p"] = 1e-20
        part["t"] = stats.norm.isf(part["p"] / 2)
        part["se"] = 0.05
        part["beta"] = part["t"] * part["se"]
        parts.append(part)
    df = pd.concat(parts, ignore_index=True)
    return df.sample(frac=1.0, random_state=seed).reset_index(drop=True)


def _offsets(ax: Axes, gid: str) -> np.ndarray:
    """Offsets of the collection(s) with this gid, by increasing x."""
    colls = [c for c in ax.collections if c.get_gid() == gid]
    assert colls, f"no collection with gid {gid!r}"
    xy = np.concatenate([np.asarray(c.get_offsets()) for c in colls])
    return xy[np.argsort(xy[:, 0], kind="stable")]


def _legend_lambdas(ax: Axes) -> dict[str, float]:
    out = {}
    for text in ax.get_legend().get_texts():
        m = re.fullmatch(r"(?:(.*) \()?λ = ([0-9.]+)\)?", text.get_text())
        if m:
            out[m.group(1) or ""] = float(m.group(2))
    return out


# ---------------------------------------------------------------------------------------------
# manhattan
# ---------------------------------------------------------------------------------------------
def test_manhattan_planted_hit_on_top_and_natural_chromosome_order():
    res = _results()
    ax = manhattan(res, annotate=1, show=False)
    assert [t.get_text() for t in ax.get_xticklabels()] == ["1", "2", "10", "X"]
    xy = _offsets(ax, "variants")
    assert len(xy) == len(res)
    top = int(np.argmax(xy[:, 1]))
    assert xy[top, 1] == pytest.approx(20.0)
    # the hit lies in the block of chromosome "2", the second tick
    ticks = ax.get_xticks()
    assert abs(xy[top, 0] - ticks[1]) < abs(xy[top, 0] - ticks[0])
    assert abs(xy[top, 0] - ticks[1]) < abs(xy[top, 0] - ticks[2])
    assert [t.get_text() for t in ax.texts] == [HIT]
    assert ax.get_title() == "height"
    lines = {ln.get_gid(): ln.get_ydata()[0] for ln in ax.lines}
    assert lines["significance"] == pytest.approx(-np.log10(5e-8))
    assert lines["suggestive"] == pytest.approx(5.0)
    # chromosome blocks do not overlap: sorted by x, chromosome "2" holds points 200 to 399
    assert 200 <= top < 400
    assert len(np.unique(xy[:, 0])) == len(xy)


def test_manhattan_thresholds_omitted_highlight_and_colours():
    res = _results()
    ax = manhattan(res, significance=None, suggestive=None, highlight=[HIT, "rs3"], show=False)
    assert not ax.lines
    hl = _offsets(ax, "highlight")
    assert len(hl) == 2 and hl[:, 1].max() == pytest.approx(20.0)
    colours = [c.get_facecolors()[0] for c in ax.collections if c.get_gid() == "variants"]
    assert len(np.unique(np.round(colours, 4), axis=0)) == 2  # alternating colours
    with pytest.raises(KeyError, match="'rs_missing'"):
        manhattan(res, highlight=["rs_missing"], show=False)


def test_manhattan_min_p_over_phenotypes():
    res = _results(phenotypes=("height", "bmi", "ldl"), hit_in="bmi")
    n_var = res["variant"].nunique()
    ax = manhattan(res, annotate=1, show=False)
    xy = _offsets(ax, "variants")
    assert len(xy) == n_var  # one point per variant
    expected = res.groupby("variant")["p"].min()
    assert np.sort(xy[:, 1]) == pytest.approx(np.sort(-np.log10(expected.to_numpy())))
    assert "min p over 3 phenotypes" in ax.get_ylabel()
    assert [t.get_text() for t in ax.texts] == [f"{HIT} (bmi)"]
    # a named phenotype: only its rows, and the hit planted in another one is gone
    ax = manhattan(res, phenotype="height", show=False)
    xy = _offsets(ax, "variants")
    assert len(xy) == n_var and xy[:, 1].max() < 4
    assert "min p" not in ax.get_ylabel()
    with pytest.raises(KeyError, match=r"phenotype 'weight'.*phenotypes are: .*'height'.*'bmi'"):
        manhattan(res, phenotype="weight", show=False)


def test_manhattan_zero_and_nan_p():
    res = _results()
    res.loc[res["variant"] == HIT, "p"] = 0.0
    res.loc[:9, "p"] = np.nan
    ax = manhattan(res, show=False)
    xy = _offsets(ax, "variants")
    assert len(xy) == len(res) - 10
    assert np.isfinite(xy).all()
    assert xy[:, 1].max() == pytest.approx(-np.log10(np.finfo(float).tiny))


def test_manhattan_joint_from_anndata_and_mudata():
    res = _results(phenotypes=("a", "b"))
    joint = _variants().assign(statistic=1.0, df1=2, df2=997, p=0.5)
    joint.loc[joint["variant"] == HIT, "p"] = 1e-30
    adata = AnnData(np.zeros((3, 2)))
    adata.uns["gwas"] = {"results": res, "joint": joint}
    ax = manhattan(adata, phenotype="joint", show=False)
    assert _offsets(ax, "variants")[:, 1].max() == pytest.approx(30.0)
    assert "joint" in ax.get_title()
    ax = manhattan(adata, phenotype="b", show=False)
    assert _offsets(ax, "variants")[:, 1].max() == pytest.approx(20.0)
    # a DataFrame input: the joint table passed directly
    ax = manhattan(joint, phenotype="joint", show=False)
    assert _offsets(ax, "variants")[:, 1].max() == pytest.approx(30.0)

    mudata = pytest.importorskip("mudata")
    mdata = mudata.MuData({"geno": adata})
    mdata.uns["assoc"] = {"results": res, "joint": joint}
    ax = qq(mdata, key="assoc", phenotype="joint", show=False)
    assert list(_legend_lambdas(ax)) == ["joint"]


def test_manhattan_unknown_chromosomes_sorted_after():
    res = _results().assign(chrom=lambda d: d["chrom"].map({"1": "chr1", "2": "MT", "10": "unplaced_b", "X": "Y"}))
    res.loc[:20, "chrom"] = "unplaced_a"
    ax = manhattan(res, show=False)
    assert [t.get_text() for t in ax.get_xticklabels()] == ["chr1", "Y", "MT", "unplaced_a", "unplaced_b"]


# ---------------------------------------------------------------------------------------------
# qq
# ---------------------------------------------------------------------------------------------
def test_qq_uniform_lambda_near_one_in_legend():
    p = np.random.default_rng(1).uniform(size=5000)
    lam = genomic_inflation(p)
    assert abs(lam - 1) < 0.1
    ax = qq(pd.DataFrame({"p": p}), show=False)
    assert _legend_lambdas(ax) == {"": pytest.approx(lam, abs=5e-4)}
    assert any(f"{lam:.3f}" in t.get_text() for t in ax.get_legend().get_texts())
    assert f"{lam:.3f}" in ax.get_title()
    xy = _offsets(ax, "qq")
    assert len(xy) == 5000
    # expected -log10 p of the i-th smallest is -log10(i / (n + 1)); observed are the sorted p
    assert xy[:, 0].max() == pytest.approx(-np.log10(1 / 5001))
    assert np.sort(xy[:, 1]) == pytest.approx(np.sort(-np.log10(p)))
    band = [c for c in ax.collections if c.get_gid() == "ci"]
    assert len(band) == 1


def test_qq_inflated_lambda():
    z = np.random.default_rng(2).standard_normal(5001)  # odd n: the middle p alone gives lambda
    p = stats.chi2.sf(1.5 * z**2, df=1)
    ax = qq(pd.DataFrame({"p": p, "phenotype": "trait"}), ci=None, show=False)
    lams = _legend_lambdas(ax)
    assert list(lams) == ["trait"]
    assert lams["trait"] == pytest.approx(1.5, abs=0.1)
    assert lams["trait"] == pytest.approx(genomic_inflation(p), abs=5e-4)
    assert not [c for c in ax.collections if c.get_gid() == "ci"]


def test_qq_one_curve_per_phenotype_and_limit():
    res = _results(phenotypes=("height", "bmi", "ldl"), hit_in="bmi")
    ax = qq(res, show=False)
    lams = _legend_lambdas(ax)
    assert list(lams) == list(pd.unique(res["phenotype"]))  # order of first appearance
    ordered = res.assign(phenotype=pd.Categorical(res["phenotype"], ["height", "bmi", "ldl"]))
    assert list(_legend_lambdas(qq(ordered, show=False))) == ["height", "bmi", "ldl"]
    for ph in lams:
        p = res.loc[res["phenotype"] == ph, "p"].to_numpy()
        assert lams[ph] == pytest.approx(genomic_inflation(p), abs=5e-4)
        assert len(_offsets(ax, f"qq:{ph}")) == len(p)
    ax = qq(res, phenotype="bmi", show=False)
    assert list(_legend_lambdas(ax)) == ["bmi"]
    assert _offsets(ax, "qq:bmi")[:, 1].max() == pytest.approx(20.0)

    many = pd.DataFrame({"phenotype": np.repeat([f"ph{i}" for i in range(11)], 10), "p": 0.5})
    with pytest.raises(ValueError, match="phenotype="):
        qq(many, show=False)


def test_qq_thins_large_tables_fast():
    rng = np.random.default_rng(3)
    p = rng.uniform(size=1_000_000)
    p[:50] = 10.0 ** -rng.uniform(8, 30, 50)
    p[50:60] = 0.0
    p[60:80] = np.nan
    t0 = time.perf_counter()
    ax = qq(pd.DataFrame({"p": p}), show=False)
    ax.figure.canvas.draw()
    assert time.perf_counter() - t0 < 3.0
    xy = _offsets(ax, "qq")
    n_tail = int((p <= 0.01).sum())
    assert len(xy) < n_tail + 5000
    assert (xy[:, 1] >= 2).sum() == n_tail  # every point of the tail is kept
    assert xy[:, 1].max() == pytest.approx(-np.log10(np.finfo(float).tiny))
    assert xy[:, 0].min() == pytest.approx(-np.log10((len(p) - 20) / (len(p) - 20 + 1)))


# ---------------------------------------------------------------------------------------------
# errors and the scanpy-style returns
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("fn", [manhattan, qq])
def test_errors(fn):
    res = _results()
    with pytest.raises(TypeError, match="DataFrame"):
        fn(res.to_numpy(), show=False)
    adata = AnnData(np.zeros((2, 2)))
    adata.uns["other"] = {}
    with pytest.raises(KeyError, match=r"key 'gwas' is not in data.uns.*'other'"):
        fn(adata, show=False)
    adata.uns["gwas"] = {"results": res}
    with pytest.raises(KeyError, match=r"'joint' is not in data.uns\['gwas'\].*'results'"):
        fn(adata, phenotype="joint", show=False)
    with pytest.raises(KeyError, match=r"'p'"):
        fn(res.drop(columns="p"), show=False)
    with pytest.raises(KeyError, match=r"phenotype 'bmi'.*'height'"):
        fn(res, phenotype="bmi", show=False)
    with pytest.raises(ValueError, match="outside"):
        fn(res.assign(p=res["p"] * 10), show=False)


def test_manhattan_missing_columns_listed():
    with pytest.raises(KeyError, match=r"'chrom', 'pos'"):
        manhattan(_results().drop(columns=["chrom", "pos"]), show=False)


@pytest.mark.parametrize("fn", [manhattan, qq])
def test_save_return_fig_and_ax(fn, tmp_path):
    res = _results()
    path = tmp_path / "plot.png"
    out = fn(res, save=path)
    assert isinstance(out, Axes)
    assert path.read_bytes()[:8] == PNG_MAGIC
    assert isinstance(fn(res, return_fig=True, show=False), Figure)
    fig, ax = plt.subplots()
    assert fn(res, ax=ax, title="custom") is ax
    assert ax.get_title() == "custom"
