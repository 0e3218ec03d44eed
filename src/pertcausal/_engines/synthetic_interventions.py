"""Synthetic interventions (Squires, Shen, Agarwal, Shah & Uhler, CLeaR 2022).

Outcomes follow a latent factor model ``outcome(context, gene, action) = <u_{context,gene}, v_action>``.
To predict an unseen (context c*, action a*) pair with ``donor="action"`` (SI-Action), donor
actions measured in c* are chosen greedily so that the set of training contexts where a* and
every donor are measured stays non-empty; a* is regressed on the donors across those contexts
(stacked over genes), and the coefficients are applied to the donors' outcomes in c*.
``donor="context"`` (SI-Context) swaps the roles of actions and contexts.

When control baselines are known, the control is an extra action measured in every context
and the regression runs on levels (control + effect); effects are returned.

With ``moments="pairwise"`` the regression coefficients come from second moments instead of the
complete-case design: the moment between two entries of the donor axis (target or donors) is averaged
over every training unit measured in both (the available-case estimate of missing-data statistics), so a
unit missing some donors still informs the others. Two further options act on those moments: a locality
kernel weighting the training units by how much their donor outcomes resemble the queried unit's, and
per-gene coefficients shrunk towards the pooled ones.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

from ._grid import Grid, Prediction, option_grid, option_label, validation_pairs


def _rank_for_energy(s2: np.ndarray, energy: float) -> int:
    """Number of components kept from squared singular values ``s2`` (descending)."""
    if s2.size == 0 or s2[0] <= 0:
        return 0
    if energy >= 1.0:  # numerical rank: relative tolerance on singular values
        return int((s2 > s2[0] * 1e-12).sum())
    cum = np.cumsum(s2) / np.sum(s2)
    return int(min(np.searchsorted(cum, energy) + 1, s2.size))


def _right_basis(xc: np.ndarray, energy: float) -> tuple[np.ndarray, np.ndarray]:
    """Kept right singular vectors (rows) and squared singular values of a centred matrix.

    Computed from the small donors x donors Gram matrix, so the cost is linear in the number of
    stacked rows (genes x units) instead of an SVD of the tall matrix.
    """
    s2, v = np.linalg.eigh(xc.T @ xc)
    s2, v = s2[::-1], v[:, ::-1]
    k = _rank_for_energy(s2, energy)
    return v[:, :k].T, s2[:k]


def _hsvt_fit(
    x: np.ndarray, y: np.ndarray, energy: float, weights: np.ndarray | None = None
) -> tuple[np.ndarray, float, np.ndarray]:
    """Principal component regression with an intercept, keeping the singular values that carry ``energy``.

    ``energy=1`` is ordinary least squares (minimum-norm when rank deficient). ``weights`` (one per row,
    optional) makes it weighted least squares: rows are scaled by ``sqrt(weights)`` around the weighted
    means. Returns the coefficients, the intercept and the kept right singular vectors (for subspace inclusion).
    """
    if weights is None:
        xm, ym = x.mean(0), y.mean()
        xc, yc = x - xm, y - ym
    else:
        w = weights / weights.sum()
        xm, ym = w @ x, float(w @ y)
        sw = np.sqrt(weights)[:, None]
        xc, yc = (x - xm) * sw, (y - ym) * sw[:, 0]
    vt, s2 = _right_basis(xc, energy)
    if vt.shape[0] == 0:
        return np.zeros(x.shape[1]), float(ym), vt
    beta = vt.T @ ((vt @ (xc.T @ yc)) / s2)
    return beta, float(ym - xm @ beta), vt


def _inclusion(x_test: np.ndarray, v_train: np.ndarray, energy: float) -> float:
    """1 minus the subspace-inclusion error ||V_t - V_t P_train||_F^2 / k_t (1 = fully included)."""
    if v_train.shape[0] == 0:
        return 0.0
    vt, _ = _right_basis(x_test - x_test.mean(0), energy)
    if vt.shape[0] == 0:
        return 1.0
    resid = vt - (vt @ v_train.T) @ v_train
    return float(max(0.0, 1.0 - (resid**2).sum() / vt.shape[0]))


def _fit_r2(x: np.ndarray, y: np.ndarray, beta: np.ndarray, b0: float, weights: np.ndarray | None) -> float:
    """(Weighted) R^2 of the donor regression on the training units, floored at 0: the pre-intervention fit
    of synthetic control, low when the target's effects are not a stable combination of the donors'."""
    w = np.ones_like(y) if weights is None else weights
    resid = y - x @ beta - b0
    total = float(w @ (y - (w @ y) / w.sum()) ** 2)
    if total <= 0.0:
        return 1.0 if float(w @ resid**2) <= 0.0 else 0.0
    return float(max(0.0, 1.0 - (w @ resid**2) / total))


def _label(option: tuple[str, bool, str]) -> str:
    d, c, w = option
    return f"{d}{'+control' if c else ''}{'+equal_units' if w == 'equal' else ''}"


def _choose(
    grid: Grid, options: list[tuple[str, bool, str]], *, n_validation: int, seed: int, **kw
) -> tuple[tuple[str, bool, str], dict[str, float]]:
    """Pick the (donor axis, control use, unit weighting) with the lowest relative error on held-out training pairs.

    The first option is kept when no training pair can be held out.
    """
    if len(options) == 1:
        return options[0], {}
    val = validation_pairs(grid, n_validation, seed)
    if len(val) == 0:
        return options[0], {}
    train = grid.subset(np.setdiff1d(np.arange(grid.n_obs), val))
    truth = grid.y[val]
    norm = (truth * truth).sum(1)
    errors = {}
    for d, c, w in options:
        pred = synthetic_interventions(
            train, grid.pert[val], grid.ctx[val], donor=d, use_control=c, unit_weight=w, **kw
        ).values
        with np.errstate(invalid="ignore", divide="ignore"):
            errors[(d, c, w)] = float(np.nanmean(((pred - truth) ** 2).sum(1) / norm))
    best = min(options, key=lambda o: (np.nan_to_num(errors[o], nan=np.inf), options.index(o)))
    return best, {_label(o): e for o, e in errors.items()}


def synthetic_interventions(
    grid: Grid,
    qp: np.ndarray,
    qc: np.ndarray,
    *,
    donor: str = "auto",
    energy: float = 1.0,
    max_donors: int = 50,
    use_control: bool | str = "auto",
    unit_weight: str = "auto",
    moments: str = "complete",
    locality: float | None = None,
    gene_shrinkage: float = 0.0,
    select: Mapping[str, Sequence[Any]] | None = None,
    n_validation: int = 200,
    seed: int = 0,
    progress: bool = False,
    **_: object,
) -> Prediction:
    """Predict queried pairs with synthetic interventions.

    Parameters
    ----------
    donor
        ``"action"`` (SI-Action: other perturbations are donors), ``"context"`` (SI-Context), or
        ``"auto"``: the axis that predicts best a validation set of training pairs (below).
    energy
        Spectral energy kept by hard singular-value thresholding; ``1.0`` is least squares.
    max_donors
        Cap on the number of donors per prediction (the reference has none; a cap bounds the cost).
    use_control
        Treat the control as an action measured everywhere and regress levels (control + effect)
        instead of effects (needs ``grid.baseline``); ``"auto"`` chooses by validation.
    unit_weight
        How the training units (contexts for ``donor="action"``, perturbations for ``"context"``) are
        weighted in the regression: ``"none"`` (the reference: every stacked gene row counts the same, so
        units with large effects dominate the fit), ``"equal"`` (weighted least squares in which every unit
        counts the same: its rows are weighted by one over the mean squared norm of its donor and target
        outcomes, matching errors measured relative to each pair's effect), or ``"auto"``: chosen by
        validation.
    moments
        ``"complete"`` (the reference): least squares over the training units measured in the target and
        in every donor. ``"pairwise"``: the coefficients solve the normal equations built from second
        moments (about a scalar mean per target or donor, over units and genes), each moment between two
        entries averaged over all training units measured in both, weighted as ``unit_weight`` says (a
        unit's weight from its outcomes in the target and donors it has): units missing some donors still
        count, e.g. compounds measured at fewer doses or times. ``energy`` then thresholds the eigenvalues of
        the donors' moment matrix.
    locality
        With ``moments="pairwise"``, a bandwidth ``h``: every training unit's weight is multiplied by
        ``exp((s - 1) / h)``, ``s`` the cosine between its outcomes and the queried unit's over the donors
        both have, so units that respond like the queried one carry more weight (``None`` or ``inf``: no
        kernel).
    gene_shrinkage
        With ``moments="pairwise"``, a weight ``lambda`` in ``[0, 1]``: every gene gets its own coefficients
        from ``(1 - lambda) * M * tr(M_g) / tr(M) + lambda * M_g``, ``M`` the pooled moment matrix and ``M_g``
        the gene's own (0: one set of coefficients shared by all genes, as in the reference).
    select
        Candidate values of ``moments``, ``locality``, ``gene_shrinkage`` and ``energy`` to choose by
        validation on training pairs only, e.g. ``{"locality": [None, 0.5, 0.2], "gene_shrinkage": [0, 0.2]}``:
        after the ``"auto"`` choices above (made with the fixed values), every combination predicts the same
        held-out training pairs as those choices (``n_validation``) from the rest, and the one with the lowest
        mean relative squared error is used; ``info["selected"]`` and ``info["select_error"]`` record the
        choice.
    n_validation
        With ``"auto"`` choices, up to this many training pairs (at most a fifth; their perturbation
        and context keep other pairs) are held out, predicted from the rest with every candidate setting, and the
        setting with the lowest mean relative squared error is used; ``info["validation_error"]``
        records the errors. Training data only: the queried pairs are never looked at.

    Returns
    -------
    The predictions, with a reliability per pair: the (weighted) R^2 of the donor regression on the
    training units (synthetic control's pre-intervention fit) times the subspace inclusion of the
    queried unit's donor outcomes in the training units' kept right singular space (1 when ``energy=1``
    keeps every direction). Both factors are in ``info`` (``donor_fit_r2``, ``inclusion``). With
    ``moments="pairwise"`` the R^2 is the one the pooled moments imply, ``1 - (m_tt - beta . m_Dt) / m_tt``,
    and the inclusion is 1.
    """
    if donor not in ("auto", "action", "context"):
        raise ValueError(f"unknown donor {donor!r}; expected 'auto', 'action' or 'context'")
    if use_control not in ("auto", True, False):
        raise ValueError(f"unknown use_control {use_control!r}; expected 'auto', True or False")
    if unit_weight not in ("auto", "none", "equal"):
        raise ValueError(f"unknown unit_weight {unit_weight!r}; expected 'auto', 'none' or 'equal'")
    _check_moment_options(moments, locality, gene_shrinkage)
    if select:
        unknown = sorted(set(select) - set(_SELECTABLE))
        if unknown:
            raise ValueError(f"select: unknown option(s) {unknown}; expected some of {list(_SELECTABLE)}")
        for combo in option_grid(select):
            _check_moment_options(
                combo.get("moments", moments),
                combo.get("locality", locality),
                combo.get("gene_shrinkage", gene_shrinkage),
            )
    donors = ["action", "context"] if donor == "auto" else [donor]
    controls = [True, False] if use_control == "auto" else [bool(use_control)]
    if grid.baseline is None:
        controls = [False]
    weightings = ["none", "equal"] if unit_weight == "auto" else [unit_weight]
    options = [(d, c, w) for d in donors for c in controls for w in weightings]
    kw = {
        "energy": energy,
        "max_donors": max_donors,
        "moments": moments,
        "locality": locality,
        "gene_shrinkage": gene_shrinkage,
    }
    (donor, with_control, unit_weight), val_err = _choose(grid, options, n_validation=n_validation, seed=seed, **kw)
    selected, select_err = None, None
    if select:
        fixed = {"donor": donor, "use_control": with_control, "unit_weight": unit_weight}
        selected, select_err = _select(grid, qp, qc, kw, select, fixed, n_validation=n_validation, seed=seed)
        kw.update(selected)
        energy, moments, locality, gene_shrinkage = (
            kw["energy"], kw["moments"], kw["locality"], kw["gene_shrinkage"]
        )  # fmt: skip
    outs, reliability, fit_r2, inclusion, n_donors = _predict(
        grid, qp, qc, donor=donor, with_control=with_control, unit_weight=unit_weight, energy=energy,
        max_donors=max_donors, moments=moments, local=[(locality, gene_shrinkage)], progress=progress,
    )  # fmt: skip
    out, reliability = outs[0], reliability[0]
    info = {
        "n_donors": n_donors,
        "donor_fit_r2": fit_r2,
        "inclusion": inclusion,
        "donor": donor,
        "use_control": with_control,
        "unit_weight": unit_weight,
        "moments": moments,
        "locality": locality,
        "gene_shrinkage": gene_shrinkage,
        "energy": energy,
        "validation_error": val_err,
    }
    if selected is not None:
        info.update(selected=selected, select_error=select_err)
    return Prediction(out, reliability, info=info)


def _predict(
    grid: Grid,
    qp: np.ndarray,
    qc: np.ndarray,
    *,
    donor: str,
    with_control: bool,
    unit_weight: str,
    energy: float,
    max_donors: int,
    moments: str,
    local: list[tuple[float | None, float]],
    progress: bool = False,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Predictions of the queried pairs for every (locality, gene_shrinkage) of ``local`` (one pass over the
    queries shares the gathering of outcomes): values ``(len(local), n_queries, n_genes)``, reliabilities
    ``(len(local), n_queries)``, and the donor-fit R^2, inclusion and donor count of the first combination."""
    from .._utils._progress import track

    n_a = grid.n_perts + (1 if with_control else 0)
    # outcome rows: observed pairs first, then (with the control) one control row per context;
    # levels (control + effect) are gathered per query, never materialised for the whole grid
    if with_control:
        a_codes = np.concatenate([grid.pert, np.full(grid.n_contexts, grid.n_perts)])
        c_codes = np.concatenate([grid.ctx, np.arange(grid.n_contexts)])
    else:
        a_codes, c_codes = grid.pert, grid.ctx

    def outcome(rows: np.ndarray) -> np.ndarray:
        if not with_control:
            return grid.y[rows]
        out = np.empty((*rows.shape, grid.n_genes))
        is_pair = rows < grid.n_obs
        r = rows[is_pair]
        out[is_pair] = grid.y[r] + grid.baseline[grid.ctx[r]]
        out[~is_pair] = grid.baseline[rows[~is_pair] - grid.n_obs]
        return out

    if donor == "context":  # swap roles: contexts are the donors, actions the training units
        a_codes, c_codes = c_codes, a_codes
        n_donor_axis, n_unit_axis = grid.n_contexts, n_a
        q_target, q_unit = qc, qp
    else:
        n_donor_axis, n_unit_axis = n_a, grid.n_contexts
        q_target, q_unit = qp, qc
    index = np.full((n_donor_axis, n_unit_axis), -1, dtype=np.int64)
    index[a_codes, c_codes] = np.arange(len(a_codes))
    measured = index >= 0
    ctx_mean, ctx_count = grid.group_mean("ctx")
    global_mean = grid.y.mean(0)

    out = np.empty((len(local), len(qp), grid.n_genes))
    reliability = np.zeros((len(local), len(qp)))
    fit_r2 = np.zeros(len(qp))
    inclusion = np.zeros(len(qp))
    n_donors = np.zeros(len(qp), dtype=np.int64)
    pairwise = moments == "pairwise"
    for i in track(range(len(qp)), enabled=progress, description="synthetic interventions"):
        t, u = q_target[i], q_unit[i]
        units = np.flatnonzero(measured[t])
        units = units[units != u]
        cands = np.flatnonzero(measured[:, u])
        cands = cands[cands != t]
        if pairwise:
            base = grid.baseline[qc[i]] if with_control else 0.0
            fit = None
            if len(units) and len(cands):
                fit = _pairwise_fit(
                    outcome, index, measured, t, u, cands, max_donors=max_donors, energy=energy,
                    unit_weight=unit_weight, local=local,
                )  # fmt: skip
            if fit is None:
                out[:, i] = ctx_mean[qc[i]] if ctx_count[qc[i]] > 0 else global_mean
                continue
            out[:, i] = fit[0] - base
            fit_r2[i], inclusion[i], n_donors[i] = fit[1][0], 1.0, fit[2]
            reliability[:, i] = fit[1]
            continue
        donors: list[int] = []
        while len(units) and len(cands) and len(donors) < max_donors:
            counts = measured[np.ix_(cands, units)].sum(1)
            full = cands[counts == len(units)]
            if len(full):  # donors that keep every unit are added at once
                take = full[: max_donors - len(donors)]
                donors.extend(take.tolist())
                cands = np.setdiff1d(cands, take, assume_unique=True)
                continue
            best = int(np.argmax(counts))
            if counts[best] == 0:
                break
            donors.append(int(cands[best]))
            units = units[measured[cands[best], units]]
            cands = np.delete(cands, best)
        base = grid.baseline[qc[i]] if with_control else 0.0
        if not donors or not len(units):
            out[:, i] = ctx_mean[qc[i]] if ctx_count[qc[i]] > 0 else global_mean
            continue
        d = np.asarray(donors)
        x = outcome(index[np.ix_(d, units)].T)  # (units, donors, genes)
        x = x.transpose(0, 2, 1).reshape(-1, len(d))
        y = outcome(index[t, units]).reshape(-1)
        weights = None
        if unit_weight == "equal":  # one over each unit's mean squared outcome norm, repeated over its genes
            ms = ((x * x).reshape(len(units), -1).sum(1) + (y * y).reshape(len(units), -1).sum(1)) / (len(d) + 1)
            weights = np.repeat(1.0 / np.maximum(ms, np.finfo(float).tiny), grid.n_genes)
        beta, b0, v = _hsvt_fit(x, y, energy, weights)
        x_q = outcome(index[d, u]).T  # (genes, n_donors)
        out[:, i] = x_q @ beta + b0 - base
        fit_r2[i] = _fit_r2(x, y, beta, b0, weights)
        inclusion[i] = _inclusion(x_q, v, energy)
        reliability[:, i] = fit_r2[i] * inclusion[i]
        n_donors[i] = len(d)
    return out, reliability, fit_r2, inclusion, n_donors


_SELECTABLE = ("moments", "locality", "gene_shrinkage", "energy")


def _check_moment_options(moments: str, locality: float | None, gene_shrinkage: float) -> None:
    if moments not in ("complete", "pairwise"):
        raise ValueError(f"unknown moments {moments!r}; expected 'complete' or 'pairwise'")
    if locality is not None and not locality > 0:
        raise ValueError(f"locality must be None or > 0, got {locality!r}")
    if not 0.0 <= gene_shrinkage <= 1.0:
        raise ValueError(f"gene_shrinkage must be in [0, 1], got {gene_shrinkage!r}")
    if moments == "complete" and (locality is not None or gene_shrinkage > 0):
        raise ValueError("locality and gene_shrinkage need moments='pairwise'")


def _select(
    grid: Grid,
    qp: np.ndarray,
    qc: np.ndarray,
    options: dict[str, Any],
    select: Mapping[str, Sequence[Any]],
    fixed: dict[str, Any],
    *,
    n_validation: int,
    seed: int,
) -> tuple[dict[str, Any], dict[str, float]]:
    """The combination of ``select``'s values with the lowest mean relative squared error on held-out
    training pairs (:func:`validation_pairs`, as for the ``"auto"`` choices: pairs whose perturbation and
    context keep other pairs, the queries that donors can answer); ties and the absence of such pairs keep the
    first combination.

    Combinations that differ only in ``locality`` and ``gene_shrinkage`` are predicted in one pass.
    """
    combos = option_grid(select)
    val = validation_pairs(grid, n_validation, seed)
    folds = [(np.setdiff1d(np.arange(grid.n_obs), val), val)] if len(val) else []
    if len(combos) == 1 or not folds:
        return combos[0], {}
    full = [{**options, **combo} for combo in combos]
    groups: dict[tuple[str, float], list[int]] = {}
    for j, o in enumerate(full):
        groups.setdefault((o["moments"], o["energy"]), []).append(j)
    total, count = np.zeros(len(combos)), np.zeros(len(combos))
    for train, val in folds:
        sub, truth = grid.subset(train), grid.y[val]
        norm = (truth * truth).sum(1)
        for (moments, energy), members in groups.items():
            local = [(full[j]["locality"], full[j]["gene_shrinkage"]) for j in members]
            preds = _predict(
                sub, grid.pert[val], grid.ctx[val], donor=fixed["donor"], with_control=fixed["use_control"],
                unit_weight=fixed["unit_weight"], energy=energy, max_donors=options["max_donors"],
                moments=moments, local=local,
            )[0]  # fmt: skip
            for j, pred in zip(members, preds):
                with np.errstate(invalid="ignore", divide="ignore"):
                    rel = ((pred - truth) ** 2).sum(1) / norm
                total[j] += float(np.nansum(rel))
                count[j] += int(np.isfinite(rel).sum())
    with np.errstate(invalid="ignore", divide="ignore"):
        err = np.where(count > 0, total / count, np.inf)
    errors = {option_label(combo): float(e) for combo, e in zip(combos, err)}
    return combos[int(np.argmin(err))], errors


def _pairwise_fit(
    outcome: Callable[[np.ndarray], np.ndarray],
    index: np.ndarray,
    measured: np.ndarray,
    t: int,
    u: int,
    cands: np.ndarray,
    *,
    max_donors: int,
    energy: float,
    unit_weight: str,
    local: list[tuple[float | None, float]],
) -> tuple[np.ndarray, np.ndarray, int] | None:
    """Prediction of (target ``t``, unit ``u``) from moments over all training units (``moments="pairwise"``).

    Donors: the entries ``cands`` measured for ``u`` that share a training unit with the target (at most
    ``max_donors``, those sharing the most first). Returns, for every (locality, gene_shrinkage) of ``local``,
    the predicted outcome ``(len(local), n_genes)`` and the R^2 the pooled moments imply, and the number of
    donors; ``None`` when no donor shares a unit with the target.
    """
    other = np.ones(measured.shape[1], dtype=bool)
    other[u] = False
    shared = measured[cands][:, measured[t] & other].sum(1)
    order = np.argsort(-shared, kind="stable")
    d = cands[order][shared[order] > 0][:max_donors]
    if len(d) == 0:
        return None
    units = np.flatnonzero(measured[np.concatenate([[t], d])].any(0) & other)
    mask = measured[np.concatenate([[t], d])][:, units].T  # (units, entries): target first
    # drop donors until every pair of entries shares a unit (each moment needs one)
    both = mask.T.astype(float) @ mask
    keep = np.ones(len(d) + 1, dtype=bool)
    while (both[np.ix_(keep, keep)] <= 0).any():
        sub = np.flatnonzero(keep)[1:]
        keep[sub[np.argmax((both[np.ix_(sub, keep)] <= 0).sum(1))]] = False
    if keep.sum() < 2:
        return None
    d, mask = d[keep[1:]], mask[:, keep]
    e = np.concatenate([[t], d])
    rows = index[np.ix_(e, units)].T
    x = outcome(np.where(mask, rows, rows.max()))  # missing entries read any row, zeroed below
    x[~mask] = 0.0  # (units, entries, genes)
    n_genes = x.shape[2]
    xq = outcome(index[d, u])  # (donors, genes)
    base_w = np.ones(len(units))
    if unit_weight == "equal":
        ms = (x * x).sum((1, 2)) / mask.sum(1)
        base_w = 1.0 / np.maximum(ms, np.finfo(float).tiny)
    sim = None
    maskf = mask.astype(float)
    preds = np.empty((len(local), n_genes))
    r2 = np.zeros(len(local))
    xg = x.transpose(2, 1, 0)  # (genes, entries, units)
    for locality in dict.fromkeys(h for h, _ in local):
        w = base_w
        if locality is not None and np.isfinite(locality):
            if sim is None:  # cosine over the donors both units have
                a = x[:, 1:]
                num = np.einsum("veg,eg->v", a, xq)
                den = np.sqrt((a * a).sum((1, 2)) * (maskf[:, 1:] @ (xq * xq).sum(1)))
                sim = num / np.maximum(den, np.finfo(float).tiny)
            w = base_w * np.exp((sim - 1.0) / locality)
        wm = w[:, None] * maskf  # (units, entries)
        mean = np.nan_to_num(np.einsum("ve,veg->e", wm, x) / (wm.sum(0) * n_genes))
        xcg = (xg - mean[None, :, None]) * mask.T[None]  # (genes, entries, units), zero where missing
        pair_w = wm.T @ maskf  # weight of the units measured in both entries
        sg = np.matmul(xcg * w, xcg.transpose(0, 2, 1)) / pair_w  # per-gene moments (genes, entries, entries)
        s = sg.sum(0)
        s2, vec = np.linalg.eigh(s[1:, 1:])
        s2, vec = s2[::-1], vec[:, ::-1]
        k = _rank_for_energy(s2, energy)
        if k == 0:
            return None
        beta = vec[:, :k] @ ((vec[:, :k].T @ s[1:, 0]) / s2[:k])
        fit = float(np.clip(beta @ s[1:, 0] / s[0, 0], 0.0, 1.0)) if s[0, 0] > 0 else 0.0
        dev = xq - mean[1:, None]  # (donors, genes)
        scale = np.einsum("gaa->g", sg) / np.trace(s)
        for j, (h, lam) in enumerate(local):
            if h != locality and not (h is None and locality is None):
                continue
            r2[j] = fit
            if lam <= 0:
                preds[j] = mean[0] + dev.T @ beta
                continue
            mix = (1.0 - lam) * s[None] * scale[:, None, None] + lam * sg
            try:
                beta_g = np.linalg.solve(mix[:, 1:, 1:], mix[:, 1:, :1])[..., 0]
            except np.linalg.LinAlgError:
                beta_g = (np.linalg.pinv(mix[:, 1:, 1:]) @ mix[:, 1:, :1])[..., 0]
            preds[j] = mean[0] + (beta_g * dev.T).sum(1)
    return preds, r2, len(d)
