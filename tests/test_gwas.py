"""tl.gwas, pp.read_genotypes and tl.clump: exactness against OLS/MANOVA, calibration, planted effects, I/O."""

from __future__ import annotations

import shutil
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
import pytest

import pertcausal as pc
from pertcausal._engines.gwas import Backend, associate_block, genomic_inflation, make_design, mlog10_ibeta

HAPMAP = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "hapmap279-snprelate" / "hapmap279.bed"
needs_hapmap = pytest.mark.skipif(not HAPMAP.exists(), reason=f"real genotypes absent: {HAPMAP}")


def _ols_reference(Y, cov, g):
    """Per-phenotype OLS of y ~ 1 + cov + g with statsmodels: beta, se, p of g."""
    sm = pytest.importorskip("statsmodels.api")
    X = sm.add_constant(np.column_stack([cov, g]))
    fits = [sm.OLS(Y[:, q], X).fit() for q in range(Y.shape[1])]
    return np.array([[f.params[-1], f.bse[-1], f.pvalues[-1]] for f in fits])


@pytest.fixture(scope="module")
def small():
    rng = np.random.default_rng(0)
    n, m, P = 150, 12, 3
    G = rng.binomial(2, rng.uniform(0.1, 0.5, m), size=(n, m)).astype(float)
    G[rng.random((n, m)) < 0.04] = np.nan
    cov = rng.normal(size=(n, 2))
    Y = rng.normal(size=(n, P)) + 0.4 * np.nan_to_num(G[:, [0]], nan=1.0)
    return G, cov, Y


@pytest.mark.parametrize("missing", ["mean", "drop"])
def test_engine_matches_ols(small, missing):
    G, cov, Y = small
    d = make_design(Y, cov)
    res = associate_block(G.copy(), d, Backend(d.right()), missing=missing)
    for j in range(G.shape[1]):
        g = G[:, j].copy()
        ok = ~np.isnan(g)
        if missing == "mean":
            g[~ok] = np.nanmean(g)
            ok[:] = True
        ref = _ols_reference(Y[ok], cov[ok], g[ok])
        np.testing.assert_allclose(res["beta"][j], ref[:, 0], rtol=1e-10)
        np.testing.assert_allclose(res["se"][j], ref[:, 1], rtol=1e-10)
        np.testing.assert_allclose(res["p"][j], ref[:, 2], rtol=1e-8)
        assert res["n"][j] == ok.sum()
    np.testing.assert_allclose(res["mlog10p"], -np.log10(res["p"]), rtol=1e-10)


@pytest.mark.parametrize("missing", ["mean", "drop"])
def test_joint_test_matches_manova(small, missing):
    MANOVA = pytest.importorskip("statsmodels.multivariate.manova").MANOVA
    G, cov, Y = small
    d = make_design(Y, cov)
    res = associate_block(G.copy(), d, Backend(d.right()), missing=missing)
    for j in (0, 5):
        g = G[:, j].copy()
        ok = ~np.isnan(g)
        if missing == "mean":
            g[~ok] = np.nanmean(g)
            ok[:] = True
        df = pd.DataFrame(Y[ok], columns=["y0", "y1", "y2"]).assign(c0=cov[ok, 0], c1=cov[ok, 1], g=g[ok])
        table = MANOVA.from_formula("y0 + y1 + y2 ~ c0 + c1 + g", data=df).mv_test().results["g"]["stat"]
        assert res["joint_p"][j] == pytest.approx(table.loc["Wilks' lambda", "Pr > F"], rel=1e-8)
        assert res["joint_statistic"][j] == pytest.approx(table.loc["Wilks' lambda", "F Value"], rel=1e-8)
    assert res["joint_p"][0] < 1e-4  # the planted variant


