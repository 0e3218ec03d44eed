"""Array/tensor engines. Nothing here knows about AnnData.

``METHODS`` is the registry that :func:`pertcausal.tl.impute` looks up: a new imputation method is
one engine function ``f(grid, query_pert, query_ctx, **kwargs) -> Prediction`` plus one entry here.
"""

from __future__ import annotations

from collections.abc import Callable

from . import baselines
from ._grid import Grid, Prediction
from .synthetic_interventions import synthetic_interventions


def _ntk(*args, **kwargs):  # torch is imported only when the NTK is used
    from .ntk import ntk

    return ntk(*args, **kwargs)


METHODS: dict[str, Callable[..., Prediction]] = {
    "ntk": _ntk,
    "synthetic_interventions": synthetic_interventions,
    "mean_over_contexts": baselines.mean_over_contexts,
    "mean_over_perturbations": baselines.mean_over_perturbations,
    "additive": baselines.additive,
    "nearest_context": baselines.nearest_context,
    "soft_impute": baselines.soft_impute,
}

__all__ = ["METHODS", "Grid", "Prediction"]
