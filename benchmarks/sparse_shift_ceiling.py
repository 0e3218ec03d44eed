"""How far sVAE+ is from its own disentanglement ceiling: learned target masks against the true masks fixed.

Data: ``pc.data.simulate_sparse_shift`` of the reference's size (100 perturbations and a control x 500 cells,
30 latents, 100 genes), the default simulation of ``benchmarks/sparse_shift.py``, at each of ``--seeds``; the last
10% of the perturbations are held out of training exactly as there. Two :class:`pertcausal.models.SparseShiftVAE`
(``prior="svae+"``) are trained with identical settings (the model's default epochs, ``random_state`` = the
seed; the same initial weights):

- *learned masks*: the ordinary model, as in ``sparse_shift.py`` (then ``fit_heldout`` for the held-out
  perturbations' priors, as there, so that its target scores are the same quantity);
- *true masks fixed*: before training, the mask logits of every simulated perturbation (held-out ones
  included) are set to +10 where it truly targets the latent and -10 elsewhere (target probability
  1 - 5e-5 and 5e-5) and frozen (``requires_grad_(False)``; checked unchanged after training). Learned latent
  j is then told which perturbations shift it, exactly as true latent j; only the networks and the shifts
  are learned. Its MCC is what sVAE+ can reach on this simulation when nothing about the targets is
  left to learn.

Scores:

- MCC: mean absolute Pearson correlation of learned and true latents after Hungarian matching (all cells);
- identity |corr|: the mean over j of |corr(learned latent j, true latent j)|. With fixed masks this is the
  alignment the masks impose (and "matched to own index" counts the latents the Hungarian matching pairs
  with their own index); with learned masks the latents' order is arbitrary, so there it is only a
  chance-level reference;
- target precision/recall/F1 of the learned masks (read at 0.5) after the MCC's matching, as in
  ``sparse_shift.py`` (``pc.tl.evaluate_sparse_shift``: all perturbations, the held-out ones after
  ``fit_heldout``), and on the trained and the held-out perturbations apart;
- MCC ratio: MCC(learned) / MCC(true masks fixed).

Run: ``python benchmarks/sparse_shift_ceiling.py`` (four trainings of about 5 min each on one torch thread,
run one after another); ``--quick`` for a small check (no page unless ``--out`` is given).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import ROOT, machine_info, machine_markdown, markdown_table

FIXED_LOGIT = 10.0


def fix_true_masks(model, adata) -> tuple[np.ndarray, np.ndarray]:
    """Set the mask logits of every simulated perturbation to +-``FIXED_LOGIT`` from the truth and freeze them.

    Rows are matched by label (``model.perturbations_all`` is the order of the prior's rows). Returns the
    rows set and the logits written there, for the check after training.
    """
    import torch

    truth = adata.uns["sparse_shift_truth"]
    true = pd.DataFrame(np.asarray(truth["targets"], dtype=bool), index=list(map(str, truth["perturbations"])))
    labels = list(model.perturbations_all)
    rows = np.asarray([labels.index(p) for p in true.index])
    values = np.where(true.to_numpy(), FIXED_LOGIT, -FIXED_LOGIT).astype(np.float32)
    logits = model.module.mask_logit
    with torch.no_grad():
        logits[torch.from_numpy(rows)] = torch.from_numpy(values).to(logits.device)
    logits.requires_grad_(False)
    return rows, values


def fit_one(config: dict, epochs: int | None, seed: int, fixed: bool) -> dict:
    """Train one sVAE+ (learned or fixed true masks) and score it."""
    import torch

    import pertcausal as pc
    from pertcausal._engines.latent_metrics import mean_correlation_coefficient, target_identification

    adata = pc.data.simulate_sparse_shift(**config, random_state=seed)
    truth = adata.uns["sparse_shift_truth"]
    names = list(map(str, truth["perturbations"]))
    held = names[-max(1, len(names) // 10) :]
    work = adata.copy()
    pc.models.SparseShiftVAE.setup_anndata(work, perturbation_key="perturbation", control="control")
    model = pc.models.SparseShiftVAE(work, n_latent=config["n_latent"], prior="svae+", random_state=seed)
    if fixed:
        rows, values = fix_true_masks(model, adata)
        control_row = model.module.mask_logit[list(model.perturbations_all).index(model.control_)].detach().clone()
    t0 = time.perf_counter()
    model.train(epochs, heldout=held, progress_bar=False, random_state=seed)
    seconds = time.perf_counter() - t0
    epochs_run = len(model.history_["elbo_train"])
    z, z_true = model.get_latent_representation(), np.asarray(adata.obsm["X_true_latent"])
    mcc, assignment = mean_correlation_coefficient(z, z_true)
    d = config["n_latent"]
    identity = float(np.abs(np.diag(np.corrcoef(z.T, z_true.T)[:d, d:])).mean())
    row = {
        "model": "true masks fixed" if fixed else "learned masks",
        "seed": seed,
        "mcc": float(mcc),
        "identity_corr": identity,
        "own_index": int((assignment[:, 0] == assignment[:, 1]).sum()),
        "train_seconds": seconds,
        "epochs": epochs_run,
    }
    if fixed:
        after = model.module.mask_logit.detach().cpu()
        assert not model.module.mask_logit.requires_grad, "the fixed mask logits were unfrozen"
        assert torch.equal(after[torch.from_numpy(rows)], torch.from_numpy(values)), "the fixed mask logits moved"
        assert torch.equal(after[list(model.perturbations_all).index(model.control_)], control_row.cpu())
    else:
        t0 = time.perf_counter()
        model.fit_heldout(max_epochs=100, progress_bar=False, random_state=seed)
        row["heldout_fit_seconds"] = time.perf_counter() - t0
        scores = pc.tl.evaluate_sparse_shift(model, adata, perturbations=held, n_mc_samples=100)
        assert abs(scores["mcc"] - mcc) < 1e-9  # fit_heldout leaves the encoder as it was
        row.update({k: float(scores[k]) for k in ("precision", "recall", "f1")})
        trained = [p for p in model.perturbations if p not in held]
        for part, perts in (("trained", trained), ("heldout", held)):
            true = pd.DataFrame(np.asarray(truth["targets"], dtype=bool), index=names).loc[perts].to_numpy()
            pred = model.get_targets().loc[perts].to_numpy()
            ident = target_identification(pred, true, assignment)
            row.update({f"{k}_{part}": float(ident[k]) for k in ("precision", "recall", "f1")})
            row[f"targets_predicted_{part}"], row[f"targets_true_{part}"] = int(pred.sum()), int(true.sum())
    print({k: round(v, 3) if isinstance(v, float) else v for k, v in row.items()}, flush=True)
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="a tiny simulation and few epochs; nothing written")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    ap.add_argument("--threads", type=int, default=1, help="torch threads")
    ap.add_argument("--out", default=None, help="the page (default docs/benchmarks/sparse_shift_ceiling.md; "
                    "with --quick none unless given)")  # fmt: skip
    args = ap.parse_args()
    import torch

    torch.set_num_threads(args.threads)
    config = {"n_perturbations": 100, "n_cells_per_perturbation": 500, "n_latent": 30, "n_genes": 100}
    epochs = None  # the model's default (195 on the default simulation's 40,950 training cells)
    if args.quick:
        config, epochs = {**config, "n_perturbations": 20, "n_cells_per_perturbation": 100, "n_latent": 5}, 5
    print(f"== {config}, {epochs or 'default'} epochs, seeds {args.seeds}", flush=True)
    rows = [fit_one(config, epochs, seed, fixed) for seed in args.seeds for fixed in (False, True)]
    res = pd.DataFrame(rows)
    n_held = max(1, config["n_perturbations"] // 10)
    n_trained = config["n_perturbations"] - n_held
    ratios = {}
    for seed, part in res.groupby("seed"):
        by = part.set_index("model")
        ratios[seed] = by.loc["learned masks", "mcc"] / by.loc["true masks fixed", "mcc"]
    res["mcc_ratio"] = [ratios[s] if m == "learned masks" else float("nan") for s, m in zip(res.seed, res.model)]

    def cell(v: object) -> object:
        return "" if isinstance(v, float) and v != v else v

    table = markdown_table(
        [[r.seed, r.model, r.mcc, cell(r.mcc_ratio), r.identity_corr, r.own_index, cell(r.precision),
          cell(r.recall), cell(r.f1), cell(r.f1_trained), round(r.train_seconds), r.epochs]
         for r in res.itertuples()],
        ["seed", "model", "MCC", "MCC ratio (learned / fixed)", "identity abs corr", "matched to own index",
         "target precision", "target recall", "target F1", "target F1 (trained)", "training (s)", "epochs"],
    )  # fmt: skip
    learned = res[res.model == "learned masks"]
    detail = markdown_table(
        [[r.seed, part, getattr(r, f"precision_{key}"), getattr(r, f"recall_{key}"), getattr(r, f"f1_{key}"),
          int(getattr(r, f"targets_predicted_{key}")), int(getattr(r, f"targets_true_{key}"))]
         for r in learned.itertuples()
         for part, key in ((f"trained ({n_trained})", "trained"), (f"held out ({n_held}; fit_heldout)", "heldout"))],
        ["seed", "perturbations", "target precision", "target recall", "target F1", "targets predicted",
         "true targets"],
    )  # fmt: skip
    print(table, flush=True)
    print(detail, flush=True)
    fixed = res[res.model == "true masks fixed"].set_index("seed")
    summary = [
        f"- Seed {s}: MCC {fixed.loc[s, 'mcc']:.3f} with the true masks fixed, {r.mcc:.3f} with learned masks "
        f"({100 * r.mcc_ratio:.1f}% of it); learned target F1 {r.f1:.3f} over all perturbations, "
        f"{r.f1_trained:.3f} over the trained ones, {r.f1_heldout:.3f} over the held-out ones; "
        f"fit_heldout {r.heldout_fit_seconds:.0f} s."
        for s, r in learned.set_index("seed").iterrows()
    ]

    def f1s(values: pd.Series) -> str:
        return " / ".join(f"{v:.3f}" for v in values) + f" (seed {' / '.join(map(str, learned.seed))})"

    lo, hi = learned.mcc_ratio.min(), learned.mcc_ratio.max()
    close = lo >= 0.9
    ceilings = " / ".join(f"{m:.2f} (seed {s})" for s, m in fixed.mcc.items())
    reading = (
        f"With the true target masks given from the start and never changed, the MCC is {ceilings}: this is "
        "what sVAE+ reaches on this simulation (its networks, likelihood and epochs) when nothing about the "
        f"targets is left to learn. The learned masks reach {100 * lo:.1f}-{100 * hi:.1f}% of it. "
        + (
            "So the latents are recovered about as well as this model can recover them, and the target-F1 gap "
            "comes from which masks get called (spurious or missed targets on latents that are otherwise "
            "recovered about as well as they can be), not from failed disentanglement."
            if close
            else "The learned masks fall well short of the ceiling, so part of the target-F1 gap comes from "
            "latents that are recovered worse than they could be."
        )
        + f" Over all perturbations (the F1 of `sparse_shift.py`) the learned masks' F1 is {f1s(learned.f1)}; "
        f"over the {n_trained} trained perturbations alone it is {f1s(learned.f1_trained)}, over the {n_held} "
        f"held-out ones (masks fitted afterwards by `fit_heldout`, networks frozen) {f1s(learned.f1_heldout)}."
        + (
            " Read against the 0.8 aimed at, the masks learned in training meet it and the shortfall of the "
            "overall F1 is the held-out perturbations' masks."
            if (learned.f1_trained >= 0.8).all() and (learned.f1 < 0.8).all()
            else ""
        )
        + " See `sparse_shift.md` for the comparison with the other priors and the F1 at other read-out thresholds."
    )
    text = (
        "# Sparse mechanism shift VAE: disentanglement with the true masks fixed\n\n"
        "Written by `benchmarks/sparse_shift_ceiling.py`; every number comes from the run below.\n\n"
        f"{__doc__.split(chr(10), 2)[2].split('Run:')[0].strip()}\n\n"
        f"## Results\n\n{config['n_perturbations']} perturbations and a control x "
        f"{config['n_cells_per_perturbation']} cells, {config['n_latent']} latents, {config['n_genes']} genes; "
        f"{int(res.epochs.iloc[0])} epochs{'' if epochs else ' (the model default)'}; {args.threads} torch "
        "thread(s), the trainings one after another."
        f"\n\n{table}\n\n" + "\n".join(summary) + "\n\n"
        f"The learned masks' target scores on the trained and on the held-out perturbations apart (same matching):"
        f"\n\n{detail}\n\n"
        f"## Reading\n\n{reading}\n\n"
        f"## Machine\n\n{machine_markdown(machine_info(('pertcausal', 'torch', 'scvi-tools', 'lightning')))}\n"
    )
    if args.out or not args.quick:
        Path(args.out or ROOT / "docs" / "benchmarks" / "sparse_shift_ceiling.md").write_text(text)


if __name__ == "__main__":
    main()
