"""``tl.evaluate_integration``: how well a cross-modal model aligns and translates modalities."""

from __future__ import annotations

import itertools
import logging
import warnings
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
import scipy.sparse as sp

from .._engines.integration_metrics import (
    feature_correlation,
    is_count_matrix,
    label_transfer_accuracy,
    log1p_normalize,
    matching_ranks,
)
from .._utils._validate import _list, check_finite, is_mudata

if TYPE_CHECKING:
    from anndata import AnnData
    from mudata import MuData

logger = logging.getLogger("pertcausal")

TRANSLATION_SEP = "_from_"  # a translation modality is named f"{target}_from_{source}"
TARGET_SUM = 1e4  # measured counts are compared on log1p(TARGET_SUM * proportion)
COLUMNS = ["metric", "mods", "translation", "value", "n_cells"]


# ---------------------------------------------------------------------------------------------
# helpers shared with pl.latent / pl.translation
# ---------------------------------------------------------------------------------------------
def parse_translation_key(mdata: MuData, key: str) -> tuple[str, str] | None:
    """``(source, target)`` of a modality named ``f"{target}_from_{source}"`` whose source and
    target are both modalities of ``mdata``, else None."""
    pos = key.find(TRANSLATION_SEP)
    while pos >= 0:
        target, source = key[:pos], key[pos + len(TRANSLATION_SEP) :]
        if target in mdata.mod and source in mdata.mod and key not in (target, source):
            return source, target
        pos = key.find(TRANSLATION_SEP, pos + 1)
    return None


def translation_keys(mdata: MuData) -> list[str]:
    """Names of the modalities of ``mdata`` that hold translations (``<target>_from_<source>``)."""
    return [m for m in mdata.mod if parse_translation_key(mdata, m) is not None]


def _resolve_translations(mdata: MuData, translations: Any) -> list[tuple[str, str, str]]:
    """``(source, target, key)`` per requested translation, validated."""
    if translations is None:
        keys: list[Any] = translation_keys(mdata)
    elif isinstance(translations, str | tuple):
        keys = [translations]
    else:
        keys = list(translations)
    out = []
    for item in keys:
        if isinstance(item, str):
            if item not in mdata.mod:
                raise KeyError(
                    f"translation {item!r} is not a modality of the MuData; modalities are: {_list(mdata.mod)}"
                )
            parsed = parse_translation_key(mdata, item)
            if parsed is None:
                raise ValueError(
                    f"cannot read source and target from the modality name {item!r}: expected "
                    f"'<target>{TRANSLATION_SEP}<source>' with both modalities of the MuData (modalities are: "
                    f"{_list(mdata.mod)}); pass a (source, target, key) tuple instead"
                )
            out.append((parsed[0], parsed[1], item))
            continue
        if not (isinstance(item, tuple | list) and len(item) == 3):
            raise TypeError(f"translations must hold modality names or (source, target, key) tuples; got {item!r}")
        source, target, key = (str(v) for v in item)
        for what, name in (("target", target), ("translation", key)):  # the source is only a label here
            if name not in mdata.mod:
                raise KeyError(
                    f"{what} {name!r} of translation {tuple(item)!r} is not a modality of the MuData; "
                    f"modalities are: {_list(mdata.mod)}"
                )
        out.append((source, target, key))
    return out


def _dense_rows(x: Any, rows: np.ndarray) -> Any:
    sub = x[rows]
    return sub if sp.issparse(sub) else np.asarray(sub)


def measured_on_prediction_scale(target: AnnData, rows: np.ndarray, *, where: str) -> tuple[Any, bool]:
    """Measured values of ``target`` (its ``X``) for ``rows`` on the scale of the translations:
    ``log1p(1e4 * x / cell total)`` with the total over all of the target's features when ``X``
    holds counts (integers >= 0), else ``X`` as it is. Returns the matrix and whether it was counts."""
    if target.X is None:
        raise ValueError(f"{where}.X is empty; expected the measured values of the target modality in X")
    x = _dense_rows(target.X, rows)
    counts = is_count_matrix(x)
    if counts:
        x = log1p_normalize(x, target_sum=TARGET_SUM)
    return x, counts


