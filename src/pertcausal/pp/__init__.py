"""Preprocessing: from single cells to perturbation signatures."""

from ._genotypes import Genotypes, read_genotypes
from ._signatures import signatures

__all__ = ["Genotypes", "read_genotypes", "signatures"]
