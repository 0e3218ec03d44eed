"""Input/output: Connectivity Map GCT (text) and GCTX (HDF5) files as AnnData.

CMap files hold genes in rows and signatures in columns; the readers return the scanpy layout
(signatures in ``obs``, genes in ``var``) and the writers turn it back. ``h5py`` and ``anndata``
are imported inside the functions.
"""

from ._gct import read_gct, read_gctx, write_gct, write_gctx

__all__ = ["read_gct", "read_gctx", "write_gct", "write_gctx"]
