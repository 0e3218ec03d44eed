"""Training speed of CrossModalAE against scvi-tools' totalVI on a simulated 100,000-cell CITE-seq set.

The data (``pc.data.simulate_multimodal``: 2,000 genes and 100 protein tags of negative binomial counts,
stored sparse) is written once to an ``.h5mu``; each method then trains in its own child process (so the
peak memory measured is its own) for ``--epochs`` epochs with 99.9% of the cells in training (the rest
validate), minibatches of 256, and the seconds per epoch are taken from the epochs after the first (which
pays for start-up).

Run: ``python benchmarks/integrate_speed.py`` (about 15 min on 2 CPU cores);
``--cells 10000`` for a quick check; ``--device cuda`` on a GPU machine.
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
    """Child process: train one method and print JSON with the epoch times and peak memory."""
    import mudata as md
    import torch

    torch.set_num_threads(args.threads)
    mdata = md.read_h5mu(args.data)
    timer = epoch_timer()
    accelerator = "gpu" if args.device.startswith("cuda") else "cpu"
    t0 = time.perf_counter()
    if args.method == "crossmodal":
        import pertcausal as pc

        pc.models.CrossModalAE.setup_mudata(mdata)
        model = pc.models.CrossModalAE(mdata, n_latent=20)
        model.train(
            args.epochs,
            batch_size=256,
            train_size=0.999,
            accelerator=accelerator,
            devices=1,
            progress_bar=False,
            callbacks=[timer],
        )
    else:
        import scvi

        scvi.settings.dl_num_workers = 0
        mdata.mod["adt"].X = mdata.mod["adt"].X.toarray()  # totalVI's protein background prior needs dense tags
        scvi.model.TOTALVI.setup_mudata(
            mdata, rna_layer=None, protein_layer=None, modalities={"rna_layer": "rna", "protein_layer": "adt"}
        )
        model = scvi.model.TOTALVI(mdata, n_latent=20)
        model.train(
            max_epochs=args.epochs,
            batch_size=256,
            train_size=0.999,
            accelerator=accelerator,
            devices=1,
            enable_progress_bar=False,
            early_stopping=False,
            callbacks=[timer],
        )
    print_timing(timer.times, time.perf_counter() - t0)


def main() -> None:
    ap = speed_parser(__doc__, name="integrate_speed")
    ap.add_argument("--proteins", type=int, default=100)
    args = ap.parse_args()
    if args.method:
        run_method(args)
        return
    import pertcausal as pc

    work = Path(args.workdir)
    work.mkdir(parents=True, exist_ok=True)
    data = work / f"sim_{args.cells}.h5mu"
    if not data.exists():
        t0 = time.perf_counter()
        mdata = pc.data.simulate_multimodal(
            n_cells=args.cells, n_genes=args.genes, n_proteins=args.proteins, random_state=0
        )
        mdata.write(data)
        print(f"simulated and wrote {data} in {time.perf_counter() - t0:.0f} s", flush=True)
        del mdata
    rows, results = [], {}
    for method in ("crossmodal", "totalvi"):
        res = run_child(__file__, method, data, sys.argv[1:])
        times = res["epoch_seconds"]
        steady = times[1:] if len(times) > 1 else times
        res["per_epoch"] = sum(steady) / len(steady)
        results[method] = res
        print(method, json.dumps(res), flush=True)
    ratio = results["crossmodal"]["per_epoch"] / results["totalvi"]["per_epoch"]
    names = {"crossmodal": "pertcausal CrossModalAE", "totalvi": "scvi-tools TOTALVI"}
    for method, res in results.items():
        rows.append(
            [
                names[method],
                round(res["per_epoch"], 1),
                " / ".join(f"{t:.1f}" for t in res["epoch_seconds"]),
                round(res["peak_rss_gb"], 2),
            ]
        )
    table = markdown_table(rows, ["method", "seconds per epoch", "each epoch (s)", "peak memory (GB)"])
    verdict = "met" if ratio <= 1.0 else "NOT met"
    text = (
        "# Training speed: CrossModalAE against totalVI\n\n"
        "Written by `benchmarks/integrate_speed.py`; every number comes from the run below.\n\n"
        f"{__doc__.split(chr(10), 2)[2].split('Run:')[0].strip()}\n\n"
        f"Cells: {args.cells:,}; genes: {args.genes:,}; protein tags: {args.proteins}; epochs: {args.epochs}; "
        f"device: {args.device}; torch threads: {args.threads}.\n\n{table}\n\n"
        "## Against the target\n\n"
        f"- CrossModalAE no slower than totalVI per epoch: ratio {ratio:.2f} ({verdict}).\n"
        "- Both models see the same minibatches of 256 cells. Per cell, CrossModalAE runs two encoders and, "
        "for paired cells, four decodings (each modality from each embedding); totalVI runs one joint encoder "
        "and two decoders.\n\n"
        f"## Machine\n\n{machine_markdown(machine_info(('pertcausal', 'torch', 'scvi-tools', 'lightning')))}\n"
    )
    print(table)
    Path(args.out).write_text(text)


if __name__ == "__main__":
    main()
