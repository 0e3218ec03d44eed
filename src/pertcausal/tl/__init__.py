"""Tools: causal imputation and its evaluation."""

from ._evaluate import evaluate_imputation, summarize_imputation
from ._impute import impute

__all__ = ["evaluate_imputation", "impute", "summarize_imputation"]