def test_mlog10p_beyond_double_range():
    # t = 300 on 272 df: p ~ 1e-370, below the smallest double; the series gives it exactly
    from scipy import special

    t, df = 300.0, 272.0
    x = df / (df + t**2)
    value = float(mlog10_ibeta(np.array([x]), df / 2, 0.5)[0])
    # compare with the same quantity at higher precision through log-space integration of the t density
    from scipy import integrate

    def logpdf(u):
        c = special.gammaln((df + 1) / 2) - special.gammaln(df / 2) - 0.5 * np.log(df * np.pi)
        return c - (df + 1) / 2 * np.log1p(u * u / df)

    scale = logpdf(t)
    tail, _ = integrate.quad(lambda u: np.exp(logpdf(u) - scale), t, np.inf)
    expected = -(scale + np.log(2 * tail)) / np.log(10)
    assert value == pytest.approx(expected, abs=1e-6)
    assert value > 300


def test_genomic_inflation():
    rng = np.random.default_rng(1)
    p = rng.uniform(size=20_000)
    assert genomic_inflation(p) == pytest.approx(1.0, abs=0.03)
    from scipy import stats

    inflated = stats.chi2.sf(1.5 * stats.chi2.isf(p, 1), 1)
    assert genomic_inflation(inflated) == pytest.approx(1.5, abs=0.05)
    assert np.isnan(genomic_inflation(np.array([np.nan])))


# ---------------------------------------------------------------------------------------------
# tl.gwas on simulated genotypes
# ---------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def sim():
    geno = pc.data.simulate_genotypes(n_samples=1200, n_variants=1500, n_populations=2, fst=0.1, random_state=3)
    rng = np.random.default_rng(4)
    pop = (geno.samples["population"] == "pop1").to_numpy(float)
    z = rng.normal(size=(geno.n_samples, 6))
    G = geno.read([100, 900])
    z[:, 0] += 0.35 * (G[:, 0] - G[:, 0].mean())  # planted: var100 -> dim 0
    z[:, 2] += 0.35 * (G[:, 1] - G[:, 1].mean())  # planted: var900 -> dim 2
    z[:, 1] += 1.0 * pop  # stratification: dim 1 differs between populations
    obs = pd.DataFrame({"age": rng.normal(50, 10, geno.n_samples)}, index=geno.samples.index)
    return geno, ad.AnnData(obs=obs, obsm={"X_pertcausal": z})


def test_planted_effects_found_and_null_calibrated(sim):
    geno, adata = sim
    adata = adata.copy()
    res = pc.tl.gwas(adata, geno, covariates=["age"], n_genetic_pcs=2, progress_bar=False)
    store = adata.uns["gwas"]
    hits = res[res["p"] < 5e-8]
    assert set(zip(hits["variant"], hits["phenotype"].astype(str), strict=True)) == {
        ("var100", "X_pertcausal_0"),
        ("var900", "X_pertcausal_2"),
    }
    assert set(store["joint"].loc[store["joint"]["p"] < 5e-8, "variant"]) == {"var100", "var900"}
    # the stratified dimension is calibrated once genetic PCs are covariates
    for ph in ("X_pertcausal_1", "X_pertcausal_3", "X_pertcausal_4", "X_pertcausal_5"):
        assert 0.85 <= store["lambda_gc"][ph] <= 1.15, (ph, store["lambda_gc"][ph])  # 1,500 variants: noisy
    params = store["params"]
    assert params["n_variants_tested"] + params["n_filtered_maf"] == 1500 and params["n_filtered_maf"] < 30
    assert list(res.columns[:4]) == ["variant", "chrom", "pos", "a1"]
    assert np.corrcoef(store["covariates"]["genetic_PC1"], geno.samples["population"].cat.codes)[0, 1] ** 2 > 0.9


def test_stratification_inflates_without_pcs(sim):
    geno, adata = sim
    adata = adata.copy()
    pc.tl.gwas(adata, geno, n_genetic_pcs=0, joint=False, progress_bar=False)
    assert adata.uns["gwas"]["lambda_gc"]["X_pertcausal_1"] > 1.5


def test_null_lambda_within_bounds():
    geno = pc.data.simulate_genotypes(n_samples=1000, n_variants=4000, random_state=7)
    rng = np.random.default_rng(8)
    adata = ad.AnnData(obs=pd.DataFrame(index=geno.samples.index), obsm={"X_pertcausal": rng.normal(size=(1000, 8))})
    pc.tl.gwas(adata, geno, n_genetic_pcs=0, direction_test=True, progress_bar=False)
    lam = adata.uns["gwas"]["lambda_gc"]
    pooled = genomic_inflation(adata.uns["gwas"]["results"]["p"].to_numpy())
    assert 0.95 <= pooled <= 1.05
    assert 0.9 <= lam["joint"] <= 1.1
    assert 0.9 <= lam["direction"] <= 1.1


