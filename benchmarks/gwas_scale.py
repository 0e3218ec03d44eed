"""GWAS at scale: 1,000,000 variants x 50,000 samples x 64 latent phenotypes, streamed from a PLINK .bed file.

The genotypes are written once as a real SNP-major ``.bed`` (12.5 GB at full size): a pool of simulated
variants (minor allele frequency uniform in [0.05, 0.5], 0.2% missing calls) is repeated with a fresh
shift of the samples in every block, so the file is cheap to make while every variant differs. Five
variants get planted effects on the phenotypes. ``pertcausal.tl.gwas`` then runs in a child process (so its
peak memory is its own) with 10 genetic PCs, the inverse-normal transform, the joint test, and the
per-phenotype table streamed to parquet.

Run: ``python benchmarks/gwas_scale.py`` (full size: about 15 min on 2 CPU cores, 13 GB of disk under
``--workdir``); ``--samples 5000 --variants 20000`` for a quick check; ``--device cuda`` on a GPU machine.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import ROOT, machine_info, machine_markdown, markdown_table, peak_memory_gb

POOL = 2000  # simulated variants repeated, shifted, over the file
PLANTED = (123_457, 456_790, 789_001, 3, 999_998)  # variant positions with effects (modulo the size)


def encode_bed(G: np.ndarray) -> np.ndarray:
    """SNP-major PLINK bytes of a samples x variants int8 matrix (0-2 counts of A1, -1 missing)."""
    n, m = G.shape
    code = np.array([3, 2, 0, 1], dtype=np.uint8)  # index by count (0, 1, 2) and -1 -> missing (01)
    c = code[np.where(G < 0, 3, G)].T  # variants x samples
    pad = (-n) % 4
    if pad:
        c = np.concatenate([c, np.zeros((m, pad), np.uint8)], axis=1)
    c = c.reshape(m, -1, 4)
    return c[:, :, 0] | (c[:, :, 1] << 2) | (c[:, :, 2] << 4) | (c[:, :, 3] << 6)


def pool_genotypes(n: int, rng: np.random.Generator) -> np.ndarray:
    freq = rng.uniform(0.05, 0.5, POOL)
    G = rng.binomial(2, freq, size=(n, POOL)).astype(np.int8)
    G[rng.random((n, POOL)) < 0.002] = -1
    return G


def write_bed(prefix: Path, n: int, m: int, seed: int) -> tuple[float, dict[int, np.ndarray]]:
    """Write prefix.bed/.bim/.fam; returns seconds and the planted variants' genotypes."""
    rng = np.random.default_rng(seed)
    pool = pool_genotypes(n, rng)
    pool_bytes = encode_bed(pool)
    bytes_per_var = pool_bytes.shape[1]
    planted = {p % m: None for p in PLANTED}
    t0 = time.perf_counter()
    with open(prefix.with_suffix(".bed"), "wb") as fh:
        fh.write(b"\x6c\x1b\x01")
        for start in range(0, m, POOL):
            size = min(POOL, m - start)
            order = rng.permutation(POOL)[:size]
            shift = int(rng.integers(bytes_per_var))
            block = np.roll(pool_bytes[order], shift, axis=1)
            fh.write(block.tobytes())
            for p in planted:
                if start <= p < start + size:
                    planted[p] = np.roll(pool[:, order[p - start]], 4 * shift)
    chrom = np.repeat(np.arange(1, 23), -(-m // 22))[:m]
    pos = np.concatenate([np.arange(1, (chrom == c).sum() + 1) * 1_000 for c in range(1, 23)])
    bim = pd.DataFrame({"chrom": chrom, "id": [f"rs{j}" for j in range(m)], "cm": 0, "pos": pos, "a1": "A", "a2": "G"})
    bim.to_csv(prefix.with_suffix(".bim"), sep="\t", header=False, index=False)
    fam = pd.DataFrame({"fid": [f"s{i}" for i in range(n)], "iid": [f"s{i}" for i in range(n)], "f": 0, "m": 0})
    fam.assign(sex=rng.integers(1, 3, n), ph=-9).to_csv(prefix.with_suffix(".fam"), sep=" ", header=False, index=False)
    return time.perf_counter() - t0, planted


def phenotypes(n: int, n_pheno: int, planted: dict[int, np.ndarray], seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed + 1)
    Z = rng.normal(size=(n, n_pheno))
    for k, g in enumerate(planted.values()):
        g = g.astype(float)
        g[g < 0] = np.nan
        g = np.nan_to_num(g - np.nanmean(g))
        Z[:, k % n_pheno] += 0.1 * g / g.std()  # about 1% of variance: found at n = 50,000
    return Z


def scan(args: argparse.Namespace) -> None:
    """The child process: run tl.gwas and print its measurements as JSON."""
    import anndata as ad

    import pertcausal as pc

    prefix = Path(args.workdir) / "geno"
    geno = pc.pp.read_genotypes(prefix.with_suffix(".bed"))
    Z = np.load(Path(args.workdir) / "pheno.npy")
    adata = ad.AnnData(obs=pd.DataFrame(index=geno.samples.index), obsm={"X_pertcausal": Z})
    t0 = time.perf_counter()
    res = pc.tl.gwas(
        adata,
        geno,
        n_genetic_pcs=10,
        dtype=args.dtype,
        device=args.device,
        chunk_size=args.chunk_size,
        out=Path(args.workdir) / "sumstats.parquet",
        progress_bar=False,
    )
    seconds = time.perf_counter() - t0
    store = adata.uns["gwas"]
    joint = store["joint"]
    peak = peak_memory_gb()
    print(
        json.dumps(
            {
                "seconds": seconds,
                "peak_rss_gb": peak,
                "n_tested": store["params"]["n_variants_tested"],
                "joint_hits": joint.loc[joint["p"] < 5e-8, "variant"].tolist(),
                "per_dim_hits": sorted(set(res.loc[res["p"] < 5e-8 / args.phenotypes, "variant"])),
                "lambda_median": float(np.median([v for k, v in store["lambda_gc"].items() if k != "joint"])),
                "lambda_joint": store["lambda_gc"]["joint"],
                "parquet_gb": (Path(args.workdir) / "sumstats.parquet").stat().st_size / 1e9,
            }
        )
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--samples", type=int, default=50_000)
    ap.add_argument("--variants", type=int, default=1_000_000)
    ap.add_argument("--phenotypes", type=int, default=64)
    ap.add_argument("--chunk-size", type=int, default=2_000)
    ap.add_argument("--dtype", default="float32")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--workdir", default="/tmp/pertcausal_gwas_scale")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--keep", action="store_true", help="keep the genotype files")
    ap.add_argument("--scan", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--out", default=str(ROOT / "docs" / "benchmarks" / "gwas_scale.md"))
    args = ap.parse_args()
    if args.scan:
        scan(args)
        return
    work = Path(args.workdir)
    work.mkdir(parents=True, exist_ok=True)
    prefix = work / "geno"
    write_s, planted = write_bed(prefix, args.samples, args.variants, args.seed)
    np.save(work / "pheno.npy", phenotypes(args.samples, args.phenotypes, planted, args.seed))
    bed_gb = prefix.with_suffix(".bed").stat().st_size / 1e9
    print(f"wrote {bed_gb:.1f} GB of genotypes in {write_s:.0f} s", flush=True)
    cmd = [sys.executable, __file__, "--scan", *sys.argv[1:]]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode:
        sys.exit(proc.stderr)
    m = json.loads(proc.stdout.strip().splitlines()[-1])
    planted_ids = sorted(f"rs{p}" for p in planted)
    rows = [
        ["samples", args.samples],
        ["variants (tested)", f"{args.variants:,} ({m['n_tested']:,})"],
        ["phenotypes", args.phenotypes],
        ["device / dtype / chunk", f"{args.device} / {args.dtype} / {args.chunk_size}"],
        ["genotype file (.bed)", f"{bed_gb:.2f} GB"],
        ["wall time (s)", round(m["seconds"], 1)],
        ["variants per second", f"{m['n_tested'] / m['seconds']:,.0f}"],
        ["peak memory (GB, target < 8)", round(m["peak_rss_gb"], 2)],
        ["per-phenotype table (parquet)", f"{m['parquet_gb']:.2f} GB"],
        [
            "planted found, joint test (p < 5e-8)",
            f"{len(set(m['joint_hits']) & set(planted_ids))} of {len(planted_ids)}",
        ],
        ["planted found, per dimension (p < 5e-8 / 64)", f"{len(set(m['per_dim_hits']) & set(planted_ids))} of 5"],
        [
            "other hits (joint / per dimension)",
            f"{len(set(m['joint_hits']) - set(planted_ids))} / {len(set(m['per_dim_hits']) - set(planted_ids))}",
        ],
        ["median lambda over phenotypes / joint", f"{m['lambda_median']:.3f} / {m['lambda_joint']:.3f}"],
    ]
    table = markdown_table(rows, ["", "value"])
    print(table)
    text = (
        "# GWAS at scale\n\nWritten by `benchmarks/gwas_scale.py`; every number comes from the run below.\n\n"
        f"{__doc__.split(chr(10), 2)[2].split('Run:')[0].strip()}\n\n{table}\n\n"
        f"Writing the genotype file took {write_s:.0f} s (not part of the wall time).\n\n"
        f"## Machine\n\n{machine_markdown(machine_info(('pertcausal', 'numpy', 'bed-reader', 'torch')))}\n"
    )
    Path(args.out).write_text(text)
    if not args.keep:
        for ext in (".bed", ".bim", ".fam"):
            prefix.with_suffix(ext).unlink()


if __name__ == "__main__":
    main()
