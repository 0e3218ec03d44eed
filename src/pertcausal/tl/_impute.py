"""``tl.impute``: predict unmeasured (perturbation, context) responses."""

from __future__ import annotations

import logging
import time
import warnings
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from .._engines import METHODS
from .._utils._names import pair_names
from .._utils._params import h5_safe
from .._utils._validate import _list, is_mudata
from ._grid_io import TORCH_METHODS, check_method, grid_from_signatures

if TYPE_CHECKING:
    from anndata import AnnData
    from mudata import MuData

logger = logging.getLogger("pertcausal")


def impute(
    data: AnnData | MuData,
    *,
    method: str = "ntk",
    device: str = "auto",
    key_added: str = "impute",
    copy: bool = False,
    mod: str = "rna",
    perturbation_key: str | None = None,
    context_key: str | None = None,
    control: str | None = None,
    layer: str | None = None,
    min_cells: int = 10,
    perturbation_features: pd.DataFrame | np.ndarray | None = None,
    context_features: pd.DataFrame | np.ndarray | None = None,
    progress_bar: bool = True,
    random_state: int = 0,
    **method_kwargs: Any,
) -> AnnData | MuData | None:
    """Impute the response of every perturbation in every context where it was not measured.

    Parameters
    ----------
    data
        A cell-level MuData or AnnData (then ``perturbation_key``, ``context_key`` and ``control``
        are passed to :func:`pertcausal.pp.signatures`), or a signatures AnnData made by it.
    method
        ``"ntk"`` (NTK matrix completion with feature priors), ``"synthetic_interventions"``,
        ``"nearest_context"``, ``"mean_over_contexts"``, ``"mean_over_perturbations"``, ``"additive"``
        or ``"soft_impute"``.
    device
        ``"auto"`` (CUDA when available), ``"cpu"``, ``"cuda"`` or ``"cuda:N"`` for torch-backed methods.
    key_added
        Name of the new modality (MuData input) and of the ``uns`` entry with the parameters.
    copy
        For MuData input, work on a copy and return it instead of modifying ``data``.
    mod, perturbation_key, context_key, control, layer, min_cells
        Passed to :func:`pertcausal.pp.signatures` for cell-level input.
    perturbation_features, context_features
        Optional features (DataFrame indexed by label, or array in category order) used by the
        NTK feature prior, e.g. drug fingerprints or gene embeddings.
    progress_bar
        Show a progress bar for long work.
    random_state
        Seed of the randomised parts (Nystrom centres, SVD sketches).
    **method_kwargs
        Options of the method's engine (e.g. ``depth``, ``solver``, ``perturbation_identity``,
        ``context_kernel``, ``select`` for ``"ntk"``; ``donor``, ``energy``, ``unit_weight`` for
        ``"synthetic_interventions"``; ``rank`` for ``"soft_impute"``).

    Returns
    -------
    An AnnData over the complete perturbation x context grid (``obs_names`` are
    ``"perturbation|context"``, as in :func:`pertcausal.pp.signatures`; the contexts are those of the
    observed pairs and of ``uns["control_mean"]``, so a context with controls and no observed pair is
    predicted, and a categorical level with neither is left out with a warning) with ``X`` the observed
    effect where measured and the prediction
    elsewhere, ``obs["perturbation"]``, ``obs["context"]``, ``obs["observed"]``, ``obs["n_cells"]``,
    ``obs["reliability"]`` (higher is more trustworthy; NaN for observed pairs and for methods that
    give none): the NTK's ``1 - posterior variance``, synthetic interventions' donor-fit R^2 on the
    training units times the subspace inclusion of the queried unit (the inclusion alone is 1 for every
    pair under least squares, ``energy=1``),
    the neighbour similarity of ``nearest_context``, the agreement of the averaged effects for the
    means and the local fit of ``additive``; ``obs["posterior_variance"]`` for the NTK (relative to
    the prior, 0 at observed pairs),
    ``layers["mean"]`` (control mean + effect, when control means are known),
    ``uns["control_mean"]`` and ``uns[key_added]["params"]``.
    For MuData input it is stored as ``data.mod[key_added]`` (parameters also in
    ``data.uns[key_added]``) and ``None`` is returned (the MuData with ``copy=True``). The new
    modality has the genes of ``mod`` as its ``var_names``, so the MuData's global ``var_names``
    repeat them; its ``obs`` columns are not pulled into ``data.obs`` (call ``data.pull_obs()``).

    Examples
    --------
    >>> import pertcausal as pc
    >>> mdata = pc.data.simulate_screen(n_perturbations=8, n_contexts=4, n_genes=30, seed=0)
    >>> pc.tl.impute(
    ...     mdata, method="additive", perturbation_key="perturbation", context_key="context",
    ...     control="control", progress_bar=False,
    ... )
    >>> imputed = mdata["impute"]
    >>> int(imputed.n_obs) == 8 * 4
    True
    """
    from anndata import AnnData

    from ..pp import signatures

    check_method(method, device)
    if not isinstance(key_added, str) or not key_added:
        raise ValueError(f"key_added must be a non-empty string, got {key_added!r}")
    cell_level = perturbation_key is not None or context_key is not None or control is not None
    if cell_level:
        missing = [
            n
            for n, v in (("perturbation_key", perturbation_key), ("context_key", context_key), ("control", control))
            if v is None
        ]
        if missing:
            raise ValueError(
                f"cell-level input needs perturbation_key, context_key and control; missing: {_list(missing)}"
            )
        sig = signatures(
            data,
            mod=mod,
            perturbation_key=perturbation_key,
            context_key=context_key,
            control=control,
            layer=layer,
            min_cells=min_cells,
        )
    elif is_mudata(data):
        raise ValueError(
            "a MuData is cell-level input: pass perturbation_key=, context_key= and control= "
            "(or pass a signatures AnnData from pertcausal.pp.signatures)"
        )
    elif isinstance(data, AnnData):
        sig = data
    else:
        raise TypeError(f"expected an AnnData or MuData, got {type(data).__name__}")
    if is_mudata(data) and key_added in data.mod and key_added == mod:
        raise ValueError(f"key_added {key_added!r} would overwrite the input modality {mod!r}")

    grid, perts, ctxs = grid_from_signatures(
        sig, perturbation_features=perturbation_features, context_features=context_features
    )
    observed = grid.observed()
    qp, qc = np.nonzero(~observed)
    if len(qp) == 0:
        raise ValueError(
            f"nothing to impute: all {grid.n_perts} x {grid.n_contexts} (perturbation, context) pairs are observed"
        )
    kwargs = dict(method_kwargs)
    kwargs.setdefault("seed", random_state)
    kwargs.setdefault("progress", progress_bar)
    if method in TORCH_METHODS:
        kwargs["device"] = device
    logger.info("imputing %d pair(s) with %s from %d observed", len(qp), method, grid.n_obs)
    t0 = time.perf_counter()
    try:
        pred = METHODS[method](grid, qp, qc, **kwargs)
    except TypeError as err:
        raise TypeError(f"method {method!r}: {err}") from err
    seconds = time.perf_counter() - t0

    # assemble the full grid, perturbation-major
    pp_, cc_ = np.divmod(np.arange(grid.n_perts * grid.n_contexts), grid.n_contexts)
    flat_obs = grid.pert * grid.n_contexts + grid.ctx
    flat_q = qp * grid.n_contexts + qc
    x = np.empty((grid.n_perts * grid.n_contexts, grid.n_genes), dtype=np.float32)
    x[flat_obs] = grid.y
    x[flat_q] = pred.values
    n_cells = np.zeros(len(x), dtype=np.int64)
    if "n_cells" in sig.obs.columns:
        n_cells[flat_obs] = sig.obs["n_cells"].to_numpy(np.int64)
    reliability = np.full(len(x), np.nan)
    if pred.reliability is not None:
        reliability[flat_q] = pred.reliability
    obs = pd.DataFrame(
        {
            "perturbation": pd.Categorical.from_codes(pp_, categories=perts),
            "context": pd.Categorical.from_codes(cc_, categories=ctxs),
            "observed": observed.ravel(),
            "n_cells": n_cells,
            "reliability": reliability,
        },
        index=pair_names(perts[pp_], ctxs[cc_]),
    )
    if pred.variance is not None:
        variance = np.zeros(len(x))  # observed pairs are measured, not predicted
        variance[flat_q] = pred.variance
        obs["posterior_variance"] = variance
    out = AnnData(X=x, obs=obs, var=sig.var.copy())
    if grid.baseline is not None:
        out.layers["mean"] = (x + grid.baseline[cc_]).astype(np.float32)
        out.uns["control_mean"] = pd.DataFrame(
            grid.baseline.astype(np.float32), index=list(ctxs), columns=sig.var_names.copy()
        )
    params = {
        "method": method,
        "device": str(device),
        "random_state": int(random_state),
        "n_observed": int(grid.n_obs),
        "n_imputed": int(len(qp)),
        "seconds": float(seconds),
        "method_kwargs": h5_safe(dict(method_kwargs)),
        "engine_info": h5_safe({k: v for k, v in pred.info.items() if not isinstance(v, np.ndarray)}),
    }
    if cell_level:
        params["signatures"] = dict(sig.uns["signatures"]["params"])
    out.uns[key_added] = {"params": params}

    if is_mudata(data):
        import mudata

        target = data.copy() if copy else data
        target.mod[key_added] = out
        target.uns[key_added] = {"params": params}
        # register the new modality without pulling its obs/var columns into the global tables
        # (mudata >= 0.4 behaviour); use mdata.pull_obs() to pull them explicitly
        with mudata.set_options(pull_on_update=False), warnings.catch_warnings():
            # the new modality shares its gene names with the input modality by design
            warnings.filterwarnings("ignore", message="var_names are not unique", category=UserWarning)
            target.update()
        return target if copy else None
    return out
