"""Tools: causal imputation, signature ranking, multimodal integration, latent-space GWAS, sparse mechanism shifts."""

from ._clump import clump
from ._cross_fit import cross_fit_embedding
from ._evaluate import evaluate_imputation, summarize_imputation
from ._evaluate_integration import evaluate_integration
from ._gwas import gwas
from ._impute import impute
from ._integrate import integrate, translate
from ._rank import rank_perturbations
from ._sparse_shift import evaluate_sparse_shift, sparse_shift

__all__ = [
    "clump",
    "cross_fit_embedding",
    "evaluate_imputation",
    "evaluate_integration",
    "evaluate_sparse_shift",
    "gwas",
    "integrate",
    "impute",
    "rank_perturbations",
    "sparse_shift",
    "summarize_imputation",
    "translate",
]
