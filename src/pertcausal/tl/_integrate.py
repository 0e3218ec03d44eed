"""``tl.integrate`` and ``tl.translate``: one latent space for several modalities, and predictions across them."""

from __future__ import annotations

import logging
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from .._utils._params import h5_safe
from .._utils._validate import _list, is_mudata

if TYPE_CHECKING:
    from mudata import MuData

    from ..models._cross_modal import CrossModalAE

logger = logging.getLogger("pertcausal")


def _accelerator(device: str) -> tuple[str, Any]:
    """Lightning accelerator and devices for ``device``; a CUDA request without CUDA is an error."""
    from .._utils._device import resolve_device

    dev = resolve_device(device)
    if dev.type == "cuda":
        return "gpu", [dev.index or 0]
    return "cpu", 1


def integrate(
    mdata: MuData,
    *,
    mods: Sequence[str] | None = None,
    paired: bool | str = "auto",
    n_latent: int = 20,
    key_added: str = "X_pertcausal",
    device: str = "auto",
    max_epochs: int | None = None,
    layers: dict[str, str | None] | None = None,
    likelihoods: dict[str, str] | str = "auto",
    batch_key: str | None = None,
    categorical_covariate_keys: Sequence[str] | None = None,
    labels_key: str | None = None,
    features: dict[str, str | Sequence[str]] | None = None,
    alignment: str = "mmd",
    n_hidden: int = 256,
    n_layers: int = 2,
    batch_size: int = 256,
    save_model: str | Path | None = None,
    progress_bar: bool = True,
    random_state: int = 0,
    **train_kwargs: Any,
) -> CrossModalAE:
    """Learn one latent space for the modalities of a MuData with a cross-modal autoencoder.

    Trains :class:`pertcausal.models.CrossModalAE`: an encoder and a decoder per modality (negative binomial
    for counts, Gaussian for continuous data), tied by latent alignment and cross-reconstruction of cells
    measured in several modalities, and by distribution alignment (optionally anchored by ``labels_key``)
    for cells measured in one.

    Parameters
    ----------
    mdata
        MuData with at least two modalities; they may share cells (CITE-seq) or not.
    mods
        Modalities to integrate (default all).
    paired
        ``"auto"`` (use the cells shared between modalities when there are any), True (require them) or
        False (ignore pairing: every cell is used with one modality only).
    n_latent
        Dimensions of the shared latent space.
    key_added
        The joint embedding of every cell goes to ``mdata.obsm[key_added]`` and each modality's own
        embedding of its cells to ``mdata.mod[m].obsm[key_added]``; parameters, training history and the
        validation cells to ``mdata.uns[key_added]``. A modality that is not integrated keeps no
        ``obsm[key_added]`` from an earlier run.
    device
        ``"auto"``, ``"cpu"`` or ``"cuda[:N]"``.
    max_epochs
        Training epochs (default: scvi-tools' rule from the number of cells).
    layers, likelihoods, batch_key, categorical_covariate_keys, labels_key, features
        See :meth:`pertcausal.models.CrossModalAE.setup_mudata` (e.g. ``features={"rna": "highly_variable"}``).
    alignment, n_hidden, n_layers
        See :class:`pertcausal.models.CrossModalAE`.
    batch_size
        Cells per minibatch.
    save_model
        Directory to save the trained model to (:meth:`~pertcausal.models.CrossModalAE.save`).
    progress_bar
        Show the training progress bar.
    random_state
        Seed of the weights, the split and the minibatches.
    **train_kwargs
        Passed to :meth:`~pertcausal.models.CrossModalAE.train` (e.g. ``lr``, ``kl_weight``,
        ``train_size``, ``strategy``).

    Returns
    -------
    The trained model (for :func:`translate`, new data, or saving). ``mdata`` is written only when training
    succeeded.

    Examples
    --------
    >>> import pertcausal as pc
    >>> mdata = pc.data.simulate_multimodal(n_cells=200, random_state=0)
    >>> model = pc.tl.integrate(mdata, n_latent=6, max_epochs=5, progress_bar=False, device="cpu")
    >>> mdata.obsm["X_pertcausal"].shape, mdata["adt"].obsm["X_pertcausal"].shape
    ((200, 6), (200, 6))
    """
    from ..models._cross_modal._model import CrossModalAE, setup_mudata

    if not is_mudata(mdata):
        raise TypeError(f"integrate needs a MuData with several modalities, got {type(mdata).__name__}")
    if paired not in ("auto", True, False):
        raise ValueError(f"paired must be 'auto', True or False, got {paired!r}")
    accelerator, devices = _accelerator(device)
    setup = setup_mudata(
        mdata,
        modalities=mods,
        layers=layers,
        likelihoods=likelihoods,
        batch_key=batch_key,
        categorical_covariate_keys=categorical_covariate_keys,
        labels_key=labels_key,
        features=features,
    )
    model = CrossModalAE(
        mdata,
        n_latent=n_latent,
        n_hidden=n_hidden,
        n_layers=n_layers,
        alignment=alignment,
        paired=None if paired == "auto" else bool(paired),
        random_state=random_state,
        _setup=setup,
    )
    model.train(
        max_epochs,
        batch_size=batch_size,
        accelerator=accelerator,
        devices=devices,
        progress_bar=progress_bar,
        random_state=random_state,
        **train_kwargs,
    )
    joint = model.get_latent_representation()
    per_mod = {m: model.get_latent_representation(modality=m) for m in setup["modalities"]}
    if save_model is not None:
        model.save(save_model, overwrite=True)
    # write only now: the MuData is untouched when anything above fails
    mdata.obsm[key_added] = joint
    for m, emb in per_mod.items():
        mdata.mod[m].obsm[key_added] = emb
    for m in set(mdata.mod) - set(per_mod):  # an earlier run's embedding of a modality not integrated now
        if key_added in mdata.mod[m].obsm:
            del mdata.mod[m].obsm[key_added]
    mdata.uns[key_added] = {
        "params": h5_safe(
            {
                "modalities": setup["modalities"],
                "likelihoods": setup["likelihoods"],
                "paired": model.paired,
                "n_latent": n_latent,
                "alignment": alignment,
                "batch_key": batch_key,
                "labels_key": labels_key,
                "device": device,
                "random_state": random_state,
                **model.train_params,
                "save_model": None if save_model is None else str(save_model),
            }
        ),
        "history": model.history,
        "validation_cells": np.asarray(mdata.obs_names[model.validation_indices], dtype=str),
    }
    logger.info("tl.integrate: %d cells, modalities %s", mdata.n_obs, ", ".join(setup["modalities"]))
    return model


