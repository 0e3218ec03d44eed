"""Perturbation signatures: one effect profile per observed (perturbation, context) pair."""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import pandas as pd
import scipy.sparse as sp

from .._utils._names import pair_names as _pair_names
from .._utils._validate import (
    _list,
    canonical,
    check_choice,
    check_no_missing,
    check_unique_var_names,
    get_matrix,
    get_modality,
    obs_column,
    row_sums,
)

if TYPE_CHECKING:
    from anndata import AnnData
    from mudata import MuData

logger = logging.getLogger("pertcausal")

POOLS = ("mean", "median", "max_norm")


def _scan(x: Any, chunk: int) -> tuple[int, float, bool]:
    """One pass over the stored values of ``x`` (in memory, or backed and read in chunks of rows): how many
    are NaN or infinite, the smallest finite value if it is negative (else 0), and whether the values are
    non-negative integers (raw counts; False when nothing is stored)."""

    def blocks() -> Any:
        if sp.issparse(x):
            yield x.data
        elif isinstance(x, np.ndarray):
            yield x.ravel()
        else:  # backed (h5py dataset or anndata's sparse dataset): rows in chunks
            for start in range(0, x.shape[0], chunk):
                block = x[start : start + chunk]
                yield block.data if sp.issparse(block) else np.asarray(block).ravel()

    n_bad, lowest, integer, seen = 0, 0.0, True, False
    for values in blocks():
        if values.dtype.kind in "fc":  # integer dtypes hold finite integers by construction
            finite = np.isfinite(values)
            if not finite.all():
                n_bad += int(values.size - finite.sum())
                values = values[finite]
            integer = integer and np.array_equal(values, np.trunc(values))
        if values.size:
            seen = True
            lowest = min(lowest, float(values.min()))
    return n_bad, lowest, seen and integer and lowest >= 0


def _log_normalize(x: np.ndarray | sp.spmatrix, target_sum: float) -> np.ndarray | sp.spmatrix:
    """Library-size normalisation to ``target_sum`` followed by log1p (as ``sc.pp.normalize_total`` + ``log1p``).

    Library sizes are summed in float64 whatever the input dtype; ``x`` must be canonical (no duplicate
    entries), as :func:`~pertcausal._utils._validate.canonical` makes it.
    """
    size = row_sums(x)
    scale = np.divide(target_sum, size, out=np.zeros_like(size), where=size > 0)
    if sp.issparse(x):
        out = sp.csr_matrix(x, dtype=np.float64, copy=True)
        out.data *= np.repeat(scale, np.diff(out.indptr))
        np.log1p(out.data, out=out.data)
        return out
    return np.log1p(np.asarray(x, dtype=np.float64) * scale[:, None])


def _keys(value: str | Sequence[str] | None, argname: str) -> list[str]:
    if value is None:
        return []
    keys = [value] if isinstance(value, str) else list(value)
    if not keys or not all(isinstance(k, str) for k in keys):
        raise TypeError(f"{argname} must be an obs column name or a non-empty list of them, got {value!r}")
    return keys


def _joined(obs: pd.DataFrame, keys: list[str], sep: str, *, argname: str, rows: np.ndarray) -> pd.Series:
    """One string label per row from one or several obs columns.

    Several columns are joined with ``sep``; two different combinations of values (among ``rows``) that
    join to the same label (``("a_b", "c")`` and ``("a", "b_c")`` with ``"_"``) are an error, since their
    observations would be pooled silently.
    """
    out = obs[keys[0]].astype(str)
    for k in keys[1:]:
        out = out + sep + obs[k].astype(str)
    if len(keys) > 1:
        combos = obs[keys].iloc[np.flatnonzero(rows)].astype(str).drop_duplicates()
        labels = combos.agg(sep.join, axis=1).to_numpy()
        clash = pd.Series(labels).duplicated(keep=False).to_numpy()
        if clash.any():
            first = labels[clash][0]
            values = [tuple(r) for r in combos.to_numpy()[labels == first]]
            raise ValueError(
                f"{argname} {keys} joined with key_sep={sep!r} give the same label {first!r} to different values "
                f"{_list(values)}; pass a key_sep that none of the values contains"
            )
    return out


def _select_values(values: Any) -> list[str]:
    """The values of one ``select`` entry as strings (a single value or a sequence of them)."""
    wanted = [values] if isinstance(values, str) or not isinstance(values, Sequence) else list(values)
    return [str(v) for v in wanted]


