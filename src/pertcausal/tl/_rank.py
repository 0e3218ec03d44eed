"""``tl.rank_perturbations``: which perturbations mimic (or reverse) a query signature in a context.

The scoring functions are array engines in :mod:`pertcausal._engines.connectivity`; this module
validates the query, matches its genes and assembles the table.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Callable, Iterable, Sequence
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import pandas as pd
import scipy.sparse as sp

from .._engines.connectivity import connectivity_scores, cosine_scores, pearson_scores
from .._utils._validate import (
    _list,
    check_choice,
    check_finite,
    check_labels,
    check_obs_key,
    get_matrix,
    get_modality,
)

if TYPE_CHECKING:
    from anndata import AnnData
    from mudata import MuData

logger = logging.getLogger("pertcausal")


# ------------------------------------------------------------------------------ query handling
def _gene_names(adata: AnnData, gene_key: str | None) -> tuple[np.ndarray, str]:
    if gene_key is None:
        return adata.var_names.to_numpy(dtype=str), "imputed.var_names"
    if gene_key not in adata.var.columns:
        raise KeyError(f"gene_key {gene_key!r} is not a column of imputed.var; columns are: {_list(adata.var.columns)}")
    col = adata.var[gene_key]
    names = col.astype(str).to_numpy(dtype=object)
    names[col.isna().to_numpy()] = None  # a missing symbol matches nothing
    return names, f"imputed.var[{gene_key!r}]"


def _match(query_names: Sequence[str], data_names: np.ndarray, where: str) -> np.ndarray:
    """Position in ``data_names`` of each query gene (-1 when absent); errors when none match."""
    lookup: dict[str, int] = {}
    repeated: set[str] = set()
    for i, name in enumerate(data_names):
        if name is None:
            continue
        if name in lookup:
            repeated.add(name)
        lookup.setdefault(name, i)
    query_names = [str(q) for q in query_names]
    ambiguous = [q for q in query_names if q in repeated]
    if ambiguous:
        raise ValueError(f"query gene(s) {_list(ambiguous, 5)} name more than one gene of {where}")
    pos = np.array([lookup.get(q, -1) for q in query_names], dtype=np.int64)
    if not (pos >= 0).any():
        known = [d for d in data_names if d is not None]
        raise ValueError(
            f"none of the query's genes are in {where}: 0 of {len(query_names)} matched; "
            f"query genes: {_list(query_names, 5)}; {where}: {_list(known, 5)}"
            + ("" if where != "imputed.var_names" else "; pass gene_key= to match another var column")
        )
    return pos


def _as_labels(genes: Any, argname: str) -> list[str]:
    if isinstance(genes, str):
        genes = [genes]
    try:
        out = [str(g) for g in genes]
    except TypeError:
        raise TypeError(f"{argname} must be a label or a list of labels, got {type(genes).__name__}") from None
    return list(dict.fromkeys(out))  # drop repeats, keep order


def _signature_vector(
    signature: Any, data_names: np.ndarray, n_vars: int, where: str
) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Return (positions in the data's genes, query values) of the matched genes of a vector query,
    and the names of the query genes that matched none."""
    from anndata import AnnData

    if isinstance(signature, AnnData):
        if signature.n_obs != 1:
            raise ValueError(f"an AnnData signature must have exactly one row, got {signature.n_obs}")
        x = signature.X
        if x is None:
            raise ValueError("the signature AnnData has an empty X")
        values = np.asarray(x.toarray() if sp.issparse(x) else x, dtype=np.float64).ravel()
        signature = pd.Series(values, index=signature.var_names.astype(str))
    if isinstance(signature, pd.DataFrame):
        raise TypeError("signature must be a pd.Series (one value per gene), not a DataFrame")
    if isinstance(signature, pd.Series):
        if signature.index.has_duplicates:
            dup = signature.index[signature.index.duplicated()].unique()
            raise ValueError(f"signature index has repeated gene names: {_list(dup, 5)}")
        try:
            values = pd.to_numeric(signature, errors="raise").to_numpy(np.float64)
        except (TypeError, ValueError) as err:
            raise TypeError(f"signature values must be numeric: {err}") from None
        check_finite(values, what="signature")
        pos = _match(list(signature.index), data_names, where)
        keep = pos >= 0
        return pos[keep], values[keep], [str(g) for g in signature.index[~keep]]
    try:
        values = np.asarray(signature, dtype=np.float64)
    except (TypeError, ValueError):
        raise TypeError(
            f"signature must be a pd.Series, a 1-D array or a one-row AnnData, got {type(signature).__name__}"
        ) from None
    if values.ndim == 2 and values.shape[0] == 1:
        values = values[0]
    if values.ndim != 1:
        raise ValueError(f"signature must be 1-D (one value per gene), got shape {values.shape}")
    if len(values) != n_vars:
        raise ValueError(
            f"signature has {len(values)} values but imputed has {n_vars} genes; pass a pd.Series "
            "indexed by gene name to match genes by name"
        )
    check_finite(values, what="signature")
    return np.arange(n_vars), values, []