def test_direction_test_finds_a_multidimensional_effect():
    geno = pc.data.simulate_genotypes(n_samples=1500, n_variants=300, random_state=9)
    rng = np.random.default_rng(10)
    z = rng.normal(size=(1500, 10))
    g = geno.read([42])[:, 0]
    z += 0.12 * np.outer(g - g.mean(), np.ones(10))  # a small effect on every dimension
    adata = ad.AnnData(obs=pd.DataFrame(index=geno.samples.index), obsm={"X_pertcausal": z})
    pc.tl.gwas(adata, geno, n_genetic_pcs=0, transform=None, direction_test=True, progress_bar=False)
    direction = adata.uns["gwas"]["direction"].set_index("variant")
    assert direction["p"].idxmin() == "var42"
    assert direction.loc["var42", "p"] < 1e-8
    assert direction.loc["var42", "n"] == 1500 - 150


def test_sample_key_averages_cells_and_matches_by_id(sim):
    geno, donors = sim
    rng = np.random.default_rng(11)
    ids = np.repeat(donors.obs_names.to_numpy()[::-1], 3)  # reversed order: matching must be by id
    z = np.repeat(donors.obsm["X_pertcausal"][::-1], 3, axis=0) + rng.normal(scale=0.1, size=(len(ids), 6))
    z -= np.repeat(z.reshape(-1, 3, 6).mean(axis=1) - donors.obsm["X_pertcausal"][::-1], 3, axis=0)
    cells = ad.AnnData(
        obs=pd.DataFrame({"donor": ids, "age": np.repeat(donors.obs["age"].to_numpy()[::-1], 3)}),
        obsm={"X_pertcausal": z},
    )
    cells.obs_names = [f"cell{i}" for i in range(len(ids))]
    a = pc.tl.gwas(cells, geno, sample_key="donor", covariates=["age"], n_genetic_pcs=0, progress_bar=False)
    b = pc.tl.gwas(donors.copy(), geno, covariates=["age"], n_genetic_pcs=0, progress_bar=False)
    np.testing.assert_allclose(a["beta"].to_numpy(), b["beta"].to_numpy(), rtol=1e-8, atol=1e-12)
    assert (cells.uns["gwas"]["samples"]["n_cells"] == 3).all()


def test_transforms_pca_and_inverse_normal(sim):
    geno, adata = sim
    adata = adata.copy()
    pc.tl.gwas(adata, geno, transform=["inverse_normal", "pca"], n_genetic_pcs=0, joint=False, progress_bar=False)
    ph = adata.uns["gwas"]["phenotypes"]
    assert list(ph.columns) == [f"X_pertcausal_PC{i}" for i in range(1, 7)]
    # inverse-normal scores: the sorted values of every column are the same normal quantiles
    np.testing.assert_allclose(np.sort(ph.to_numpy(), axis=0)[:, 0], np.sort(ph.to_numpy(), axis=0)[:, 3])


def test_out_of_core_parquet_and_dask(tmp_path, sim):
    geno, adata = sim
    ref = pc.tl.gwas(adata.copy(), geno, n_genetic_pcs=0, chunk_size=400, progress_bar=False)
    out = tmp_path / "sumstats.parquet"
    kept = pc.tl.gwas(adata.copy(), geno, n_genetic_pcs=0, chunk_size=400, out=out, progress_bar=False)
    full = pd.read_parquet(out)
    np.testing.assert_allclose(full["beta"].to_numpy(), ref["beta"].to_numpy())
    assert (kept["p"] <= 1e-5).all() and len(kept) == (ref["p"] <= 1e-5).sum()
    tsv = tmp_path / "sumstats.tsv.gz"
    pc.tl.gwas(adata.copy(), geno, n_genetic_pcs=0, chunk_size=400, out=tsv, progress_bar=False)
    assert len(pd.read_csv(tsv, sep="\t")) == len(ref)

    distributed = pytest.importorskip("distributed")
    with distributed.Client(processes=False, n_workers=2, threads_per_worker=1, dashboard_address=None) as client:
        viadask = pc.tl.gwas(adata.copy(), geno, n_genetic_pcs=0, chunk_size=400, client=client, progress_bar=False)
    np.testing.assert_allclose(viadask["beta"].to_numpy(), ref["beta"].to_numpy())


