from ._model import SparseShiftVAE

__all__ = ["SparseShiftVAE"]
