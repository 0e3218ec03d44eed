"""Tools: causal imputation and its evaluation, signature ranking, multimodal integration, latent-space GWAS."""

from ._clump import clump
from ._cross_fit import cross_fit_embedding
from ._evaluate import evaluate_imputation, summarize_imputation
from ._evaluate_integration import evaluate_integration
from ._gwas import gwas
from ._impute import impute
from ._integrate import integrate, translate
from ._rank import rank_perturbations

__all__ = [
    "clump",
    "cross_fit_embedding",
    "evaluate_imputation",
    "evaluate_integration",
    "gwas",
    "integrate",
    "impute",
    "rank_perturbations",
    "summarize_imputation",
    "translate",
]
