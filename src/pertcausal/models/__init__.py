"""Model classes in the scvi-tools style (``setup_mudata``, ``train``, ``get_latent_representation``,
``save``/``load``). They are imported on first access, so ``import pertcausal`` does not load torch."""

from __future__ import annotations

from typing import Any

__all__ = ["CausalGraphModel", "CrossModalAE", "SparseShiftVAE"]


def __getattr__(name: str) -> Any:
    if name == "CausalGraphModel":
        from ._causal_graph import CausalGraphModel

        return CausalGraphModel
    if name == "CrossModalAE":
        from ._cross_modal import CrossModalAE

        return CrossModalAE
    if name == "SparseShiftVAE":
        from ._sparse_shift import SparseShiftVAE

        return SparseShiftVAE
    raise AttributeError(f"module 'pertcausal.models' has no attribute {name!r}")
