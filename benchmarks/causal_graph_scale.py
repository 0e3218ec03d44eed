"""Seconds per epoch and peak memory of ``tl.causal_graph`` at 1,000 genes x 100,000 cells.

Targets: under 60 s per epoch and under 8 GB on 2 CPU cores.

Data: ``pc.data.simulate_factor_graph`` with 1,000 genes, 20 modules, 199 knockout regimes x 500 cells plus
500 control cells (100,000 cells; dense float32, 0.4 GB). ``dcdfg`` with its defaults (20 modules, MLPs of
2 x 16 units, minibatches of 256) is trained for ``--epochs`` epochs with the acyclicity constraint on (with
fewer than 4 epochs there is no warm-up) and no fine-tuning; the time of each epoch is read from the
training history, and the whole call also includes thresholding and the mean-Jacobian edge weights.
``notears_lowrank`` (whose exact NOTEARS constraint costs a 1,000 x 1,000 matrix exponential per step) is
timed for one epoch. Peak memory is the process's high-water mark (VmHWM), which includes the simulated data.
Time it with the cores to itself: an earlier run beside two other torch jobs (load 3.9 on 2 cores, threads
oversubscribed) took 149 s per epoch, 40 times longer.

Run: ``python benchmarks/causal_graph_scale.py`` (about 10 min on 2 CPU cores); ``--device cuda`` on a GPU.
"""

from __future__ import annotations

import argparse
import sys
import time
import warnings
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import ROOT, machine_info, machine_markdown, markdown_table, peak_memory_gb


def main() -> None:
    import torch

    import pertcausal as pc

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--genes", type=int, default=1000)
    ap.add_argument("--cells-per-regime", type=int, default=500)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--skip-notears", action="store_true")
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    warnings.filterwarnings("ignore", category=UserWarning)
    t0 = time.perf_counter()
    adata = pc.data.simulate_factor_graph(
        n_genes=args.genes, n_modules=20, n_regimes=199, n_cells_per_regime=args.cells_per_regime,
        intervention="knockout",
    )  # fmt: skip
    sim_seconds = time.perf_counter() - t0
    print(f"simulated {adata.shape} in {sim_seconds:.0f} s", flush=True)
    rows = []
    plans = {"dcdfg": args.epochs, "notears_lowrank": 1}
    if args.skip_notears:
        plans.pop("notears_lowrank")
    for method, epochs in plans.items():
        t0 = time.perf_counter()
        model = pc.tl.causal_graph(adata, perturbation_key="perturbation", control="control", method=method,
                                   device=args.device, max_epochs=epochs, finetune_epochs=0,
                                   progress_bar=False)  # fmt: skip
        total = time.perf_counter() - t0
        per_epoch = model.history["seconds"].to_numpy()
        rows.append([method, epochs, float(np.mean(per_epoch)), float(np.min(per_epoch)), total, peak_memory_gb()])
        print(rows[-1], flush=True)
    device = "cuda" if args.device != "cpu" and torch.cuda.is_available() else "cpu"
    table = markdown_table(rows, ["method", "epochs timed", "s/epoch (mean)", "s/epoch (min)", "whole call (s)",
                                  "peak memory so far (GB)"], digits=2)  # fmt: skip
    dc = rows[0]
    verdict = (
        f"- dcdfg: {dc[2]:.1f} s per epoch (target < 60 s: {'met' if dc[2] < 60 else 'NOT met'}); "
        f"peak memory {dc[5]:.2f} GB (target < 8 GB: {'met' if dc[5] < 8 else 'NOT met'})."
    )
    text = (
        f"# Causal-graph scale: {args.genes} genes x {adata.n_obs:,} cells ({device})\n\n"
        "Written by `benchmarks/causal_graph_scale.py`; every number comes from the run below.\n\n"
        f"{__doc__.split(chr(10), 2)[2].split('Run:')[0].strip()}\n\nSimulation took {sim_seconds:.0f} s.\n\n"
        f"{table}\n\n{verdict}\n\n"
        f"## Machine\n\n{machine_markdown(machine_info(('pertcausal', 'torch', 'lightning')))}\n"
    )
    print(text)
    out = args.out or str(ROOT / "docs" / "benchmarks" / f"causal_graph_scale_{device}.md")
    Path(out).write_text(text)


if __name__ == "__main__":
    main()
