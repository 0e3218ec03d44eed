"""``CrossModalAE``: a shared latent space for several modalities, paired or not (Yang et al. 2021)."""

from __future__ import annotations

import json
import logging
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
import scipy.sparse as sp

from ..._utils._lightning import quiet_lightning
from ..._utils._model_files import FORMAT, load_tensors, read_description, save_tensors, write_json
from ..._utils._validate import _list, check_unique_var_names, get_matrix, row_sums

if TYPE_CHECKING:
    from mudata import MuData

logger = logging.getLogger("pertcausal")

SETUP_KEY = "_pertcausal_setup"
LIKELIHOODS = ("nb", "gaussian")


# ---------------------------------------------------------------------------------------------
# registration of a MuData
# ---------------------------------------------------------------------------------------------
def _matrix(adata: Any, layer: str | None, where: str) -> Any:
    """The modality's matrix (canonical: duplicate sparse entries summed, on a copy); backed data refused."""
    return get_matrix(adata, layer, where=where, tool="CrossModalAE")


def _values(X: Any) -> np.ndarray:
    return X.data if sp.issparse(X) else np.asarray(X).ravel()


def _union_column(mdata: MuData, key: str, argname: str) -> np.ndarray:
    """An obs column over the MuData's cells, from ``mdata.obs`` or, failing that, the modalities' obs."""
    if key in mdata.obs.columns:
        return mdata.obs[key].to_numpy()
    values = pd.Series(np.full(mdata.n_obs, np.nan, dtype=object), index=mdata.obs_names)
    found = False
    for m, ad in mdata.mod.items():
        if key in ad.obs.columns:
            rows = np.asarray(mdata.obsmap[m]).ravel().astype(np.int64) - 1
            have = rows >= 0
            col = ad.obs[key].to_numpy()
            fill = values.isna().to_numpy() & have
            values.iloc[np.flatnonzero(fill)] = col[rows[fill]]
            found = True
    if not found:
        cols = set(mdata.obs.columns).union(*(set(a.obs.columns) for a in mdata.mod.values()))
        raise KeyError(
            f"{argname} {key!r} is not a column of mdata.obs or of any modality's obs; columns: {_list(sorted(cols))}"
        )
    return values.to_numpy()


