"""Plotting: figures of imputed grids and of predictions against the truth (matplotlib)."""

from ._imputation import imputation, prediction_scatter, reliability

__all__ = ["imputation", "prediction_scatter", "reliability"]
