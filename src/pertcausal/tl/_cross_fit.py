"""``tl.cross_fit_embedding``: out-of-fold embeddings, so that no donor's embedding was learnt from that donor."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
import scipy.sparse as sp

from .._utils._validate import get_matrix, get_modality, is_mudata, obs_column

if TYPE_CHECKING:
    from anndata import AnnData
    from mudata import MuData

# fit(train AnnData) -> transform(AnnData) -> (n_obs, n_latent) array
Embedder = Callable[[Any], Callable[[Any], np.ndarray]]


def _pca_embedder(n_components: int, layer: str | None) -> Embedder:
    """PCA fitted on the training cells (centred, dense or sparse X), applied to any cells."""

    def fit(train: AnnData) -> Callable[[AnnData], np.ndarray]:
        X = get_matrix(train, layer, where="train")
        mean = np.asarray(X.mean(axis=0, dtype=np.float64)).ravel()
        if sp.issparse(X):
            from scipy.sparse.linalg import svds

            op = sp.linalg.LinearOperator(
                X.shape,
                matvec=lambda v: X @ v - mean @ v,
                rmatvec=lambda v: X.T @ v - mean * v.sum(),
                dtype=np.float64,
            )
            _, _, vt = svds(op, k=n_components, random_state=0)
            vt = vt[::-1]
        else:
            _, _, vt = np.linalg.svd(np.asarray(X, dtype=np.float64) - mean, full_matrices=False)
            vt = vt[:n_components]

        def transform(data: AnnData) -> np.ndarray:
            Y = get_matrix(data, layer, where="data")
            return np.asarray(Y @ vt.T) - mean @ vt.T

        return transform

    return fit


def _procrustes(source: np.ndarray, target: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Orthogonal map R and centres with (source - mu_s) R + mu_t closest to target in least squares."""
    mu_s, mu_t = source.mean(axis=0), target.mean(axis=0)
    u, _, vt = np.linalg.svd((source - mu_s).T @ (target - mu_t))
    return u @ vt, mu_s, mu_t


