"""Cross-modal autoencoder (torch and Lightning are imported with this subpackage)."""

from ._model import CrossModalAE

__all__ = ["CrossModalAE"]