def test_results_survive_h5ad_and_h5mu(tmp_path, sim):
    geno, adata = sim
    adata = adata.copy()
    res = pc.tl.gwas(adata, geno, n_genetic_pcs=1, progress_bar=False)
    pc.tl.clump(adata, geno, p1=1e-6)
    adata.write_h5ad(tmp_path / "a.h5ad")
    back = ad.read_h5ad(tmp_path / "a.h5ad")
    pd.testing.assert_frame_equal(back.uns["gwas"]["results"], res, check_categorical=False)
    assert back.uns["gwas"]["params"]["n_genetic_pcs"] == 1
    assert len(back.uns["gwas"]["clumps"]) >= 2

    mudata = pytest.importorskip("mudata")
    mdata = mudata.MuData({"rna": ad.AnnData(np.zeros((geno.n_samples, 2)), obs=pd.DataFrame(index=adata.obs_names))})
    mdata.obsm["X_pertcausal"] = adata.obsm["X_pertcausal"]
    pc.tl.gwas(mdata, geno, n_genetic_pcs=0, progress_bar=False)
    mdata.write(tmp_path / "m.h5mu")
    assert len(mudata.read_h5mu(tmp_path / "m.h5mu").uns["gwas"]["joint"]) == len(res) // 6


def test_clump_by_ld():
    # two correlated variants (one is a noisy copy of the other) and one independent, close together
    rng = np.random.default_rng(12)
    g0 = rng.binomial(2, 0.4, 800).astype(float)
    g1 = np.where(rng.random(800) < 0.9, g0, rng.binomial(2, 0.4, 800))
    g2 = rng.binomial(2, 0.4, 800).astype(float)
    G = np.column_stack([g0, g1, g2])
    variants = pd.DataFrame({"variant": ["a", "b", "c"], "chrom": "1", "pos": [1000, 2000, 3000]})
    geno = pc.pp.Genotypes.from_array(G, variants=variants)
    z = rng.normal(size=(800, 1)) + 0.8 * (g0 - g0.mean())[:, None] + 0.4 * (g2 - g2.mean())[:, None]
    adata = ad.AnnData(obs=pd.DataFrame(index=geno.samples.index), obsm={"X_pertcausal": z})
    pc.tl.gwas(adata, geno, n_genetic_pcs=0, maf=0, progress_bar=False)
    by_ld = pc.tl.clump(adata, geno, p1=1e-8, r2=0.5)
    assert by_ld["variant"].tolist() == ["a", "c"]
    assert by_ld["clumped"].tolist() == ["b", ""]
    by_distance = pc.tl.clump(adata, p1=1e-8, kb=10)
    assert by_distance["variant"].tolist() == ["a"] and by_distance["n_clumped"].iloc[0] == 2


