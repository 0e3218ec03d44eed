"""Benchmark: transport of drug responses across cell lines in CMap L1000 (3 drugs x 65 lines).

272 level-5 MODZ signatures (vemurafenib, atorvastatin, venlafaxine; 978 landmark genes) are pooled
per (drug, cell line) over doses and times (``pc.pp.signatures(..., control=None)``: the input already
holds effects). Every observed (drug, line) pair is held out in turn (leave-one-pair-out: the drug's
response in that line predicted from its responses in the other lines and the other drugs' responses
in all lines). The same metrics as the other imputation benchmarks (top-50 DE-gene Pearson, pooled
Pearson, mean R2, mean cosine, reliability informativeness); vemurafenib in the BRAF-V600E lines, whose
MAPK-pathway response a mean over lines cannot reproduce by construction, is reported on its own.

Run from the repository root::

    python benchmarks/impute_l1000.py           # writes docs/benchmarks/impute_l1000.md
    python benchmarks/impute_l1000.py --quick   # 3 methods, no file
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import ROOT, SHARED_DATA, imputation_summary, machine_info, machine_markdown, markdown_table

DATA = SHARED_DATA / "l1000-cmapr-3drugs-65lines" / "l1000_cmapr_modz_n272x978.h5ad"
OUTPUT = ROOT / "docs" / "benchmarks" / "impute_l1000.md"
TOP_K = 50
BRAF_V600E = ["A375", "HT29", "SKMEL28", "RKO", "SNUC5", "SKMEL1", "MDST8"]
METHODS: dict[str, dict] = {
    "ntk": {},
    "ntk_nugget0.5": {"method": "ntk", "nugget": 0.5},
    "synthetic_interventions": {},
    "nearest_context": {},
    "additive": {},
    "mean_over_contexts": {},
    "mean_over_perturbations": {},
    "soft_impute": {},
}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="3 methods; write nothing")
    args = ap.parse_args(argv)
    if not DATA.exists():
        print(f"L1000 data not found at {DATA}; nothing to do")
        return 0
    import anndata as ad

    import pertcausal as pc

    raw = ad.read_h5ad(DATA)
    sig = pc.pp.signatures(raw, perturbation_key="perturbation", context_key="context", control=None)
    methods = {k: METHODS[k] for k in ("ntk", "nearest_context", "mean_over_contexts")} if args.quick else METHODS
    t0 = time.perf_counter()
    res = pc.tl.evaluate_imputation(
        sig, methods=methods, holdout="pair", n_folds=sig.n_obs, top_k=TOP_K, progress_bar=False, device="cpu"
    )
    seconds = time.perf_counter() - t0
    s_all, md_all = imputation_summary(res, top_k=TOP_K)
    vem = res[res["perturbation"] == "vemurafenib"]
    braf = vem[vem["context"].isin(BRAF_V600E)]
    s_braf, md_braf = imputation_summary(braf, pooled=False, top_k=TOP_K)
    _, md_other = imputation_summary(vem[~vem["context"].isin(BRAF_V600E)], pooled=False, top_k=TOP_K)
    per_line = braf.pivot_table(index="context", columns="method", values="pearson_top_k", observed=True)
    per_line = per_line[[m for m in s_all.index if m in per_line.columns]]
    md_lines = markdown_table(
        [[c, *[float(v) for v in per_line.loc[c]]] for c in per_line.index], ["BRAF-V600E line", *per_line.columns]
    )
    n_pairs = sig.n_obs
    print(
        f"{n_pairs} (drug, line) pairs of {sig.obs['perturbation'].nunique()} drugs x "
        f"{sig.obs['context'].nunique()} lines; leave-one-pair-out took {seconds:.0f} s\n"
    )
    print(f"all pairs\n\n{md_all}\n\nvemurafenib, BRAF-V600E lines ({braf['context'].nunique()} lines)\n\n{md_braf}")
    print(f"\nvemurafenib, other lines\n\n{md_other}\n\nper BRAF-V600E line, top-{TOP_K} Pearson\n\n{md_lines}")
    best = s_braf.index[0]
    line = (
        f"On vemurafenib in the BRAF-V600E lines the best method is `{best}` (top-{TOP_K} Pearson "
        f"{s_braf.loc[best, 'pearson_top_k']:.3f}); mean over lines gets "
        f"{s_braf.loc['mean_over_contexts', 'pearson_top_k']:.3f}."
    )
    print("\n" + line)
    if args.quick:
        return 0
    counts = sig.obs.groupby("perturbation", observed=True).size()
    text = f"""# Transport across cell lines: CMap L1000, 3 drugs x 65 lines

Written by `benchmarks/impute_l1000.py`; every number below comes from the run described at the end.

**Data.** CMap/LINCS L1000 level-5 MODZ signatures shipped with cmapR (272 signatures, 978 landmark
genes). Signatures of one drug in one line (different doses and times) are averaged:
`pc.pp.signatures(adata, perturbation_key="perturbation", context_key="context", control=None)`, giving
{n_pairs} observed (drug, line) pairs ({", ".join(f"{k} {v}" for k, v in counts.items())}) of
{sig.obs["context"].nunique()} lines. No control is subtracted: MODZ values are already effects.

**Split.** Leave one pair out: each observed (drug, line) response is hidden and predicted from
everything else ({seconds:.0f} s for all methods and pairs). With 3 drugs the perturbation axis is
thin: a line's other drugs are the only donors of synthetic interventions' action axis.

**Metrics** as in the TG-GATEs benchmark (top-{TOP_K} DE genes). The reliability columns are the
Spearman correlation between the method's reliability and the relative squared error (negative:
informative) and the relative error of the more reliable half versus the rest.

## All pairs

{md_all}

## Vemurafenib in BRAF-V600E lines ({", ".join(BRAF_V600E)})

A mean over lines averages the strong MAPK response of these lines with the near-null response
of the others, so it cannot reproduce it.

{md_braf}

Per line, top-{TOP_K} DE Pearson:

{md_lines}

{line}

## Vemurafenib in the other lines

{md_other}

## Machine

{machine_markdown(machine_info(("pertcausal", "numpy", "torch", "anndata")))}
"""
    OUTPUT.write_text(text)
    print(f"\nwrote {OUTPUT.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