def setup_mudata(
    mdata: MuData,
    *,
    modalities: Sequence[str] | None = None,
    layers: dict[str, str | None] | None = None,
    likelihoods: dict[str, str] | str = "auto",
    batch_key: str | None = None,
    categorical_covariate_keys: Sequence[str] | None = None,
    labels_key: str | None = None,
    features: dict[str, str | Sequence[str]] | None = None,
) -> dict[str, Any]:
    """Check a MuData for :class:`CrossModalAE` and record the setup in ``mdata.uns``; returns the setup."""
    from mudata import MuData

    if not isinstance(mdata, MuData):
        raise TypeError(f"expected a MuData, got {type(mdata).__name__}")
    mods = list(mdata.mod) if modalities is None else list(modalities)
    absent = [m for m in mods if m not in mdata.mod]
    if absent:
        raise KeyError(f"modalities {_list(absent)} are not in the MuData; modalities are: {_list(mdata.mod)}")
    if len(set(mods)) < 2:
        raise ValueError(f"integration needs at least two modalities; got {_list(mods)}")
    for m in mods:
        check_unique_var_names(mdata.mod[m], where=f"mdata.mod[{m!r}]")
    layers = dict(layers or {})
    unknown = set(layers) - set(mods)
    if unknown:
        raise KeyError(f"layers names modalities {_list(sorted(unknown))} that are not integrated ({_list(mods)})")
    if isinstance(likelihoods, str):
        likelihoods = dict.fromkeys(mods, likelihoods)
    features = dict(features or {})
    unknown = set(features) - set(mods)
    if unknown:
        raise KeyError(f"features names modalities {_list(sorted(unknown))} that are not integrated ({_list(mods)})")
    setup: dict[str, Any] = {"modalities": mods, "layers": {}, "likelihoods": {}, "features": {}}
    for m in mods:
        ad = mdata.mod[m]
        X = _matrix(ad, layers.get(m), f"mdata.mod[{m!r}]")
        chosen = np.ones(ad.n_vars, dtype=bool)
        if m in features:
            sel = features[m]
            if isinstance(sel, str):  # a boolean var column, e.g. "highly_variable"
                if sel not in ad.var.columns:
                    raise KeyError(
                        f"features[{m!r}] = {sel!r} is not a column of mdata.mod[{m!r}].var; columns are: "
                        f"{_list(ad.var.columns)}"
                    )
                chosen = ad.var[sel].to_numpy(dtype=bool)
            else:
                missing = pd.Index(list(sel)).difference(ad.var_names)
                if len(missing):
                    raise KeyError(f"features[{m!r}] names {len(missing)} absent features (e.g. {_list(missing[:5])})")
                chosen = ad.var_names.isin(list(sel))
            X = X[:, np.flatnonzero(chosen)]
        vals = _values(X)
        if vals.size and not np.isfinite(vals).all():
            raise ValueError(
                f"mdata.mod[{m!r}] has {int((~np.isfinite(vals)).sum())} NaN/inf values; remove them first"
            )
        is_count = bool(vals.size == 0 or ((vals >= 0).all() and np.array_equal(vals, np.round(vals))))
        lik = likelihoods.get(m, "auto")
        if lik == "auto":
            lik = "nb" if is_count else "gaussian"
            if not is_count:  # say so: log-normalised RNA would otherwise switch likelihood silently
                source = f"layer {layers[m]!r}" if layers.get(m) else "X"
                warnings.warn(
                    f"modality {m!r} is modelled with a Gaussian likelihood because its {source} does not hold raw "
                    f"counts (non-negative integers; values range over [{vals.min():.4g}, {vals.max():.4g}], e.g. "
                    "log-normalised data). Give its counts layer (layers=) for the negative binomial, or pass "
                    f"likelihoods={{{m!r}: 'gaussian'}} to choose the Gaussian and silence this warning",
                    UserWarning,
                    stacklevel=3,
                )
        if lik not in LIKELIHOODS:
            raise ValueError(f"likelihood {lik!r} of modality {m!r} is unknown; expected one of {_list(LIKELIHOODS)}")
        if lik == "nb" and not is_count:
            raise ValueError(
                f"the negative binomial likelihood of modality {m!r} needs raw counts (non-negative integers) but "
                f"its {'layer ' + repr(layers[m]) if layers.get(m) else 'X'} holds other values; give a counts layer "
                "or likelihoods={...: 'gaussian'}"
            )
        nonzero = np.asarray(abs(X).sum(axis=0, dtype=np.float64)).ravel() > 0
        names = ad.var_names[chosen]
        if not nonzero.all():
            warnings.warn(
                f"{int((~nonzero).sum())} features of modality {m!r} are zero in every cell and are left out "
                f"(e.g. {_list(names[~nonzero][:5])})",
                stacklevel=3,
            )
        if not nonzero.any():
            raise ValueError(f"every feature of modality {m!r} is zero")
        setup["layers"][m] = "None" if layers.get(m) is None else layers[m]
        setup["likelihoods"][m] = lik
        setup["features"][m] = list(map(str, names[nonzero]))
    keys = ([batch_key] if batch_key else []) + list(categorical_covariate_keys or [])
    setup["covariates"] = {}
    for k in keys:
        col = _union_column(mdata, k, "covariate key")
        if pd.isna(col).any():
            raise ValueError(f"covariate {k!r} is missing for {int(pd.isna(col).sum())} cells")
        setup["covariates"][k] = sorted(map(str, pd.unique(col)))
    setup["labels_key"] = "None"
    if labels_key is not None:
        col = _union_column(mdata, labels_key, "labels_key")
        setup["labels_key"] = labels_key
        setup["labels"] = sorted(map(str, pd.unique(col[~pd.isna(col)])))
    return setup


