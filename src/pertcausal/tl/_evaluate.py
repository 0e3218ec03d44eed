"""``tl.evaluate_imputation``: cross-validated accuracy of imputation methods on effects."""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import pandas as pd

from .._engines import METHODS
from .._engines.metrics import pooled_pearson, profile_metrics, reliability_informativeness
from .._utils._progress import track
from .._utils._validate import check_choice
from ._grid_io import TORCH_METHODS, check_method, grid_from_signatures

if TYPE_CHECKING:
    from anndata import AnnData

DEFAULT_METHODS = (
    "ntk",
    "synthetic_interventions",
    "nearest_context",
    "additive",
    "mean_over_contexts",
    "mean_over_perturbations",
    "soft_impute",
)


def _folds(codes_p: np.ndarray, codes_c: np.ndarray, holdout: str, n_folds: int, seed: int) -> np.ndarray:
    """Fold id per observed pair. ``pair`` is stratified by context (every context's pairs are spread
    over the folds, as in the NTK reference); ``context``/``perturbation`` hold out whole groups."""
    rng = np.random.default_rng(seed)
    fold = np.empty(len(codes_p), dtype=np.int64)
    if holdout == "pair" and n_folds >= len(codes_p):  # leave one pair out
        return np.arange(len(codes_p))
    if holdout == "pair":
        for c in np.unique(codes_c):
            rows = np.flatnonzero(codes_c == c)
            rows = rows[rng.permutation(len(rows))]
            offset = rng.integers(n_folds)
            fold[rows] = (np.arange(len(rows)) + offset) % n_folds
        return fold
    codes = codes_c if holdout == "context" else codes_p
    groups = np.unique(codes)
    groups = groups[rng.permutation(len(groups))]
    group_fold = np.empty(codes.max() + 1, dtype=np.int64)
    group_fold[groups] = np.arange(len(groups)) % n_folds
    return group_fold[codes]


def evaluate_imputation(
    signatures: AnnData,
    *,
    methods: Sequence[str] | Mapping[str, Mapping[str, Any]] = DEFAULT_METHODS,
    holdout: Literal["pair", "context", "perturbation"] = "pair",
    n_folds: int = 10,
    seed: int = 0,
    top_k: int = 50,
    device: str = "auto",
    perturbation_features: pd.DataFrame | np.ndarray | None = None,
    context_features: pd.DataFrame | np.ndarray | None = None,
    progress_bar: bool = True,
) -> pd.DataFrame:
    """Cross-validate imputation methods by holding out observed pairs and predicting them.

    Parameters
    ----------
    signatures
        Signatures AnnData from :func:`pertcausal.pp.signatures` (effects in ``X``).
    methods
        Method names, or a mapping ``label -> {"method": name, **engine options}`` to compare
        variants of one method side by side.
    holdout
        ``"pair"``: folds of pairs stratified by context; ``"context"``: all pairs of a group of
        contexts are held out together; ``"perturbation"``: likewise for perturbations.
    n_folds
        Number of folds (capped by the number of pairs, contexts or perturbations held out); with
        ``holdout="pair"``, ``n_folds`` at least the number of pairs holds out one pair at a time.
    seed
        Seed of the fold assignment and of the methods' randomised parts.
    top_k
        Number of top differentially expressed genes (largest absolute true effect of the pair)
        for ``pearson_top_k``.
    device
        Device for torch-backed methods.
    perturbation_features, context_features
        Optional covariates per perturbation / context (DataFrame indexed by label, or array in
        category order), as in :func:`pertcausal.tl.impute`: e.g. dose and time of each context, so
        that a context held out entirely can still be placed among the others.
    progress_bar
        Show a progress bar over folds.

    Returns
    -------
    Tidy DataFrame, one row per (method, held-out pair): ``method``, ``fold``, ``perturbation``,
    ``context``, ``pearson``, ``r2``, ``cosine``, ``pearson_top_k``, ``mse``, ``rel_error``,
    ``norm_ratio``, ``reliability`` (NaN where the method gives none), ``seconds_per_pair`` and
    ``pooled_pearson`` (Pearson r over all held-out entries of that method, repeated per row).
    All metrics compare effects (perturbed minus control), never raw levels.

    Examples
    --------
    >>> import pertcausal as pc
    >>> sig = pc.data.simulate_effects(n_perturbations=20, n_contexts=5, n_genes=30, seed=0)
    >>> res = pc.tl.evaluate_imputation(
    ...     sig, methods=["additive", "mean_over_contexts"], n_folds=3, progress_bar=False
    ... )
    >>> sorted(res["method"].unique())
    ['additive', 'mean_over_contexts']
    """
    check_choice(holdout, ("pair", "context", "perturbation"), argname="holdout")
    if n_folds < 2:
        raise ValueError(f"n_folds must be >= 2, got {n_folds}")
    specs: dict[str, dict[str, Any]] = (
        {label: dict(spec) for label, spec in methods.items()}
        if isinstance(methods, Mapping)
        else {m: {} for m in methods}
    )
    if not specs:
        raise ValueError("methods is empty; name at least one method")
    for label, spec in specs.items():
        spec.setdefault("method", label)
        check_method(spec["method"], device)
    grid, perts, ctxs = grid_from_signatures(
        signatures, perturbation_features=perturbation_features, context_features=context_features
    )
    fold = _folds(grid.pert, grid.ctx, holdout, n_folds, seed)
    frames = []
    truths: dict[str, list[np.ndarray]] = {label: [] for label in specs}
    preds: dict[str, list[np.ndarray]] = {label: [] for label in specs}
    for f in track(np.unique(fold), enabled=progress_bar, description=f"evaluate ({holdout} hold-out)"):
        test = np.flatnonzero(fold == f)
        train = np.flatnonzero(fold != f)
        if len(train) == 0 or len(test) == 0:
            continue
        sub = grid.subset(train)
        truth = grid.y[test]
        for label, spec in specs.items():
            kwargs = {k: v for k, v in spec.items() if k != "method"}
            kwargs.setdefault("seed", seed)
            if spec["method"] in TORCH_METHODS:
                kwargs.setdefault("device", device)
            t0 = time.perf_counter()
            pred = METHODS[spec["method"]](sub, grid.pert[test], grid.ctx[test], **kwargs)
            dt = (time.perf_counter() - t0) / len(test)
            met = profile_metrics(truth, pred.values, top_k=top_k)
            truths[label].append(truth)
            preds[label].append(pred.values)
            frames.append(
                pd.DataFrame(
                    {
                        "method": label,
                        "fold": int(f),
                        "perturbation": perts[grid.pert[test]],
                        "context": ctxs[grid.ctx[test]],
                        **met,
                        "reliability": pred.reliability if pred.reliability is not None else np.nan,
                        "seconds_per_pair": dt,
                    }
                )
            )
    if not frames:
        raise ValueError(f"no fold had both training and held-out pairs with holdout={holdout!r}")
    out = pd.concat(frames, ignore_index=True)
    pooled = {
        label: pooled_pearson(np.vstack(truths[label]), np.vstack(preds[label])) for label in specs if truths[label]
    }
    out["pooled_pearson"] = out["method"].map(pooled)
    out["method"] = pd.Categorical(out["method"], categories=list(specs))
    return out