def translate(
    mdata: MuData,
    *,
    source: str,
    target: str,
    model: CrossModalAE,
    cells: str = "all",
    key_added: str | None = None,
) -> None:
    """Predict modality ``target`` from ``source`` for the cells measured in ``source``.

    Parameters
    ----------
    mdata
        MuData holding the ``source`` modality with the features the model was set up with.
    source, target
        Integrated modalities: the target is decoded from the source's latent embedding.
    model
        The model returned by :func:`integrate` (or :meth:`~pertcausal.models.CrossModalAE.load`).
    cells
        ``"all"`` source cells, or ``"unmeasured"``: only those without a ``target`` measurement (an error when
        every source cell has one).
    key_added
        Name of the new modality (default ``f"{target}_from_{source}"``): obs are the source cells, var the
        target's features, X the prediction on the target's normalised scale (log1p of 1e4 x proportion
        for count modalities, the mean for continuous ones); ``uns["params"]`` records how.

    Examples
    --------
    >>> import pertcausal as pc
    >>> mdata = pc.data.simulate_multimodal(n_cells=200, random_state=0)
    >>> model = pc.tl.integrate(mdata, n_latent=6, max_epochs=5, progress_bar=False, device="cpu")
    >>> pc.tl.translate(mdata, source="rna", target="adt", model=model)
    >>> mdata["adt_from_rna"].shape
    (200, 30)
    """
    import anndata as ad
    import mudata

    if cells not in ("all", "unmeasured"):
        raise ValueError(f"cells must be 'all' or 'unmeasured', got {cells!r}")
    if source not in mdata.mod:
        raise KeyError(f"source {source!r} is not a modality of the MuData; modalities are: {_list(mdata.mod)}")
    key = key_added or f"{target}_from_{source}"
    src = mdata.mod[source]
    keep = np.ones(src.n_obs, dtype=bool)
    if cells == "unmeasured" and target in mdata.mod:
        keep = ~src.obs_names.isin(mdata.mod[target].obs_names)
        if not keep.any():
            raise ValueError(
                f"cells='unmeasured', but every one of the {src.n_obs} cells of {source!r} is also measured in "
                f"{target!r}: no cell lacks the target; use cells='all' to predict it for every cell"
            )
    pred = model.translate(source, target, mdata)
    features = model.setup["features"][target]
    var = (
        mdata.mod[target].var.loc[features].copy()
        if target in mdata.mod and pd.Index(features).isin(mdata.mod[target].var_names).all()
        else pd.DataFrame(index=pd.Index(features))
    )
    out = ad.AnnData(X=pred[keep].astype(np.float32), obs=pd.DataFrame(index=src.obs_names[keep]), var=var)
    out.uns["params"] = {"source": source, "target": target, "cells": cells, "scale": _scale(model, target)}
    mdata.mod[key] = out
    with mudata.set_options(pull_on_update=False), warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="var_names are not unique", category=UserWarning)
        mdata.update()


def _scale(model: CrossModalAE, target: str) -> str:
    return "log1p(1e4 x proportion)" if model.setup["likelihoods"][target] == "nb" else "mean"
