"""Benchmark: impute a held-out context's IFN-beta response in the Kang et al. (2018) PBMC data.

Contexts are cell type x donor (5 x 2 = 10), the perturbation is IFN-beta (``stim``). In turn, the
stimulated response of each context is hidden and predicted from everything else: all control cells
and the stimulated cells of the other nine contexts. Every pertcausal method sees this through
:func:`pertcausal.pp.signatures` (``holdout="context"`` in :func:`pertcausal.tl.evaluate_imputation`);
pertpy's scGen (``pertpy.tl.Scgen``) is trained on the same cells (logcounts as X) and predicts the
stimulated cells from the control cells of the held-out context. Its predicted effect,
mean(predicted stim) - mean(control), is on the same log scale as the signatures, and it is scored
with the same metrics (:func:`pertcausal._engines.metrics.profile_metrics`, top-50 genes).

Run from the repository root::

    python benchmarks/impute_kang.py            # full run, writes docs/benchmarks/impute_kang.md
    python benchmarks/impute_kang.py --quick    # smoke run: 2 contexts, few scGen epochs, no file

The data are read from ``../shared/data/kang2018-ifnb-muscat`` beside the repository; when they are
absent the script says so and exits with status 0 without writing anything.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import sys
import time
import warnings
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import ROOT, SHARED_DATA, machine_info, machine_markdown, markdown_table

KANG = SHARED_DATA / "kang2018-ifnb-muscat" / "kang2018_ifnb_muscat_subset.h5ad"
OUTPUT = ROOT / "docs" / "benchmarks" / "impute_kang.md"
TOP_K = 50

# label -> options of pertcausal.tl.evaluate_imputation (``method`` defaults to the label)
PERTCAUSAL_METHODS: dict[str, dict] = {
    "ntk": {},
    "ntk_depth2": {"method": "ntk", "depth": 2},
    "ntk_depth3": {"method": "ntk", "depth": 3},
    "synthetic_interventions": {},  # donor="auto"
    "si_action": {"method": "synthetic_interventions", "donor": "action"},
    "si_context": {"method": "synthetic_interventions", "donor": "context"},
    "additive": {},
    "mean_over_contexts": {},
    "mean_over_perturbations": {},
    "soft_impute": {},
}
DESCRIPTION = {
    "ntk": "NTK matrix completion, depth 1 (default)",
    "ntk_depth2": "NTK, depth 2",
    "ntk_depth3": "NTK, depth 3",
    "synthetic_interventions": 'SI, donor="auto" (default)',
    "si_action": 'SI-Action (donor="action")',
    "si_context": 'SI-Context (donor="context")',
    "additive": "additive (two-way) baseline",
    "mean_over_contexts": "mean effect over other contexts",
    "mean_over_perturbations": "mean effect over other perturbations",
    "soft_impute": "soft-impute (nuclear norm)",
    "scgen": "pertpy scGen (latent arithmetic)",
}
METRICS = ["pearson", "r2", "cosine", "pearson_top_k", "mse", "norm_ratio"]


def load_cells(path: Path):
    import anndata as ad

    cells = ad.read_h5ad(path)
    cells.obs["context"] = (cells.obs["cluster_id"].astype(str) + "_" + cells.obs["donor"].astype(str)).astype(
        "category"
    )
    return cells


def run_pertcausal(sig, *, seed: int) -> pd.DataFrame:
    import pertcausal as pc

    return pc.tl.evaluate_imputation(
        sig, methods=PERTCAUSAL_METHODS, holdout="context", n_folds=sig.obs["context"].nunique(),
        seed=seed, top_k=TOP_K, device="cpu", progress_bar=False,
    )


@contextlib.contextmanager
def _seeded_default_rng(seed: int) -> Iterator[None]:
    """Make unseeded ``np.random.default_rng()`` calls reproducible.

    ``Scgen.predict`` (and its cell-type balancer) subsample cells with ``np.random.default_rng()``
    and no seed; this hands them generators from a fixed seed sequence instead.
    """
    original = np.random.default_rng
    seq = np.random.SeedSequence(seed)

    def default_rng(seed=None):  # mirrors numpy's signature
        return original(seq.spawn(1)[0] if seed is None else seed)

    np.random.default_rng = default_rng
    try:
        yield
    finally:
        np.random.default_rng = original


def _quiet_training_logs() -> None:
    import scvi

    scvi.settings.verbosity = logging.ERROR
    for name in ("lightning", "lightning.pytorch", "lightning.fabric", "lightning_fabric", "pytorch_lightning"):
        logging.getLogger(name).setLevel(logging.ERROR)
    warnings.filterwarnings("ignore")


def run_scgen(cells, sig, contexts: list[str], *, max_epochs: int, patience: int, batch_size: int,
              seed: int) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Train scGen once per held-out context and score its predicted effect.

    Returns the per-context metrics (same columns as ``evaluate_imputation``) and a training log.
    """
    import anndata as ad
    import pertpy as pt
    import scipy.sparse as sp
    import scvi

    from pertcausal._engines.metrics import profile_metrics

    _quiet_training_logs()
    x = cells.layers["logcounts"]
    x = x.toarray() if sp.issparse(x) else np.asarray(x)
    base = ad.AnnData(
        X=x.astype(np.float32), obs=cells.obs[["group_id", "context"]].copy(), var=pd.DataFrame(index=cells.var_names)
    )
    rows, log = [], []
    for c in contexts:
        truth = sig[f"stim|{c}"].X.astype(np.float64)
        ctrl_mean = sig.uns["control_mean"].loc[c].to_numpy(np.float64)
        t0 = time.perf_counter()
        hidden = (base.obs["context"] == c).to_numpy() & (base.obs["group_id"] == "stim").to_numpy()
        train = base[~hidden].copy()
        scvi.settings.seed = seed  # per fold, so a context's result does not depend on the order
        pt.tl.Scgen.setup_anndata(train, batch_key="group_id", labels_key="context")
        model = pt.tl.Scgen(train)
        model.train(
            max_epochs=max_epochs, batch_size=batch_size, early_stopping=True,
            early_stopping_monitor="reconstruction_loss_validation", early_stopping_patience=patience,
            enable_progress_bar=False,
        )
        with _seeded_default_rng(seed):
            pred_cells, _ = model.predict(ctrl_key="ctrl", stim_key="stim", celltype_to_predict=c)
        seconds = time.perf_counter() - t0
        effect = np.asarray(pred_cells.X, dtype=np.float64).mean(0) - ctrl_mean
        met = profile_metrics(truth, effect[None, :], top_k=TOP_K)
        rows.append({"method": "scgen", "perturbation": "stim", "context": c,
                     **{k: float(v[0]) for k, v in met.items()}, "reliability": np.nan,
                     "seconds_per_pair": seconds, "_pred": effect, "_truth": truth[0]})
        hist = model.history
        val = hist["reconstruction_loss_validation"].to_numpy(dtype=float).ravel()
        log.append({"context": c, "epochs": len(hist["reconstruction_loss_train"]),
                    "best_epoch": int(np.argmin(val)) + 1, "seconds": seconds})
        print(f"  scGen {c}: {log[-1]['epochs']} epochs, {seconds:.1f} s, top-50 Pearson "
              f"{met['pearson_top_k'][0]:.3f}", flush=True)
    return pd.DataFrame(rows), pd.DataFrame(log)


