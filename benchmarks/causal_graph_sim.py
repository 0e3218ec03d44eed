"""Causal-graph methods on simulated factor DAGs with a known graph: DCD-FG, NOTEARS-low-rank, no-graph baselines.

Data: ``pc.data.simulate_factor_graph`` with the reference's default design (100 genes, 10 modules, 100
interventional regimes of 1-3 targets, 500 cells per regime and 500 control cells; edge probabilities 0.2 /
0.1), linear and nonlinear (a tanh MLP per module) mechanisms, and two kinds of intervention: ``hard`` (the
reference's: a target is replaced by N(0, 1) noise, which changes no mean in the linear case) and
``knockout`` (a target is set to -3 control sds, which shifts its descendants). The last 10 regimes are held
out of training. Each method is ``pc.tl.causal_graph(method=...)`` with its defaults (``max_epochs=None``:
about 6,000 minibatch steps), then ``pc.tl.evaluate_causal_graph``:

- SHD, edge precision and recall of the thresholded (acyclic) graph against the true gene graph;
- held-out NLL per gene (targets left out; control-standardised units, lower is better);
- MAE of the predicted shift of the held-out regimes' non-targeted gene means (data units).

Every table carries the no-graph rows: ``gaussian_full`` (full covariance of the training cells),
``gaussian_diagonal`` (independent genes; predicts no shift) and ``average_shift`` (the mean shift of the
training regimes). Two simulations run at once, one torch thread each.

Run: ``python benchmarks/causal_graph_sim.py`` (about 5 min on 2 CPU cores); ``--quick`` for a small check.
"""

from __future__ import annotations

import argparse
import multiprocessing
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import ROOT, machine_info, machine_markdown, markdown_table

METHODS = ("dcdfg", "notears_lowrank")


def run_one(config: dict, mechanism: str, intervention: str, seed: int) -> pd.DataFrame:
    """Every method on one simulation; one row per method and baseline."""
    import warnings

    import torch

    import pertcausal as pc

    torch.set_num_threads(1)
    warnings.filterwarnings("ignore", category=UserWarning)
    adata = pc.data.simulate_factor_graph(**config, mechanism=mechanism, intervention=intervention,
                                          random_state=seed)  # fmt: skip
    held = list(adata.uns["factor_graph_truth"]["regimes"][-10:])
    tables = []
    for method in METHODS:
        t0 = time.perf_counter()
        pc.tl.causal_graph(adata, perturbation_key="perturbation", control="control", n_modules=config["n_modules"],
                           method=method, heldout=held, key_added=method, progress_bar=False, device="cpu",
                           random_state=seed)  # fmt: skip
        seconds = time.perf_counter() - t0
        table = pc.tl.evaluate_causal_graph(adata, key=method)
        table["seconds"] = float("nan")
        table.loc[method, "seconds"] = seconds
        tables.append(table if not tables else table.loc[[method]])
    out = pd.concat(tables)
    out["mechanism"], out["intervention"] = mechanism, intervention
    out["true_edges"] = adata.varp["true_graph"].nnz
    print(mechanism, intervention, out.round(3).to_string(), sep="\n", flush=True)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=str(ROOT / "docs" / "benchmarks" / "causal_graph_sim.md"))
    args = ap.parse_args()
    config = {"n_genes": 100, "n_modules": 10, "n_regimes": 100, "n_cells_per_regime": 500}
    if args.quick:
        config = {"n_genes": 20, "n_modules": 4, "n_regimes": 20, "n_cells_per_regime": 100}
    designs = [(m, i) for m in ("linear", "nonlinear") for i in ("hard", "knockout")]
    with ProcessPoolExecutor(2, mp_context=multiprocessing.get_context("spawn")) as pool:
        futures = [pool.submit(run_one, config, m, i, args.seed) for m, i in designs]
        results = [f.result() for f in futures]
    sections = []
    for res in results:
        mech, inter = res["mechanism"].iloc[0], res["intervention"].iloc[0]
        rows = [
            [name, r.shd, r.precision, r.recall, r.n_edges, r.nll_per_gene, r.shift_mae,
             "" if pd.isna(r.seconds) else round(r.seconds)]
            for name, r in res.iterrows()
        ]  # fmt: skip
        table = markdown_table(rows, ["method", "SHD", "precision", "recall", "edges", "held-out NLL/gene",
                                      "shift MAE", "fit (s)"])  # fmt: skip
        best_nll = res["nll_per_gene"].idxmin()
        best_mae = res["shift_mae"].idxmin()
        sections.append(
            f"## {mech} mechanism, {inter} interventions\n\nTrue graph: {int(res['true_edges'].iloc[0])} edges.\n\n"
            f"{table}\n\n- Best held-out NLL: **{best_nll}**; best shift MAE: **{best_mae}**."
        )
    text = (
        "# Causal graphs on simulated factor DAGs\n\n"
        "Written by `benchmarks/causal_graph_sim.py`; every number comes from the run below.\n\n"
        f"{__doc__.split(chr(10), 2)[2].split('Run:')[0].strip()}\n\n"
        f"Design: {config}, 500 control cells, 10 held-out regimes, seed {args.seed}.\n\n"
        + "\n\n".join(sections)
        + f"\n\n## Machine\n\n{machine_markdown(machine_info(('pertcausal', 'torch', 'lightning')))}\n"
    )
    print(text)
    if not args.quick:
        Path(args.out).write_text(text)


if __name__ == "__main__":
    main()