# ---------------------------------------------------------------------------------------------
# bad input: clear errors, nothing written
# ---------------------------------------------------------------------------------------------
def test_bad_input(sim):
    geno, adata = sim
    adata = adata.copy()
    with pytest.raises(KeyError, match="'X_missing' is not a key of data.obsm"):
        pc.tl.gwas(adata, geno, use_rep="X_missing")
    with pytest.raises(KeyError, match="covariate 'nope' is not a column of adata.obs"):
        pc.tl.gwas(adata, geno, covariates=["nope"])
    bad = adata.copy()
    bad.obs.loc[bad.obs_names[:3], "age"] = np.nan
    with pytest.raises(ValueError, match="covariate 'age' has 3 missing values"):
        pc.tl.gwas(bad, geno, covariates=["age"], n_genetic_pcs=0)
    other = adata.copy()
    other.obs_names = [f"x{i}" for i in range(other.n_obs)]
    with pytest.raises(ValueError, match="none of the 1200 sample ids"):
        pc.tl.gwas(other, geno)
    flat = adata.copy()
    flat.obsm["X_pertcausal"] = flat.obsm["X_pertcausal"].copy()
    flat.obsm["X_pertcausal"][:, 3] = 1.0
    with pytest.raises(ValueError, match="'X_pertcausal_3'.*zero variance"):
        pc.tl.gwas(flat, geno)
    tiny = adata[:8].copy()
    tiny.obs["c"] = np.arange(8.0)
    with pytest.raises(ValueError, match="need more than the 8 genotyped samples"):
        pc.tl.gwas(tiny, geno, covariates=["age", "c"], n_genetic_pcs=4, pca_variants=50)
    with pytest.raises(ValueError, match=r"chromosomes '7' are not in the genotypes"):
        pc.tl.gwas(adata, geno, chromosomes=["7"])
    with pytest.raises(ValueError, match="out="):
        pc.tl.gwas(adata, geno, out="results.xlsx")
    with pytest.raises(ValueError, match="unknown|expected|missing"):
        pc.tl.gwas(adata, geno, missing="zero")
    assert "gwas" not in adata.uns
    with pytest.warns(UserWarning, match="1100 of 1200 samples have genotypes"):
        part = adata.copy()
        part.obs_names = [f"x{i}" if i < 100 else n for i, n in enumerate(part.obs_names)]
        pc.tl.gwas(part, geno, n_genetic_pcs=0, joint=False, progress_bar=False)
    assert part.uns["gwas"]["params"]["n_samples_without_genotypes"] == 100


@pytest.mark.gpu
def test_cuda_matches_cpu(sim):
    torch = pytest.importorskip("torch")
    if not torch.cuda.is_available():
        pytest.skip("no CUDA device")
    geno, adata = sim
    cpu = pc.tl.gwas(adata.copy(), geno, device="cpu", progress_bar=False)
    gpu = pc.tl.gwas(adata.copy(), geno, device="cuda", progress_bar=False)
    np.testing.assert_allclose(gpu["beta"].to_numpy(), cpu["beta"].to_numpy(), rtol=1e-6, atol=1e-9)


def test_cuda_request_without_cuda(sim):
    torch = pytest.importorskip("torch")
    if torch.cuda.is_available():
        pytest.skip("CUDA is present")
    geno, adata = sim
    with pytest.raises(ValueError, match="CUDA is not available"):
        pc.tl.gwas(adata.copy(), geno, device="cuda")


# ---------------------------------------------------------------------------------------------
# PLINK files
# ---------------------------------------------------------------------------------------------
@needs_hapmap
def test_read_genotypes_real_files():
    geno = pc.pp.read_genotypes(HAPMAP)
    assert geno.shape == (279, 5000)
    assert set(geno.variants["chrom"]) == {*map(str, range(1, 23)), "X"}
    G = geno.read(slice(0, 3))
    # hand decode of the first variant's first byte: 2-bit codes, low bits first, 00 = two copies of A1
    raw = HAPMAP.read_bytes()[3]
    codes = [(raw >> (2 * i)) & 3 for i in range(4)]
    lookup = {0: 2.0, 1: np.nan, 2: 1.0, 3: 0.0}
    np.testing.assert_array_equal(G[:4, 0], [lookup[c] for c in codes])
    assert np.isnan(geno.read()).mean() == pytest.approx(0.0041, abs=0.0005)
    assert geno.read([4999, 0], samples=[5, 2]).shape == (2, 2)


@needs_hapmap
def test_read_genotypes_errors(tmp_path):
    for ext in (".bed", ".bim", ".fam"):
        shutil.copy(HAPMAP.with_suffix(ext), tmp_path / f"g{ext}")
    with open(tmp_path / "g.bed", "r+b") as fh:
        fh.truncate(1000)
    with pytest.raises(ValueError, match="has 1000 bytes but 5000 variants .* x 279 samples .* need 350003"):
        pc.pp.read_genotypes(tmp_path / "g.bed")
    (tmp_path / "g.bim").unlink()
    with pytest.raises(FileNotFoundError, match=r"\.bim file"):
        pc.pp.read_genotypes(tmp_path / "g")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        pc.pp.read_genotypes(tmp_path / "absent.bed")