def combine(pc_res: pd.DataFrame, scgen_res: pd.DataFrame | None) -> pd.DataFrame:
    from pertcausal._engines.metrics import pooled_pearson

    frames = [pc_res.assign(method=pc_res["method"].astype(str))]
    if scgen_res is not None and len(scgen_res):
        fold_of = pc_res.drop_duplicates("context").set_index("context")["fold"]
        sc = scgen_res.copy()
        sc["fold"] = sc["context"].map(fold_of).astype(int)
        sc["pooled_pearson"] = pooled_pearson(np.vstack(sc["_truth"]), np.vstack(sc["_pred"]))
        frames.append(sc.drop(columns=["_truth", "_pred"])[pc_res.columns])
    out = pd.concat(frames, ignore_index=True)
    order = list(PERTCAUSAL_METHODS) + (["scgen"] if len(frames) > 1 else [])
    out["method"] = pd.Categorical(out["method"], categories=order)
    return out


def identical_groups(res: pd.DataFrame) -> list[list[str]]:
    """Methods whose metrics agree in every context (they made the same predictions)."""
    wide = res.pivot_table(index="context", columns="method", values=["pearson", "mse"], observed=True)
    groups: list[list[str]] = []
    for m in res["method"].cat.categories:
        if m not in wide["pearson"].columns:
            continue
        for g in groups:
            if all(np.allclose(wide[v][m], wide[v][g[0]], rtol=1e-6, atol=1e-9) for v in ("pearson", "mse")):
                g.append(m)
                break
        else:
            groups.append([m])
    return [g for g in groups if len(g) > 1]


