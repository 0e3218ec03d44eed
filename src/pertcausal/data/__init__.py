"""Simulated perturbation screens with known ground truth."""

from ._donors import simulate_donor_cells
from ._genetics import simulate_genotypes
from ._multimodal import simulate_multimodal
from ._simulate import simulate_effects, simulate_screen, true_effects

__all__ = [
    "simulate_donor_cells",
    "simulate_effects",
    "simulate_genotypes",
    "simulate_multimodal",
    "simulate_screen",
    "true_effects",
]