def summarize_imputation(results: pd.DataFrame) -> pd.DataFrame:
    """Per-method summary of :func:`evaluate_imputation`: mean of each metric and the pooled Pearson.

    Parameters
    ----------
    results
        The DataFrame returned by :func:`evaluate_imputation`.

    Returns
    -------
    DataFrame indexed by method with ``pooled_pearson``, mean ``pearson``, ``r2``, ``cosine``,
    ``pearson_top_k``, ``mse``, ``n_pairs`` and ``ms_per_pair``, sorted by ``pearson_top_k``; and how
    informative each method's reliability is (NaN without one): ``reliability_spearman``, the Spearman
    correlation between reliability and the relative error ``rel_error`` of the held-out pairs
    (negative is good), and ``rel_error_reliable_half`` / ``rel_error_other_half``, the mean relative
    error of the more reliable half of the pairs and of the rest.

    Examples
    --------
    >>> import pertcausal as pc
    >>> sig = pc.data.simulate_effects(n_perturbations=20, n_contexts=5, n_genes=30, seed=0)
    >>> res = pc.tl.evaluate_imputation(sig, methods=["additive"], n_folds=3, progress_bar=False)
    >>> list(pc.tl.summarize_imputation(res).index)
    ['additive']
    """
    cols = ["pearson", "r2", "cosine", "pearson_top_k", "mse"]
    g = results.groupby("method", observed=True)
    table = g[cols].mean()
    table.insert(0, "pooled_pearson", g["pooled_pearson"].first())
    table["n_pairs"] = g.size()
    table["ms_per_pair"] = g["seconds_per_pair"].mean() * 1e3
    if "reliability" in results.columns and "rel_error" in results.columns:
        rel = {
            m: reliability_informativeness(part["reliability"].to_numpy(), part["rel_error"].to_numpy())
            for m, part in g
        }
        rel = pd.DataFrame(rel).T.rename(
            columns={"error_reliable_half": "rel_error_reliable_half", "error_other_half": "rel_error_other_half"}
        )
        table = table.join(rel)
    return table.sort_values("pearson_top_k", ascending=False)
