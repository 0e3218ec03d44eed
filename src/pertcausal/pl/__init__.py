"""Plotting: imputed grids, GWAS Manhattan and QQ plots, latent spaces, perturbation targets, causal graphs."""

from ._causal_graph import causal_graph
from ._gwas import manhattan, qq
from ._imputation import imputation, prediction_scatter, reliability
from ._latent import latent, translation
from ._targets import targets

__all__ = [
    "causal_graph",
    "imputation",
    "latent",
    "manhattan",
    "prediction_scatter",
    "qq",
    "reliability",
    "targets",
    "translation",
]
