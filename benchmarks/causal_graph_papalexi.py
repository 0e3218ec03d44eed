"""Causal graphs on a real CRISPR-KO screen (Papalexi et al. 2021, THP-1, 25 targets): held-out knockouts.

Data: ``../shared/data/papalexi2021-thp1-sceptre`` (20,729 cells x 299 genes, ECCITE-seq, IFN-gamma
stimulated), counts normalised to 10,000 per cell and log1p-transformed; all 299 genes are modelled. The 25
targeted genes are split at random into 5 folds of 5; each fold's knockouts are held out, every method is
fitted on the non-targeting cells and the other 20 knockouts, and ``pc.tl.evaluate_causal_graph`` scores the
held-out knockouts:

- held-out NLL per gene (targeted genes left out; control-standardised units; lower is better);
- MAE of the predicted shift of the non-targeted genes' means from the non-targeting mean (log1p units), over
  all held-out knockouts and over those whose target is among the 299 genes (9 of 25: CMTM6, IFNGR2, JAK2,
  NFKBIA, STAT1, STAT2, STAT3, TNFRSF14, UBE2L6). A knockout of an unmeasured gene cannot be propagated
  through a graph of measured genes, so a graph predicts no shift there.

``dcdfg_noise10`` is DCD-FG with rank-10 correlated exogenous noise (``noise_rank=10``). Then ``dcdfg`` and
``dcdfg_noise10`` are fitted on every knockout to look for the IFN-gamma pathway (IFNGR2, JAK2 -> STAT1 -> its
targets such as PSMB9): its edges around these genes, and its predicted shifts of STAT1 and PSMB9 under
knockouts of IFNGR2, JAK2 and STAT1 against the observed ones.

Run: ``python benchmarks/causal_graph_papalexi.py`` (about 35 min on one CPU core).
"""

from __future__ import annotations

import argparse
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import scipy.sparse as sp
from scipy.sparse.csgraph import breadth_first_order

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import ROOT, SHARED_DATA, machine_info, machine_markdown, markdown_table

DATA = SHARED_DATA / "papalexi2021-thp1-sceptre" / "papalexi2021_thp1_299genes.h5ad"
# name -> tl.causal_graph arguments; dcdfg_noise10 adds rank-10 correlated noise (hidden common causes)
METHODS = {
    "dcdfg": {"method": "dcdfg"},
    "dcdfg_noise10": {"method": "dcdfg", "noise_rank": 10},
    "notears_lowrank": {"method": "notears_lowrank"},
}
PATHWAY = ("IFNGR2", "JAK2", "STAT1", "PSMB9")


def load() -> object:
    import anndata as ad

    adata = ad.read_h5ad(DATA)
    X = sp.csr_matrix(adata.X, dtype=np.float32)
    totals = np.asarray(X.sum(1)).ravel()
    X = sp.csr_matrix(sp.diags(1e4 / totals) @ X)
    X.data = np.log1p(X.data)
    adata.X = X
    return adata