# ---------------------------------------------------------------------------------------------
# minibatches streamed from the (sparse) matrices
# ---------------------------------------------------------------------------------------------
class _Cells:
    """The MuData's cells as index-addressable minibatches: each modality gathered only for its own cells."""

    def __init__(self, mdata: MuData, setup: dict[str, Any]) -> None:
        self.mods = setup["modalities"]
        self.n = mdata.n_obs
        self.obs_names = mdata.obs_names.copy()
        self.rows: dict[str, np.ndarray] = {}
        self.X: dict[str, Any] = {}
        self.library: dict[str, np.ndarray] = {}
        for m in self.mods:
            if m not in mdata.mod:  # at inference a modality may be absent: it has no cells
                self.X[m] = sp.csr_matrix((0, len(setup["features"][m])), dtype=np.float32)
                self.library[m] = np.zeros(0, dtype=np.float32)
                self.rows[m] = np.full(self.n, -1, dtype=np.int64)
                continue
            ad = mdata.mod[m]
            layer = setup["layers"][m]
            X = _matrix(ad, None if layer == "None" else layer, f"mdata.mod[{m!r}]")
            missing = pd.Index(setup["features"][m]).difference(ad.var_names)
            if len(missing):
                raise KeyError(
                    f"modality {m!r} lacks {len(missing)} features the model was set up with "
                    f"(e.g. {_list(missing[:5])})"
                )
            cols = ad.var_names.get_indexer(setup["features"][m])
            X = sp.csr_matrix(X, dtype=np.float32) if sp.issparse(X) else np.asarray(X, dtype=np.float32)
            self.X[m] = X[:, cols]
            # the library is over the model's features, so extra features in new data change nothing
            self.library[m] = row_sums(self.X[m]).astype(np.float32)
            self.rows[m] = np.asarray(mdata.obsmap[m]).ravel().astype(np.int64) - 1
        self.cov = np.zeros((self.n, len(setup["covariates"])), dtype=np.int64)
        for j, (k, cats) in enumerate(setup["covariates"].items()):
            col = pd.Categorical(pd.Series(_union_column(mdata, k, "covariate key")).astype(str), categories=cats)
            if (col.codes < 0).any():
                raise ValueError(f"covariate {k!r} has categories the model was not set up with")
            self.cov[:, j] = col.codes
        self.labels = None
        if setup.get("labels_key", "None") != "None":
            col = pd.Series(_union_column(mdata, setup["labels_key"], "labels_key"))
            self.labels = pd.Categorical(col.where(col.notna(), None).astype(object), categories=setup["labels"]).codes

    def unpair(self) -> None:
        """Keep each cell with its first modality only, so that no pairs are used."""
        seen = np.zeros(self.n, dtype=bool)
        for m in self.mods:
            self.rows[m] = np.where(seen, -1, self.rows[m])
            seen |= self.rows[m] >= 0

    def n_paired(self) -> int:
        present = np.stack([self.rows[m] >= 0 for m in self.mods])
        return int((present.sum(axis=0) >= 2).sum())

    def collate(self, idx: Sequence[int] | np.ndarray) -> dict[str, Any]:
        import torch

        idx = np.asarray(idx, dtype=np.int64)
        batch: dict[str, Any] = {"n_cells": len(idx)}
        for m in self.mods:
            rows = self.rows[m][idx]
            present = rows >= 0
            r = rows[present]
            x = self.X[m][r]
            x = x.toarray() if sp.issparse(x) else np.asarray(x)
            pos = np.full(len(idx), -1, dtype=np.int64)
            pos[present] = np.arange(present.sum())
            batch[m] = {
                "present": torch.from_numpy(present),
                "pos": torch.from_numpy(pos),
                "x": torch.from_numpy(x),
                "library": torch.from_numpy(self.library[m][r]),
            }
        if self.cov.shape[1]:
            batch["cov"] = torch.from_numpy(self.cov[idx])
        if self.labels is not None:
            batch["labels"] = torch.from_numpy(self.labels[idx].astype(np.int64))
        return batch

    def loader(self, idx: np.ndarray, *, batch_size: int, shuffle: bool, seed: int = 0) -> Any:
        import torch

        gen = torch.Generator().manual_seed(seed)
        return torch.utils.data.DataLoader(
            idx.tolist(), batch_size=batch_size, shuffle=shuffle, collate_fn=self.collate, generator=gen
        )


