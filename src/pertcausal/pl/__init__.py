"""Plotting: imputed grids, predictions against the truth, GWAS Manhattan and QQ plots (matplotlib)."""

from ._gwas import manhattan, qq
from ._imputation import imputation, prediction_scatter, reliability

__all__ = ["imputation", "manhattan", "prediction_scatter", "qq", "reliability"]