def translation_arrays(
    mdata: MuData, source: str, target: str, key: str, cells: pd.Index | None = None
) -> tuple[Any, Any, pd.Index, pd.Index, bool]:
    """Predicted and measured values of a translation over its shared cells and features.

    Returns ``(pred, true, cells, features, counts)``: matrices ``(n_cells, n_features)``
    (dense or sparse), the shared cell and feature names, and whether the target held counts.
    """
    pred_ad, true_ad = mdata.mod[key], mdata.mod[target]
    shared = pred_ad.obs_names.intersection(true_ad.obs_names, sort=False)
    if cells is not None:
        shared = shared.intersection(cells, sort=False)
    if len(shared) == 0:
        extra = " among the cells passed as cells=" if cells is not None else ""
        raise ValueError(
            f"translation {key!r} ({source} -> {target}) shares no cell with modality {target!r}{extra}: "
            f"it holds {pred_ad.n_obs} cells (e.g. {_list(pred_ad.obs_names, 3)}), {target!r} holds "
            f"{true_ad.n_obs} (e.g. {_list(true_ad.obs_names, 3)})"
        )
    features = pred_ad.var_names.intersection(true_ad.var_names, sort=False)
    if len(features) == 0:
        raise ValueError(
            f"translation {key!r} shares no feature with modality {target!r}: its features are e.g. "
            f"{_list(pred_ad.var_names, 5)}, the target's e.g. {_list(true_ad.var_names, 5)}"
        )
    if pred_ad.X is None:
        raise ValueError(f"mdata[{key!r}].X is empty; expected the translated values in X")
    rows_p = pred_ad.obs_names.get_indexer(shared)
    rows_t = true_ad.obs_names.get_indexer(shared)
    cols_p = pred_ad.var_names.get_indexer(features)
    cols_t = true_ad.var_names.get_indexer(features)
    true, counts = measured_on_prediction_scale(true_ad, rows_t, where=f"mdata[{target!r}]")
    true = true[:, cols_t]
    pred = _dense_rows(pred_ad.X, rows_p)[:, cols_p]
    return pred, true, shared, features, counts


def _check_unique(adata: AnnData, where: str) -> None:
    if not adata.obs_names.is_unique:
        dup = adata.obs_names[adata.obs_names.duplicated()].unique()
        raise ValueError(f"{where}.obs_names are not unique (e.g. {_list(dup, 5)}); call obs_names_make_unique()")


def _obsm_keys(mdata: MuData, mods: Sequence[str]) -> str:
    return "; ".join(f"{m}: [{_list(mdata.mod[m].obsm)}]" for m in mods) or "(no modality)"


def _labels_of(mdata: MuData, mod: str, names: pd.Index, labels_key: str) -> pd.Series | None:
    """Labels of cells ``names`` of modality ``mod`` from its obs, else from mdata.obs."""
    adata = mdata.mod[mod]
    if labels_key in adata.obs.columns:
        return adata.obs[labels_key].reindex(names)
    for col in (labels_key, f"{mod}:{labels_key}"):
        if col in mdata.obs.columns:
            return mdata.obs[col].reindex(names)
    return None