def _check_matched(n_matched: int, n_query: int, unmatched: list[str], min_genes: int, where: str) -> None:
    """Refuse a query left with fewer than ``min_genes`` matched genes (all of a smaller query); warn when any
    query gene is missing."""
    if not unmatched:
        return
    listing = _list(unmatched, 10)
    if n_matched < min(min_genes, n_query):
        raise ValueError(
            f"only {n_matched} of the query's {n_query} genes are in {where} (missing: {listing}); a score needs at "
            f"least min_genes={min_genes} matched genes (all of a smaller query)"
            + ("; pass gene_key= to match another var column" if where == "imputed.var_names" else "")
        )
    warnings.warn(
        f"{len(unmatched)} of the query's {n_query} genes are not in {where} and are left out; the score uses "
        f"{n_matched}: missing {listing}",
        UserWarning,
        stacklevel=3,
    )


_SCORERS: dict[str, Callable[[np.ndarray, np.ndarray], np.ndarray]] = {
    "cosine": cosine_scores,
    "pearson": pearson_scores,
}
METHODS = ("cosine", "pearson", "connectivity")


def rank_perturbations(
    imputed: AnnData | MuData,
    signature: pd.Series | np.ndarray | AnnData | None = None,
    *,
    context: str,
    up: Sequence[str] | None = None,
    down: Sequence[str] | None = None,
    method: Literal["cosine", "pearson", "connectivity"] = "cosine",
    mod: str = "impute",
    layer: str | None = None,
    gene_key: str | None = None,
    exclude: str | Iterable[str] | None = None,
    n_genes: int = 50,
    weight: float = 1.0,
    min_genes: int = 3,
) -> pd.DataFrame:
    """Rank perturbations by how well their effect in one context matches a query signature.

    A query (a disease signature, a drug's signature, an up/down gene set) is compared with the
    effect of every perturbation in ``context``, measured or imputed. High scores mimic the query;
    negative scores reverse it (candidate treatments for a disease signature).

    Parameters
    ----------
    imputed
        The perturbation x context grid from :func:`pertcausal.tl.impute`, a MuData holding it as
        modality ``mod``, or a signatures AnnData from :func:`pertcausal.pp.signatures` (then every
        pair is observed and only measured perturbations of ``context`` are ranked). Needs
        ``obs["perturbation"]`` and ``obs["context"]``; ``obs["observed"]`` and
        ``obs["reliability"]`` are carried into the result when present.
    signature
        Query as a gene vector: a :class:`pandas.Series` indexed by gene name, a one-row AnnData
        (or row view), both matched by name, or a 1-D array with one value per gene of ``imputed``
        in ``var`` order. Give either ``signature`` or ``up``/``down``.
    context
        The context label (of ``obs["context"]``) whose effects are ranked.
    up, down
        Gene sets of a CMap-style query (either may be omitted, not both).
    method
        ``"cosine"``: cosine similarity of query and effect over the query's matched genes;
        ``"pearson"``: their Pearson correlation; ``"connectivity"``: CMap weighted connectivity
        (weighted Kolmogorov-Smirnov enrichment of ``up`` and ``down`` in each ranked effect).
        With a vector query, ``"connectivity"`` uses its ``n_genes`` largest positive and
        ``n_genes`` most negative matched genes as ``up`` and ``down``; with ``up``/``down`` only,
        ``"cosine"``/``"pearson"`` use the query vector +1 on ``up``, -1 on ``down``, 0 on every
        other gene of ``imputed``.
    mod
        Modality of a MuData ``imputed``.
    layer
        Layer of effects to use (``None``: ``X``).
    gene_key
        Column of ``imputed.var`` whose values name the query's genes (e.g. gene symbols);
        ``None`` matches ``var_names``. A query's gene names are the Series index, the one-row
        AnnData's ``var_names`` or the entries of ``up``/``down``; a plain array is aligned by position.
    exclude
        Perturbation label(s) to leave out, e.g. the query's own perturbation.
    n_genes
        Size of each of the up and down sets derived from a vector query (``"connectivity"`` only;
        capped at the number of genes minus one).
    weight
        Exponent ``p`` of the weights ``|effect|**p`` of the connectivity running sum (1: CMap and
        GSEA; 0: classic unweighted KS).
    min_genes
        Fewest query genes that must match genes of ``imputed`` (up and down sets together; every gene of a
        smaller query); fewer is an error naming the missing genes. Query genes that match nothing are
        otherwise left out with a warning that names them.

    Returns
    -------
    DataFrame with one row per perturbation of ``context``, sorted by ``score`` descending (ties by
    perturbation name): ``perturbation``, ``context``, ``score``, ``rank`` (1 = most similar),
    ``observed`` (the effect was measured, not imputed), ``reliability`` (from ``obs``; NaN when
    absent) and ``n_genes`` (query genes that entered the score: matched genes of a vector query,
    or genes of the up and down sets). ``.attrs`` records ``method``, ``context``, ``n_query_genes``,
    ``n_matched``, ``n_up``, ``n_down`` and ``weight``. ``imputed`` is not modified.

    Notes
    -----
    With effect ``e`` and query ``q`` over the matched genes, ``cosine = q.e / (|q| |e|)`` and
    ``pearson`` is the cosine of the mean-centred vectors (a zero or constant effect scores 0).
    ``connectivity`` ranks the genes of ``imputed`` by ``e`` descending, ``e_(1) >= ... >= e_(N)``;
    for a set ``S`` the running sum at rank ``i`` is
    ``sum_{j<=i, j in S} |e_(j)|**p / sum_{j in S} |e_(j)|**p - #{j<=i, j not in S} / (N - |S|)``
    and ``ES_S`` is its largest deviation from zero (Subramanian et al. 2005). The score is
    ``(ES_up - ES_down) / 2`` when ``ES_up`` and ``ES_down`` differ in sign and 0 otherwise, as
    CMap's weighted connectivity score (Lamb et al. 2006; Subramanian et al. 2017), without
    CMap's normalisation over reference signatures; it lies in [-1, 1].

    Examples
    --------
    >>> import pandas as pd
    >>> import pertcausal as pc
    >>> sig = pc.data.simulate_effects(n_perturbations=20, n_contexts=5, n_genes=30, seed=0)
    >>> imp = pc.tl.impute(sig, method="additive", progress_bar=False)
    >>> query = imp["P00003|C001", :]  # one perturbation's effect as the query
    >>> res = pc.tl.rank_perturbations(imp, query, context="C001")
    >>> res.loc[0, "perturbation"], int(res.loc[0, "rank"])
    ('P00003', 1)
    >>> disease = pd.Series(-query.X[0], index=imp.var_names)  # its reversal
    >>> res = pc.tl.rank_perturbations(imp, disease, context="C001", method="connectivity", n_genes=5)
    >>> res.iloc[-1]["perturbation"], bool(res.iloc[-1]["score"] < 0)
    ('P00003', True)
    >>> res = pc.tl.rank_perturbations(imp, context="C001", up=["G0001", "G0002"], down=["G0010"])
    >>> list(res.columns)
    ['perturbation', 'context', 'score', 'rank', 'observed', 'reliability', 'n_genes']
    """
    # ---- validate everything before any work
    adata = get_modality(imputed, mod)
    check_choice(method, METHODS, argname="method")
    for key in ("perturbation", "context"):
        check_obs_key(adata, key, argname="obs column", where="imputed")
    has_query = signature is not None
    has_sets = up is not None or down is not None
    if has_query and has_sets:
        raise ValueError("pass either signature or up/down gene sets, not both")
    if not has_query and not has_sets:
        raise ValueError("pass a query: signature (a gene vector) or up/down gene sets")
    if isinstance(n_genes, bool) or not isinstance(n_genes, int | np.integer) or n_genes < 1:
        raise ValueError(f"n_genes must be a positive integer, got {n_genes!r}")
    if isinstance(min_genes, bool) or not isinstance(min_genes, int | np.integer) or min_genes < 1:
        raise ValueError(f"min_genes must be a positive integer, got {min_genes!r}")
    if isinstance(weight, bool) or not isinstance(weight, int | float | np.integer | np.floating):
        raise ValueError(f"weight must be a finite number >= 0, got {weight!r}")
    if not np.isfinite(weight) or weight < 0:
        raise ValueError(f"weight must be a finite number >= 0, got {weight!r}")
    if isinstance(context, list | tuple | np.ndarray | pd.Index | set):
        raise TypeError(f"context must be one label, got {type(context).__name__}")
    ctx_labels = adata.obs["context"].astype(str).to_numpy()
    check_labels(np.unique(ctx_labels), [context], argname="context", key="context")
    pert_labels = adata.obs["perturbation"].astype(str).to_numpy()
    excluded = set(_as_labels(exclude, "exclude")) if exclude is not None else set()
    if excluded:
        check_labels(np.unique(pert_labels), sorted(excluded), argname="exclude", key="perturbation")

    data_names, where = _gene_names(adata, gene_key)
    n_vars = adata.n_vars
    n_up = n_down = 0
    if has_query:
        idx, q, unmatched = _signature_vector(signature, data_names, n_vars, where)
        n_matched = len(idx)
        n_query = n_matched + len(unmatched)
        _check_matched(n_matched, n_query, unmatched, min_genes, where)
        if not np.any(q):
            raise ValueError("signature is zero on every matched gene; nothing to compare")
        if method == "pearson" and np.ptp(q) == 0:
            raise ValueError("signature is constant on the matched genes; its Pearson correlation is undefined")
        if method == "connectivity":
            n = min(n_genes, n_vars - 1)
            top = np.argsort(-q, kind="stable")[:n]
            bottom = np.argsort(q, kind="stable")[:n]
            up_pos, down_pos = idx[top[q[top] > 0]], idx[bottom[q[bottom] < 0]]
            n_up, n_down = len(up_pos), len(down_pos)
            n_used = n_up + n_down
        else:
            n_used = n_matched
    else:
        up_list = _as_labels(up, "up") if up is not None else []
        down_list = _as_labels(down, "down") if down is not None else []
        both = sorted(set(up_list) & set(down_list))
        if both:
            raise ValueError(f"gene(s) {_list(both, 5)} are in both up and down")
        if not up_list and not down_list:
            raise ValueError("up and down are both empty; name at least one gene")
        pos = _match(up_list + down_list, data_names, where)
        up_pos = pos[: len(up_list)][pos[: len(up_list)] >= 0]
        down_pos = pos[len(up_list) :][pos[len(up_list) :] >= 0]
        n_up, n_down = len(up_pos), len(down_pos)
        n_query, n_matched = len(up_list) + len(down_list), n_up + n_down
        unmatched = [g for g, p in zip(up_list + down_list, pos) if p < 0]
        _check_matched(n_matched, n_query, unmatched, min_genes, where)
        n_used = n_matched
        for name, size in (("up", n_up), ("down", n_down)):
            if method == "connectivity" and size >= n_vars:
                raise ValueError(
                    f"the {name} set holds all {n_vars} genes of imputed; enrichment needs genes outside it"
                )
        if method != "connectivity":
            idx = np.arange(n_vars)
            q = np.zeros(n_vars)
            q[up_pos], q[down_pos] = 1.0, -1.0
            if method == "pearson" and np.ptp(q) == 0:
                raise ValueError("up and down hold every gene; the Pearson correlation of the query is undefined")

    rows = np.flatnonzero(ctx_labels == str(context))
    perts = pert_labels[rows]
    if len(set(perts)) < len(perts):
        dup = pd.Index(perts)[pd.Index(perts).duplicated()].unique()
        raise ValueError(f"perturbation(s) {_list(dup, 5)} appear more than once in context {context!r}")
    keep = ~np.isin(perts, list(excluded))
    rows, perts = rows[keep], perts[keep]
    if len(rows) == 0:
        raise ValueError(f"no perturbation of context {context!r} is left after exclude={_list(sorted(excluded), 5)}")
    x = get_matrix(adata, layer, where="imputed")[rows]
    effects = np.asarray(x.toarray() if sp.issparse(x) else x, dtype=np.float64)
    check_finite(effects, what=f"imputed effects of context {context!r}")

    # ---- score
    logger.info("ranking %d perturbation(s) of context %r by %s over %d gene(s)", len(rows), context, method, n_used)
    if method == "connectivity":
        up_mask = down_mask = None
        if n_up:
            up_mask = np.zeros(n_vars, bool)
            up_mask[up_pos] = True
        if n_down:
            down_mask = np.zeros(n_vars, bool)
            down_mask[down_pos] = True
        score, _, _ = connectivity_scores(effects, up_mask, down_mask, weight=float(weight))
    else:
        score = _SCORERS[method](effects[:, idx], q)

    obs = adata.obs.iloc[rows]
    observed = obs["observed"].to_numpy(dtype=bool) if "observed" in obs.columns else np.ones(len(rows), bool)
    reliability = (
        pd.to_numeric(obs["reliability"], errors="coerce").to_numpy(np.float64)
        if "reliability" in obs.columns
        else np.full(len(rows), np.nan)
    )
    res = pd.DataFrame(
        {
            "perturbation": perts,
            "context": str(context),
            "score": score,
            "observed": observed,
            "reliability": reliability,
            "n_genes": np.int64(n_used),
        }
    )
    res = res.sort_values(["score", "perturbation"], ascending=[False, True], kind="mergesort", ignore_index=True)
    res.insert(3, "rank", np.arange(1, len(res) + 1, dtype=np.int64))
    res.attrs = {
        "method": method,
        "context": str(context),
        "n_query_genes": int(n_query),
        "n_matched": int(n_matched),
        "n_up": int(n_up),
        "n_down": int(n_down),
        "weight": float(weight),
    }
    return res
