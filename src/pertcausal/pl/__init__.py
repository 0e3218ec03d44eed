"""Plotting: imputed grids, GWAS Manhattan and QQ plots, latent spaces, perturbation targets (matplotlib)."""

from ._gwas import manhattan, qq
from ._imputation import imputation, prediction_scatter, reliability
from ._latent import latent, translation
from ._targets import targets

__all__ = ["imputation", "latent", "manhattan", "prediction_scatter", "qq", "reliability", "targets", "translation"]
