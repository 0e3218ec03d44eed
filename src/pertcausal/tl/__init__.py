"""Tools: causal imputation, signature ranking, multimodal integration, latent-space GWAS, sparse mechanism shifts,
causal gene graphs."""

from ._causal_graph import causal_graph, evaluate_causal_graph, predict_intervention
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
    "causal_graph",
    "clump",
    "cross_fit_embedding",
    "evaluate_causal_graph",
    "evaluate_imputation",
    "evaluate_integration",
    "evaluate_sparse_shift",
    "gwas",
    "integrate",
    "impute",
    "predict_intervention",
    "rank_perturbations",
    "sparse_shift",
    "summarize_imputation",
    "translate",
]
