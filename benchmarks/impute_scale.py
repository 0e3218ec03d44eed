"""Imputation at Connectivity Map scale: time, peak memory and accuracy per method.

A simulated low-rank causal screen (:func:`pertcausal.data.simulate_effects`) the size of the LINCS
L1000 Connectivity Map: 71 contexts x 20,000 perturbations x 978 genes with ~117,000 observed pairs
(~5.8 contexts per perturbation). Each method runs in a fresh subprocess so that its peak resident
memory (``getrusage(RUSAGE_SELF).ru_maxrss``; ``torch.cuda.max_memory_allocated`` on a GPU) is its own.

Per method:

* **held-out accuracy**: 5,000 observed pairs are held out (each keeps its perturbation measured in at
  least one other context), the method is fitted on the rest and predicts them; mean Pearson and mean
  top-50 Pearson (genes with the largest true effect) against the noise-free truth ``true_effects``.
* **whole grid**: fitted on every observed pair, the method predicts every unobserved pair
  (~1.3 M pairs x 978 genes, ~5 GB in float32). NTK does it in one call (or, when the output would not fit
  ``--max-output-gb``, fits once and predicts chunks that are discarded); the cheap baselines are called
  on chunks (each call refits); synthetic interventions is timed on a random sample of missing pairs and
  extrapolated; soft-impute is not run on the whole grid (each call refits; see the notes).

Usage::

    python benchmarks/impute_scale.py                      # full size; writes docs/benchmarks/impute_scale.md
    python benchmarks/impute_scale.py --quick --out ''     # smoke run (2,000 perturbations), prints only
    python benchmarks/impute_scale.py --device cuda --methods ntk
"""

from __future__ import annotations

import argparse
import datetime as _dt
import inspect
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
ALL_METHODS = ("ntk", "synthetic_interventions", "additive", "mean_over_contexts", "mean_over_perturbations",
               "soft_impute")