def cross_fit_embedding(
    data: AnnData | MuData,
    *,
    sample_key: str,
    method: str | Embedder = "pca",
    n_components: int = 16,
    n_folds: int = 5,
    mod: str | None = None,
    layer: str | None = None,
    align: bool = True,
    n_anchors: int = 5_000,
    key_added: str = "X_cross_fit",
    random_state: int = 0,
) -> None:
    """Embed every cell with a model that never saw its donor (sample), for GWAS on the embedding.

    When an embedding model is trained on the same donors whose genotypes are then tested, each donor's
    embedding is partly fitted to that donor: its own noise, and any of its genetic signal, shape the
    axes. The association tests of :func:`pertcausal.tl.gwas` then no longer see independent noise.
    Cross-fitting removes this: donors are split into ``n_folds`` folds, a model is trained on the cells
    of the other folds, and only the held-out fold's cells are embedded with it. With ``align`` the
    folds' latent spaces are put in one coordinate system: every fold's model embeds the same random
    anchor cells, and an orthogonal Procrustes map takes each fold's space onto the first fold's.

    Parameters
    ----------
    data
        AnnData or MuData (``mod`` chooses the modality whose expression trains the model).
    sample_key
        obs column naming each cell's donor/sample: folds are made of whole donors.
    method
        ``"pca"`` (principal components of ``layer``, or X, of the training cells), or a callable
        ``fit(train: AnnData) -> transform`` where ``transform(cells: AnnData)`` returns a cells x latent
        array, e.g. one that trains an scvi-tools model on ``train`` and returns its
        ``get_latent_representation``.
    n_components
        Latent dimensions of the ``"pca"`` method.
    n_folds
        Folds of donors (at least 2).
    mod, layer
        Modality of a MuData and layer of the expression used by ``"pca"``.
    align
        Map every fold's latent space onto the first fold's with orthogonal Procrustes on shared anchor
        cells (needed to compare a dimension across folds; the maps use no genotype).
    n_anchors
        Anchor cells drawn at random from all cells for the alignment.
    key_added
        The embedding goes to ``obsm[key_added]`` (of the modality, and of a MuData whose cells are the
        modality's) and
        each cell's fold to ``obs[key_added + "_fold"]`` (a possible covariate of :func:`pertcausal.tl.gwas`);
        parameters to ``uns[key_added]``.
    random_state
        Seed of the fold assignment and of the anchors.

    Examples
    --------
    >>> import numpy as np, anndata as ad, pertcausal as pc
    >>> rng = np.random.default_rng(0)
    >>> adata = ad.AnnData(rng.normal(size=(600, 30)), obs={"donor": np.repeat([f"d{i}" for i in range(60)], 10)})
    >>> pc.tl.cross_fit_embedding(adata, sample_key="donor", n_components=5, n_folds=3)
    >>> adata.obsm["X_cross_fit"].shape, sorted(adata.obs["X_cross_fit_fold"].unique().tolist())
    ((600, 5), [0, 1, 2])
    """
    from anndata import AnnData

    adata = get_modality(data, mod) if is_mudata(data) else data
    if not isinstance(adata, AnnData):
        raise TypeError(f"expected an AnnData or MuData, got {type(data).__name__}")
    donors = obs_column(data, adata, sample_key, "sample_key")
    if donors.isna().any():
        raise ValueError(f"obs[{sample_key!r}] has {int(donors.isna().sum())} missing values; every cell needs a donor")
    if isinstance(method, str):
        if method != "pca":
            raise ValueError(f"unknown method {method!r}; expected 'pca' or a callable fit(train) -> transform")
        if not 1 <= n_components < min(adata.shape):
            raise ValueError(
                f"n_components={n_components} must be >= 1 and smaller than the data's shape {adata.shape}"
            )
        fit = _pca_embedder(n_components, layer)
    elif callable(method):
        fit = method
    else:
        raise TypeError(f"method must be 'pca' or a callable, got {type(method).__name__}")
    codes, uniques = pd.factorize(donors.astype(str), sort=True)
    if n_folds < 2 or n_folds > len(uniques):
        raise ValueError(f"n_folds={n_folds} must lie between 2 and the number of donors ({len(uniques)})")
    rng = np.random.default_rng(random_state)
    donor_fold = rng.permutation(np.arange(len(uniques)) % n_folds)
    cell_fold = donor_fold[codes]
    anchors = np.sort(rng.choice(adata.n_obs, size=min(n_anchors, adata.n_obs), replace=False)) if align else None

    out: np.ndarray | None = None
    reference: np.ndarray | None = None
    for k in range(n_folds):
        test = np.flatnonzero(cell_fold == k)
        transform = fit(adata[cell_fold != k].copy())
        emb = np.asarray(transform(adata[test].copy()), dtype=np.float64)
        if emb.ndim != 2 or emb.shape[0] != len(test):
            raise ValueError(
                f"the embedding of fold {k} has shape {emb.shape}; expected ({len(test)}, n_latent) for its cells"
            )
        if out is None:
            out = np.empty((adata.n_obs, emb.shape[1]))
        elif emb.shape[1] != out.shape[1]:
            raise ValueError(f"fold {k} gave {emb.shape[1]} latent dimensions, fold 0 gave {out.shape[1]}")
        if align:
            anchor_emb = np.asarray(transform(adata[anchors].copy()), dtype=np.float64)
            if reference is None:
                reference = anchor_emb
            else:
                R, mu_s, mu_t = _procrustes(anchor_emb, reference)
                emb = (emb - mu_s) @ R + mu_t
        out[test] = emb
    adata.obsm[key_added] = out
    adata.obs[f"{key_added}_fold"] = cell_fold
    if adata is not data and data.obs_names.equals(adata.obs_names):  # a MuData whose cells are the modality's
        data.obsm[key_added] = out
        data.obs[f"{key_added}_fold"] = cell_fold
    adata.uns[key_added] = {
        "params": {
            "sample_key": sample_key,
            "method": method if isinstance(method, str) else getattr(method, "__name__", "callable"),
            "n_folds": int(n_folds),
            "align": bool(align),
            "n_anchors": 0 if anchors is None else len(anchors),
            "random_state": int(random_state),
        }
    }