# ---------------------------------------------------------------------------------------------
# the model
# ---------------------------------------------------------------------------------------------
class CrossModalAE:
    """Cross-modal autoencoder: one encoder and decoder per modality into one shared latent space.

    After the cross-modal autoencoders of Yang, Belyaeva et al. (Nat Commun 2021). Count modalities (RNA,
    protein tags) are decoded with a negative binomial likelihood and the observed library size,
    continuous ones (image features, normalised data) with a Gaussian. Cells measured in several
    modalities (paired) tie the modalities together by latent alignment and cross-reconstruction (encode
    with one modality, decode the other); cells measured in one modality only (unpaired) are aligned
    through the distribution of their embeddings (MMD or an adversarial discriminator), optionally
    anchored by shared labels. Categorical covariates (batch) are fed to the decoders, as scvi-tools does.

    Parameters
    ----------
    mdata
        A MuData registered with :meth:`setup_mudata`.
    n_latent, n_hidden, n_layers, dropout
        Latent dimensions and the size of the encoder/decoder MLPs; dropout applies to the encoders only.
    alignment
        ``"mmd"`` or ``"adversarial"`` distribution alignment.
    paired
        Use the pairs of cells measured in several modalities (True when there are any).
    random_state
        Seed of the initial weights (None: torch's current random state).

    Examples
    --------
    >>> import pertcausal as pc
    >>> mdata = pc.data.simulate_multimodal(n_cells=200, random_state=0)  # doctest: +SKIP
    >>> pc.models.CrossModalAE.setup_mudata(mdata)  # doctest: +SKIP
    >>> model = pc.models.CrossModalAE(mdata, n_latent=8)  # doctest: +SKIP
    >>> model.train(max_epochs=20, progress_bar=False)  # doctest: +SKIP
    >>> model.get_latent_representation().shape  # doctest: +SKIP
    (200, 8)
    """

    def __init__(
        self,
        mdata: MuData,
        *,
        n_latent: int = 20,
        n_hidden: int = 256,
        n_layers: int = 2,
        dropout: float = 0.1,
        alignment: str = "mmd",
        paired: bool | None = None,
        random_state: int | None = 0,
        _setup: dict[str, Any] | None = None,
    ) -> None:
        import torch

        from ._module import CrossModalModule

        setup = _setup or mdata.uns.get(SETUP_KEY, {}).get("CrossModalAE")
        if setup is None:
            raise ValueError("run pertcausal.models.CrossModalAE.setup_mudata(mdata, ...) before creating the model")
        if alignment not in ("mmd", "adversarial"):
            raise ValueError(f"alignment must be 'mmd' or 'adversarial', got {alignment!r}")
        self.setup = _plain(setup)
        cells = _Cells(mdata, self.setup)
        n_pairs = cells.n_paired()
        self.paired = bool(n_pairs) if paired is None else bool(paired)
        if self.paired and n_pairs == 0:
            raise ValueError(
                "paired=True but no cell is measured in two modalities (obs_names shared between modalities); "
                "use paired=False for unpaired integration"
            )
        if not self.paired:
            cells.unpair()
        self.cells = cells
        means, sds = {}, {}
        for m in self.setup["modalities"]:
            X = self.cells.X[m]
            mean = np.asarray(X.mean(axis=0, dtype=np.float64)).ravel()
            sq = np.asarray((X.multiply(X) if sp.issparse(X) else np.square(X)).mean(axis=0, dtype=np.float64)).ravel()
            means[m] = torch.tensor(mean, dtype=torch.float32)
            sds[m] = torch.tensor(np.sqrt(np.maximum(sq - mean**2, 1e-8)), dtype=torch.float32)
        self.init_params = {
            "n_latent": n_latent,
            "n_hidden": n_hidden,
            "n_layers": n_layers,
            "dropout": dropout,
            "alignment": alignment,
            "paired": self.paired,
            "random_state": random_state,
        }
        if random_state is not None:
            torch.manual_seed(random_state)
        self.module = CrossModalModule(
            {m: len(f) for m, f in self.setup["features"].items()},
            self.setup["likelihoods"],
            n_latent=n_latent,
            n_hidden=n_hidden,
            n_layers=n_layers,
            dropout=dropout,
            n_covariate_categories=tuple(len(c) for c in self.setup["covariates"].values()),
            n_labels=len(self.setup.get("labels", [])),
            alignment=alignment,
            feature_means=means,
            feature_sds=sds,
        )
        self.is_trained = False
        self.history: pd.DataFrame = pd.DataFrame()
        self.train_indices = np.zeros(0, dtype=np.int64)
        self.validation_indices = np.zeros(0, dtype=np.int64)

    def __repr__(self) -> str:
        mods = ", ".join(
            f"{m} ({len(f)} features, {self.setup['likelihoods'][m]})" for m, f in self.setup["features"].items()
        )
        state = "trained" if self.is_trained else "not trained"
        return f"CrossModalAE with {self.init_params['n_latent']} latent dimensions over {mods}; {state}"

    # -- setup ----------------------------------------------------------------------------------
    @classmethod
    def setup_mudata(
        cls,
        mdata: MuData,
        *,
        modalities: Sequence[str] | None = None,
        layers: dict[str, str | None] | None = None,
        likelihoods: dict[str, str] | str = "auto",
        batch_key: str | None = None,
        categorical_covariate_keys: Sequence[str] | None = None,
        labels_key: str | None = None,
        features: dict[str, str | Sequence[str]] | None = None,
    ) -> None:
        """Register ``mdata``: modalities, their layers and likelihoods, covariates and anchoring labels.

        Parameters
        ----------
        mdata
            The MuData; modalities may share cells (paired) or not.
        modalities
            Modalities to integrate (default: all, at least two).
        layers
            Layer per modality holding its data (default X).
        likelihoods
            ``"auto"`` (negative binomial for non-negative integers, else Gaussian, with a warning naming the
            modality), or ``"nb"``/``"gaussian"`` for all or per modality.
        batch_key, categorical_covariate_keys
            Categorical covariates given to the decoders (obs columns of the MuData or of its modalities).
        labels_key
            Labels (e.g. cell type, perturbation) anchoring unpaired modalities; missing values allowed.
        features
            Features to model per modality: a boolean var column (``"highly_variable"``) or a list of
            names (default all; features that are zero in every cell are always left out).

        The setup goes to ``mdata.uns["_pertcausal_setup"]["CrossModalAE"]``; nothing is written on an error.
        """
        setup = setup_mudata(
            mdata,
            modalities=modalities,
            layers=layers,
            likelihoods=likelihoods,
            batch_key=batch_key,
            categorical_covariate_keys=categorical_covariate_keys,
            labels_key=labels_key,
            features=features,
        )
        store = dict(mdata.uns.get(SETUP_KEY, {}))
        store["CrossModalAE"] = setup
        mdata.uns[SETUP_KEY] = store

    # -- training -------------------------------------------------------------------------------
    def train(
        self,
        max_epochs: int | None = None,
        *,
        batch_size: int = 256,
        lr: float = 1e-3,
        weight_decay: float = 1e-6,
        train_size: float = 0.9,
        kl_weight: float = 0.1,
        kl_warmup_epochs: int | None = None,
        align_weight: float = 1.0,
        cross_weight: float = 1.0,
        dist_weight: float | None = None,
        label_weight: float = 1.0,
        early_stopping: bool = False,
        early_stopping_patience: int = 45,
        accelerator: str = "auto",
        devices: int | str | Sequence[int] = "auto",
        strategy: str | Any = "auto",
        progress_bar: bool = True,
        random_state: int = 0,
        **trainer_kwargs: Any,
    ) -> None:
        """Train with Lightning on minibatches streamed from the MuData's (sparse) matrices.

        Parameters
        ----------
        max_epochs
            Passes over the training cells (default: scvi-tools' rule, min(400, 400 x 20,000 / cells)).
        batch_size, lr, weight_decay
            Minibatch size and AdamW settings.
        train_size
            Fraction of cells for training; the rest gives the validation loss in :attr:`history`.
        kl_weight, kl_warmup_epochs
            Weight of the KL divergence to the N(0, I) prior, reached linearly over the warm-up (default a
            third of the epochs).
        align_weight, cross_weight
            Weights of the latent alignment and of the cross-reconstruction of paired cells.
        dist_weight
            Weight of the distribution alignment (MMD or adversarial); default 0 when every cell is paired,
            else 100 (the MMD is on the scale of its kernel, far below the reconstruction terms). With
            ``labels_key`` the MMD is class-conditional: each label's cells are aligned across modalities.
        label_weight
            Weight of the label classifier on the latent (with ``labels_key``).
        early_stopping, early_stopping_patience
            Stop when the validation reconstruction (own plus cross-modal) has not improved for this many
            epochs, and keep the weights of the best epoch (needs ``train_size < 1``).
        accelerator, devices, strategy
            Passed to :class:`lightning.pytorch.Trainer` (e.g. ``accelerator="gpu", devices=2,
            strategy="ddp"`` for several GPUs).
        progress_bar
            Show Lightning's progress bar.
        random_state
            Seed of the initial weights, the split and the minibatch order.
        """
        import lightning.pytorch as lpl
        import torch

        from ._training import TrainingPlan

        n = self.cells.n
        if max_epochs is None:
            max_epochs = int(min(400, round(400 * 20_000 / max(n, 1))))
        lpl.seed_everything(random_state, verbose=False)
        rng = np.random.default_rng(random_state)
        perm = rng.permutation(n)
        n_train = n if train_size >= 1 else max(1, int(round(train_size * n)))
        self.train_indices, self.validation_indices = np.sort(perm[:n_train]), np.sort(perm[n_train:])
        all_paired = all((self.cells.rows[m] >= 0).all() for m in self.setup["modalities"])
        if dist_weight is None:
            dist_weight = 0.0 if (self.paired and all_paired) else 100.0
        weights = {
            "kl_weight": kl_weight,
            "align_weight": align_weight if self.paired else 0.0,
            "cross_weight": cross_weight if self.paired else 0.0,
            "dist_weight": dist_weight,
            "label_weight": label_weight,
        }
        plan = TrainingPlan(
            self.module,
            weights,
            lr=lr,
            weight_decay=weight_decay,
            kl_warmup_epochs=max(1, max_epochs // 3) if kl_warmup_epochs is None else kl_warmup_epochs,
            early_stopping_patience=early_stopping_patience if early_stopping else None,
        )
        if early_stopping and train_size >= 1:
            raise ValueError("early_stopping needs validation cells: use train_size < 1")
        train_loader = self.cells.loader(self.train_indices, batch_size=batch_size, shuffle=True, seed=random_state)
        val_loader = (
            self.cells.loader(self.validation_indices, batch_size=batch_size, shuffle=False)
            if len(self.validation_indices)
            else None
        )
        with quiet_lightning():
            trainer = lpl.Trainer(
                max_epochs=max_epochs,
                accelerator=accelerator,
                devices=devices,
                strategy=strategy,
                enable_progress_bar=progress_bar,
                enable_model_summary=False,
                enable_checkpointing=False,
                logger=False,
                num_sanity_val_steps=0,
                **trainer_kwargs,
            )
            trainer.fit(plan, train_dataloaders=train_loader, val_dataloaders=val_loader)
        if plan.best_state is not None:  # early stopping: the weights of the best validation epoch
            plan.module.load_state_dict(plan.best_state)
        self.module = plan.module.to(torch.device("cpu"))
        self.module.eval()
        self.history = pd.DataFrame(plan.history)
        self.train_params = {
            "max_epochs": int(max_epochs),
            "epochs_run": len(plan.history),
            "best_epoch": int(plan.best_epoch),
            "batch_size": int(batch_size),
            "lr": float(lr),
            **weights,
        }
        self.is_trained = True

    # -- inference ------------------------------------------------------------------------------
    def _cells_for(self, mdata: MuData | None) -> _Cells:
        if mdata is None:
            return self.cells
        if not any(m in mdata.mod for m in self.setup["modalities"]):
            raise KeyError(
                f"the MuData has none of the model's modalities ({_list(self.setup['modalities'])}); "
                f"it has {_list(mdata.mod)}"
            )
        return _Cells(mdata, self.setup)

    def _encode_all(self, cells: _Cells, batch_size: int) -> dict[str, np.ndarray]:
        """Latent means of every modality for its own cells (rows in the modality's order)."""
        import torch

        out: dict[str, list[np.ndarray]] = {m: [] for m in self.setup["modalities"]}
        self.module.eval()
        with torch.no_grad():
            for m in self.setup["modalities"]:
                X = cells.X[m]
                lib = cells.library[m]
                for s in range(0, X.shape[0], batch_size):
                    x = X[s : s + batch_size]
                    x = torch.from_numpy(x.toarray() if sp.issparse(x) else np.asarray(x))
                    mu, _ = self.module.encode(m, x, torch.from_numpy(lib[s : s + batch_size]))
                    out[m].append(mu.numpy())
        return {m: np.concatenate(v) if v else np.zeros((0, self.module.n_latent)) for m, v in out.items()}

    def get_latent_representation(
        self, mdata: MuData | None = None, *, modality: str | None = None, batch_size: int = 1024
    ) -> np.ndarray:
        """Latent means: the joint embedding of every cell of the MuData (average over the modalities that
        measured it), or with ``modality`` the embedding of that modality's cells (in its own order)."""
        cells = self._cells_for(mdata)
        per_mod = self._encode_all(cells, batch_size)
        if modality is not None:
            if modality not in per_mod:
                raise KeyError(f"modality {modality!r} is not integrated; modalities are: {_list(per_mod)}")
            return per_mod[modality]
        total = np.zeros((cells.n, self.module.n_latent))
        count = np.zeros(cells.n)
        for m, emb in per_mod.items():
            rows = cells.rows[m]
            have = np.flatnonzero(rows >= 0)
            total[have] += emb[rows[have]]
            count[have] += 1
        return total / np.maximum(count, 1)[:, None]

    def translate(self, source: str, target: str, mdata: MuData | None = None, *, batch_size: int = 1024) -> np.ndarray:
        """Predict ``target`` for every cell of ``source``: decode the target from the source's latent.

        Returns source cells x target features on the target's normalised scale: log1p(1e4 x proportion)
        for count modalities, the mean for continuous ones.
        """
        import torch

        for name in (source, target):
            if name not in self.setup["modalities"]:
                raise KeyError(
                    f"modality {name!r} is not integrated; modalities are: {_list(self.setup['modalities'])}"
                )
        if source == target:
            raise ValueError("source and target must differ")
        cells = self._cells_for(mdata)
        z = torch.from_numpy(self._encode_all(cells, batch_size)[source]).float()
        rows = cells.rows[source]
        union_of_row = np.empty(cells.X[source].shape[0], dtype=np.int64)
        union_of_row[rows[rows >= 0]] = np.flatnonzero(rows >= 0)
        cov = torch.from_numpy(cells.cov[union_of_row]) if cells.cov.shape[1] else None
        outs = []
        with torch.no_grad():
            for s in range(0, len(z), batch_size):
                c = cov[s : s + batch_size] if cov is not None else None
                outs.append(self.module.predict(target, self.module.decode(target, z[s : s + batch_size], c)).numpy())
        return np.concatenate(outs) if outs else np.zeros((0, len(self.setup["features"][target])))

    # -- persistence ----------------------------------------------------------------------------
    def save(self, dir_path: str | Path, *, overwrite: bool = False) -> None:
        """Save the model to ``dir_path``: ``model.pt`` (the weights, tensors only), ``model.json``
        (hyper-parameters, training history, split) and ``setup.json``; nothing in them is pickled, so
        :meth:`load` runs no code from the files."""
        path = Path(dir_path)
        if path.exists() and any(path.iterdir()) and not overwrite:
            raise FileExistsError(f"{str(path)!r} exists and is not empty; pass overwrite=True")
        path.mkdir(parents=True, exist_ok=True)
        save_tensors(path / "model.pt", self.module.state_dict())
        write_json(
            path / "model.json",
            {
                "format": FORMAT,
                "class": type(self).__name__,
                "init_params": self.init_params,
                "history": self.history.to_dict(orient="list"),
                "train_indices": np.asarray(self.train_indices, dtype=np.int64),
                "validation_indices": np.asarray(self.validation_indices, dtype=np.int64),
                "is_trained": bool(self.is_trained),
            },
        )
        (path / "setup.json").write_text(json.dumps(self.setup, indent=1))

    @classmethod
    def load(cls, dir_path: str | Path, mdata: MuData) -> CrossModalAE:
        """Load a model saved by :meth:`save` for ``mdata`` (which must hold the features it was set up with).

        The weights are read with ``torch.load(weights_only=True)``: a ``model.pt`` that holds anything but
        tensors (a pickled object, as earlier versions wrote) is refused before any of it runs.
        """
        path = Path(dir_path)
        if not (path / "model.pt").exists():
            raise FileNotFoundError(f"no saved CrossModalAE in {str(path)!r} (model.pt is missing)")
        meta = read_description(path / "model.json", cls.__name__)
        state = load_tensors(path / "model.pt")
        setup = json.loads((path / "setup.json").read_text())
        model = cls(mdata, _setup=setup, **dict(meta["init_params"]))
        model.module.load_state_dict(state)
        model.module.eval()
        model.history = pd.DataFrame(meta["history"])
        model.train_indices = np.asarray(meta["train_indices"], dtype=np.int64)
        model.validation_indices = np.asarray(meta["validation_indices"], dtype=np.int64)
        model.is_trained = bool(meta["is_trained"])
        return model


def _plain(value: Any) -> Any:
    """Setup read back from h5mu holds numpy arrays and scalars; make it plain Python."""
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, np.ndarray | list | tuple):
        return [_plain(v) for v in value]
    if isinstance(value, np.generic):
        return value.item()
    return value