def main() -> None:
    import pertcausal as pc

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--folds", type=int, default=5)
    ap.add_argument("--max-epochs", type=int, default=None)
    ap.add_argument("--out", default=str(ROOT / "docs" / "benchmarks" / "causal_graph_papalexi.md"))
    args = ap.parse_args()
    warnings.filterwarnings("ignore", message=".*not among the modelled genes.*")
    adata = load()
    targets = sorted(set(adata.obs["perturbation"].astype(str)) - {"non-targeting"})
    rng = np.random.default_rng(args.seed)
    folds = np.array_split(rng.permutation(targets), args.folds)
    fit = {"perturbation_key": "perturbation", "control": "non-targeting", "progress_bar": False, "device": "cpu",
           "max_epochs": args.max_epochs, "random_state": args.seed}  # fmt: skip
    per_fold = []
    for k, held in enumerate(folds):
        held = sorted(held)
        tables = []
        for name, kwargs in METHODS.items():
            t0 = time.perf_counter()
            pc.tl.causal_graph(adata, heldout=held, key_added=name, **kwargs, **fit)
            seconds = time.perf_counter() - t0
            table = pc.tl.evaluate_causal_graph(adata, key=name).rename(index={kwargs["method"]: name})
            table["seconds"] = np.nan
            table.loc[name, "seconds"] = seconds
            tables.append(table if not tables else table.loc[[name]])
        res = pd.concat(tables)
        res["fold"] = k
        res["heldout"] = ", ".join(held)
        print(f"fold {k}: {held}\n{res.round(4).to_string()}", flush=True)
        per_fold.append(res)
    allres = pd.concat(per_fold)
    mean = allres.groupby(level=0, sort=False)[["nll_per_gene", "shift_mae", "shift_mae_measured", "seconds"]].mean()
    wins_nll = {m: int(sum(f.loc[m, "nll_per_gene"] < f.loc["gaussian_full", "nll_per_gene"] for f in per_fold))
                for m in METHODS}  # fmt: skip
    wins_mae = {m: int(sum(f.loc[m, "shift_mae"] < f.loc["average_shift", "shift_mae"] for f in per_fold))
                for m in METHODS}  # fmt: skip
    table = markdown_table(
        [[m, r.nll_per_gene, r.shift_mae, r.shift_mae_measured, "" if pd.isna(r.seconds) else round(r.seconds)]
         for m, r in mean.iterrows()],
        ["method", "held-out NLL/gene", "shift MAE (all)", "shift MAE (measured targets)", "fit (s)"],
        digits=4,
    )  # fmt: skip
    fold_rows = [[int(r.fold), m, r.heldout, r.nll_per_gene, r.shift_mae, r.shift_mae_measured]
                 for m, r in allres.iterrows()]  # fmt: skip
    fold_table = markdown_table(fold_rows, ["fold", "method", "held out", "NLL/gene", "shift MAE", "MAE measured"],
                                digits=4)  # fmt: skip

    # the IFN-gamma pathway in graphs fitted on every knockout
    X = adata.X.toarray()
    labels = adata.obs["perturbation"].astype(str).to_numpy()
    ctrl = X[labels == "non-targeting"].mean(0)
    edge_rows, shift_rows, role_rows, n_edges = [], [], [], {}
    for name in ("dcdfg", "dcdfg_noise10"):
        model = pc.tl.causal_graph(adata, key_added=f"{name}_all", **METHODS[name], **fit)
        A = model.adjacency.tocoo()
        n_edges[name] = model.adjacency.nnz
        genes = np.array(model.genes)
        edges = pd.DataFrame({"parent": genes[A.row], "child": genes[A.col], "weight": A.data})
        around = edges[edges.parent.isin(PATHWAY) | edges.child.isin(PATHWAY)]
        around = around.reindex(around.weight.abs().sort_values(ascending=False).index).head(10)
        edge_rows += [[name, *row] for row in around.values.tolist()]
        inputs, outputs = model.factors()
        reach = sp.csr_matrix(model.adjacency != 0)
        for g in PATHWAY:
            j = model.genes.index(g)
            descendants = breadth_first_order(reach, j, directed=True, return_predecessors=False).size - 1
            role_rows.append([name, g, int((inputs[j] != 0).sum()), int((outputs[j] != 0).sum()), descendants])
        pred = pc.tl.predict_intervention(model, ["IFNGR2", "JAK2", "STAT1"], n_samples=2000)
        for t in ("IFNGR2", "JAK2", "STAT1"):
            obs_shift = X[labels == t].mean(0) - ctrl
            for g in ("STAT1", "PSMB9"):
                if g != t:
                    j = adata.var_names.get_loc(g)
                    shift_rows.append([name, t, g, float(pred[t, g].layers["shift"][0, 0]), float(obs_shift[j])])
    shift_table = markdown_table(shift_rows, ["model", "knockout", "gene", "predicted shift", "observed shift"])
    role_table = markdown_table(role_rows, ["model", "gene", "modules it feeds", "modules feeding it", "descendants"])
    # what the data offer: pathway genes' correlations within the non-targeting cells, and knockout shifts in
    # non-targeting sds
    nt = X[labels == "non-targeting"]
    pidx = [adata.var_names.get_loc(g) for g in PATHWAY]
    corr = np.corrcoef(nt[:, pidx].T)
    corr_rows = [[a, b, float(corr[i, k])] for i, a in enumerate(PATHWAY) for k, b in enumerate(PATHWAY) if i < k]
    corr_table = markdown_table(corr_rows, ["gene", "gene", "Pearson r, non-targeting cells"])
    sd_nt = nt.std(0)
    z_rows = [[t, *[float((X[labels == t][:, j].mean() - ctrl[j]) / sd_nt[j]) for j in pidx]]
              for t in ("IFNGR2", "JAK2", "STAT1")]  # fmt: skip
    z_table = markdown_table(z_rows, ["knockout", *PATHWAY])
    edge_table = markdown_table(edge_rows, ["model", "parent", "child", "weight"])

    verdict = []
    full_nll, avg_mae = mean.loc["gaussian_full", "nll_per_gene"], mean.loc["average_shift", "shift_mae"]
    for m in METHODS:
        r = mean.loc[m]
        verdict.append(
            f"- {m}: held-out NLL {r.nll_per_gene:.4f} vs full-covariance Gaussian {full_nll:.4f} "
            f"({'beats' if r.nll_per_gene < full_nll else 'does NOT beat'} it; better in {wins_nll[m]} of "
            f"{len(folds)} folds); shift MAE {r.shift_mae:.4f} vs average-knockout {avg_mae:.4f} "
            f"({'beats' if r.shift_mae < avg_mae else 'does NOT beat'} it; better in {wins_mae[m]} of "
            f"{len(folds)} folds)."
        )
    no_shift = mean.loc["gaussian_diagonal", "shift_mae"]
    gap = {m: mean.loc[m, "shift_mae"] - no_shift for m in METHODS}
    verdict.append(
        f"- No shift at all (gaussian_diagonal) has shift MAE {no_shift:.4f}; each graph's MAE minus it: "
        + ", ".join(f"{m} {g:+.5f}" for m, g in gap.items())
        + ". A graph can only beat it where a held-out target is a modelled gene with modelled descendants."
    )
    text = (
        "# Causal graphs on the Papalexi 2021 CRISPR-KO screen\n\n"
        "Written by `benchmarks/causal_graph_papalexi.py`; every number comes from the run below.\n\n"
        f"{__doc__.split(chr(10), 2)[2].split('Run:')[0].strip()}\n\n"
        f"## Held-out knockouts, mean over {len(folds)} folds\n\n{table}\n\n" + "\n".join(verdict) + "\n\n"
        f"### Per fold\n\n{fold_table}\n\n"
        "## IFN-gamma pathway (graphs fitted on every knockout: "
        + ", ".join(f"{k} {v} edges" for k, v in n_edges.items())
        + ")\n\n"
        f"Strongest edges touching {', '.join(PATHWAY)} (weight: mean direct effect, control sds):\n\n"
        f"{edge_table}\n\nPredicted and observed shifts (log1p units):\n\n{shift_table}\n\n"
        "Where the pathway genes sit in the module graph (a gene feeding modules and fed by none is a root; a "
        "knockout can shift only its descendants):\n\n"
        f"{role_table}\n\n"
        "What the data offer a graph: the pathway genes barely co-vary within the non-targeting cells (single-cell "
        "sampling noise dominates), while the knockouts shift them by several sds (mean shift in non-targeting "
        "sds). A knockout need not lower its target's own mRNA much (the protein is what is lost), yet the graph's "
        "inputs are mRNA levels:\n\n"
        f"{corr_table}\n\n{z_table}\n\n"
        f"## Machine\n\n{machine_markdown(machine_info(('pertcausal', 'torch', 'lightning')))}\n"
    )
    print(text)
    Path(args.out).write_text(text)


if __name__ == "__main__":
    main()