def _selection(obs: pd.DataFrame, select: Mapping[str, Any] | None, where: str) -> np.ndarray:
    """Boolean mask of the rows kept by ``select`` (``{obs key: value or list of values}``)."""
    keep = np.ones(len(obs), dtype=bool)
    for key, values in (select or {}).items():
        wanted = _select_values(values)
        col = obs[key].astype(str)
        present = set(col)
        missing = [v for v in wanted if v not in present]
        if missing:
            raise ValueError(
                f"select: value(s) {_list(missing)} not found in obs[{key!r}]; values are: {_list(sorted(present))}"
            )
        keep &= col.isin(wanted).to_numpy()
    if not keep.any():
        raise ValueError(f"select={dict(select or {})!r} keeps no row of {where}")
    return keep


def _codes(labels: pd.Series) -> tuple[np.ndarray, pd.Index]:
    cat = pd.Categorical(labels)
    return cat.codes.astype(np.int64), pd.Index(cat.categories.astype(str))


def _group_stats(
    x: np.ndarray | sp.spmatrix, code: np.ndarray, n_groups: int, *, normalize: bool, target_sum: float, chunk: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Sums, sums of squares and counts per group (``code < 0``: row unused), in chunks of rows.

    Each chunk is one sparse indicator (groups x rows) product with the (sparse) expression: no loop over rows.
    """
    g = x.shape[1]
    sums = np.zeros((n_groups, g))
    sumsq = np.zeros((n_groups, g))
    for start in range(0, x.shape[0], chunk):
        stop = min(start + chunk, x.shape[0])
        c = code[start:stop]
        rows = np.flatnonzero(c >= 0)
        if not len(rows):
            continue
        block = x[start:stop]
        block = canonical(block)[rows] if sp.issparse(block) else np.asarray(block)[rows]
        if normalize:
            block = _log_normalize(block, target_sum)
        elif sp.issparse(block):
            block = sp.csr_matrix(block, dtype=np.float64)
        else:
            block = np.asarray(block, dtype=np.float64)
        ind = sp.csr_matrix((np.ones(len(rows)), (c[rows], np.arange(len(rows)))), shape=(n_groups, len(rows)))
        sq = block.multiply(block) if sp.issparse(block) else block * block
        for acc, part in ((sums, ind @ block), (sumsq, ind @ sq)):
            acc += part.toarray() if sp.issparse(part) else np.asarray(part)
    counts = np.bincount(code[code >= 0], minlength=n_groups).astype(np.float64)
    return sums, sumsq, counts


def _dense_rows(x: np.ndarray | sp.spmatrix, rows: np.ndarray, *, normalize: bool, target_sum: float) -> np.ndarray:
    block = canonical(x[rows])
    if normalize:
        block = _log_normalize(block, target_sum)
    return block.toarray() if sp.issparse(block) else np.asarray(block, dtype=np.float64)


def _standardized_sum(e: np.ndarray, unit_pair: np.ndarray, n_pairs: int) -> tuple[np.ndarray, np.ndarray]:
    """Per pair: sum of the row-standardised (centred, unit-norm) profiles ``e`` and how many had non-zero spread."""
    ec = e - e.mean(1, keepdims=True)
    norm = np.linalg.norm(ec, axis=1)
    ok = norm > 0
    z = np.divide(ec, norm[:, None], out=np.zeros_like(ec), where=ok[:, None])
    ind = sp.csr_matrix((np.ones(len(unit_pair)), (unit_pair, np.arange(len(unit_pair)))), shape=(n_pairs, len(e)))
    return np.asarray(ind @ z), np.bincount(unit_pair[ok], minlength=n_pairs).astype(np.float64)


def signatures(
    data: AnnData | MuData,
    *,
    mod: str = "rna",
    perturbation_key: str | Sequence[str],
    context_key: str | Sequence[str],
    control: str | None,
    control_match: str | Sequence[str] | None = None,
    replicate_key: str | None = None,
    select: Mapping[str, Any] | None = None,
    pool: Literal["mean", "median", "max_norm"] = "mean",
    layer: str | None = None,
    min_cells: int | None = None,
    normalize: bool | None = None,
    target_sum: float = 1e4,
    key_sep: str = "_",
    chunk_size: int = 100_000,
) -> AnnData:
    """Effect of every perturbation in every context where it was measured.

    With a ``control``, the effect of perturbation ``p`` in context ``c`` is the mean normalised log
    expression of the observations (cells or samples) of ``(p, c)`` minus the mean of their matched
    controls: by default the control observations of the same context, or with ``control_match``
    those sharing the values of the ``control_match`` keys (plate, batch, compound, time, ...). When a
    treated group spans several control groups, every observation is compared with its own
    (``effect = mean over observations of (x - matched control mean)``). With ``control=None`` the
    input already holds effects (z-scores, log fold changes, CMap signatures) and is only pooled
    per pair. Group sums come from passes over the rows in chunks, as products of a sparse
    group-indicator matrix with the (sparse) expression matrix: no loop over cells. A backed AnnData is
    read in chunks too; duplicate entries of a sparse matrix are summed first (on a copy); obs keys are
    looked up in the modality, then in the MuData's obs.

    Parameters
    ----------
    data
        Cell- or sample-level MuData (the modality ``mod`` is used) or AnnData.
    mod
        Modality of a MuData to read; ignored for an AnnData.
    perturbation_key
        ``obs`` column(s) with the perturbation of each observation; several columns (e.g.
        ``["compound", "dose"]``) are joined with ``key_sep`` into one label.
    context_key
        ``obs`` column(s) with the context (cell type, cell line, donor, or e.g.
        ``["dose_level", "time"]``); several columns are joined with ``key_sep``.
    control
        Label of the control observations in the first ``perturbation_key`` column, or ``None`` for
        input that already holds effects (nothing is subtracted).
    control_match
        ``obs`` column(s) whose values a treated observation shares with its controls. ``None``
        matches on the context; include the context column(s) here to require both.
    replicate_key
        ``obs`` column with the replicate (donor, well, replicate id) of each observation. Replicates
        are then the units of the standard error, of the agreement figure and of ``pool``;
        ``None`` makes every observation a replicate.
    select
        Keep only the observations whose ``obs[key]`` is one of the given values, e.g.
        ``{"time": "24 h", "dose": ["10 uM", "3 uM"]}`` to choose doses/times before pooling.
    pool
        How the replicates of a pair are combined into its signature: ``"mean"`` (observations
        weighted equally), ``"median"`` (per gene, over replicates) or ``"max_norm"`` (the replicate
        effect with the largest norm, e.g. the strongest dose).
    layer
        Layer to read (``None`` for ``.X``).
    min_cells
        Pairs with fewer observations are dropped (with a warning); a perturbation left with no pair,
        or a control group with fewer observations that a pair needs, is an error. Default 10 with a
        control and 1 for effect input.
    normalize
        Normalise counts per observation to ``target_sum`` and log1p them (library sizes summed in
        float64, whatever the dtype). ``None`` does so when the matrix holds non-negative integers (raw
        counts) and a control is given; ``True`` on a matrix with negative values is an error.
    target_sum
        Library size after normalisation.
    key_sep
        Separator of the labels joined from several keys.
    chunk_size
        Rows per chunk; bounds the memory used beyond the group statistics.

    Returns
    -------
    AnnData with one row per observed (perturbation, context) pair (``obs_names`` are
    ``"perturbation|context"``, a ``|`` or ``\\`` inside a label escaped with a backslash so that no two
    pairs share a name), the genes of ``data`` as ``var``, and

    - ``X``: the effect;
    - ``layers["se"]``: per-gene standard error of the effect (pair and matched-control replicates);
    - ``layers["mean"]``: the pair's mean level (with a control);
    - ``obs["perturbation"]``, ``obs["context"]`` (categoricals), and the keys' own columns when joined;
    - ``obs["n_cells"]`` (observations) and ``obs["n_replicates"]``;
    - ``obs["replicate_agreement"]``: mean pairwise Pearson correlation of the replicates' effects;
    - ``uns["control_mean"]``: control means, contexts x genes (with ``control_match``, of the matched controls);
    - ``uns["control_n_cells"]``: control observations per context;
    - ``uns["signatures"]["params"]``: how the signatures were made.

    Standard errors and agreement are NaN with a single replicate.

    Examples
    --------
    >>> import pertcausal as pc
    >>> mdata = pc.data.simulate_screen(n_perturbations=5, n_contexts=3, n_genes=20, seed=0)
    >>> sig = pc.pp.signatures(
    ...     mdata, perturbation_key="perturbation", context_key="context", control="control"
    ... )
    >>> sig.obs[["perturbation", "context", "n_cells"]].head(2)  # doctest: +SKIP

    A bulk drug screen with vehicle controls matched by compound and time, and dose x time as the
    context (TG-GATEs layout)::

        sig = pc.pp.signatures(
            adata, perturbation_key="perturbation", context_key=["dose_level", "time"],
            control="control", control_match=["matched_drug", "time"], replicate_key="replicate",
            min_cells=1,
        )
    """
    from anndata import AnnData

    adata = get_modality(data, mod)
    where = f"mdata[{mod!r}]" if adata is not data else "adata"
    pkeys = _keys(perturbation_key, "perturbation_key")
    ckeys = _keys(context_key, "context_key")
    mkeys = _keys(control_match, "control_match")
    # every obs key is looked up in the modality, then in the MuData's obs (one rule for every function)
    columns: dict[str, pd.Series] = {}
    named = [("perturbation_key", k) for k in pkeys] + [("context_key", k) for k in ckeys]
    named += [("control_match", k) for k in mkeys] + [("replicate_key", replicate_key)] * (replicate_key is not None)
    named += [("select key", k) for k in (select or {})]
    for argname, k in named:
        if k not in columns:
            columns[k] = obs_column(data, adata, k, argname, where=where)
    obs = pd.DataFrame({k: v.values for k, v in columns.items()}, index=adata.obs_names)
    check_choice(pool, POOLS, argname="pool")
    check_unique_var_names(adata, where=where)
    if min_cells is None:
        min_cells = 10 if control is not None else 1
    if min_cells < 1:
        raise ValueError(f"min_cells must be >= 1, got {min_cells}")
    if mkeys and control is None:
        raise ValueError("control_match needs a control; with control=None the input is taken as effects")
    keep = _selection(obs, select, where)

    x = get_matrix(adata, layer, where=where, backed_ok=True)  # canonical: duplicate sparse entries summed
    what = f"{where}.{'X' if layer is None else f'layers[{layer!r}]'}"
    n_bad, lowest, counts = _scan(x, chunk_size)
    if n_bad:
        raise ValueError(f"{what} holds {n_bad} NaN or infinite value(s); remove or impute them first")
    if normalize is None:
        normalize = control is not None and counts
    elif normalize:
        if lowest < 0:
            raise ValueError(
                f"normalize=True needs counts, but {what} holds negative values (smallest {lowest:.4g}): it looks "
                "log-transformed or scaled already; pass normalize=False to take it as normalised log expression"
            )
    if sp.issparse(x) and x.format != "csr":
        x = x.tocsr()

    # roles: control rows and treated rows (among the selected ones)
    if control is not None:
        first = obs[pkeys[0]].astype(str)
        if not (first == str(control)).any():
            raise ValueError(
                f"control {control!r} not found in obs[{pkeys[0]!r}]; labels are: {_list(sorted(set(first)))}"
            )
        is_ctrl = (first == str(control)).to_numpy() & keep
    else:
        if counts:
            raise ValueError(
                f"control=None takes {where} for effects, but it holds non-negative integers (raw counts?); "
                "pass control= to subtract a control"
            )
        is_ctrl = np.zeros(len(obs), dtype=bool)
    treated = keep & ~is_ctrl
    if not treated.any():
        raise ValueError(f"no perturbed observation left in {where} (all rows are controls or not selected)")
    match_keys = mkeys or ckeys
    needed = {"perturbation_key": pkeys, "context_key": ckeys, "control_match": mkeys}
    for argname, keys in needed.items():
        for k in keys:
            rows = treated | (is_ctrl if k in match_keys else False)
            check_no_missing(obs[k], argname=argname, key=k, where=where, rows=rows)
    if replicate_key is not None:
        check_no_missing(
            obs[replicate_key], argname="replicate_key", key=replicate_key, where=where, rows=treated | is_ctrl
        )

    p_row = _joined(obs, pkeys, key_sep, argname="perturbation_key", rows=treated).to_numpy()
    c_row = _joined(obs, ckeys, key_sep, argname="context_key", rows=treated | is_ctrl).to_numpy()
    p_code, p_names = _codes(pd.Series(p_row[treated]))
    c_code, c_names = _codes(pd.Series(c_row[treated]))
    pair_keys, pair_code = np.unique(p_code * len(c_names) + c_code, return_inverse=True)
    p_lab = np.asarray(p_names, dtype=object)[pair_keys // len(c_names)]
    c_lab = np.asarray(c_names, dtype=object)[pair_keys % len(c_names)]
    pair_names = np.asarray(_pair_names(p_lab, c_lab), dtype=object)
    pair_of_row = np.full(len(obs), -1)
    pair_of_row[treated] = pair_code
    n_pairs = len(pair_names)
    rep_of_row = (
        _codes(obs[replicate_key].astype(str))[0] if replicate_key is not None else np.zeros(len(obs), dtype=np.int64)
    )
    n_rep = int(rep_of_row.max()) + 1
    if control is not None:
        m_lab = _joined(obs, match_keys, key_sep, argname="control_match", rows=treated | is_ctrl).to_numpy()
        used = treated | is_ctrl
        m_code_used, m_names = _codes(pd.Series(m_lab[used]))
        m_of_row = np.full(len(obs), -1)
        m_of_row[used] = m_code_used
    else:
        m_names = pd.Index(["-"])
        m_of_row = np.where(treated, 0, -1)
    n_m = len(m_names)

    # fine groups: treated (pair, match, replicate) and control (match, replicate); one pass for their sums
    fine = np.full(len(obs), -1, dtype=np.int64)
    key = np.where(treated, (pair_of_row * n_m + m_of_row) * n_rep + rep_of_row, -1)
    t_keys, t_inv = np.unique(key[treated], return_inverse=True)
    fine[treated] = t_inv
    n_t = len(t_keys)
    c_keys = np.empty(0, dtype=np.int64)
    if is_ctrl.any():
        c_keys, c_inv = np.unique(m_of_row[is_ctrl] * n_rep + rep_of_row[is_ctrl], return_inverse=True)
        fine[is_ctrl] = n_t + c_inv
    sums, sumsq, counts = _group_stats(
        x, fine, n_t + len(c_keys), normalize=normalize, target_sum=target_sum, chunk=chunk_size
    )
    f_pair, rest = np.divmod(t_keys, n_m * n_rep)
    f_m, f_rep = np.divmod(rest, n_rep)
    n_genes = adata.n_vars

    # control means and within-group spread per match group
    c_m = c_keys // n_rep
    ctrl_sum = np.zeros((n_m, n_genes))
    ctrl_sq = np.zeros((n_m, n_genes))
    ctrl_n = np.zeros(n_m)
    np.add.at(ctrl_sum, c_m, sums[n_t:])
    np.add.at(ctrl_sq, c_m, sumsq[n_t:])
    np.add.at(ctrl_n, c_m, counts[n_t:])
    ctrl_mean = np.divide(ctrl_sum, ctrl_n[:, None], out=np.zeros_like(ctrl_sum), where=ctrl_n[:, None] > 0)

    # per pair: observations, controls, and names
    pair_n = np.bincount(f_pair, weights=counts[:n_t], minlength=n_pairs)
    if control is not None:
        lacking = sorted({(int(p), int(m)) for p, m in zip(f_pair, f_m) if ctrl_n[m] == 0})
        if lacking:
            desc = [f"{pair_names[p]!r} ({', '.join(match_keys)}={m_names[m]!r})" for p, m in lacking[:20]]
            raise ValueError(
                f"treated group(s) {', '.join(desc)}{' ...' if len(lacking) > 20 else ''} have no control "
                f"observations ({pkeys[0]} == {control!r}) with the same {'/'.join(match_keys)}; "
                "every treated group needs matched controls"
            )
    keep_pair = pair_n >= min_cells
    all_perts = sorted(set(p_lab))
    kept_perts = {p for p, k in zip(p_lab, keep_pair) if k}
    empty = [p for p in all_perts if p not in kept_perts]
    if empty:
        total = {p: int(sum(n for q, n in zip(p_lab, pair_n) if q == p)) for p in empty}
        raise ValueError(
            f"perturbation(s) {_list(empty)} have fewer than min_cells={min_cells} cells in every context "
            f"(cells in total: {total}); lower min_cells or remove them"
        )
    if control is not None:
        few = sorted({int(m) for p, m in zip(f_pair, f_m) if keep_pair[p] and ctrl_n[m] < min_cells})
        if few:
            names = [f"{m_names[m]} ({int(ctrl_n[m])})" for m in few]
            raise ValueError(
                f"control group(s) {_list(names)} of {'/'.join(match_keys)} have fewer than min_cells={min_cells} "
                "control observations; lower min_cells or drop these groups"
            )
    if (~keep_pair).any():
        names = [f"{pair_names[i]} ({int(pair_n[i])})" for i in np.flatnonzero(~keep_pair)]
        logger.warning(
            "dropped %d pair(s) with fewer than min_cells=%d cells: %s", (~keep_pair).sum(), min_cells, _list(names)
        )

    # effects: every fine group minus its matched control mean, cell-weighted within the pair
    f_n = counts[:n_t]
    f_ctrl = ctrl_mean[f_m]
    pair_sum = np.zeros((n_pairs, n_genes))
    np.add.at(pair_sum, f_pair, sums[:n_t])
    pair_ctrl = np.zeros((n_pairs, n_genes))
    np.add.at(pair_ctrl, f_pair, f_ctrl * f_n[:, None])
    mean = pair_sum / pair_n[:, None]
    ref = pair_ctrl / pair_n[:, None]  # cell-weighted matched control mean of the pair
    effect = mean - ref

    # replicate units (pair, replicate): effects, counts
    u_key = f_pair * n_rep + f_rep
    u_keys, u_inv = np.unique(u_key, return_inverse=True)
    u_pair = u_keys // n_rep
    u_n = np.bincount(u_inv, weights=f_n)
    u_eff = np.zeros((len(u_keys), n_genes))
    np.add.at(u_eff, u_inv, sums[:n_t] - f_ctrl * f_n[:, None])
    u_eff /= u_n[:, None]

    # treated spread: replicate means (replicate_key) or observations, about the pair effect
    if replicate_key is not None:
        n_units = np.bincount(u_pair, minlength=n_pairs).astype(np.float64)
        dev = np.zeros((n_pairs, n_genes))
        np.add.at(dev, u_pair, (u_eff - effect[u_pair]) ** 2)
    else:
        n_units = pair_n
        # sum_i (x_i - C_m(i))^2 = sum_f [Q_f - 2 C_m S_f + n_f C_m^2], then minus n * effect^2
        dev = np.zeros((n_pairs, n_genes))
        np.add.at(dev, f_pair, sumsq[:n_t] - 2 * f_ctrl * sums[:n_t] + f_n[:, None] * f_ctrl**2)
        dev = np.maximum(dev - pair_n[:, None] * effect**2, 0.0)
    with np.errstate(invalid="ignore", divide="ignore"):
        var_t = np.where(n_units[:, None] > 1, dev / (n_units[:, None] - 1), np.nan) / n_units[:, None]
    var_c = np.zeros((n_pairs, n_genes))
    if control is not None:
        # variance of each match group's control mean, weighted by the pair's share of observations
        if replicate_key is not None:
            cu_n = counts[n_t:]
            cu_mean = sums[n_t:] / cu_n[:, None]
            c_units = np.bincount(c_m, minlength=n_m).astype(np.float64)
            c_dev = np.zeros((n_m, n_genes))
            np.add.at(c_dev, c_m, (cu_mean - ctrl_mean[c_m]) ** 2)
        else:
            c_units = ctrl_n
            c_dev = np.maximum(ctrl_sq - ctrl_n[:, None] * ctrl_mean**2, 0.0)
        with np.errstate(invalid="ignore", divide="ignore"):
            v_m = np.where(c_units[:, None] > 1, c_dev / (c_units[:, None] - 1), np.nan) / c_units[:, None]
        share = np.zeros((n_pairs, n_m))
        np.add.at(share, (f_pair, f_m), f_n)
        share /= pair_n[:, None]
        var_c = (share**2) @ np.nan_to_num(v_m, nan=0.0)
        single = (share > 0) & ~(c_units > 1)[None, :]
        var_c[single.any(1)] = np.nan
    se = np.sqrt(var_t + var_c)

    # replicate agreement: mean pairwise Pearson of the replicate effects, from standardised profiles
    if replicate_key is not None:
        zsum, n_ok = _standardized_sum(u_eff, u_pair, n_pairs)
    else:
        zsum, n_ok = np.zeros((n_pairs, n_genes)), np.zeros(n_pairs)
        rows_t = np.flatnonzero(treated & (pair_of_row >= 0))
        step = max(1, min(chunk_size, 20_000_000 // max(n_genes, 1)))
        for s in range(0, len(rows_t), step):
            r = rows_t[s : s + step]
            e = _dense_rows(x, r, normalize=normalize, target_sum=target_sum) - ctrl_mean[m_of_row[r]]
            z, ok = _standardized_sum(e, pair_of_row[r], n_pairs)
            zsum += z
            n_ok += ok
    with np.errstate(invalid="ignore", divide="ignore"):
        agreement = np.where(n_ok > 1, ((zsum**2).sum(1) - n_ok) / (n_ok * (n_ok - 1)), np.nan)

    if pool != "mean":
        if replicate_key is not None:
            groups = [u_eff[u_pair == p] for p in range(n_pairs)]
        else:
            groups = []
            for p in range(n_pairs):
                r = np.flatnonzero(pair_of_row == p)
                groups.append(_dense_rows(x, r, normalize=normalize, target_sum=target_sum) - ctrl_mean[m_of_row[r]])
        for p, e in enumerate(groups):
            if pool == "median":
                effect[p] = np.median(e, axis=0)
            else:
                effect[p] = e[int(np.argmax(np.linalg.norm(e, axis=1)))]

    rows = np.flatnonzero(keep_pair)
    p_arr, c_arr = p_lab[rows], c_lab[rows]
    pert_cats = sorted(set(p_arr))
    ctx_cats = sorted(set(c_arr))
    if control is not None and not mkeys:  # contexts with controls only are part of the grid too
        ctx_cats = sorted(set(ctx_cats) | set(c_row[is_ctrl]))
    out_obs = pd.DataFrame(
        {
            "perturbation": pd.Categorical(p_arr, categories=pert_cats),
            "context": pd.Categorical(c_arr, categories=ctx_cats),
        },
        index=pd.Index(pair_names[rows].astype(str)),
    )
    if len(pkeys) > 1 or len(ckeys) > 1:  # the joined keys as their own columns
        first_row = pd.Series(np.arange(len(obs)))[treated].groupby(pair_of_row[treated]).first()
        for k in dict.fromkeys(pkeys + ckeys):
            if k not in ("perturbation", "context"):
                out_obs[k] = obs[k].iloc[first_row.loc[rows].to_numpy()].to_numpy()
    out_obs["n_cells"] = pair_n[rows].astype(np.int64)
    out_obs["n_replicates"] = n_units[rows].astype(np.int64)
    out_obs["replicate_agreement"] = agreement[rows]
    layers = {"se": se[rows].astype(np.float32)}
    if control is not None:
        layers["mean"] = mean[rows].astype(np.float32)
    out = AnnData(X=effect[rows].astype(np.float32), obs=out_obs, var=adata.var.copy(), layers=layers)
    if control is not None:
        # context baseline: the mean of the matched control groups used by its pairs, weighted by
        # observations (with the default matching: the controls of the context itself)
        if mkeys:
            ctx_code = pd.Categorical(c_arr, categories=ctx_cats).codes
            pos = np.full(n_pairs, -1)
            pos[rows] = np.arange(len(rows))
            sel = pos[f_pair] >= 0
            used = np.unique(np.stack([ctx_code[pos[f_pair[sel]]], f_m[sel]]), axis=1)
        else:
            used = np.stack([np.arange(len(ctx_cats)), m_names.get_indexer(ctx_cats)])
        base_sum = np.zeros((len(ctx_cats), n_genes))
        base_n = np.zeros(len(ctx_cats))
        np.add.at(base_sum, used[0], ctrl_sum[used[1]])
        np.add.at(base_n, used[0], ctrl_n[used[1]])
        out.uns["control_mean"] = pd.DataFrame(
            (base_sum / base_n[:, None]).astype(np.float32), index=ctx_cats, columns=adata.var_names.copy()
        )
        out.uns["control_n_cells"] = {c: int(n) for c, n in zip(ctx_cats, base_n)}
    out.uns["signatures"] = {
        "params": {
            "mod": mod if adata is not data else "",
            "perturbation_key": pkeys,
            "context_key": ckeys,
            "control": control if control is not None else "None",
            "control_match": mkeys or ckeys if control is not None else [],
            "replicate_key": replicate_key if replicate_key is not None else "None",
            "select": {str(k): _select_values(v) for k, v in (select or {}).items()},
            "pool": pool,
            "layer": layer if layer is not None else "X",
            "min_cells": int(min_cells),
            "normalize": bool(normalize),
            "target_sum": float(target_sum),
        }
    }
    return out