def summary_table(res: pd.DataFrame) -> tuple[pd.DataFrame, str]:
    import pertcausal as pc

    summ = pc.tl.summarize_imputation(res)
    summ["seconds"] = res.groupby("method", observed=True)["seconds_per_pair"].sum()
    rows = [
        [f"`{m}`", DESCRIPTION.get(m, ""), r.pearson, r.r2, r.cosine, r.pearson_top_k, r.pooled_pearson,
         int(r.n_pairs), f"{r.seconds:.3g}"]
        for m, r in summ.iterrows()
    ]
    header = ["method", "what", "mean Pearson", "mean R2", "mean cosine", f"mean Pearson top-{TOP_K}",
              "pooled Pearson", "contexts", "seconds (all folds)"]
    return summ, markdown_table(rows, header)


def per_context_table(res: pd.DataFrame, methods: list[str], metric: str) -> str:
    wide = res.pivot_table(index="context", columns="method", values=metric, observed=True)[methods]
    rows = [[c, *[float(wide.loc[c, m]) for m in methods]] for c in wide.index]
    rows.append(["**mean**", *[float(wide[m].mean()) for m in methods]])
    return markdown_table(rows, ["held-out context", *[f"`{m}`" for m in methods]])


def verdict(summ: pd.DataFrame, res: pd.DataFrame) -> list[str]:
    """Pairwise comparisons on mean top-k Pearson, over the contexts both methods were run on."""
    col = "pearson_top_k"
    wide = res.pivot_table(index="context", columns="method", values=col, observed=True)

    def compare(m: str, ref: str, ref_name: str) -> str:
        both = wide[[m, ref]].dropna()
        a, b = both[m].mean(), both[ref].mean()
        wins = int((both[m] > both[ref]).sum())
        word = "beats" if a > b else "does not beat"
        return (f"- `{m}` {word} {ref_name} on mean top-{TOP_K} Pearson: {a:.3f} vs {b:.3f} "
                f"(better in {wins} of {len(both)} held-out contexts).")

    lines = [compare(m, "additive", "the additive baseline")
             for m in ("ntk", "synthetic_interventions", "si_context", "si_action", "scgen") if m in summ.index]
    if "scgen" in summ.index:
        lines += [compare(m, "scgen", "scGen") for m in ("synthetic_interventions", "ntk")]
    best = summ.index[0]
    lines.append(f"- Best on mean top-{TOP_K} Pearson: `{best}` ({summ.loc[best, col]:.3f}).")
    return lines