# ---------------------------------------------------------------------------------------------
# tl.evaluate_integration
# ---------------------------------------------------------------------------------------------
def evaluate_integration(
    mdata: MuData,
    *,
    use_rep: str = "X_pertcausal",
    mods: Sequence[str] | None = None,
    translations: str | Sequence[str | tuple[str, str, str]] | None = None,
    labels_key: str | None = None,
    cells: Sequence[str] | pd.Index | None = None,
    k: int = 15,
    match_k: int = 5,
    key_added: str = "integration_metrics",
) -> pd.DataFrame:
    """Score a cross-modal integration: alignment of paired cells, label transfer, translations.

    For every pair of modalities, over the cells measured in both (matched by ``obs_names``), the
    modalities' own embeddings ``mdata.mod[m].obsm[use_rep]`` are compared:

    - ``foscttm``: mean Fraction Of Samples Closer Than the True Match (euclidean, both directions
      averaged; 0 is perfect, about 0.5 is no alignment);
    - ``match_top{match_k}``: fraction of cells whose partner in the other modality is among its
      ``match_k`` nearest neighbours there, averaged over both directions (about ``match_k / n``
      for no alignment);
    - ``label_transfer`` (with ``labels_key``), per direction ``"a->b"``: accuracy of the labels of
      modality ``b``'s cells predicted by a ``k``-nearest-neighbour vote among modality ``a``'s
      labelled cells in the shared space. All labelled cells of each modality take part, so
      unpaired modalities are scored too.

    For each translation (a modality ``f"{target}_from_{source}"`` whose ``X`` holds the values of
    the target's features predicted from the source's cells), the Pearson correlation across cells
    between predicted and measured values, per feature, over the cells measured in the target.
    Measured counts (``X`` of integers >= 0) are compared as ``log1p(1e4 * x / cell total)``, the
    scale of the predictions; other values as they are.

    Parameters
    ----------
    mdata
        MuData with per-modality embeddings in ``mdata.mod[m].obsm[use_rep]`` (as written by
        :func:`pertcausal.tl.integrate`) and/or translation modalities (:func:`pertcausal.tl.translate`).
    use_rep
        Key of the modalities' embeddings in their ``obsm``.
    mods
        Modalities whose embeddings are compared (default: every modality with ``obsm[use_rep]``
        that is not a translation). An empty list skips the embedding metrics.
    translations
        Translations to score: names of modalities ``f"{target}_from_{source}"``, or
        ``(source, target, key)`` tuples for any other name. ``None``: every modality named so.
        An empty list skips the translation metrics.
    labels_key
        Column of a modality's ``obs`` (else of ``mdata.obs``, also as ``f"{mod}:{labels_key}"``)
        with cell labels (e.g. cell type) for the label-transfer accuracy. Cells with a missing
        label are left out.
    cells
        Restrict every metric to these cell names (e.g. the cells held out from training).
    k
        Neighbours of the label-transfer vote.
    match_k
        Neighbours of the top-k matching accuracy.
    key_added
        Key of ``mdata.uns`` for the results.

    Returns
    -------
    Tidy DataFrame with columns ``metric``, ``mods`` (``"a|b"`` for a pair, ``"a->b"`` for a
    direction or a translation from ``a`` to ``b``), ``translation`` (the translation's modality,
    ``""`` for other rows), ``value`` and ``n_cells`` (cells the value is computed on). Translation
    rows: ``translation_pearson_mean``, ``translation_pearson_median`` (over the features with a
    finite correlation) and ``translation_n_features`` (how many those are).

    Sets ``mdata.uns[key_added]``, a dict with ``"results"`` (the returned table),
    ``"translation"`` (per translation key, a DataFrame indexed by feature with ``pearson``,
    ``mean_pred``, ``mean_true``; ``pearson`` is NaN for features constant over the cells) and
    ``"params"``. Nothing is written when the evaluation fails.

    Examples
    --------
    >>> import numpy as np, anndata as ad, mudata as md
    >>> from pertcausal.tl._evaluate_integration import evaluate_integration
    >>> rng = np.random.default_rng(0)
    >>> z = rng.normal(size=(50, 3))
    >>> rna, atac = ad.AnnData(np.zeros((50, 2))), ad.AnnData(np.zeros((50, 2)))
    >>> rna.var_names, atac.var_names = ["g1", "g2"], ["peak1", "peak2"]
    >>> rna.obsm["X_pertcausal"], atac.obsm["X_pertcausal"] = z, z + 0.01 * rng.normal(size=z.shape)
    >>> mdata = md.MuData({"rna": rna, "atac": atac})
    >>> res = evaluate_integration(mdata)
    >>> res.loc[res["metric"] == "foscttm", "value"].item()
    0.0
    """
    if not is_mudata(mdata):
        raise TypeError(f"mdata must be a MuData, got {type(mdata).__name__}")
    if int(k) < 1 or int(match_k) < 1:
        raise ValueError(f"k and match_k must be >= 1, got k={k}, match_k={match_k}")
    trans = _resolve_translations(mdata, translations)
    trans_keys = {t[2] for t in trans} | set(translation_keys(mdata))

    # --- modalities with embeddings ------------------------------------------------------------
    if mods is None:
        candidates = [m for m in mdata.mod if m not in trans_keys]
        mods = [m for m in candidates if use_rep in mdata.mod[m].obsm]
        if len(mods) < 2:
            if not mods:
                msg = (
                    f"use_rep {use_rep!r} is in the obsm of no modality; obsm keys are: "
                    f"{_obsm_keys(mdata, candidates)} (run pertcausal.tl.integrate first, or pass use_rep=)"
                )
            else:
                msg = (
                    f"need at least two modalities with obsm[{use_rep!r}] to compare, found only {_list(mods)}; "
                    f"obsm keys are: {_obsm_keys(mdata, candidates)}"
                )
            if not trans:
                raise (KeyError if not mods else ValueError)(msg)
            if translations is None:  # translations found by name: score them, say why nothing else
                warnings.warn(f"{msg}; scoring the translations only", UserWarning, stacklevel=2)
            mods = []
    else:
        mods = [str(m) for m in mods]
        for m in mods:
            if m not in mdata.mod:
                raise KeyError(f"mod {m!r} is not a modality of the MuData; modalities are: {_list(mdata.mod)}")
            if use_rep not in mdata.mod[m].obsm:
                raise KeyError(
                    f"use_rep {use_rep!r} is not in mdata[{m!r}].obsm; its keys are: {_list(mdata.mod[m].obsm)}"
                )
        if len(mods) == 1:
            raise ValueError(f"need at least two modalities to compare, got mods={mods!r}")
        if len(set(mods)) != len(mods):
            raise ValueError(f"mods lists a modality twice: {mods!r}")
    used = set(mods) | {m for t in trans for m in t}
    for m in used:
        _check_unique(mdata.mod[m], f"mdata[{m!r}]")

    cell_index: pd.Index | None = None
    if cells is not None:
        cell_index = pd.Index(np.asarray(cells).astype(str)).unique()
        known = pd.Index([]).append([mdata.mod[m].obs_names for m in used]) if used else pd.Index([])
        if len(cell_index) == 0 or not cell_index.isin(known).any():
            raise ValueError(
                f"none of the {len(cell_index)} names passed as cells is a cell of the modalities "
                f"{_list(sorted(used))}; cells include: {_list(known.unique(), 5)}"
            )

    def names_of(m: str) -> pd.Index:
        names = mdata.mod[m].obs_names
        return names if cell_index is None else names.intersection(cell_index, sort=False)

    emb: dict[str, np.ndarray] = {}
    for m in mods:
        e = mdata.mod[m].obsm[use_rep]
        e = np.asarray(e.to_numpy() if isinstance(e, pd.DataFrame) else (e.toarray() if sp.issparse(e) else e))
        if e.ndim != 2:
            raise ValueError(f"mdata[{m!r}].obsm[{use_rep!r}] must be 2-D, got shape {e.shape}")
        check_finite(e, what=f"mdata[{m!r}].obsm[{use_rep!r}]")
        emb[m] = e
    dims = {m: e.shape[1] for m, e in emb.items()}
    if len(set(dims.values())) > 1:
        raise ValueError(f"the embeddings obsm[{use_rep!r}] differ in dimension across modalities: {dims}")

    labels: dict[str, pd.Series] = {}
    if labels_key is not None:
        for m in mods:
            lab = _labels_of(mdata, m, names_of(m), labels_key)
            if lab is not None:
                labels[m] = lab
        if mods and not labels:
            raise KeyError(
                f"labels_key {labels_key!r} is a column of neither the obs of modalities {_list(mods)} nor "
                f"mdata.obs; mdata.obs columns are: {_list(mdata.obs.columns)}"
            )

    pairs = list(itertools.combinations(mods, 2))
    shared = {
        (a, b): names_of(a).intersection(mdata.mod[b].obs_names, sort=False).intersection(names_of(b), sort=False)
        for a, b in pairs
    }
    if pairs and all(len(s) < 2 for s in shared.values()) and not labels:
        counts = ", ".join(f"{a}|{b}: {len(s)}" for (a, b), s in shared.items())
        extra = " among the cells passed as cells=" if cell_index is not None else ""
        raise ValueError(
            f"no two modalities share at least 2 cells{extra} (shared cells per pair: {counts}); the alignment "
            "metrics need cells measured in both modalities, matched by obs_names"
        )

    # --- compute (nothing written yet) ----------------------------------------------------------
    rows: list[dict[str, Any]] = []
    for a, b in pairs:
        s = shared[(a, b)]
        if len(s) < 2:
            warnings.warn(
                f"modalities {a!r} and {b!r} share {len(s)} cell(s): no foscttm or match accuracy for them",
                UserWarning,
                stacklevel=2,
            )
        else:
            xa = emb[a][mdata.mod[a].obs_names.get_indexer(s)]
            xb = emb[b][mdata.mod[b].obs_names.get_indexer(s)]
            r_ab, r_ba = matching_ranks(xa, xb)
            fos = float(np.mean((r_ab + r_ba) / (2.0 * (len(s) - 1))))
            match = 0.5 * float(np.mean(r_ab < match_k) + np.mean(r_ba < match_k))
            rows.append({"metric": "foscttm", "mods": f"{a}|{b}", "value": fos, "n_cells": len(s)})
            rows.append({"metric": f"match_top{match_k}", "mods": f"{a}|{b}", "value": match, "n_cells": len(s)})
        for ref, query in ((a, b), (b, a)):
            if ref not in labels or query not in labels:
                continue
            lr, lq = labels[ref].dropna(), labels[query].dropna()
            if len(lr) == 0 or len(lq) == 0:
                continue
            acc = label_transfer_accuracy(
                emb[ref][mdata.mod[ref].obs_names.get_indexer(lr.index)],
                lr.astype(str).to_numpy(),
                emb[query][mdata.mod[query].obs_names.get_indexer(lq.index)],
                lq.astype(str).to_numpy(),
                k=k,
            )
            rows.append({"metric": "label_transfer", "mods": f"{ref}->{query}", "value": acc, "n_cells": len(lq)})

    per_feature: dict[str, pd.DataFrame] = {}
    counts_targets: dict[str, bool] = {}
    for source, target, key in trans:
        pred, true, s, features, counts = translation_arrays(mdata, source, target, key, cell_index)
        counts_targets[key] = counts
        r = feature_correlation(pred, true)
        mean_pred = np.asarray(pred.mean(axis=0), dtype=np.float64).ravel()
        mean_true = np.asarray(true.mean(axis=0), dtype=np.float64).ravel()
        per_feature[key] = pd.DataFrame(
            {"pearson": r, "mean_pred": mean_pred, "mean_true": mean_true}, index=pd.Index(features.astype(str))
        )
        fin = r[np.isfinite(r)]
        for metric, value in (
            ("translation_pearson_mean", float(fin.mean()) if fin.size else np.nan),
            ("translation_pearson_median", float(np.median(fin)) if fin.size else np.nan),
            ("translation_n_features", float(fin.size)),
        ):
            rows.append(
                {"metric": metric, "mods": f"{source}->{target}", "translation": key, "value": value, "n_cells": len(s)}
            )

    out = pd.DataFrame(rows, columns=COLUMNS)
    out["translation"] = out["translation"].fillna("").astype(str)
    out["metric"] = out["metric"].astype(str)
    out["mods"] = out["mods"].astype(str)
    out["value"] = out["value"].astype(np.float64)
    out["n_cells"] = out["n_cells"].astype(np.int64)

    params: dict[str, Any] = {
        "use_rep": use_rep,
        "mods": np.asarray(mods, dtype=str),
        "translations": np.asarray([t[2] for t in trans], dtype=str),
        "translation_sources": np.asarray([t[0] for t in trans], dtype=str),
        "translation_targets": np.asarray([t[1] for t in trans], dtype=str),
        "translation_target_counts": np.asarray([counts_targets[t[2]] for t in trans], dtype=bool),
        "labels_key": "None" if labels_key is None else str(labels_key),
        "cells_restricted": cell_index is not None,
        "n_cells_given": 0 if cell_index is None else len(cell_index),
        "k": int(k),
        "match_k": int(match_k),
        "metric": "euclidean",
        "target_sum": TARGET_SUM,
    }
    mdata.uns[key_added] = {"results": out, "translation": per_feature, "params": params}
    logger.info(
        "tl.evaluate_integration: %d modality pair(s), %d translation(s) scored; results in uns[%r]",
        len(pairs),
        len(trans),
        key_added,
    )
    return out
