"""Synthetic interventions (Squires, Shen, Agarwal, Shah & Uhler, CLeaR 2022).

Outcomes follow a latent factor model ``outcome(context, gene, action) = <u_{context,gene}, v_action>``.
To predict an unseen (context c*, action a*) pair with ``donor="action"`` (SI-Action), donor
actions measured in c* are chosen greedily so that the set of training contexts where a* and
every donor are measured stays non-empty; a* is regressed on the donors across those contexts
(stacked over genes), and the coefficients are applied to the donors' outcomes in c*.
``donor="context"`` (SI-Context) swaps the roles of actions and contexts.

When control baselines are known, the control is an extra action measured in every context
and the regression runs on levels (control + effect); effects are returned.
"""

from __future__ import annotations

import numpy as np

from ._grid import Grid, Prediction, validation_pairs


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
    keeps every direction). Both factors are in ``info`` (``donor_fit_r2``, ``inclusion``).
    """
    from .._utils._progress import track

    if donor not in ("auto", "action", "context"):
        raise ValueError(f"unknown donor {donor!r}; expected 'auto', 'action' or 'context'")
    if use_control not in ("auto", True, False):
        raise ValueError(f"unknown use_control {use_control!r}; expected 'auto', True or False")
    if unit_weight not in ("auto", "none", "equal"):
        raise ValueError(f"unknown unit_weight {unit_weight!r}; expected 'auto', 'none' or 'equal'")
    donors = ["action", "context"] if donor == "auto" else [donor]
    controls = [True, False] if use_control == "auto" else [bool(use_control)]
    if grid.baseline is None:
        controls = [False]
    weightings = ["none", "equal"] if unit_weight == "auto" else [unit_weight]
    options = [(d, c, w) for d in donors for c in controls for w in weightings]
    kw = {"energy": energy, "max_donors": max_donors}
    (donor, with_control, unit_weight), val_err = _choose(grid, options, n_validation=n_validation, seed=seed, **kw)
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

    out = np.empty((len(qp), grid.n_genes))
    reliability = np.zeros(len(qp))
    fit_r2 = np.zeros(len(qp))
    inclusion = np.zeros(len(qp))
    n_donors = np.zeros(len(qp), dtype=np.int64)
    for i in track(range(len(qp)), enabled=progress, description="synthetic interventions"):
        t, u = q_target[i], q_unit[i]
        units = np.flatnonzero(measured[t])
        units = units[units != u]
        cands = np.flatnonzero(measured[:, u])
        cands = cands[cands != t]
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
            out[i] = ctx_mean[qc[i]] if ctx_count[qc[i]] > 0 else global_mean
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
        out[i] = x_q @ beta + b0 - base
        fit_r2[i] = _fit_r2(x, y, beta, b0, weights)
        inclusion[i] = _inclusion(x_q, v, energy)
        reliability[i] = fit_r2[i] * inclusion[i]
        n_donors[i] = len(d)
    info = {
        "n_donors": n_donors,
        "donor_fit_r2": fit_r2,
        "inclusion": inclusion,
        "donor": donor,
        "use_control": with_control,
        "unit_weight": unit_weight,
        "validation_error": val_err,
    }
    return Prediction(out, reliability, info=info)
