"""Training speed of SparseShiftVAE (sVAE+) against scvi-tools' SCVI on a simulated 100,000-cell screen.

The data (``pc.data.simulate_sparse_shift``: 199 perturbations and a control of 500 cells each, 2,000
genes of Poisson counts, stored sparse) is written once to an ``.h5ad``; each model then trains in its own
child process (so the peak memory is its own) for ``--epochs`` epochs with 99.9% of the cells in
training, scvi-tools' default minibatches of 128 and the same networks (10 latents, one hidden layer of
128 units); the seconds per epoch are taken from the epochs after the first (which pays for start-up).

Run: ``python benchmarks/sparse_shift_speed.py`` (about 10 min on 2 CPU cores); ``--cells 10000`` for a
quick check; ``--device cuda`` on a GPU machine.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import (
    epoch_timer,
    machine_info,
    machine_markdown,
    markdown_table,
    print_timing,
    run_child,
    speed_parser,
)


def run_method(args: argparse.Namespace) -> None:
    """Child process: train one model and print JSON with the epoch times and peak memory."""
    import anndata as ad
    import scvi
    import torch

    torch.set_num_threads(args.threads)
    scvi.settings.dl_num_workers = 0
    adata = ad.read_h5ad(args.data)
    timer = epoch_timer()
    accelerator = "gpu" if args.device.startswith("cuda") else "cpu"
    t0 = time.perf_counter()
    common = {"max_epochs": args.epochs, "batch_size": 128, "accelerator": accelerator, "devices": 1}
    if args.method == "sparse_shift":
        import pertcausal as pc

        pc.models.SparseShiftVAE.setup_anndata(adata, perturbation_key="perturbation", control="control")
        model = pc.models.SparseShiftVAE(adata, n_latent=10)
        model.train(train_size=0.999, progress_bar=False, callbacks=[timer], **common)
    else:
        scvi.model.SCVI.setup_anndata(adata)
        model = scvi.model.SCVI(adata, n_latent=10)
        model.train(train_size=0.999, enable_progress_bar=False, callbacks=[timer], **common)
    print_timing(timer.times, time.perf_counter() - t0)


def main() -> None:
    ap = speed_parser(__doc__, name="sparse_shift_speed")
    args = ap.parse_args()
    if args.method:
        run_method(args)
        return
    import pertcausal as pc

    work = Path(args.workdir)
    work.mkdir(parents=True, exist_ok=True)
    data = work / f"sim_{args.cells}_{args.genes}.h5ad"
    if not data.exists():
        t0 = time.perf_counter()
        per = 500
        adata = pc.data.simulate_sparse_shift(
            n_perturbations=max(1, args.cells // per - 1),
            n_cells_per_perturbation=per,
            n_latent=10,
            n_genes=args.genes,
            random_state=0,
        )
        adata.write_h5ad(data)
        print(f"simulated {adata.n_obs:,} cells and wrote {data} in {time.perf_counter() - t0:.0f} s", flush=True)
        del adata
    results = {}
    for method in ("sparse_shift", "scvi"):
        res = run_child(__file__, method, data, sys.argv[1:])
        steady = res["epoch_seconds"][1:] or res["epoch_seconds"]
        res["per_epoch"] = sum(steady) / len(steady)
        results[method] = res
        print(method, json.dumps(res), flush=True)
    ratio = results["sparse_shift"]["per_epoch"] / results["scvi"]["per_epoch"]
    names = {"sparse_shift": "pertcausal SparseShiftVAE (sVAE+)", "scvi": "scvi-tools SCVI"}
    rows = [
        [
            names[m],
            round(r["per_epoch"], 1),
            " / ".join(f"{t:.1f}" for t in r["epoch_seconds"]),
            round(r["peak_rss_gb"], 2),
        ]
        for m, r in results.items()
    ]
    table = markdown_table(rows, ["model", "seconds per epoch", "each epoch (s)", "peak memory (GB)"])
    verdict = "met" if ratio <= 1.3 else "NOT met"
    text = (
        "# Training speed: SparseShiftVAE against SCVI\n\n"
        "Written by `benchmarks/sparse_shift_speed.py`; every number comes from the run below.\n\n"
        f"{__doc__.split(chr(10), 2)[2].split('Run:')[0].strip()}\n\n"
        f"Cells: {args.cells:,}; genes: {args.genes:,}; epochs: {args.epochs}; device: {args.device}; "
        f"torch threads: {args.threads}.\n\n{table}\n\n"
        "## Against the target\n\n"
        f"- SparseShiftVAE within 1.3x of SCVI per epoch: ratio {ratio:.2f} ({verdict}).\n"
        "- Per minibatch, sVAE+ adds to SCVI's work a gather of each cell's prior row, one Gumbel-sigmoid "
        "sample per cell and latent, and the Beta prior of the mask (labels x latents).\n\n"
        f"## Machine\n\n{machine_markdown(machine_info(('pertcausal', 'torch', 'scvi-tools', 'lightning')))}\n"
    )
    print(table)
    Path(args.out).write_text(text)


if __name__ == "__main__":
    main()
