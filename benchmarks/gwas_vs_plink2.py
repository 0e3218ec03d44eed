"""Benchmark: ``pc.tl.gwas`` against PLINK 2 ``--glm`` on real HapMap genotypes (agreement and speed).

Real genotypes: HapMap (SNPRelate's ``hapmap279``: 279 samples of CEU, YRI, CHB and JPT x 5,000 SNPs
on chromosomes 1-22 and X, 0.4 % missing calls). Phenotypes are planted on them:

(a) one quantitative trait: 10 causal autosomal SNPs with MAF > 0.1 whose effects together explain
    ~40 % of its variance, two simulated numeric covariates with small effects, Gaussian noise;
(b) a 32-dimensional per-sample embedding (correlated dimensions) in which 5 other SNPs shift 3
    dimensions each, tested by pertcausal with ``transform="inverse_normal"``; PLINK 2 is given the
    transformed phenotypes pertcausal actually tested (``uns["gwas"]["phenotypes"]``).

Both tools get the same covariates: the two simulated ones and 5 genetic PCs computed once by pertcausal
(``pc.tl.gwas(..., n_genetic_pcs=5)``, ``uns["gwas"]["covariates"]``); pertcausal then runs with
``n_genetic_pcs=0``. PLINK 2 drops a sample with a missing call from that variant's regression, so the
exact comparison uses ``missing="drop"``; ``maf=0`` and ``max_missing=1`` because PLINK 2 filters nothing
(monomorphic variants are skipped by both). As PLINK 2 does, pertcausal adds the ``.fam`` sex as a
covariate for chrX variants. PLINK 2 runs ``--glm hide-covar omit-ref``, so its A1 is the ALT allele
(``.bim`` column 5), pertcausal's ``a1``; any row whose A1 differs is sign-aligned by allele and counted.
PLINK 2 prints 6 significant digits, so agreement is limited to about 5e-6 relative; its P column is parsed
as text (values below 1e-308 occur) and compared with pertcausal's ``mlog10p``.

Timing: wall time, best of 5, both restricted to the same number of threads (``--threads`` for PLINK 2;
BLAS and bed-reader threads for pertcausal). pertcausal is timed from the ``.bed`` path to the returned
table (the AnnData already in memory); PLINK 2 as a subprocess that reads the ``.bed``, the phenotype and
covariate text files and writes one result file per phenotype.

sgkit, where it installs (sgkit 0.10 needs older numpy and dask than pertcausal, so it lives in its own
interpreter, ``--sgkit-python``): ``sgkit.gwas_linear_regression`` run in a subprocess on a worker script
written at run time, on the same ``.bed`` (``sgkit.io.plink.read_plink``) and the same phenotype and
covariate files. Its dosage (the sum of ``call_genotype``) counts the ``.bim`` column 6 allele, pertcausal's
``a2``, so signs are aligned by allele. Its regression takes no missing values, so missing calls are set to
the variant's mean dosage and sgkit is compared with pertcausal ``missing="mean"``; it adds no sex covariate
on chrX, so only autosomal variants are compared. It is timed inside the subprocess (dask threads scheduler,
the same number of threads), compute only and with reading.

Run from the repository root::

    python benchmarks/gwas_vs_plink2.py            # writes docs/benchmarks/gwas_vs_plink2.md (+ .png)
    python benchmarks/gwas_vs_plink2.py --quick    # 2 timing repeats, no file
    python benchmarks/gwas_vs_plink2.py --sgkit-python /path/to/sgkit-venv/bin/python
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import ROOT, SHARED_DATA, machine_info, machine_markdown, markdown_table

DATA = SHARED_DATA / "hapmap279-snprelate" / "hapmap279"
OUTPUT = ROOT / "docs" / "benchmarks" / "gwas_vs_plink2.md"
FIGURE = ROOT / "docs" / "benchmarks" / "gwas_vs_plink2.png"
PLINK_COLS = "chrom,pos,ref,alt,a1count,totallele,a1freq,nobs,beta,se,tz,p,err"
COVARIATES = ["cov_age", "cov_score"]
N_PCS = 5
N_CAUSAL = 10
H2 = 0.40
N_LATENT, N_LATENT_SNPS, DIMS_PER_SNP = 32, 5, 3
TARGET_BETA, TARGET_MLOG10P = 2e-5, 1e-4


# ---------------------------------------------------------------------------------------------
# PLINK 2
# ---------------------------------------------------------------------------------------------
def plink2_binary() -> str | None:
    found = shutil.which("plink2")
    return found or ("/usr/bin/plink2" if Path("/usr/bin/plink2").exists() else None)


def plink2_version(binary: str) -> str:
    out = subprocess.run([binary, "--version"], capture_output=True, text=True).stdout.strip()
    return out or "unknown"


def write_table(path: Path, fam: pd.DataFrame, values: pd.DataFrame) -> Path:
    """A PLINK 2 phenotype/covariate file: ``#FID IID ...``, tab-separated, full double precision."""
    table = values.copy()
    table.insert(0, "IID", values.index.astype(str))
    table.insert(0, "#FID", fam.loc[values.index, "fid"].astype(str).to_numpy())
    table.to_csv(path, sep="\t", index=False, float_format="%.17g", na_rep="NA")
    return path


def plink2_command(binary: str, pheno: Path, covar: Path, out: Path, threads: int) -> list[str]:
    return [
        binary, "--bfile", str(DATA), "--pheno", str(pheno), "--covar", str(covar),
        "--glm", "hide-covar", "omit-ref", f"cols={PLINK_COLS}",
        "--threads", str(threads), "--out", str(out),
    ]  # fmt: skip


def run_plink2(cmd: list[str]) -> None:
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"plink2 failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")


def mlog10p_from_text(values: pd.Series) -> np.ndarray:
    """-log10 of P as PLINK 2 prints it, parsed as text: ``1.72194e-411`` is below double range."""
    s = values.astype(str).str.strip().str.lower()
    out = np.full(len(s), np.nan)
    ok = ~s.isin(["na", "nan", ""]).to_numpy()
    parts = s[ok].str.split("e", n=1, expand=True)
    mant = parts[0].astype(float).to_numpy()
    expo = parts[1].fillna("0").astype(int).to_numpy() if parts.shape[1] > 1 else 0
    with np.errstate(divide="ignore"):
        out[ok] = -(np.log10(mant) + expo)
    return out


def read_plink2(out: Path, phenotypes: list[str]) -> pd.DataFrame:
    tables = []
    for ph in phenotypes:
        t = pd.read_csv(f"{out}.{ph}.glm.linear", sep="\t", dtype={"ID": str, "P": str, "A1": str, "ALT": str})
        t["phenotype"] = ph
        tables.append(t)
    t = pd.concat(tables, ignore_index=True)
    t["mlog10p"] = mlog10p_from_text(t["P"])
    for c in ("BETA", "SE", "T_STAT", "A1_FREQ", "OBS_CT"):
        t[c] = pd.to_numeric(t[c], errors="coerce")
    return t.rename(columns={"ID": "variant"})


# ---------------------------------------------------------------------------------------------
# sgkit (a separate interpreter: sgkit 0.10 pins numpy/dask versions older than pertcausal's)
# ---------------------------------------------------------------------------------------------
SGKIT_DEFAULT = Path("/tmp/sgkit-venv/bin/python")
SGKIT_MISSING = "sgkit not installed; run with --sgkit-python"

