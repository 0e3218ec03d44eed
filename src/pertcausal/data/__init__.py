"""Simulated perturbation screens with known ground truth."""

from ._donors import simulate_donor_cells
from ._factor_graph import simulate_factor_graph
from ._genetics import simulate_genotypes
from ._multimodal import simulate_multimodal
from ._simulate import simulate_effects, simulate_screen, true_effects
from ._sparse_shift import simulate_sparse_shift

__all__ = [
    "simulate_donor_cells",
    "simulate_effects",
    "simulate_factor_graph",
    "simulate_genotypes",
    "simulate_multimodal",
    "simulate_screen",
    "simulate_sparse_shift",
    "true_effects",
]
