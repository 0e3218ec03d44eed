"""Preprocessing: from single cells to perturbation signatures."""

from ._signatures import signatures

__all__ = ["signatures"]
