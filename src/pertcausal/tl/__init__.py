"""Tools: causal imputation, its evaluation and signature ranking."""

from ._evaluate import evaluate_imputation, summarize_imputation
from ._impute import impute
from ._rank import rank_perturbations

__all__ = ["evaluate_imputation", "impute", "rank_perturbations", "summarize_imputation"]