def write_markdown(path: Path, *, summ_md: str, per_ctx_md: str, per_ctx_all_md: str, verdict_lines: list[str],
                   groups: list[list[str]], scgen_cfg: dict, scgen_log: pd.DataFrame | None, info: dict,
                   command: str, total_seconds: float, sig) -> None:
    n_stim = sig.obs.set_index("context")["n_cells"]
    ctrl_n = sig.uns["control_n_cells"]
    contexts_md = markdown_table(
        [[c, int(ctrl_n[c]), int(n_stim[c])] for c in sig.obs["context"].cat.categories],
        ["context (cell type_donor)", "control cells", "stim cells"],
    )
    same = "; ".join(", ".join(f"`{m}`" for m in g) for g in groups)
    if scgen_log is not None and len(scgen_log):
        scgen_md = (
            f"- model: `pertpy.tl.Scgen` (pertpy {info.get('pertpy')}, JAX/flax module trained through "
            f"scvi-tools {info.get('scvi-tools')}'s `JaxTrainingMixin`), default architecture "
            "(2 layers of 800 hidden units, 100 latent dimensions, KL weight 5e-5)\n"
            "- input: `layers['logcounts']` as `X` (dense float32); `batch_key='group_id'`, "
            "`labels_key='context'` (the 10 cell type x donor contexts play scGen's cell types)\n"
            f"- training: `max_epochs={scgen_cfg['max_epochs']}`, `batch_size={scgen_cfg['batch_size']}`, "
            f"early stopping on `reconstruction_loss_validation` with patience {scgen_cfg['patience']} "
            "(scvi-tools' default 90/10 train/validation split); prediction uses the weights at the end of training "
            "(no restore of the best epoch). The ELBO is not a useful stopping criterion "
            "here: the loss weights the KL term by 5e-5, so the unweighted ELBO rises while the model improves.\n"
            f"- seed: `scvi.settings.seed = {scgen_cfg['seed']}` before each fold; `Scgen.predict` subsamples "
            "cells with an unseeded `np.random.default_rng()`, which the script seeds from the same value.\n"
            "- prediction: `model.predict(ctrl_key='ctrl', stim_key='stim', celltype_to_predict=c)`; predicted "
            "effect = mean of the predicted stim cells minus the mean logcounts of c's control cells.\n"
            f"- epochs run per fold: {', '.join(str(e) for e in scgen_log['epochs'])} "
            f"(best validation epoch: {', '.join(str(e) for e in scgen_log['best_epoch'])})\n"
            f"- time: {scgen_log['seconds'].sum():.0f} s for {len(scgen_log)} folds "
            f"({scgen_log['seconds'].mean():.0f} s per fold, training and prediction)"
        )
    else:
        scgen_md = "scGen was not run (`--no-scgen`, or pertpy is not installed)."
    text = f"""# Kang et al. (2018) IFN-β: imputing a held-out context's response

Written by `benchmarks/impute_kang.py` (`{command}`); every number below comes from that run
({total_seconds:.0f} s in total).

**Task.** 1,556 PBMCs (Kang et al. 2018, the muscat subset in `../shared/data/kang2018-ifnb-muscat`),
control or stimulated with IFN-β for 6 h. A context is a cell type × donor pair (5 × 2 = 10
contexts); the perturbation is IFN-β. In each of 10 folds one context's stimulated cells are hidden
and its response is predicted from everything else: all control cells (the held-out context's
included) and the stimulated cells of the other nine contexts.

**Effects and metrics.** An effect is the mean `logcounts` of the stimulated cells minus the mean
of the control cells of the same context (`pc.pp.signatures(..., layer="logcounts")`, 1,267 genes).
Every method is scored against the observed effect of the held-out context with
`pertcausal._engines.metrics.profile_metrics`: Pearson and cosine across all genes, R² (1 − SSE / SS
of the true effect about its mean), Pearson on the {TOP_K} genes with the largest absolute true effect
(top-{TOP_K}), and the pooled Pearson over all held-out entries of a method. Means are over the 10
held-out contexts. Seconds are summed over the folds (fit and prediction).

**Methods.** The pertcausal methods through `pc.tl.evaluate_imputation(sig, holdout="context",
n_folds=10)`; pertpy's scGen trained from scratch in each fold on the same cells.

{contexts_md}

## scGen settings

{scgen_md}

## Results (means over the held-out contexts, sorted by top-{TOP_K} Pearson)

{summ_md}

Methods that made the same prediction in every context: {same or "none"}. With a single
perturbation the grid has one row, so the additive model, the mean over contexts and soft-impute all
reduce to the mean effect of the other contexts, and the mean over perturbations, which has no other
perturbation to average, falls back to the same mean. SI-Action's only possible donor action is the
control; validation on training pairs (`use_control="auto"`) finds that regressing stimulated on
control expression predicts worse than the mean, so it falls back to the same mean too. SI-Context
(what `donor="auto"` picks here) uses the other contexts as donors.

## Per held-out context: Pearson on the top-{TOP_K} genes

{per_ctx_md}

## Per held-out context: Pearson on all genes

{per_ctx_all_md}

## Verdict

{chr(10).join(verdict_lines)}

## Machine

{machine_markdown(info)}
"""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true",
                        help="smoke run: scGen on 2 contexts with few epochs; writes no file unless --output")
    parser.add_argument("--no-scgen", action="store_true", help="skip pertpy's scGen")
    parser.add_argument("--max-epochs", type=int, default=None, help="scGen epochs (default 60, 3 with --quick)")
    parser.add_argument("--patience", type=int, default=10, help="scGen early-stopping patience (epochs)")
    parser.add_argument("--batch-size", type=int, default=32, help="scGen minibatch size")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--data", type=Path, default=KANG, help="the Kang h5ad file")
    parser.add_argument("--output", type=Path, default=None,
                        help=f"markdown report (default {OUTPUT.relative_to(ROOT)}; none with --quick)")
    args = parser.parse_args(argv)
    if not args.data.exists():
        print(f"skipped: Kang data not found at {args.data} (expected ../shared/data beside the repository)")
        return 0
    max_epochs = args.max_epochs if args.max_epochs is not None else (3 if args.quick else 60)
    output = args.output if args.output is not None else (None if args.quick else OUTPUT)

    import pertcausal as pc

    t_start = time.perf_counter()
    load_start = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    cells = load_cells(args.data)
    sig = pc.pp.signatures(cells, perturbation_key="group_id", context_key="context", control="ctrl",
                           layer="logcounts")
    contexts = list(sig.obs["context"].cat.categories)
    print(f"{cells.n_obs} cells, {sig.n_vars} genes, {len(contexts)} contexts; pertcausal methods ...", flush=True)
    pc_res = run_pertcausal(sig, seed=args.seed)

    scgen_res = scgen_log = None
    if not args.no_scgen:
        try:
            import pertpy  # noqa: F401
        except ImportError:
            print("pertpy is not installed (pip install 'pertcausal[pertpy]'); scGen skipped")
        else:
            todo = contexts[:2] if args.quick else contexts
            print(f"scGen on {len(todo)} context(s), max_epochs={max_epochs} ...", flush=True)
            scgen_res, scgen_log = run_scgen(cells, sig, todo, max_epochs=max_epochs, patience=args.patience,
                                             batch_size=args.batch_size, seed=args.seed)
    res = combine(pc_res, scgen_res)
    summ, summ_md = summary_table(res)
    best = list(summ.index[:3])
    show = list(dict.fromkeys(best + ["ntk", "synthetic_interventions", "additive"]
                              + (["scgen"] if "scgen" in summ.index else [])))
    per_ctx_md = per_context_table(res, show, "pearson_top_k")
    per_ctx_all_md = per_context_table(res, show, "pearson")
    lines = verdict(summ, res)
    groups = identical_groups(res)
    total = time.perf_counter() - t_start

    print("\n" + summ_md + "\n")
    print(f"Per held-out context, Pearson top-{TOP_K}:\n\n" + per_ctx_md + "\n")
    print("\n".join(lines))
    if groups:
        print("identical predictions: " + "; ".join(", ".join(g) for g in groups))
    print(f"total {total:.0f} s")
    if output is not None:
        info = machine_info(("pertcausal", "numpy", "torch", "jax", "scvi-tools", "pertpy", "anndata"))
        info["1-min load average at the start"] = f"{load_start:.2f}"
        command = "python benchmarks/impute_kang.py" + (" " + " ".join(argv if argv is not None else sys.argv[1:])
                                                         ).rstrip()
        write_markdown(
            output, summ_md=summ_md, per_ctx_md=per_ctx_md, per_ctx_all_md=per_ctx_all_md, verdict_lines=lines,
            groups=groups, scgen_cfg={"max_epochs": max_epochs, "patience": args.patience,
                                      "batch_size": args.batch_size, "seed": args.seed},
            scgen_log=scgen_log, info=info, command=command.strip(), total_seconds=total, sig=sig,
        )
        print(f"wrote {output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
