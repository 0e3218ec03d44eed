"""What the input checks cost: the same calls on this tree and on a reference commit, side by side in one run.

The safe-input work added checks to the paths every user's data takes: a one-pass scan of the stored values
(NaN/inf, smallest value, integer counts) and a canonical-format test of sparse matrices in
``pp.signatures``; the padding bits of up to 2,000 variants in ``pp.read_genotypes``; the grid's levels in
``tl.impute``; weights-only model files. Each call is timed in a fresh child process per tree, the trees
interleaved (reference first in even repeats, this tree first in odd ones, after an untimed run of the
same call) ``--repeats`` times on the same data, read into the page cache beforehand; the first table gives
the median and the minimum seconds and their ratios, the second the cost of each new check timed alone.

- ``signatures``: ``--cells`` x ``--genes`` negative-binomial counts (CSR, about 10% non-zero; 50
  perturbations + control x 10 contexts), the default pipeline (normalise, log1p, effects, standard errors);
- ``read_genotypes``: a ``--samples`` x ``--variants`` PLINK 1 file (random calls, zero padding) opened;
- ``read + decode``: the same file opened and all genotypes read, to put the check beside real work;
- ``impute``: ``tl.impute(method="additive")`` on 500 perturbations x 50 contexts x 978 genes, 30% observed.

Run: ``python benchmarks/input_checks.py`` (about 8 minutes on 2 CPU cores); ``--ref`` names the reference
commit (default ``f912b46``, the main branch before the safe-input work).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import ROOT, machine_info, machine_markdown, markdown_table, peak_memory_gb

CALLS = ("signatures", "read_genotypes", "read + decode", "impute")


def _make_data(work: Path, args: argparse.Namespace) -> None:
    """Write the count matrix, the PLINK files and the effects grid once, for every child to read."""
    import anndata as ad
    import numpy as np
    import pandas as pd
    import scipy.sparse as sp

    rng = np.random.default_rng(0)
    n, g = args.cells, args.genes
    groups = rng.integers(0, 51 * 10, size=n)
    mean = rng.gamma(0.5, 2.0, size=g) * 0.1
    dense_rows = []
    for s in range(0, n, 20_000):  # bounded memory
        lam = mean[None, :] * rng.gamma(2.0, 0.5, size=(min(20_000, n - s), 1))
        dense_rows.append(sp.csr_matrix(rng.poisson(lam).astype(np.float32)))
    x = sp.vstack(dense_rows).tocsr()
    obs = pd.DataFrame(
        {"perturbation": [("control" if k % 51 == 0 else f"P{k % 51:02d}") for k in groups],
         "context": [f"C{k // 51}" for k in groups]},
        index=[f"c{i}" for i in range(n)],
    )  # fmt: skip
    ad.AnnData(X=x, obs=obs, var=pd.DataFrame(index=[f"g{j}" for j in range(g)])).write_h5ad(work / "cells.h5ad")

    m, k = args.variants, args.samples
    per = (k + 3) // 4
    packed = rng.integers(0, 256, size=(m, per), dtype=np.uint8)
    used = k - 4 * (per - 1)
    packed[:, -1] &= np.uint8((1 << (2 * used)) - 1)  # zero padding, as PLINK writes it
    with open(work / "g.bed", "wb") as fh:
        fh.write(b"\x6c\x1b\x01")
        fh.write(packed.tobytes())
    (work / "g.bim").write_text("".join(f"1\tv{j}\t0\t{j + 1}\tA\tG\n" for j in range(m)))
    (work / "g.fam").write_text("".join(f"f{i}\ts{i}\t0\t0\t0\t-9\n" for i in range(k)))

    import pertcausal as pc

    sig = pc.data.simulate_effects(n_perturbations=500, n_contexts=50, n_genes=978, frac_observed=0.3, seed=0)
    sig.write_h5ad(work / "effects.h5ad")


def _child(args: argparse.Namespace) -> None:
    """One timed call in this process; prints seconds and peak memory as JSON."""
    import anndata as ad

    import pertcausal as pc

    work = Path(args.work)
    if args.call == "signatures":
        a = ad.read_h5ad(work / "cells.h5ad")
        t0 = time.perf_counter()
        pc.pp.signatures(a, perturbation_key="perturbation", context_key="context", control="control", min_cells=1)
    elif args.call == "read_genotypes":
        t0 = time.perf_counter()
        pc.pp.read_genotypes(work / "g.bed")
    elif args.call == "read + decode":
        t0 = time.perf_counter()
        pc.pp.read_genotypes(work / "g.bed").read(num_threads=2)
    else:
        sig = ad.read_h5ad(work / "effects.h5ad")
        t0 = time.perf_counter()
        pc.tl.impute(sig, method="additive", progress_bar=False)
    seconds = time.perf_counter() - t0
    print(json.dumps({"seconds": seconds, "peak_rss_gb": peak_memory_gb()}))


def _run(src: Path, call: str, work: Path) -> dict:
    env = {**os.environ, "PYTHONPATH": str(src), "OMP_NUM_THREADS": "2"}
    cmd = [sys.executable, __file__, "--child", call, "--work", str(work)]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if proc.returncode:
        print(proc.stderr[-3000:])
        raise SystemExit(f"{call} failed under {src}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _checks_alone(work: Path, repeats: int) -> list[list]:
    """Each new check timed on its own, in this process (this tree), on the same data: median seconds."""
    import anndata as ad

    from pertcausal._utils._validate import canonical, check_unique_var_names
    from pertcausal.pp._genotypes import _check_sample_count
    from pertcausal.pp._signatures import _scan
    from pertcausal.tl._grid_io import grid_from_signatures

    a = ad.read_h5ad(work / "cells.h5ad")
    sig = ad.read_h5ad(work / "effects.h5ad")
    n_samples = sum(1 for _ in open(work / "g.fam"))
    n_variants = sum(1 for _ in open(work / "g.bim"))

    def timed(f) -> float:
        out = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            f()
            out.append(time.perf_counter() - t0)
        return statistics.median(out)

    return [
        ["signatures", "one scan of the stored values (NaN/inf, smallest, integers)", timed(lambda: _scan(a.X, 10**5))],
        ["signatures", "sparse canonical-format test (no duplicates here)", timed(lambda: canonical(a.X))],
        ["signatures", "unique var_names", timed(lambda: check_unique_var_names(a))],
        ["read_genotypes", "padding bits of 2,000 variants", timed(lambda: _check_sample_count(
            work / "g.bed", work / "g.fam", n_samples, n_variants))],
        ["impute", "whole grid build (levels from the observed pairs and the control means included)", timed(
            lambda: grid_from_signatures(sig))],
    ]  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--ref", default="f912b46", help="reference commit")
    ap.add_argument("--cells", type=int, default=100_000)
    ap.add_argument("--genes", type=int, default=2_000)
    ap.add_argument("--samples", type=int, default=4_999)
    ap.add_argument("--variants", type=int, default=100_000)
    ap.add_argument("--repeats", type=int, default=6)
    ap.add_argument("--out", default=str(ROOT / "docs" / "benchmarks" / "input_checks.md"))
    ap.add_argument("--child", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--work", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        args.call = args.child
        _child(args)
        return

    with tempfile.TemporaryDirectory(prefix="pertcausal_input_checks_") as tmp:
        tmp = Path(tmp)
        ref_tree = tmp / "ref"
        subprocess.run(["git", "worktree", "add", "--detach", str(ref_tree), args.ref], cwd=ROOT, check=True,
                       capture_output=True)  # fmt: skip
        try:
            trees = {"reference": ref_tree / "src", "this tree": ROOT / "src"}
            work = tmp / "data"
            work.mkdir()
            t0 = time.perf_counter()
            _make_data(work, args)
            print(f"data written in {time.perf_counter() - t0:.1f} s")
            times: dict[tuple[str, str], list[float]] = {}
            peaks: dict[tuple[str, str], float] = {}
            for path in work.iterdir():  # into the page cache once, so no tree pays for the first read
                path.read_bytes()
            for r in range(args.repeats):
                for call in CALLS:
                    order = list(trees.items()) if r % 2 == 0 else list(trees.items())[::-1]
                    _run(order[0][1], call, work)  # untimed
                    for name, src in order:
                        res = _run(src, call, work)
                        times.setdefault((call, name), []).append(res["seconds"])
                        peaks[(call, name)] = max(peaks.get((call, name), 0.0), res["peak_rss_gb"])
                        print(f"repeat {r}: {call:15s} {name:10s} {res['seconds']:.3f} s", flush=True)
            alone = _checks_alone(work, args.repeats)
        finally:
            subprocess.run(["git", "worktree", "remove", "--force", str(ref_tree)], cwd=ROOT, capture_output=True)
    rows = []
    for call in CALLS:
        old, new = times[(call, "reference")], times[(call, "this tree")]
        med_old, med_new = statistics.median(old), statistics.median(new)
        rows.append([call, med_old, med_new, med_new / med_old, min(old), min(new), min(new) / min(old),
                     peaks[(call, "reference")], peaks[(call, "this tree")]])  # fmt: skip
    header = ["call", "median, reference (s)", "median, this tree (s)", "ratio", "min, reference (s)",
              "min, this tree (s)", "ratio of min", "peak GB, reference", "peak GB, this tree"]  # fmt: skip
    table = markdown_table(rows, header)
    spread = max((max(v) - min(v)) / statistics.median(v) for (call, _), v in times.items() if call != "read_genotypes")
    total = {call: statistics.median(times[(call, "this tree")]) for call in CALLS}
    alone_rows = [[call, what, sec, 100 * sec / total[call]] for call, what, sec in alone]
    alone_table = markdown_table(alone_rows, ["call", "check", "seconds", "% of the call"], digits=4)
    print(table)
    print(alone_table)
    sizes = (
        f"- `signatures`: {args.cells:,} cells x {args.genes:,} genes (CSR), 50 perturbations + control x 10 "
        f"contexts\n- PLINK file: {args.samples:,} samples x {args.variants:,} variants\n"
        '- `impute`: 500 perturbations x 50 contexts x 978 genes, 30% observed, `method="additive"`'
    )
    page = (
        "# Cost of the input checks\n\n"
        "Written by `benchmarks/input_checks.py`. Each call ran in a fresh process per tree, the trees "
        f"interleaved in alternating order after an untimed run of the same call, {args.repeats} times on the "
        "same data (in the page cache); seconds of the call itself (data loading excluded, except in "
        f"`read + decode`). The reference is commit `{args.ref}`, before the checks of "
        "[What pertcausal checks in your input](../input_checks.md).\n\n"
        f"{sizes}\n\n{table}\n\n"
        f"On this shared 2-core machine the same call varied by up to {100 * spread:.0f}% of its median from run "
        "to run, whichever tree ran it, so the first table cannot resolve differences of a few percent. The "
        "second times each new check alone, in one process, on the same data (median of "
        f"{args.repeats}), against the median time of the whole call in this tree:\n\n{alone_table}\n\n"
        f"## Machine\n\n{machine_markdown(machine_info(('pertcausal', 'numpy', 'scipy')))}\n"
    )
    Path(args.out).write_text(page)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
