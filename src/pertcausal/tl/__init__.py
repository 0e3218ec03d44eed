"""Tools: causal imputation, its evaluation, signature ranking and latent-space GWAS."""

from ._clump import clump
from ._cross_fit import cross_fit_embedding
from ._evaluate import evaluate_imputation, summarize_imputation
from ._gwas import gwas
from ._impute import impute
from ._rank import rank_perturbations

__all__ = [
    "clump",
    "cross_fit_embedding",
    "evaluate_imputation",
    "gwas",
    "impute",
    "rank_perturbations",
    "summarize_imputation",
]