SGKIT_PROBE = """
import json
from importlib.metadata import version
print(json.dumps({p: version(p) for p in ("sgkit", "numpy", "dask", "xarray", "bed-reader")}))
"""

# Written to a temporary directory and run as ``<sgkit python> sgkit_worker.py config.json``.
SGKIT_WORKER = '''"""sgkit.gwas_linear_regression on the benchmark's PLINK files, phenotypes and covariates."""

import json
import sys
import time
import warnings

import dask
import numpy as np
import pandas as pd
import sgkit
from sgkit.io.plink import read_plink

warnings.filterwarnings("ignore", category=UserWarning)  # dask's string-dtype notes in read_plink
cfg = json.loads(open(sys.argv[1]).read())
dask.config.set(scheduler="threads", num_workers=cfg["threads"])


def table(path, ids):
    t = pd.read_csv(path, sep="\\t", dtype={"#FID": str, "IID": str}).set_index("IID").drop(columns="#FID")
    return t.loc[ids]  # matched to the .fam by IID


def load(pheno):
    """read_plink; dosage = sum of call_genotype over the ploidy, i.e. the count of variant_allele[:, 1]
    (.bim column 6); a missing call (call_genotype -1, call_genotype_mask) set to the variant's mean dosage."""
    ds = read_plink(path=cfg["bfile"])
    ids = ds["sample_id"].values.astype(str)
    cov, traits = table(cfg["covar"], ids), table(pheno, ids)
    called = ~ds["call_genotype_mask"].any("ploidy")
    ds["dosage_nan"] = ds["call_genotype"].sum("ploidy").where(called)
    ds["dosage"] = ds["dosage_nan"].fillna(ds["dosage_nan"].mean("samples"))
    for c in cov:
        ds[f"covar_{c}"] = ("samples", cov[c].to_numpy(float))
    for t in traits:
        ds[f"trait_{t}"] = ("samples", traits[t].to_numpy(float))
    return ds, list(cov), list(traits)


def regress(ds, covs, traits, dosage="dosage"):
    res = sgkit.gwas_linear_regression(
        ds,
        dosage=dosage,
        covariates=[f"covar_{c}" for c in covs],
        traits=[f"trait_{t}" for t in traits],
        add_intercept=True,
        merge=False,
    )
    names = ("variant_linreg_beta", "variant_linreg_t_value", "variant_linreg_p_value")
    return dask.compute(*(res[k].data for k in names))


def run_job(name, pheno):
    ds, covs, traits = load(pheno)
    beta, t, p = regress(ds, covs, traits)
    np.savez(
        f"{cfg['out']}/{name}.npz",
        variant=ds["variant_id"].values.astype(str),
        allele=ds["variant_allele"].values[:, 1].astype(str),
        traits=np.array(traits),
        beta=beta,
        t=t,
        p=p,
    )
    has_missing = ds["call_genotype_mask"].any(("samples", "ploidy")).values
    job = {"variants_with_missing": int(has_missing.sum())}
    if name == cfg["missing_check"]:  # what sgkit does with a missing call when nothing is imputed
        se = np.abs(beta / t)
        b_nan = regress(ds, covs, traits, "dosage_nan")[0]
        ds["dosage_raw"] = ds["call_genotype"].sum("ploidy")  # a missing call sums to -2
        b_raw = regress(ds, covs, traits, "dosage_raw")[0]
        d_raw = np.abs(b_raw - beta) / se
        job["nan_variants"] = int((np.isnan(b_nan).any(axis=1) & has_missing).sum())
        dosage = ds["dosage"].values
        mono = dosage.max(axis=1) == dosage.min(axis=1)  # constant dosage: nothing to estimate
        finite = mono & np.isfinite(beta).all(axis=1)
        job["monomorphic"] = int(mono.sum())
        job["monomorphic_nan"] = int((mono & np.isnan(beta).all(axis=1)).sum())
        job["monomorphic_nan_dosages"] = sorted({float(x) for x in dosage[mono & ~finite, 0]})
        job["monomorphic_finite"] = int(finite.sum())
        job["monomorphic_finite_dosages"] = sorted({float(x) for x in dosage[finite, 0]})
        job["monomorphic_finite_max_abs_beta"] = float(np.abs(beta[finite]).max()) if finite.any() else 0.0
        job["monomorphic_finite_min_p"] = float(p[finite].min()) if finite.any() else 1.0
        on_x = ds["contig_id"].values.astype(str)[ds["variant_contig"].values] == "X"
        job["monomorphic_finite_x"] = int((finite & on_x).sum())
        job["raw_changed_variants"] = int((d_raw > 1e-9).any(axis=1).sum())
        job["raw_median_dbeta_se"] = float(np.nanmedian(d_raw[has_missing]))
        job["raw_max_dbeta_se"] = float(np.nanmax(d_raw))
    prepared = ds.persist()  # the dataset in memory, chunked as read_plink chunks it

    def full():
        d, c, tr = load(pheno)
        regress(d, c, tr)

    runs = {"compute": lambda: regress(prepared, covs, traits), "full": full}
    times = {k: [] for k in runs}
    for _ in range(cfg["repeats"]):
        for k, fn in runs.items():
            t0 = time.perf_counter()
            fn()
            times[k].append(time.perf_counter() - t0)
    job.update({k: min(v) for k, v in times.items()})
    return job


out = {"jobs": {name: run_job(name, pheno) for name, pheno in cfg["jobs"].items()}}
print(json.dumps(out))
'''


def sgkit_python_default() -> str | None:
    env = os.environ.get("PERTCAUSAL_SGKIT_PYTHON")
    if env:
        return env
    return str(SGKIT_DEFAULT) if SGKIT_DEFAULT.exists() else None


def sgkit_versions(python: str | None) -> tuple[dict[str, str] | None, str]:
    """(versions of sgkit, numpy, dask, xarray, bed-reader in ``python``, or None where sgkit does not import; why)."""
    if not python or not Path(python).exists():
        return None, SGKIT_MISSING
    proc = subprocess.run([python, "-c", SGKIT_PROBE], capture_output=True, text=True)
    if proc.returncode != 0:
        return None, f"{SGKIT_MISSING} (`{python}` cannot import sgkit)"
    return json.loads(proc.stdout), ""


