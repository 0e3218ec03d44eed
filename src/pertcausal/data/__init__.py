"""Simulated perturbation screens with known ground truth."""

from ._simulate import simulate_effects, simulate_screen, true_effects

__all__ = ["simulate_effects", "simulate_screen", "true_effects"]