CHUNKED = {"additive", "mean_over_contexts", "mean_over_perturbations"}
TARGET_NTK_CPU_S, TARGET_NTK_GPU_S, TARGET_MEM_GB, TARGET_SI_MS = 600.0, 60.0, 16.0, 5.0


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--n-perturbations", type=int, default=20_000)
    p.add_argument("--n-contexts", type=int, default=71)
    p.add_argument("--n-genes", type=int, default=978)
    p.add_argument("--frac-observed", type=float, default=0.0693,
                   help="pair measurement probability (plus one forced pair per perturbation and per context); "
                        "0.0693 gives ~117,000 observed pairs at the default size")
    p.add_argument("--rank", type=int, default=5, help="rank of the simulated effect tensor")
    p.add_argument("--noise", type=float, default=0.05, help="measurement noise sd of observed effects")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="auto", help="torch device of the NTK: auto, cpu, cuda, cuda:N")
    p.add_argument("--methods", default=",".join(ALL_METHODS), help="comma-separated methods")
    p.add_argument("--n-holdout", type=int, default=5_000, help="held-out observed pairs for accuracy")
    p.add_argument("--si-pairs", type=int, default=2_000, help="missing pairs timed for synthetic interventions")
    p.add_argument("--no-full-grid", action="store_true", help="skip predicting the whole missing grid")
    p.add_argument("--max-output-gb", type=float, default=8.0,
                   help="largest whole-grid output held at once; above it predictions are made in chunks and discarded")
    p.add_argument("--chunk-pairs", type=int, default=131_072, help="pairs per chunk in chunked whole-grid runs")
    p.add_argument("--ntk-centers", type=int, default=None, help="NTK n_centers (default: the engine's)")
    p.add_argument("--ntk-block", type=int, default=None, help="NTK block_size (default: the engine's)")
    p.add_argument("--check-pairs", type=int, default=10_000,
                   help="observed pairs of the Nystrom-vs-exact NTK subproblem (0 to skip it)")
    p.add_argument("--check-centers", default="1000,2000,4000,6000,8000",
                   help="n_centers compared with the exact solve")
    p.add_argument("--timeout", type=float, default=2_400.0, help="seconds allowed per method subprocess")
    p.add_argument("--quick", action="store_true", help="smoke run: 2,000 perturbations, 1,000 held out, 200 SI pairs")
    p.add_argument("--out", default=str(ROOT / "docs" / "benchmarks" / "impute_scale.md"),
                   help="markdown file to write ('' to only print)")
    p.add_argument("--child", default=None, help=argparse.SUPPRESS)
    p.add_argument("--data", default=None, help=argparse.SUPPRESS)
    p.add_argument("--result", default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.quick:
        args.n_perturbations = min(args.n_perturbations, 2_000)
        args.n_holdout = min(args.n_holdout, 1_000)
        args.si_pairs = min(args.si_pairs, 200)
        args.check_pairs = min(args.check_pairs, 2_000)
        args.check_centers = "250,500,1000"
    return args


# ---------------------------------------------------------------------------------------------- data
def holdout_pairs(grid, n: int, rng: np.random.Generator) -> np.ndarray:
    """``n`` observed rows drawn uniformly at random, keeping every held-out pair's perturbation and
    context measured at least once in training."""
    left_p = np.bincount(grid.pert, minlength=grid.n_perts)
    left_c = np.bincount(grid.ctx, minlength=grid.n_contexts)
    hold = []
    for i in rng.permutation(grid.n_obs):
        if len(hold) == n:
            break
        if left_p[grid.pert[i]] > 1 and left_c[grid.ctx[i]] > 1:
            hold.append(i)
            left_p[grid.pert[i]] -= 1
            left_c[grid.ctx[i]] -= 1
    return np.sort(np.asarray(hold, dtype=np.int64))


def make_data(args: argparse.Namespace, folder: Path) -> dict:
    """Simulate the screen once, choose the held-out and SI-timing pairs, and save arrays for the children."""
    import pertcausal as pc
    from pertcausal.tl._grid_io import grid_from_signatures

    t0 = time.perf_counter()
    sig = pc.data.simulate_effects(
        n_perturbations=args.n_perturbations, n_contexts=args.n_contexts, n_genes=args.n_genes,
        rank=args.rank, frac_observed=args.frac_observed, noise=args.noise, seed=args.seed,
    )
    grid, _, _ = grid_from_signatures(sig)
    sim = sig.uns["simulation"]
    rng = np.random.default_rng(args.seed + 1)
    hold = holdout_pairs(grid, args.n_holdout, rng)
    mp, mc = np.nonzero(~grid.observed())
    si = np.sort(rng.choice(len(mp), size=min(args.si_pairs, len(mp)), replace=False))
    np.save(folder / "y.npy", grid.y.astype(np.float32))
    np.savez(folder / "meta.npz", pert=grid.pert, ctx=grid.ctx, baseline=grid.baseline, hold=hold,
             si_p=mp[si], si_c=mc[si],
             **{k: sim[k] for k in ("perturbation_factors", "context_factors", "gene_loadings")})
    info = {
        "n_perts": grid.n_perts, "n_contexts": grid.n_contexts, "n_genes": grid.n_genes, "n_obs": grid.n_obs,
        "n_missing": int(len(mp)), "n_holdout": int(len(hold)), "si_pairs": int(len(si)),
        "ctx_per_pert": grid.n_obs / grid.n_perts, "seconds_simulate": time.perf_counter() - t0,
    }
    (folder / "info.json").write_text(json.dumps(info))
    return info


def load_data(folder: Path) -> tuple:
    from pertcausal._engines import Grid

    info = json.loads((folder / "info.json").read_text())
    meta = np.load(folder / "meta.npz")
    y = np.load(folder / "y.npy").astype(np.float64)  # as grid_from_signatures builds it
    grid = Grid(y, meta["pert"], meta["ctx"], info["n_perts"], info["n_contexts"], meta["baseline"])
    sim = {k: meta[k] for k in ("perturbation_factors", "context_factors", "gene_loadings")}
    return grid, sim, meta, info


# ---------------------------------------------------------------------------------------------- child
def _peak_rss_gb() -> float:
    kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # kilobytes on Linux
    return kb * (1 if sys.platform != "darwin" else 1 / 1024) / 1024**2


def _method_kwargs(method: str, args: argparse.Namespace, device: str) -> dict:
    kw: dict = {"seed": args.seed, "progress": False}
    if method == "ntk":
        kw.update(device=device, solver="nystrom")
        if args.ntk_centers:
            kw["n_centers"] = args.ntk_centers
        if args.ntk_block:
            kw["block_size"] = args.ntk_block
    return kw


def run_child(args: argparse.Namespace) -> None:
    import torch

    from pertcausal._engines import METHODS
    from pertcausal._engines.metrics import profile_metrics
    from pertcausal.data._simulate import true_effects

    method = args.child
    res: dict = {"method": method}
    out_path = Path(args.result)

    def save() -> None:
        out_path.write_text(json.dumps(res, default=float))

    cuda = False
    if method == "ntk":
        from pertcausal._utils._device import resolve_device

        dev = resolve_device(args.device)
        cuda = dev.type == "cuda"
        res["device"] = str(dev) + (f" ({torch.cuda.get_device_name(dev)})" if cuda else "")
    else:
        res["device"] = "cpu (numpy)"
    grid, sim, meta, info = load_data(Path(args.data))
    res["rss_setup_gb"] = _peak_rss_gb()
    kw = _method_kwargs(method, args, args.device)
    engine = METHODS[method]

    # ---- held-out accuracy
    hold = meta["hold"]
    train = grid.subset(np.setdiff1d(np.arange(grid.n_obs), hold))
    qp, qc = grid.pert[hold], grid.ctx[hold]
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    pred = engine(train, qp, qc, **kw)
    res["holdout_seconds"] = time.perf_counter() - t0
    res["holdout_pairs"] = len(hold)
    truth = true_effects(sim, qp, qc)
    met = profile_metrics(truth, pred.values, top_k=50)
    res["pearson"] = float(np.nanmean(met["pearson"]))
    res["pearson_top50"] = float(np.nanmean(met["pearson_top_k"]))
    res["holdout_info"] = {k: v for k, v in pred.info.items() if isinstance(v, int | float | str)}
    res["rss_holdout_gb"] = _peak_rss_gb()
    if cuda:
        res["gpu_mem_holdout_gb"] = torch.cuda.max_memory_allocated() / 1024**3
    del pred, train, truth
    save()

    # ---- whole grid (or the SI sample)
    if args.no_full_grid:
        res["grid_mode"] = "skipped (--no-full-grid)"
        save()
        return
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    if method == "synthetic_interventions":
        sp, sc = meta["si_p"], meta["si_c"]
        t0 = time.perf_counter()
        pred = engine(grid, sp, sc, **kw)
        secs = time.perf_counter() - t0
        res.update(grid_mode=f"sample of {len(sp)} missing pairs, extrapolated", grid_pairs=len(sp),
                   grid_seconds=secs, per_pair_ms=1e3 * secs / len(sp),
                   grid_seconds_extrapolated=secs / len(sp) * info["n_missing"],
                   donor=str(pred.info.get("donor")), mean_donors=float(np.mean(pred.info["n_donors"])))
        res["rss_grid_gb"] = _peak_rss_gb()
        save()
        # where the time goes: a quick profile on a few pairs
        import cProfile
        import pstats

        n_prof = min(100, len(sp))
        prof = cProfile.Profile()
        prof.enable()
        engine(grid, sp[:n_prof], sc[:n_prof], **kw)
        prof.disable()
        stats = pstats.Stats(prof)
        total = stats.total_tt
        rows = sorted(stats.stats.items(), key=lambda kv: -kv[1][2])[:8]  # by own (tot) time
        # functions: name for builtins, file:line(name) otherwise
        res["profile"] = {
            "pairs": n_prof, "seconds": total,
            "top": [{"function": fn[2] if fn[0] == "~" else f"{Path(fn[0]).name}:{fn[1]}({fn[2]})", "calls": int(v[1]),
                     "own_s": float(v[2]), "share": float(v[2] / total)} for fn, v in rows],
        }
        save()
        return
    if method == "soft_impute":
        gb = info["n_missing"] * info["n_genes"] * 8 / 1e9
        res["grid_mode"] = ("not run: every call refits the SVD (see the held-out time: the fit dominates), so "
                            f"chunks would each pay it again, and one call for all {info['n_missing']:,} pairs returns "
                            f"~{gb:.0f} GB of float64 plus a same-size temporary"
                            + (f" (~{2 * gb:.0f} GB > {TARGET_MEM_GB:.0f} GB budget)"
                               if 2 * gb > TARGET_MEM_GB else ""))
        save()
        return
    mp, mc = np.nonzero(~grid.observed())
    n_miss = len(mp)
    if method == "ntk":
        from pertcausal._engines.ntk import fit_ntk

        out_gb = n_miss * grid.n_genes * 4 / 1e9  # float32 (the Nystrom default)
        t0 = time.perf_counter()
        if out_gb <= args.max_output_gb:
            pred = engine(grid, mp, mc, **kw)
            res["grid_mode"] = (f"one call, all {n_miss:,} pairs held "
                                f"({pred.values.nbytes / 1e9:.1f} GB {pred.values.dtype})")
            res["grid_fit_seconds"] = pred.info.get("seconds_fit")
            finite = bool(np.isfinite(pred.values[:: max(1, n_miss // 1000)]).all())
            del pred
        else:
            fitted = fit_ntk(grid, **kw)
            buf = np.empty((min(args.chunk_pairs, n_miss), grid.n_genes), dtype=np.dtype(fitted.dtype))
            finite = True
            for s in range(0, n_miss, args.chunk_pairs):
                e = min(s + args.chunk_pairs, n_miss)
                fitted.predict(mp[s:e], mc[s:e], out=buf[: e - s])
                finite &= bool(np.isfinite(buf[0]).all())
            res["grid_mode"] = (f"fit once, predicted in chunks of {args.chunk_pairs:,} pairs and discarded "
                                f"(all at once would hold {out_gb:.1f} GB > --max-output-gb {args.max_output_gb})")
            res["grid_fit_seconds"] = fitted.info.get("seconds_fit")
        res["grid_seconds"] = time.perf_counter() - t0
        res["grid_finite"] = finite
        res["grid_n_train"] = grid.n_obs
    elif method in CHUNKED:
        t0 = time.perf_counter()
        calls = 0
        for s in range(0, n_miss, args.chunk_pairs):
            vals = engine(grid, mp[s : s + args.chunk_pairs], mc[s : s + args.chunk_pairs], **kw).values
            calls += 1
            del vals
        res["grid_seconds"] = time.perf_counter() - t0
        res["grid_mode"] = f"{calls} calls of <= {args.chunk_pairs:,} pairs, each refitting, outputs discarded"
    res["grid_pairs"] = n_miss
    res["per_pair_ms"] = 1e3 * res["grid_seconds"] / n_miss
    res["rss_grid_gb"] = _peak_rss_gb()
    if cuda:
        res["gpu_mem_grid_gb"] = torch.cuda.max_memory_allocated() / 1024**3
    save()


def _check_one(rows: list, case: tuple, solver: str, m: int | None, dtype: str, exact=None) -> np.ndarray:
    from pertcausal._engines.metrics import profile_metrics
    from pertcausal._engines.ntk import ntk

    screen, train, qp, qc, truth, seed = case
    t0 = time.perf_counter()
    kw = {"solver": solver, "dtype": dtype, "device": "cpu", "seed": seed}
    if m:
        kw["n_centers"] = m
    v = ntk(train, qp, qc, **kw).values.astype(np.float64)
    secs = time.perf_counter() - t0
    row = {"screen": screen, "solver": solver, "n_centers": m or train.n_obs, "dtype": dtype, "seconds": secs,
           "pearson": float(np.nanmean(profile_metrics(truth, v)["pearson"]))}
    if exact is not None:
        mean = train.y.mean(0)
        row["rel_err"] = float(np.linalg.norm(v - exact) / np.linalg.norm(exact - mean))
        row["corr"] = float(np.corrcoef(v.ravel(), exact.ravel())[0, 1])
    rows.append(row)
    return v


def run_nystrom_check(args: argparse.Namespace) -> None:
    """Nystrom vs exact NTK on a ~``check_pairs``-pair screen of the same shape (CPU), for two screens:
    the benchmark's and a harder one (rank 50, noise 0.2)."""
    import pertcausal as pc
    from pertcausal._engines.ntk import ntk
    from pertcausal.data._simulate import true_effects
    from pertcausal.tl._grid_io import grid_from_signatures

    per_pert = args.n_contexts * args.frac_observed + (1 - args.frac_observed)
    n_perts = max(10, round(args.check_pairs / per_pert))
    rows = []
    for rank, noise in ((args.rank, args.noise), (50, 0.2)):
        sig = pc.data.simulate_effects(n_perturbations=n_perts, n_contexts=args.n_contexts, n_genes=args.n_genes,
                                       rank=rank, frac_observed=args.frac_observed, noise=noise, seed=args.seed)
        grid, _, _ = grid_from_signatures(sig)
        hold = holdout_pairs(grid, max(100, grid.n_obs // 10), np.random.default_rng(args.seed + 1))
        train = grid.subset(np.setdiff1d(np.arange(grid.n_obs), hold))
        qp, qc = grid.pert[hold], grid.ctx[hold]
        truth = true_effects(sig.uns["simulation"], qp, qc)
        screen = f"rank {rank}, noise {noise}: {train.n_obs:,} train / {len(hold):,} held out"

        case = (screen, train, qp, qc, truth, args.seed)
        exact = _check_one(rows, case, "exact", None, "float64")
        for m in (int(x) for x in args.check_centers.split(",")):
            if m <= train.n_obs:
                _check_one(rows, case, "nystrom", m, "float32", exact)
        m_def = min(inspect.signature(ntk).parameters["n_centers"].default, train.n_obs)
        _check_one(rows, case, "nystrom", m_def, "float64", exact)
        Path(args.result).write_text(json.dumps({"method": "nystrom_check", "rows": rows}))


def nystrom_text(check: dict) -> list[str]:
    lines = ["## Nystrom vs exact NTK", "",
             "On a smaller screen of the same shape (same contexts, genes and observation rate), CPU. "
             "Relative error = ||Nystrom - exact||_F / ||exact - training mean||_F on the held-out predictions; "
             "Pearson = mean per-pair Pearson against the noise-free truth.", "",
             "| screen | solver | n_centers | dtype | seconds | rel. error vs exact | corr. with exact "
             "| mean Pearson |",
             "|---|---|---:|---|---:|---:|---:|---:|"]
    if "rows" not in check:
        return [*lines, f"| failed: {check.get('error', '?')} | | | | | | | |"]
    for r in check["rows"]:
        lines.append(f"| {r['screen']} | {r['solver']} | {r['n_centers']:,} | {r['dtype']} | {r['seconds']:.1f} "
                     f"| {_fmt(r.get('rel_err'), '.2e')} | {_fmt(r.get('corr'), '.6f')} | {r['pearson']:.4f} |")
    return lines


# ---------------------------------------------------------------------------------------------- parent
def machine(device: str) -> dict:
    import torch

    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    ram = float("nan")
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal"):
                ram = int(line.split()[1]) / 1024**2
    except OSError:
        pass
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none"
    try:
        commit = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], capture_output=True,
                                text=True, check=False).stdout.strip()
    except OSError:
        commit = ""
    return {
        "cpu": cpu, "cores": os.cpu_count(), "torch_threads": torch.get_num_threads(), "ram_gb": ram,
        "python": platform.python_version(), "numpy": np.__version__, "torch": torch.__version__,
        "device": device, "gpu": gpu, "platform": platform.platform(), "commit": commit,
        "date": _dt.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z"),
    }


def _fmt(x, spec: str = ".1f", none: str = "—") -> str:
    if x is None or (isinstance(x, float) and not np.isfinite(x)):
        return none
    return format(x, spec)


def table(results: list[dict], info: dict) -> str:
    head = ("| method | device | held-out fit+predict (s) | held-out ms/pair (incl. fit) | mean Pearson "
            "| top-50 Pearson "
            "| whole grid (s) | grid ms/pair | peak RSS (GB) | GPU peak (GB) |")
    lines = [head, "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in results:
        if "error" in r and "pearson" not in r:
            lines.append(f"| {r['method']} | {r.get('device', '')} | failed: {r['error']} | | | | | | "
                         f"{_fmt(r.get('rss_setup_gb'), '.2f')} | |")
            continue
        grid_s = r.get("grid_seconds")
        grid_cell = _fmt(grid_s, ".0f")
        if r["method"] == "synthetic_interventions" and "grid_seconds_extrapolated" in r:
            grid_cell = f"~{r['grid_seconds_extrapolated']:,.0f} (extrapolated)"
        elif grid_s is None:
            grid_cell = "not run"
        gpu = max(r.get("gpu_mem_holdout_gb", 0.0), r.get("gpu_mem_grid_gb", 0.0)) or None
        rss = max(v for k, v in r.items() if k.startswith("rss_") and isinstance(v, float))
        lines.append(
            f"| {r['method']} | {r.get('device', '')} | {_fmt(r.get('holdout_seconds'))} "
            f"| {_fmt(1e3 * r['holdout_seconds'] / r['holdout_pairs'], '.2f') if 'holdout_seconds' in r else '—'} "
            f"| {_fmt(r.get('pearson'), '.3f')} | {_fmt(r.get('pearson_top50'), '.3f')} | {grid_cell} "
            f"| {_fmt(r.get('per_pair_ms'), '.3g')} | {_fmt(rss, '.2f')} | {_fmt(gpu, '.2f')} |"
        )
    return "\n".join(lines)


def targets(results: list[dict], mach: dict) -> list[str]:
    by = {r["method"]: r for r in results}
    out = []
    ntk = by.get("ntk")
    if ntk is not None and "grid_seconds" in ntk:
        on_gpu = ntk.get("device", "").startswith("cuda")
        limit = TARGET_NTK_GPU_S if on_gpu else TARGET_NTK_CPU_S
        where = "one GPU" if on_gpu else f"{mach['cores']} CPU cores"
        t = ntk["grid_seconds"]
        out.append(f"- NTK completes the grid (fit on all {ntk.get('grid_n_train', 0):,} observed + "
                   f"{ntk['grid_pairs']:,} missing pairs predicted) on {where}: {t:.0f} s vs {limit:.0f} s -> "
                   f"ratio {t / limit:.2f}: **{'met' if t < limit else 'NOT met'}**.")
        if not on_gpu:
            out.append(f"- NTK under {TARGET_NTK_GPU_S:.0f} s on one H100: **not measured** — no GPU was available "
                       "for this run (rerun with `--device cuda --methods ntk` on a GPU machine).")
    elif ntk is not None:
        out.append("- NTK whole-grid time: not measured in this run.")
    if ntk is not None:
        rss = max(v for k, v in ntk.items() if k.startswith("rss_") and isinstance(v, float))
        mem = f"peak RSS {rss:.2f} GB"
        if "gpu_mem_grid_gb" in ntk:
            mem += f", GPU peak {ntk['gpu_mem_grid_gb']:.2f} GB"
        out.append(f"- NTK peak memory under {TARGET_MEM_GB:.0f} GB: {mem} -> ratio {rss / TARGET_MEM_GB:.2f}: "
                   f"**{'met' if rss < TARGET_MEM_GB else 'NOT met'}** (Nystrom, no dense n x n kernel).")
    si = by.get("synthetic_interventions")
    if si is not None and "per_pair_ms" in si:
        ms = si["per_pair_ms"]
        out.append(f"- Synthetic interventions under {TARGET_SI_MS:.0f} ms per predicted pair: {ms:.1f} ms "
                   f"(on {si['grid_pairs']:,} random missing pairs, donor={si.get('donor')}, mean "
                   f"{si.get('mean_donors', float('nan')):.0f} donors) -> ratio {ms / TARGET_SI_MS:.1f}: "
                   f"**{'met' if ms < TARGET_SI_MS else 'NOT met'}**.")
    return out


def profile_text(si: dict | None) -> list[str]:
    if not si or "profile" not in si:
        return []
    prof = si["profile"]
    lines = [f"Profile of synthetic interventions on {prof['pairs']} missing pairs "
             f"({prof['seconds']:.1f} s under cProfile; functions by own time):", "",
             "| function | calls | own time (s) | share |", "|---|---:|---:|---:|"]
    for row in prof["top"]:
        lines.append(f"| `{row['function']}` | {row['calls']:,} | {row['own_s']:.2f} | {100 * row['share']:.0f}% |")
    return lines


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.child == "nystrom_check":
        run_nystrom_check(args)
        return 0
    if args.child:
        run_child(args)
        return 0
    import torch

    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    unknown = [m for m in methods if m not in ALL_METHODS]
    if unknown:
        print(f"unknown method(s) {unknown}; expected some of {list(ALL_METHODS)}", file=sys.stderr)
        return 2
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        print(f"device {args.device!r} was requested but CUDA is not available on this machine: "
              "no GPU run was made (use --device cpu or auto)", file=sys.stderr)
        return 2
    device = ("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" else args.device
    mach = machine(device)
    load_start = os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="impute_scale_") as tmp:
        folder = Path(tmp)
        info = make_data(args, folder)
        print(f"simulated {info['n_perts']:,} perturbations x {info['n_contexts']} contexts x {info['n_genes']} genes: "
              f"{info['n_obs']:,} observed pairs ({info['ctx_per_pert']:.2f} contexts per perturbation), "
              f"{info['n_missing']:,} missing; {info['seconds_simulate']:.0f} s", flush=True)
        results = []
        jobs = methods + (["nystrom_check"] if args.check_pairs > 0 and "ntk" in methods else [])
        for method in jobs:
            res_file = folder / f"{method}.json"
            cmd = [sys.executable, str(Path(__file__).resolve()), "--child", method, "--data", str(folder),
                   "--result", str(res_file), *(argv if argv is not None else sys.argv[1:])]
            t0 = time.perf_counter()
            print(f"[{method}] running ...", flush=True)
            try:
                proc = subprocess.run(cmd, capture_output=True, text=True, timeout=args.timeout, check=False)
                err = None if proc.returncode == 0 else (proc.stderr.strip().splitlines() or ["?"])[-1]
            except subprocess.TimeoutExpired:
                err = f"timed out after {args.timeout:.0f} s"
            res = json.loads(res_file.read_text()) if res_file.exists() else {"method": method}
            if err:
                res["error"] = err
            res["wall_seconds"] = time.perf_counter() - t0
            results.append(res)
            print(f"[{method}] {json.dumps({k: v for k, v in res.items() if k not in ('profile',)}, default=str)}",
                  flush=True)
    load_end = os.getloadavg()
    check = next((r for r in results if r["method"] == "nystrom_check"), None)
    results = [r for r in results if r["method"] != "nystrom_check"]
    tab = table(results, info)
    tgt = targets(results, mach)
    print()
    print(tab)
    print()
    print("\n".join(tgt))
    if check:
        print()
        print("\n".join(nystrom_text(check)))
    if args.out:
        write_markdown(Path(args.out), args, mach, info, results, tab, tgt, load_start, load_end, check)
        print(f"\nwrote {args.out}")
    return 0


def write_markdown(path: Path, args, mach, info, results, tab, tgt, load_start, load_end, check) -> None:
    by = {r["method"]: r for r in results}
    cmd = "python benchmarks/impute_scale.py " + " ".join(a for a in sys.argv[1:])
    lines = [
        "# Imputation at Connectivity Map scale",
        "",
        f"Written by `benchmarks/impute_scale.py` on {mach['date']} (`{cmd.strip()}`).",
        "",
        "## Machine",
        "",
        f"- CPU: {mach['cpu']}, {mach['cores']} cores (torch threads: {mach['torch_threads']}), "
        f"RAM {mach['ram_gb']:.0f} GiB",
        f"- GPU: {mach['gpu']}; NTK device: `{mach['device']}`",
        f"- Python {mach['python']}, numpy {mach['numpy']}, torch {mach['torch']}, {mach['platform']}, "
        f"commit {mach['commit'] or '?'} (+ working tree)",
        f"- Load average (1/5/15 min) at start {', '.join(f'{v:.1f}' for v in load_start)}, at end "
        f"{', '.join(f'{v:.1f}' for v in load_end)}: the machine was shared with other jobs, so times are "
        "upper bounds of what an idle machine gives.",
        "",
        "## Screen",
        "",
        f"`simulate_effects(n_perturbations={args.n_perturbations}, n_contexts={args.n_contexts}, "
        f"n_genes={args.n_genes}, rank={args.rank}, frac_observed={args.frac_observed}, noise={args.noise}, "
        f"seed={args.seed})`: {info['n_obs']:,} observed pairs ({info['ctx_per_pert']:.2f} contexts per "
        f"perturbation), {info['n_missing']:,} missing pairs. Accuracy is on {info['n_holdout']:,} held-out "
        "observed pairs (each keeps its perturbation and context in training) against the noise-free truth: "
        "mean over pairs of the Pearson correlation across all genes and across the 50 genes with the largest "
        "absolute true effect. Each method runs in its own subprocess; peak RSS is that process's "
        "`ru_maxrss` (it includes ~"
        f"{min(r.get('rss_setup_gb', 0) for r in results):.1f} GB for the loaded screen).",
        "",
        "## Results",
        "",
        tab,
        "",
        "Whole-grid runs:",
        "",
    ]
    for r in results:
        mode = r.get("grid_mode", "not completed" if "error" in r else "not run")
        extra = ""
        if r["method"] == "ntk" and "grid_fit_seconds" in r:
            extra = (f"; fit {r['grid_fit_seconds']:.0f} s of {r['grid_seconds']:.0f} s; "
                     f"all finite: {r.get('grid_finite')}")
        if "error" in r:
            extra += f"; error: {r['error']}"
        lines.append(f"- {r['method']}: {mode}{extra}")
    ntk = by.get("ntk")
    if ntk and "holdout_info" in ntk:
        hi = ntk["holdout_info"]
        lines += ["", f"NTK settings: solver `{hi.get('solver')}`, n_centers {hi.get('n_centers')}, dtype "
                  f"`{hi.get('dtype')}` (kernel blocks; the m x m system in float64), "
                  f"lambda {hi.get('lambda', float('nan')):.3f} "
                  f"(mean identity-block diagonal), K_mm jitter {hi.get('jitter_kmm', float('nan')):.1e}."]
    lines += ["", "## Targets", "", *tgt]
    prof = profile_text(by.get("synthetic_interventions"))
    if prof:
        lines += ["", "## Where synthetic interventions spends its time", "", *prof]
    if check:
        lines += ["", *nystrom_text(check)]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    sys.exit(main())
