"""Tools: causal imputation, its evaluation and signature ranking."""

from ._clump import clump
from ._evaluate import evaluate_imputation, summarize_imputation
from ._gwas import gwas
from ._impute import impute
from ._rank import rank_perturbations

__all__ = ["clump", "evaluate_imputation", "gwas", "impute", "rank_perturbations", "summarize_imputation"]