@needs_hapmap
def test_effect_allele_is_bim_a1(tmp_path):
    bed_reader = pytest.importorskip("bed_reader")
    # write a bed whose A1 column names the allele we count, and check beta's sign follows A1
    rng = np.random.default_rng(13)
    G = rng.binomial(2, 0.3, size=(400, 2)).astype(np.float32)
    bed_reader.to_bed(
        tmp_path / "t.bed",
        G,
        properties={
            "iid": [f"s{i}" for i in range(400)],
            "sid": ["v0", "v1"],
            "chromosome": ["1", "1"],
            "bp_position": [100, 200],
            "allele_1": ["T", "C"],
            "allele_2": ["A", "G"],
        },
    )
    geno = pc.pp.read_genotypes(tmp_path / "t.bed")
    np.testing.assert_array_equal(geno.read(), G)
    z = (G[:, [0]] - G[:, 0].mean()) + rng.normal(scale=0.5, size=(400, 1))
    adata = ad.AnnData(obs=pd.DataFrame(index=[f"s{i}" for i in range(400)]), obsm={"X_pertcausal": z})
    res = pc.tl.gwas(adata, geno, n_genetic_pcs=0, transform=None, progress_bar=False).set_index("variant")
    assert res.loc["v0", "a1"] == "T" and res.loc["v0", "beta"] == pytest.approx(1.0, abs=0.1)


@needs_hapmap
def test_agrees_with_plink2(tmp_path):
    import subprocess

    plink2 = shutil.which("plink2")
    if plink2 is None and shutil.which("apt-get") is not None:
        subprocess.run(["apt-get", "install", "-y", "-q", "plink2"], capture_output=True, check=False)
        plink2 = shutil.which("plink2")
    if plink2 is None:
        pytest.skip("plink2 is not installed and `apt-get install plink2` failed (needs root and Debian)")
    geno = pc.pp.read_genotypes(HAPMAP)
    rng = np.random.default_rng(14)
    n = geno.n_samples
    G = geno.read([100, 2500])
    z = rng.normal(size=(n, 4))
    z[:, 0] += 0.6 * np.nan_to_num(G[:, 0] - np.nanmean(G[:, 0]))
    obs = pd.DataFrame({"c1": rng.normal(size=n), "c2": rng.normal(size=n)}, index=geno.samples.index)
    adata = ad.AnnData(obs=obs, obsm={"X_pertcausal": z})
    res = pc.tl.gwas(
        adata,
        geno,
        covariates=["c1", "c2"],
        n_genetic_pcs=2,
        missing="drop",
        maf=0.0,
        max_missing=1.0,
        joint=False,
        progress_bar=False,
    )
    store = adata.uns["gwas"]
    fam = geno.samples
    pheno = store["phenotypes"].set_axis([f"Y{i}" for i in range(4)], axis=1)
    pheno.insert(0, "IID", pheno.index)
    pheno.insert(0, "#FID", fam.loc[pheno.index, "fid"].to_numpy())
    cov = store["covariates"].copy()
    cov.insert(0, "IID", cov.index)
    cov.insert(0, "#FID", fam.loc[cov.index, "fid"].to_numpy())
    pheno.to_csv(tmp_path / "pheno.tsv", sep="\t", index=False)
    cov.to_csv(tmp_path / "covar.tsv", sep="\t", index=False)
    subprocess.run(
        [plink2, "--bfile", str(HAPMAP.with_suffix("")), "--pheno", str(tmp_path / "pheno.tsv"), "--covar",
         str(tmp_path / "covar.tsv"), "--glm", "hide-covar", "omit-ref", "cols=chrom,pos,alt,a1count,nobs,beta,se,tz,p",
         "--threads", "2", "--out", str(tmp_path / "out")],
        check=True, capture_output=True,
    )  # fmt: skip
    for i in range(4):
        ref = pd.read_csv(tmp_path / f"out.Y{i}.glm.linear", sep="\t", dtype={"ID": str, "P": str})
        ref = ref[ref["BETA"].astype(str) != "NA"].set_index("ID")
        ours = res[res["phenotype"] == f"X_pertcausal_{i}"].set_index("variant")
        assert len(ref) > 4900 and ours.index.difference(ref.index).empty
        ref = ref.loc[ours.index]
        assert (ref["A1"] == ours["a1"]).all()
        assert (ref["OBS_CT"].to_numpy() == ours["n"].to_numpy()).all()
        beta = ref["BETA"].astype(float).to_numpy()
        np.testing.assert_allclose(ours["beta"].to_numpy(), beta, rtol=2e-5, atol=1e-7)
        np.testing.assert_allclose(ours["se"].to_numpy(), ref["SE"].astype(float).to_numpy(), rtol=2e-5)
        mant = ref["P"].str.split("e", expand=True)
        plink_mlog = -(np.log10(mant[0].astype(float)) + (mant[1].fillna("0").astype(int) if 1 in mant else 0))
        np.testing.assert_allclose(ours["mlog10p"].to_numpy(), plink_mlog.to_numpy(), atol=1e-4)


