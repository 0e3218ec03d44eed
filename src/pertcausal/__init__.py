"""pertcausal: causal analysis of perturbation screens for the scverse.

The namespaces ``pp``, ``tl``, ``pl``, ``io``, ``data`` and ``models`` are light to import:
heavy libraries (torch, scvi-tools, pertpy, h5py) are imported inside the
functions that need them.
"""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

from . import data, io, models, pl, pp, tl

try:
    __version__ = version("pertcausal")
except PackageNotFoundError:  # pragma: no cover - running from a source tree
    __version__ = "0.0.0"

__all__ = ["data", "io", "models", "pl", "pp", "tl", "__version__"]