def run_sgkit(python: str, tmpd: Path, jobs: dict[str, Path], covar: Path, threads: int, repeats: int) -> dict:
    """Run :data:`SGKIT_WORKER`: its timings and missing-call checks, and per job a long results table."""
    worker, config = tmpd / "sgkit_worker.py", tmpd / "sgkit_config.json"
    worker.write_text(SGKIT_WORKER)
    cfg = {
        "bfile": str(DATA), "covar": str(covar), "jobs": {k: str(v) for k, v in jobs.items()},
        "out": str(tmpd), "threads": threads, "repeats": repeats, "missing_check": next(iter(jobs)),
    }  # fmt: skip
    config.write_text(json.dumps(cfg))
    n = str(threads)
    env = {**os.environ, "OMP_NUM_THREADS": n, "OPENBLAS_NUM_THREADS": n, "MKL_NUM_THREADS": n, "PST_NUM_THREADS": n}
    proc = subprocess.run([python, str(worker), str(config)], capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        raise RuntimeError(f"sgkit worker failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    for name, job in out["jobs"].items():
        with np.load(tmpd / f"{name}.npz") as z:
            n_var, traits = len(z["variant"]), z["traits"].astype(str)
            job["table"] = pd.DataFrame(
                {
                    "variant": np.repeat(z["variant"].astype(str), len(traits)),
                    "phenotype": np.tile(traits, n_var),
                    "allele_sg": np.repeat(z["allele"].astype(str), len(traits)),
                    "beta_sg": z["beta"].ravel(),
                    "t_sg": z["t"].ravel(),
                    "p_sg": z["p"].ravel(),
                }
            )
    return out


def compare_sgkit(ours: pd.DataFrame, sg: pd.DataFrame, autosomal: set[str]) -> dict[str, float]:
    """pertcausal (``missing="mean"``) against sgkit over the autosomal (variant, phenotype) rows, by allele."""
    o = ours.assign(variant=ours["variant"].astype(str), phenotype=ours["phenotype"].astype(str))
    o, sg = o[o["variant"].isin(autosomal)], sg[sg["variant"].isin(autosomal)]
    m = o.merge(sg, on=["variant", "phenotype"], how="outer")
    same = m["allele_sg"] == m["a1"]
    flipped = (m["allele_sg"] == m["a2"]) & ~same
    sign = np.where(flipped, -1.0, 1.0)
    m["beta_sg"], m["t_sg"] = m["beta_sg"] * sign, m["t_sg"] * sign
    with np.errstate(divide="ignore"):
        m["mlog10p_sg"] = -np.log10(m["p_sg"].to_numpy(float))
    ours_ok = np.isfinite(m["beta"].to_numpy(float))
    sg_ok = np.isfinite(m["beta_sg"].to_numpy(float))
    both = ours_ok & sg_ok & (same | flipped).to_numpy()
    b = m[both]
    rel_beta = np.abs(b["beta"] / b["beta_sg"] - 1.0)
    return {
        "rows": int(both.sum()),
        "variants": int(b["variant"].nunique()),
        "flipped": int(flipped[both].sum()),
        "allele_mismatch": int((ours_ok & sg_ok & ~(same | flipped)).sum()),
        "ours_only": int((ours_ok & ~sg_ok).sum()),
        "sgkit_only": int((sg_ok & ~ours_ok).sum()),
        "sgkit_nan": int(m["variant"][~sg_ok].nunique()),
        "max_rel_beta": float(rel_beta.max()),
        "median_rel_beta": float(rel_beta.median()),
        "max_rel_t": float(np.abs(b["t"] / b["t_sg"] - 1.0).max()),
        "max_dmlog10p": float(np.abs(b["mlog10p"] - b["mlog10p_sg"]).max()),
        "max_mlog10p": float(b["mlog10p_sg"].max()),
    }


# ---------------------------------------------------------------------------------------------
# agreement
# ---------------------------------------------------------------------------------------------
def compare(ours: pd.DataFrame, plink: pd.DataFrame) -> dict[str, float]:
    """Per-(variant, phenotype) agreement over the rows both tools tested (sign-aligned by allele)."""
    o = ours.assign(variant=ours["variant"].astype(str), phenotype=ours["phenotype"].astype(str))
    m = o.merge(plink, on=["variant", "phenotype"], how="outer", suffixes=("", "_pl"), indicator=True)
    same = m["A1"] == m["a1"]
    flipped = (m["A1"] == m["a2"]) & ~same
    sign = np.where(flipped, -1.0, 1.0)
    m["beta_pl"] = m["BETA"] * sign
    ours_ok = np.isfinite(m["beta"].to_numpy(float)) & (m["_merge"] != "right_only")
    pl_ok = (m["ERRCODE"] == ".") & np.isfinite(m["beta_pl"].to_numpy(float))
    both = ours_ok & pl_ok & (same | flipped)
    b = m[both]
    rel_beta = np.abs(b["beta"] / b["beta_pl"] - 1.0)
    rel_se = np.abs(b["se"] / b["SE"] - 1.0)
    freq_pl = np.where(flipped[both], 1.0 - b["A1_FREQ"], b["A1_FREQ"])
    on_x = (b["chrom"].astype(str) == "X").to_numpy()
    return {
        "rows": int(both.sum()),
        "variants": int(b["variant"].nunique()),
        "ours_only": int((ours_ok & ~pl_ok).sum()),
        "plink_only": int((pl_ok & ~ours_ok).sum()),
        "allele_mismatch": int((m["_merge"] == "both").sum() - (same | flipped)[m["_merge"] == "both"].sum()),
        "a1_flipped": int(flipped[m["_merge"] == "both"].sum()),
        "n_mismatch": int((b["n"] != b["OBS_CT"]).sum()),
        "max_rel_beta": float(rel_beta.max()),
        "median_rel_beta": float(rel_beta.median()),
        "max_rel_se": float(rel_se.max()),
        "max_rel_beta_x": float(rel_beta[on_x].max()) if on_x.any() else float("nan"),
        "max_dmlog10p": float(np.abs(b["mlog10p"] - b["mlog10p_pl"]).max()),
        "max_mlog10p": float(b["mlog10p_pl"].max()),
        "max_dfreq": float(np.abs(b["a1_freq"] - freq_pl).max()),
        "_merged": b,
    }


def missing_variant_summary(ours_mean: pd.DataFrame, plink: pd.DataFrame) -> dict[str, float]:
    """Mean-imputation against PLINK 2's complete cases, over the variants with missing calls."""
    c = compare(ours_mean, plink)
    b = c["_merged"]
    b = b[b["n_missing"] > 0]
    rel = np.abs(b["beta"] / b["beta_pl"] - 1.0)
    return {
        "rows": len(b),
        "variants": int(b["variant"].nunique()),
        "median_rel_beta": float(rel.median()),
        "max_rel_beta": float(rel.max()),
        "max_dbeta_se": float((np.abs(b["beta"] - b["beta_pl"]) / b["SE"]).max()),
        "median_dbeta_se": float((np.abs(b["beta"] - b["beta_pl"]) / b["SE"]).median()),
        "max_rel_se": float(np.abs(b["se"] / b["SE"] - 1.0).max()),
        "max_dmlog10p": float(np.abs(b["mlog10p"] - b["mlog10p_pl"]).max()),
    }


def cpu_seconds() -> float:
    """CPU time (user + system) of this process's threads and its finished child processes."""
    own = resource.getrusage(resource.RUSAGE_SELF)
    kids = resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime


def busy_fraction(interval: float = 0.5) -> float:
    """Fraction of all CPUs busy over ``interval`` seconds while this process sleeps (other work)."""

    def snap() -> tuple[int, int]:
        v = [int(x) for x in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
        return sum(v), v[3] + v[4]  # total, idle + iowait

    try:
        t0, i0 = snap()
        time.sleep(interval)
        t1, i1 = snap()
    except (OSError, ValueError, IndexError):  # pragma: no cover - not Linux
        return float("nan")
    return 1.0 - (i1 - i0) / max(t1 - t0, 1)


def cpu_counters() -> tuple[float, float, float]:
    """(busy CPU seconds of the whole machine, this process's CPU seconds, wall clock) for :func:`others_busy`."""
    try:
        v = [int(x) for x in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
        busy = (sum(v) - v[3] - v[4]) / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):  # pragma: no cover - not Linux
        busy = float("nan")
    return busy, cpu_seconds(), time.perf_counter()


def others_busy(start: tuple[float, float, float], n_cpu: int) -> float:
    """Fraction of the machine's CPUs used by other processes since ``start`` (:func:`cpu_counters`)."""
    end = cpu_counters()
    return max(0.0, (end[0] - start[0]) - (end[1] - start[1])) / max((end[2] - start[2]) * n_cpu, 1e-9)


def wait_quiet(threshold: float = 0.15, max_wait: float = 20.0) -> float:
    """Wait (at most ``max_wait`` s) until other processes use less than ``threshold`` of the CPUs."""
    start = time.perf_counter()
    busy = busy_fraction()
    while busy > threshold and time.perf_counter() - start < max_wait:
        busy = busy_fraction()
    return busy


def best_of(fns: dict[str, Callable[[], object]], repeats: int) -> dict[str, tuple[float, float]]:
    """(best wall, CPU of that run) per function; repeats interleaved so that a load spike hits all alike."""
    times: dict[str, list[tuple[float, float]]] = {k: [] for k in fns}
    for _ in range(repeats):
        for k, fn in fns.items():
            c0, t0 = cpu_seconds(), time.perf_counter()
            fn()
            times[k].append((time.perf_counter() - t0, cpu_seconds() - c0))
    return {k: min(v) for k, v in times.items()}


def fmt(v: float) -> str:
    return f"{v:.2e}" if v == v else "nan"


# ---------------------------------------------------------------------------------------------
# simulation
# ---------------------------------------------------------------------------------------------
def standardized(G: np.ndarray) -> np.ndarray:
    G = np.where(np.isnan(G), np.nanmean(G, axis=0), G)
    return (G - G.mean(axis=0)) / G.std(axis=0)


def simulate(geno, rng: np.random.Generator) -> dict:
    G = geno.read(dtype="float64")
    n = G.shape[0]
    chrom = geno.variants["chrom"].to_numpy().astype(str)
    freq = np.nanmean(G, axis=0) / 2
    maf = np.minimum(freq, 1 - freq)
    candidates = np.flatnonzero((chrom != "X") & (maf > 0.1) & (np.isnan(G).mean(axis=0) <= 0.02))
    picked = rng.choice(candidates, N_CAUSAL + N_LATENT_SNPS + 1, replace=False)
    causal, latent_snps = np.sort(picked[:N_CAUSAL]), np.sort(picked[N_CAUSAL:-1])

    cov = pd.DataFrame(
        {"cov_age": rng.normal(50.0, 10.0, n).round(1), "cov_score": rng.normal(0.0, 1.0, n)}, index=geno.samples.index
    )
    # (a) one trait: genetic part scaled to H2 of the total variance
    g = standardized(G[:, causal]) @ rng.normal(size=N_CAUSAL)
    g *= np.sqrt(H2) / g.std()
    c = 0.02 * (cov["cov_age"].to_numpy() - 50.0) + 0.2 * cov["cov_score"].to_numpy()
    y = g + c + rng.normal(0.0, np.sqrt(1.0 - H2 - c.var()), n)
    # (b) 32 correlated latent dimensions; each of 5 SNPs shifts 3 of them
    mix = np.eye(N_LATENT) + 0.3 * rng.normal(size=(N_LATENT, N_LATENT)) / np.sqrt(N_LATENT)
    z = rng.normal(size=(n, N_LATENT)) @ mix + 0.01 * (cov["cov_age"].to_numpy()[:, None] - 50.0)
    Zs = standardized(G[:, latent_snps])
    latent_dims = {}
    for j, snp in enumerate(latent_snps):
        dims = np.sort(rng.choice(N_LATENT, DIMS_PER_SNP, replace=False))
        z[:, dims] += 0.35 * Zs[:, [j]] * rng.choice([-1.0, 1.0], DIMS_PER_SNP)
        latent_dims[geno.variants["variant"].iloc[snp]] = dims
    # (c) a check of extreme p values: one trait almost equal to one SNP's genotype
    extreme = standardized(G[:, picked[-1:]])[:, 0] + 0.02 * rng.normal(size=n)
    return {
        "y": pd.DataFrame({"Y": y}, index=geno.samples.index),
        "extreme": pd.DataFrame({"E": extreme}, index=geno.samples.index),
        "missing_rate": float(np.isnan(G).mean()),
        "h2": float(g.var() / y.var()),
        "cov_var": float(c.var() / y.var()),
        "causal": geno.variants["variant"].iloc[causal].astype(str).tolist(),
        "z": pd.DataFrame(z, index=geno.samples.index, columns=[f"Z{i + 1}" for i in range(N_LATENT)]),
        "latent_dims": latent_dims,
        "cov": cov,
    }


# ---------------------------------------------------------------------------------------------
# main
# ---------------------------------------------------------------------------------------------
def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=2, help="threads for both tools (default 2)")
    ap.add_argument("--repeats", type=int, default=5, help="timing repeats; the best is reported")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--quick", action="store_true", help="2 timing repeats; write nothing")
    ap.add_argument(
        "--sgkit-python",
        default=sgkit_python_default(),
        metavar="PATH",
        help="Python interpreter with sgkit installed, for the sgkit comparison (default: $PERTCAUSAL_SGKIT_PYTHON, "
        f"else {SGKIT_DEFAULT} if it exists)",
    )
    args = ap.parse_args(argv)
    binary = plink2_binary()
    if not DATA.with_suffix(".bed").exists() or binary is None:
        print(f"HapMap data ({DATA}.bed) or plink2 not found; nothing to do")
        return 0
    repeats = 2 if args.quick else args.repeats
    sg_versions, sg_why = sgkit_versions(args.sgkit_python)
    os.environ["PST_NUM_THREADS"] = str(args.threads)  # bed-reader's threads
    import anndata as ad
    from threadpoolctl import threadpool_limits

    import pertcausal as pc

    t_start = time.perf_counter()
    threadpool_limits(args.threads)
    bed = str(DATA.with_suffix(".bed"))
    geno = pc.pp.read_genotypes(bed)
    fam = geno.samples
    rng = np.random.default_rng(args.seed)
    sim = simulate(geno, rng)

    # genetic PCs, once, by pertcausal; then the same covariate table for both tools
    probe = ad.AnnData(obs=pd.DataFrame(index=fam.index), obsm={"probe": rng.normal(size=(geno.n_samples, 1))})
    pc.tl.gwas(probe, geno, use_rep="probe", n_genetic_pcs=N_PCS, joint=False, progress_bar=False, device="cpu")
    pcs = probe.uns["gwas"]["covariates"]
    cov = pd.concat([sim["cov"], pcs.set_axis(fam.index)], axis=1)
    cov_names = list(cov.columns)
    obs = cov.copy()

    def anndata_of(values: pd.DataFrame) -> ad.AnnData:
        a = ad.AnnData(obs=obs.copy(), obsm={"pheno": values.copy()})
        a.obs_names = fam.index
        return a

    common = {
        "use_rep": "pheno",
        "covariates": cov_names,
        "n_genetic_pcs": 0,
        "maf": 0.0,
        "max_missing": 1.0,
        "progress_bar": False,
        "device": "cpu",
    }
    adata_a, adata_b, adata_c = anndata_of(sim["y"]), anndata_of(sim["z"]), anndata_of(sim["extreme"])

    def ours_a(genotypes=bed, **kw) -> pd.DataFrame:
        return pc.tl.gwas(adata_a, genotypes, transform=None, **{"missing": "drop", "joint": False, **common, **kw})

    def ours_b(genotypes=bed, **kw) -> pd.DataFrame:
        return pc.tl.gwas(
            adata_b, genotypes, transform="inverse_normal", **{"missing": "drop", "joint": False, **common, **kw}
        )

    res_a = ours_a()
    res_a_mean = ours_a(missing="mean")
    res_b = ours_b()
    ours_b(joint=True)
    joint_table = adata_b.uns["gwas"]["joint"].set_index("variant")
    tested_b = adata_b.uns["gwas"]["phenotypes"]
    x_sex = adata_b.uns["gwas"]["params"]["x_sex_covariate"]
    res_b_mean = ours_b(missing="mean")
    if not adata_b.uns["gwas"]["phenotypes"].equals(tested_b):  # sgkit is given pheno_b.tsv (from tested_b)
        raise RuntimeError('missing="mean" tested other phenotypes than missing="drop"')
    res_c = pc.tl.gwas(adata_c, bed, transform=None, missing="drop", joint=False, **common)

    with tempfile.TemporaryDirectory() as tmp:
        tmpd = Path(tmp)
        covar_file = write_table(tmpd / "covar.tsv", fam, cov)
        pheno_a = write_table(tmpd / "pheno_a.tsv", fam, sim["y"])
        pheno_b = write_table(tmpd / "pheno_b.tsv", fam, tested_b)
        pheno_c = write_table(tmpd / "pheno_c.tsv", fam, sim["extreme"])
        cmd_a = plink2_command(binary, pheno_a, covar_file, tmpd / "a", args.threads)
        cmd_b = plink2_command(binary, pheno_b, covar_file, tmpd / "b", args.threads)
        run_plink2(cmd_a)
        run_plink2(cmd_b)
        run_plink2(plink2_command(binary, pheno_c, covar_file, tmpd / "c", args.threads))
        pl_a = read_plink2(tmpd / "a", ["Y"])
        pl_b = read_plink2(tmpd / "b", list(tested_b.columns))
        pl_c = read_plink2(tmpd / "c", ["E"])

        # ---- timing: best of `repeats`, same threads --------------------------------------------
        busy_before = wait_quiet()
        counters = cpu_counters()
        timing = {
            "1 phenotype": best_of(
                {
                    "plink2": lambda: run_plink2(cmd_a),
                    "joint=False": ours_a,
                    "joint=True": lambda: ours_a(joint=True),
                    "open": lambda: ours_a(geno),
                    "mean": lambda: ours_a(missing="mean"),
                },
                repeats,
            ),
            f"{N_LATENT} phenotypes": best_of(
                {
                    "plink2": lambda: run_plink2(cmd_b),
                    "joint=False": ours_b,
                    "joint=True": lambda: ours_b(joint=True),
                    "open": lambda: ours_b(geno),
                    "mean": lambda: ours_b(missing="mean"),
                },
                repeats,
            ),
        }
        sg = None
        if sg_versions is not None:
            sg = run_sgkit(args.sgkit_python, tmpd, {"a": pheno_a, "b": pheno_b}, covar_file, args.threads, repeats)
    busy_during = others_busy(counters, os.cpu_count() or 1)
    agree = {
        "(a) 1 trait": compare(res_a, pl_a),
        f"(b) {N_LATENT} latent": compare(res_b, pl_b),
        "(c) extreme-p check": compare(res_c, pl_c),
    }
    err_codes = pl_a.loc[pl_a["ERRCODE"] != ".", "ERRCODE"].value_counts()
    err_text = ", ".join(f"{v} {k}" for k, v in err_codes.items()) or "none"
    mean_imp = {
        "(a) 1 trait": missing_variant_summary(res_a_mean, pl_a),
        f"(b) {N_LATENT} latent": missing_variant_summary(res_b_mean, pl_b),
    }
    autosomal = set(geno.variants.loc[geno.variants["chrom"].astype(str) != "X", "variant"].astype(str))
    sg_agree = {}
    if sg is not None:
        sg_agree = {
            "(a) 1 trait": compare_sgkit(res_a_mean, sg["jobs"]["a"]["table"], autosomal),
            f"(b) {N_LATENT} latent": compare_sgkit(res_b_mean, sg["jobs"]["b"]["table"], autosomal),
        }

    # ---- causal variants found --------------------------------------------------------------
    thr = -np.log10(0.05 / geno.n_variants)
    ma = agree["(a) 1 trait"]["_merged"]
    hit_ours = set(ma.loc[ma["mlog10p"] > thr, "variant"])
    hit_pl = set(ma.loc[ma["mlog10p_pl"] > thr, "variant"])
    causal = set(sim["causal"])
    found = {
        "causal found by pertcausal": len(causal & hit_ours),
        "causal found by plink2": len(causal & hit_pl),
        "non-causal hits pertcausal": len(hit_ours - causal),
        "non-causal hits plink2": len(hit_pl - causal),
        "hits of one tool only": len(hit_ours ^ hit_pl),
    }
    mb = agree[f"(b) {N_LATENT} latent"]["_merged"]
    pairs = {(v, f"Z{d + 1}") for v, dims in sim["latent_dims"].items() for d in dims}
    hits_b_ours = set(zip(mb.loc[mb["mlog10p"] > thr, "variant"], mb.loc[mb["mlog10p"] > thr, "phenotype"]))
    hits_b_pl = set(zip(mb.loc[mb["mlog10p_pl"] > thr, "variant"], mb.loc[mb["mlog10p_pl"] > thr, "phenotype"]))
    var_pos = geno.variants.set_index("variant")[["chrom", "pos"]]

    def near_planted(variant: str) -> bool:
        c, p = var_pos.loc[variant]
        return any(
            var_pos.loc[v, "chrom"] == c and abs(var_pos.loc[v, "pos"] - p) <= 1_000_000 for v in sim["latent_dims"]
        )

    other = hits_b_ours - pairs
    other_kind = (
        f"{sum(v in sim['latent_dims'] for v, _ in other)} planted variants on another dimension, "
        f"{sum(v not in sim['latent_dims'] and near_planted(v) for v, _ in other)} within 1 Mb of one, "
        f"{sum(not near_planted(v) for v, _ in other)} elsewhere"
    )
    joint_found = int((joint_table.loc[list(sim["latent_dims"]), "mlog10p"] > thr).sum())
    found_b = {
        "planted (variant, dim) pairs found by pertcausal": f"{len(pairs & hits_b_ours)} of {len(pairs)}",
        "planted (variant, dim) pairs found by plink2": f"{len(pairs & hits_b_pl)} of {len(pairs)}",
        "other (variant, dim) hits pertcausal / plink2": f"{len(hits_b_ours - pairs)} / {len(hits_b_pl - pairs)}",
        "of which (pertcausal)": other_kind,
        "planted variants found by pertcausal's joint test (32 df)": f"{joint_found} of {len(sim['latent_dims'])}",
    }

    # ---- tables -----------------------------------------------------------------------------
    header = [
        "experiment", "rows compared", "variants", "max rel beta", "median rel beta", "max rel beta, chrX",
        "max rel se", "max abs d(-log10 p)", "max -log10 p", "max abs d(a1_freq)", "n differs", "A1 flipped",
        "one tool only",
    ]  # fmt: skip
    rows = [
        [
            k, a["rows"], a["variants"], fmt(a["max_rel_beta"]), fmt(a["median_rel_beta"]),
            fmt(a["max_rel_beta_x"]), fmt(a["max_rel_se"]), fmt(a["max_dmlog10p"]), f"{a['max_mlog10p']:.1f}",
            fmt(a["max_dfreq"]), a["n_mismatch"], a["a1_flipped"], f"{a['ours_only']} ours / {a['plink_only']} plink2",
        ]
        for k, a in agree.items()
    ]  # fmt: skip
    md_agree = markdown_table(rows, header)
    rows_mean = [
        [
            k, a["variants"], a["rows"], fmt(a["median_rel_beta"]), fmt(a["max_rel_beta"]),
            f"{a['median_dbeta_se']:.3f}", f"{a['max_dbeta_se']:.3f}", fmt(a["max_rel_se"]), f"{a['max_dmlog10p']:.3f}",
        ]
        for k, a in mean_imp.items()
    ]  # fmt: skip
    md_mean = markdown_table(
        rows_mean,
        ["experiment", "variants with missing calls", "rows", "median rel beta", "max rel beta",
         "median abs d(beta) / se", "max abs d(beta) / se", "max rel se", "max abs d(-log10 p)"],
    )  # fmt: skip
    md_found = markdown_table([[k, v] for k, v in found.items()], ["(a) at p < 0.05 / 5,000", "count"])
    md_found_b = markdown_table([[k, v] for k, v in found_b.items()], ["(b) at p < 0.05 / 5,000", "count"])
    runs = {
        "plink2": f"plink2 --glm (--threads {args.threads})",
        "joint=False": "pertcausal, joint=False",
        "joint=True": "pertcausal, joint=True",
        "open": "pertcausal, joint=False, Genotypes open",
        "mean": 'pertcausal, joint=False, missing="mean"',
    }
    rows_t = [
        [k, label, f"{t[r][0]:.3f}", f"{t[r][1]:.3f}", f"{t['plink2'][0] / t[r][0]:.2f}"]
        for k, t in timing.items()
        for r, label in runs.items()
    ]
    md_time = markdown_table(
        rows_t, ["phenotypes", "run", "wall (s), best", "CPU (s) of that run", "plink2 wall / this wall"]
    )

    if sg is None:
        md_sg = md_sg_time = sg_missing_text = sg_why
    else:
        md_sg = markdown_table(
            [
                [
                    k, a["rows"], a["variants"], fmt(a["max_rel_beta"]), fmt(a["median_rel_beta"]),
                    fmt(a["max_rel_t"]), fmt(a["max_dmlog10p"]), f"{a['max_mlog10p']:.1f}", a["flipped"],
                    a["allele_mismatch"], f"{a['ours_only']} ours / {a['sgkit_only']} sgkit", a["sgkit_nan"],
                ]
                for k, a in sg_agree.items()
            ],
            ["experiment", "rows compared", "variants", "max rel beta", "median rel beta", "max rel t",
             "max abs d(-log10 p)", "max -log10 p", "sgkit allele = our a2 (sign flipped)", "allele mismatch",
             "one tool only", "variants sgkit returns NaN for"],
        )  # fmt: skip
        rows_sg_t = []
        for (k, t), job in zip(timing.items(), ("a", "b")):
            j, ours_mean = sg["jobs"][job], t["mean"][0]
            rows_sg_t.append(
                [k, f"{j['compute']:.3f}", f"{j['full']:.3f}", f"{ours_mean:.3f}", f"{t['plink2'][0]:.3f}",
                 f"{j['compute'] / ours_mean:.2f}", f"{j['full'] / ours_mean:.2f}"]
            )  # fmt: skip
        md_sg_time = markdown_table(
            rows_sg_t,
            ["phenotypes", "sgkit, compute only (s)", "sgkit, with reading (s)", 'pertcausal, missing="mean" (s)',
             "plink2 (s)", "sgkit compute / pertcausal", "sgkit with reading / pertcausal"],
        )  # fmt: skip
        ja = sg["jobs"]["a"]
        sg_missing_text = (
            f"{ja['variants_with_missing']:,} variants have missing calls. Given a dosage with NaN for them, "
            f"`gwas_linear_regression` raises nothing and returns NaN for {ja['nan_variants']:,} of them (all "
            "phenotypes); the sum "
            "of `call_genotype` without `call_genotype_mask` codes a missing call as -2 (-1 per allele) and "
            f"silently changes {ja['raw_changed_variants']:,} variants' results of (a) (median |d(beta)| / se "
            f"{ja['raw_median_dbeta_se']:.3f}, max {ja['raw_max_dbeta_se']:.2f}, against mean imputation)"
        )

    a_all = list(agree.values())
    beta_ok = max(a["max_rel_beta"] for a in a_all) < TARGET_BETA
    p_ok = max(a["max_dmlog10p"] for a in a_all) < TARGET_MLOG10P
    t32 = {k: v[0] for k, v in timing[f"{N_LATENT} phenotypes"].items()}
    t1 = {k: v[0] for k, v in timing["1 phenotype"].items()}
    speed_ok = t32["joint=False"] <= t32["plink2"]

    def met(ok: bool) -> str:
        return "met" if ok else "NOT met"

    verdict = [
        f"- max relative beta difference < {TARGET_BETA:g}: "
        + ", ".join(f"{k} {fmt(a['max_rel_beta'])}" for k, a in agree.items())
        + f" ({met(beta_ok)})",
        f"- max |d(-log10 p)| < {TARGET_MLOG10P:g}: "
        + ", ".join(f"{k} {fmt(a['max_dmlog10p'])}" for k, a in agree.items())
        + f" ({met(p_ok)})",
        f"- pertcausal at least as fast as plink2 for {N_LATENT} phenotypes ({args.threads} threads): "
        f"plink2 {t32['plink2']:.3f} s, pertcausal {t32['joint=False']:.3f} s (joint=False; ratio "
        f"{t32['plink2'] / t32['joint=False']:.2f}), {t32['joint=True']:.3f} s with the joint test (ratio "
        f"{t32['plink2'] / t32['joint=True']:.2f}) ({met(speed_ok)})",
        f"- for information (no target), 1 phenotype: plink2 {t1['plink2']:.3f} s, pertcausal "
        f"{t1['joint=False']:.3f} s (ratio {t1['plink2'] / t1['joint=False']:.2f}); with a `Genotypes` already "
        f"open {t1['open']:.3f} s (ratio {t1['plink2'] / t1['open']:.2f})",
    ]
    if sg is not None:
        verdict.append(
            '- for information (no target), sgkit against pertcausal `missing="mean"` on the autosomes: max relative '
            "beta difference "
            + ", ".join(f"{k} {fmt(a['max_rel_beta'])}" for k, a in sg_agree.items())
            + "; max |d(-log10 p)| "
            + ", ".join(f"{k} {fmt(a['max_dmlog10p'])}" for k, a in sg_agree.items())
            + f"; sgkit (with reading) / pertcausal time: 1 phenotype {sg['jobs']['a']['full'] / t1['mean']:.2f}, "
            f"{N_LATENT} phenotypes {sg['jobs']['b']['full'] / t32['mean']:.2f}"
        )
    elapsed = time.perf_counter() - t_start
    print(
        f"hapmap279: {geno.n_samples} samples x {geno.n_variants} variants; (a) realised genetic variance "
        f"fraction {sim['h2']:.3f}; chrX sex covariate used: {x_sex}"
    )
    print(f"\nagreement (missing='drop')\n\n{md_agree}")
    print(f"\nmean imputation (missing='mean') vs plink2, for information\n\n{md_mean}")
    print(f"\n{md_found}\n\n{md_found_b}")
    busy_text = (
        f"other processes kept {busy_before:.0%} of the machine's CPUs busy just before timing and "
        f"{busy_during:.0%} during it"
    )
    print(f"\ntiming, best of {repeats}, {args.threads} threads ({busy_text})\n\n{md_time}")
    print(f"\nsgkit (autosomes, pertcausal missing='mean')\n\n{md_sg}\n\n{md_sg_time}\n\n{sg_missing_text}")
    print("\n" + "\n".join(verdict))
    print(f"\n({elapsed:.0f} s in all)")
    if args.quick:
        return 0

    figure(agree, sim, thr)
    info = machine_info(("pertcausal", "numpy", "scipy", "anndata", "bed-reader"))
    info["plink2"] = plink2_version(binary)
    info["sgkit"] = (
        "not installed"
        if sg_versions is None
        else f"{sg_versions['sgkit']} (its own interpreter, `{args.sgkit_python}`: "
        + ", ".join(f"{k} {v}" for k, v in sg_versions.items() if k != "sgkit")
        + ")"
    )
    info["threads given to each tool"] = str(args.threads)
    if sg is None:
        sg_section = sg_speed = f"**sgkit**: {sg_why}."
    else:
        ja = sg["jobs"]["a"]
        mono_nan_d = " or ".join(f"{x:g}" for x in ja["monomorphic_nan_dosages"]) or "-"
        mono_fin_d = " or ".join(f"{x:g}" for x in ja["monomorphic_finite_dosages"]) or "-"
        mono_text = (
            f"sgkit does not skip monomorphic variants: of the {ja['monomorphic']} (after imputation) it returns NaN "
            f"(0 / 0) for the {ja['monomorphic_nan']} whose constant dosage is {mono_nan_d}"
        )
        if ja["monomorphic_finite"]:
            mono_text += (
                f", but finite, meaningless statistics for the {ja['monomorphic_finite']} whose constant dosage is "
                f"{mono_fin_d} ({ja['monomorphic_finite_x']} of them on chrX, outside the comparison): rounding "
                "leaves a residual of order 1e-16 once the intercept is projected out, giving |beta| up to "
                f"{ja['monomorphic_finite_max_abs_beta']:.1e} (p >= {ja['monomorphic_finite_min_p']:.2f} for trait (a))"
            )
        mono_text += "."
        sg_section = f"""sgkit {sg_versions["sgkit"]} runs in its own interpreter (`--sgkit-python`; sgkit 0.10
needs older numpy and dask than pertcausal), as a subprocess on a worker script the benchmark writes at run time:
`sgkit.io.plink.read_plink(path="hapmap279")`, the phenotype and covariate files given to PLINK 2 (matched by
IID), a dosage from `call_genotype`, then `sgkit.gwas_linear_regression(ds, dosage="dosage",
covariates=[7 columns], traits=[1 or {N_LATENT}], add_intercept=True)`; beta, t and p come back in a file.

**Alleles.** `read_plink` (only `count_a1=False` is implemented) stores `variant_allele` as (`.bim` column 5,
column 6) and codes each call so that the sum of `call_genotype` over the ploidy counts `variant_allele[:, 1]`,
the `.bim` column 6 allele: pertcausal's `a2`, PLINK 2's REF under `omit-ref` (checked against bed-reader's
`count_A1=False` dosages). sgkit's beta and t are therefore sign-flipped by allele before comparing (the column
`sgkit allele = our a2`).

**Missing calls.** sgkit's regression has no missing-value handling: {sg_missing_text}. The worker therefore
masks the missing calls with `call_genotype_mask` and sets them to the variant's mean dosage (the idiom of
sgkit's own `genomic_relationship` example), which is what pertcausal's `missing="mean"` does; sgkit is
compared with pertcausal run with `missing="mean"` on the same 7 covariates (PLINK 2 drops the sample
instead, see above). (b) gets the phenotypes pertcausal tested (`missing="mean"` tests the same ones).

**chrX.** sgkit adds no sex covariate for chrX variants (it treats them as autosomal), so only the
{len(autosomal):,} autosomal variants are compared; `variants sgkit returns NaN for`: the monomorphic ones,
which pertcausal skips. {mono_text}

{md_sg}"""
        sg_speed = f"""**sgkit**, best of {repeats} as well, timed inside its subprocess after the runs above
(starting the interpreter and `import sgkit` not counted), on the dask threads scheduler with {args.threads} workers
(`dask.config.set(scheduler="threads", num_workers={args.threads})`; BLAS and bed-reader threads limited to
{args.threads} through `OMP_NUM_THREADS`, `OPENBLAS_NUM_THREADS`, `PST_NUM_THREADS`). `compute only`: from the
dataset already in memory (`Dataset.persist()` of the mean-imputed dosage, covariates and traits, chunked as
`read_plink` chunks them) to the computed beta, t and p of all {geno.n_variants:,} variants; `with reading`:
from the PLINK path, i.e. `read_plink`, the phenotype and covariate files, the mean-imputed dosage and the
regression. Both are divided by pertcausal's `missing="mean"` time above, which starts from the `.bed` path
(so the compute-only ratio favours sgkit).

{md_sg_time}"""
    cmd_text = " ".join(["plink2", *cmd_b[1:]]).replace(str(DATA), "hapmap279").replace(f"{tmpd}/", "")
    text = f"""# GWAS: `pc.tl.gwas` against PLINK 2 `--glm`

Written by `benchmarks/gwas_vs_plink2.py`; every number below comes from the run described at the end
({elapsed:.0f} s in all).

**Genotypes.** Real HapMap genotypes, SNPRelate's `hapmap279`: {geno.n_samples} samples (CEU, YRI, CHB,
JPT, with trios and {int(fam.index.str.endswith(".dup").sum())} technical duplicates) x {geno.n_variants:,} SNPs
on chromosomes 1-22 and X ({int((geno.variants["chrom"] == "X").sum())} on X), {sim["missing_rate"]:.2%}
missing calls.

**Phenotypes** (seed {args.seed}).
(a) One quantitative trait: {N_CAUSAL} causal autosomal SNPs with MAF > 0.1 and normal effects on the
standardised genotypes, scaled to explain {sim["h2"]:.1%} of the trait's variance; two simulated numeric
covariates (`cov_age` ~ N(50, 10), `cov_score` ~ N(0, 1)) explaining {sim["cov_var"]:.1%}; Gaussian noise.
(b) A {N_LATENT}-dimensional per-sample embedding with correlated dimensions in which {N_LATENT_SNPS} other
SNPs (MAF > 0.1) each shift {DIMS_PER_SNP} dimensions by 0.35 SD per SD of genotype. pertcausal tests it
with `transform="inverse_normal"` (after adjustment for the covariates); PLINK 2 is given exactly the
phenotypes pertcausal tested, `uns["gwas"]["phenotypes"]`.
(c) A check of extreme p values (not one of the issue's experiments): a trait equal to one SNP's
standardised genotype plus noise of SD 0.02, `transform=None`, so that p values far below 1e-308 occur.

**Covariates, the same for both tools**: `cov_age`, `cov_score` and {N_PCS} genetic PCs computed once by
pertcausal (`tl.gwas(..., n_genetic_pcs={N_PCS})`, `uns["gwas"]["covariates"]`); pertcausal then runs with
`n_genetic_pcs=0, covariates=[...]`. On chrX both tools add the `.fam` sex as a covariate (pertcausal's
`uns["gwas"]["params"]["x_sex_covariate"]`: {x_sex}).

**Settings.** pertcausal `pc.tl.gwas(adata, "hapmap279.bed", use_rep=..., covariates=[7 columns],
n_genetic_pcs=0, maf=0, max_missing=1, missing="drop", device="cpu", dtype="float64")`, `transform=None`
for (a) and (c), `"inverse_normal"` for (b). PLINK 2:

```
{cmd_text}
```

`omit-ref` makes PLINK 2's A1 the ALT allele (`.bim` column 5), pertcausal's `a1`; without it A1 would be
the founders' minor allele. PLINK 2 drops a sample with a missing call from that variant's regression,
which `missing="drop"` reproduces. It prints 6 significant digits, so about 5e-6 relative is the best
agreement visible; its P column is parsed as text (values below 1e-308 are printed) and compared with
pertcausal's `mlog10p`.

## Agreement (`missing="drop"`)

Over the (variant, phenotype) rows both tools tested; relative differences are against PLINK 2's values.
`n differs`: rows where pertcausal's `n` is not PLINK 2's `OBS_CT`. `A1 flipped`: rows where PLINK 2's
A1 was pertcausal's `a2` (signs aligned before comparing). `one tool only`: rows only one tool reports
(PLINK 2 writes NA with an error code for monomorphic variants and for too few observations;
pertcausal skips monomorphic variants and returns NaN when the residual degrees of freedom are < 1).
The remaining {geno.n_variants - agree["(a) 1 trait"]["variants"]} variants are tested by neither tool;
PLINK 2's error codes for them: {err_text}.

{md_agree}

## Mean imputation, for information

pertcausal's default `missing="mean"` (a missing call set to the variant's mean dosage, all samples kept)
against PLINK 2's complete cases, over the rows of variants with missing calls (the others are unchanged).
Relative differences are large where beta is near 0; the differences in units of PLINK 2's standard error
are the meaningful scale:

{md_mean}

## sgkit `gwas_linear_regression` (autosomes, `missing="mean"`)

{sg_section}

## Planted signals

Threshold p < 0.05 / {geno.n_variants:,} per test; the {agree[f"(b) {N_LATENT} latent"]["rows"]:,} tests of (b)
expect about {agree[f"(b) {N_LATENT} latent"]["rows"] * 0.05 / geno.n_variants:.1f} hits by chance.

{md_found}

{md_found_b}

![-log10 p of pertcausal against PLINK 2, and the Manhattan plot of (a)]({FIGURE.name})

## Speed

Wall time in seconds, best of {repeats}, {args.threads} threads for each tool (PLINK 2 `--threads
{args.threads}`; pertcausal under `threadpoolctl.threadpool_limits({args.threads})` with bed-reader's
`PST_NUM_THREADS={args.threads}`). pertcausal is timed from the `.bed` path to the returned table with
`missing="drop"` (the comparable work; `joint=True` adds the multivariate test of each variant across all
phenotypes, which PLINK 2 does not compute); PLINK 2 as a subprocess that also reads the phenotype and
covariate text files and writes one result file per phenotype. `Genotypes open`: pertcausal given a
`Genotypes` already opened by `pc.pp.read_genotypes` (the `.bim`/`.fam` parsed once), for information.
`missing="mean"`: pertcausal's default mean imputation instead, the work sgkit is compared with below.
The repeats of the five runs are interleaved; `CPU`: user + system seconds of the best run (PLINK 2's as a
child process), less sensitive than wall time to other work on the machine. The benchmark waits (up to
20 s) for the machine to be quiet before timing; {busy_text}.

{md_time}

{sg_speed}

## Against the targets

{chr(10).join(verdict)}

## Machine

{machine_markdown(info)}
"""
    OUTPUT.write_text(text)
    print(f"\nwrote {OUTPUT.relative_to(ROOT)} and {FIGURE.relative_to(ROOT)}")
    return 0


def figure(agree: dict, sim: dict, thr: float) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    ax = axes[0]
    shown = {k: a for k, a in agree.items() if not k.startswith("(c)")}
    for (k, a), color in zip(shown.items(), ("C0", "C1")):
        b = a["_merged"]
        ax.scatter(b["mlog10p_pl"], b["mlog10p"], s=4, alpha=0.5, color=color, label=k, rasterized=True)
    hi = max(a["_merged"]["mlog10p_pl"].max() for a in shown.values())
    ax.plot([0, hi], [0, hi], color="grey", lw=0.8)
    ax.set_xlabel("plink2 -log10 p")
    ax.set_ylabel("pertcausal -log10 p")
    ax.legend(frameon=False, markerscale=3)
    ax = axes[1]
    b = agree["(a) 1 trait"]["_merged"].copy()
    order = {c: i for i, c in enumerate([str(i) for i in range(1, 23)] + ["X"])}
    b["order"] = b["chrom"].astype(str).map(order)
    b = b.sort_values(["order", "pos"]).reset_index(drop=True)
    causal = b["variant"].isin(sim["causal"])
    ax.scatter(b.index[~causal], b.loc[~causal, "mlog10p"], s=3, c=np.where(b.loc[~causal, "order"] % 2, "0.4", "0.7"))
    ax.scatter(b.index[causal], b.loc[causal, "mlog10p"], s=18, color="C3", label="causal (pertcausal)")
    ax.scatter(b.index[causal], b.loc[causal, "mlog10p_pl"], s=40, facecolors="none", edgecolors="k",
               label="causal (plink2)")  # fmt: skip
    ax.axhline(thr, color="C3", lw=0.8, ls="--")
    ax.set_xlabel("variant (chromosome order)")
    ax.set_ylabel("-log10 p, trait (a)")
    ax.legend(frameon=False)
    fig.tight_layout()
    fig.savefig(FIGURE, dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    raise SystemExit(main())