# ---------------------------------------------------------------------------------------------
# cross-fitted embeddings
# ---------------------------------------------------------------------------------------------
def _cells(n_donors=60, per=20, seed=15):
    rng = np.random.default_rng(seed)
    donors = np.repeat([f"d{i}" for i in range(n_donors)], per)
    state = rng.normal(size=(n_donors * per, 4)) * np.array([4.0, 3.0, 2.0, 1.5])
    X = state @ rng.normal(size=(4, 40)) + rng.normal(scale=0.5, size=(n_donors * per, 40))
    return ad.AnnData(X, obs=pd.DataFrame({"donor": donors}, index=[f"c{i}" for i in range(len(donors))]))


def test_cross_fit_never_embeds_a_donor_with_its_own_model():
    adata = _cells()
    seen = []

    def fit(train):
        train_donors = set(train.obs["donor"])

        def transform(cells):
            seen.append(bool(train_donors & set(cells.obs["donor"])))
            return cells.X[:, :3]

        return transform

    pc.tl.cross_fit_embedding(adata, sample_key="donor", method=fit, n_folds=4, align=False)
    assert seen == [False] * 4
    folds = adata.obs.groupby("donor", observed=True)["X_cross_fit_fold"].nunique()
    assert (folds == 1).all() and adata.obs["X_cross_fit_fold"].nunique() == 4
    np.testing.assert_array_equal(adata.obsm["X_cross_fit"], adata.X[:, :3])


def test_cross_fit_pca_is_aligned_across_folds():
    adata = _cells()
    pc.tl.cross_fit_embedding(adata, sample_key="donor", n_components=4, n_folds=5)
    X = adata.X - adata.X.mean(axis=0)
    full = X @ np.linalg.svd(X, full_matrices=False)[2][:4].T
    emb = adata.obsm["X_cross_fit"]
    # one orthogonal map takes the whole cross-fitted embedding onto the full-data PCA: the folds share axes
    u, _, vt = np.linalg.svd((emb - emb.mean(0)).T @ full)
    resid = (emb - emb.mean(0)) @ (u @ vt) - full
    assert 1 - (resid**2).sum() / (full**2).sum() > 0.99
    unaligned = adata.copy()
    pc.tl.cross_fit_embedding(unaligned, sample_key="donor", n_components=4, n_folds=5, align=False)
    emb2 = unaligned.obsm["X_cross_fit"]
    u, _, vt = np.linalg.svd((emb2 - emb2.mean(0)).T @ full)
    resid2 = (emb2 - emb2.mean(0)) @ (u @ vt) - full
    assert (resid2**2).sum() > 10 * (resid**2).sum()  # sign flips between folds without alignment


def test_cross_fit_errors():
    adata = _cells(n_donors=5, per=4)
    with pytest.raises(KeyError, match="sample_key 'nope'"):
        pc.tl.cross_fit_embedding(adata, sample_key="nope")
    with pytest.raises(ValueError, match="n_folds=6 must lie between 2 and the number of donors"):
        pc.tl.cross_fit_embedding(adata, sample_key="donor", n_folds=6, n_components=2)
    with pytest.raises(ValueError, match="unknown method 'umap'"):
        pc.tl.cross_fit_embedding(adata, sample_key="donor", method="umap")
    assert "X_cross_fit" not in adata.obsm
