"""Plotting: imputed grids, predictions against the truth, GWAS Manhattan and QQ plots (matplotlib)."""

from ._gwas import manhattan, qq
from ._imputation import imputation, prediction_scatter, reliability
from ._latent import latent, translation

__all__ = ["imputation", "latent", "manhattan", "prediction_scatter", "qq", "reliability", "translation"]
