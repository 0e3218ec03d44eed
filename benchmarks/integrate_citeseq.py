"""Benchmark: CITE-seq integration and RNA -> protein translation on held-out cells (ECCITE-seq PBMCs).

Data: the ECCITE-seq PBMC control sample of Mimitou et al. (2019), 500 cells with RNA (19,521 genes) and
49 antibody-derived tags (ADT), raw counts, from ``../shared/data/eccite-pbmc-citefuse``. The hashtags
are not used. Tags detected in fewer than 10 cells are dropped (only CD223/lag3: 2 counts in 2 cells), 48 remain.

Protocol: 5-fold cross-validation over cells (``--seed`` shuffles them). In each fold the 2,000 most
variable genes are chosen on the training cells (scanpy ``highly_variable_genes(flavor="seurat_v3")``),
every method is fitted on the training cells, and the held-out cells are embedded and their protein
predicted from their RNA. Measured protein is compared on ``log1p(1e4 x count / cell's ADT total)``
(the scale of ``pc.tl.translate``); per-protein Pearson correlation across held-out cells is scale-free.
Predictions of the 5 folds are pooled (every cell is held out once) for the per-protein Pearson, and the
per-fold means are shown too. FOSCTTM (fraction of cells closer than the true match, 0 best, 0.5 random)
is computed per fold on the held-out cells between a method's RNA-only and protein-only embeddings
(``pc.tl.evaluate_integration``), and averaged over the folds.

Methods (all on the same genes, cells and folds):

- ``pertcausal`` ``CrossModalAE`` (``pc.models.CrossModalAE``; n_latent 20, 2 x 256 hidden units, KL weight
  0.1, minibatches of 256, the package defaults). Trained on the training cells only; 10 % of them are its
  validation cells (``train_size=0.9``). The package has no early stopping, so a Lightning callback given
  through the training keyword arguments scores the RNA -> protein translation of the validation cells
  (mean per-protein Pearson) every 10 epochs, stops after ``--patience`` epochs without improvement (at
  most ``--max-epochs``) and restores the best weights. Held-out cells: ``model.get_latent_representation
  (mdata_heldout, modality=...)`` per modality and ``pc.tl.translate`` on a MuData of their RNA only.
- scvi-tools ``TOTALVI`` (defaults: n_latent 20, early stopping on the validation ELBO, 10 % validation
  cells). totalVI's encoder takes RNA and protein together, so its documented way to predict protein for
  cells without protein is used: all cells are given, the held-out cells form a second batch whose protein
  counts are all zero, which totalVI treats as missing proteins (``protein_batch_mask``: no protein
  likelihood for that batch, adversarial batch mixing). totalVI therefore sees the held-out cells' RNA during
  training (not their protein); CrossModalAE does not. Translation: ``get_normalized_expression(
  transform_batch="train", n_samples=25)``, the expected protein counts (foreground + background;
  foreground only as a second row), turned into ``log1p(1e4 x proportion)``. totalVI has a joint latent
  only, so the RNA-vs-protein FOSCTTM does not apply to it.
- muon MOFA+ (``mu.tl.mofa``, 10 factors, muon's default; mofapy2) on per-view standardised
  ``log1p(1e4 x proportion)`` of the training cells. Held-out cells are projected onto the factors from one
  view at a time with the posterior mean under MOFA's linear Gaussian model (prior N(0, I), per-feature noise
  variance from the training residuals), which gives RNA-only and protein-only embeddings. Translation:
  a ridge regression (penalty by leave-one-out CV on the training cells) from the RNA-projected factors of the
  training cells to their protein.
- baselines: CCA between 50 RNA principal components and the standardised protein (sklearn, 10 components,
  fitted on the training cells) for FOSCTTM; for translation the training mean of each protein (MSE only:
  a constant has no correlation) and a ridge regression from 50 RNA principal components (PCA and penalty
  fitted on the training cells).

Run from the repository root::

    python benchmarks/integrate_citeseq.py            # 5 folds, writes docs/benchmarks/integrate_citeseq.md (+ .png)
    python benchmarks/integrate_citeseq.py --quick    # smoke run: 1 fold, few epochs, no file

When the data are absent the script says so and exits with status 0 without writing anything.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import logging
import os
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import scipy.sparse as sp

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import ROOT, SHARED_DATA, machine_info, machine_markdown, markdown_table

DATA = SHARED_DATA / "eccite-pbmc-citefuse" / "eccite_pbmc_control_500.h5mu"
OUTPUT = ROOT / "docs" / "benchmarks" / "integrate_citeseq.md"
KEY_MARKERS = [
    "CD3",
    "CD4",
    "CD8",
    "CD14",
    "CD16",
    "CD19",
    "CD56",
    "CD45RA",
    "CD45RO",
    "MHCII (HLA-DR)",
    "CD11c",
    "CCR7",
    "IgG1",
    "IgG2a",
]
N_LATENT = 20
N_FACTORS = 10
N_PCS = 50
N_CCA = 10
TARGET_SUM = 1e4
MIN_TAG_CELLS = 10  # tags detected in fewer cells are dropped (else a fold's training cells may have none)

DESCRIPTION = {
    "crossmodal": "pertcausal CrossModalAE (train cells only)",
    "totalvi": "scvi-tools totalVI, expected counts (held-out RNA seen, protein missing)",
    "totalvi_fg": "totalVI, foreground only (background removed)",
    "mofa_ridge": "MOFA+ RNA-projected factors -> ridge",
    "ridge_pca": "baseline: ridge from 50 RNA PCs",
    "train_mean": "baseline: per-protein training mean",
    "cca": "baseline: CCA (RNA PCs vs protein)",
    "mofa": "MOFA+ (10 factors), per-view projection",
}
SECONDS_OF = {"totalvi_fg": "totalvi", "mofa_ridge": "mofa"}  # predictions from the same fit
TRANSLATORS = ["crossmodal", "totalvi", "totalvi_fg", "mofa_ridge", "ridge_pca", "train_mean"]
EMBEDDERS = ["crossmodal", "mofa", "cca"]


# ---------------------------------------------------------------------------------------------
# data
# ---------------------------------------------------------------------------------------------
def log1p_prop(x) -> np.ndarray:
    """``log1p(1e4 x / row total)``, dense float64 (rows with total 0 stay 0)."""
    x = np.asarray(x.toarray() if sp.issparse(x) else x, dtype=np.float64)
    tot = x.sum(1, keepdims=True)
    return np.log1p(TARGET_SUM * np.divide(x, tot, out=np.zeros_like(x), where=tot > 0))


def load(path: Path):
    import mudata as md

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        mdata = md.read_h5mu(path)
    rna, adt = mdata["rna"], mdata["adt"]
    assert (rna.obs_names == adt.obs_names).all()
    counts = sp.csr_matrix(rna.X, dtype=np.float32)
    tags = np.asarray(adt.X.toarray() if sp.issparse(adt.X) else adt.X, dtype=np.float32)
    keep = (tags > 0).sum(0) >= MIN_TAG_CELLS  # QC: CD223 (lag3) has 2 counts in 2 cells
    return counts, pd.Index(rna.var_names), tags[:, keep], pd.Index(adt.var_names[keep]), pd.Index(rna.obs_names)


def select_genes(counts: sp.csr_matrix, genes: pd.Index, train: np.ndarray, n_top: int) -> np.ndarray:
    """Columns of the ``n_top`` most variable genes of the training cells (seurat_v3 on raw counts)."""
    import anndata as ad
    import scanpy as sc

    sub = ad.AnnData(counts[train], var=pd.DataFrame(index=genes))
    sub = sub[:, np.asarray(sub.X.sum(0)).ravel() > 0].copy()
    sc.pp.highly_variable_genes(sub, flavor="seurat_v3", n_top_genes=n_top)
    return genes.get_indexer(sub.var_names[sub.var["highly_variable"].to_numpy()])


def make_mudata(cells: pd.Index, rna_counts, gene_names, tags=None, tag_names=None, obs: pd.DataFrame | None = None):
    import anndata as ad
    import mudata as md

    obs = pd.DataFrame(index=cells) if obs is None else obs
    mods = {"rna": ad.AnnData(sp.csr_matrix(rna_counts), obs=obs.copy(), var=pd.DataFrame(index=gene_names))}
    if tags is not None:
        mods["adt"] = ad.AnnData(np.asarray(tags, dtype=np.float32), obs=obs.copy(), var=pd.DataFrame(index=tag_names))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        out = md.MuData(mods)
    for c in obs.columns:
        out.obs[c] = obs[c].to_numpy()
    return out


def _quiet() -> None:
    import scvi

    scvi.settings.verbosity = logging.ERROR
    for name in (
        "lightning",
        "lightning.pytorch",
        "lightning.fabric",
        "lightning_fabric",
        "pytorch_lightning",
        "pertcausal",
        "mofapy2",
    ):
        logging.getLogger(name).setLevel(logging.ERROR)
    warnings.filterwarnings("ignore")


@contextlib.contextmanager
def _silenced():
    """Silence stdout (mofapy2 prints its progress whatever ``quiet`` says)."""
    with open(os.devnull, "w") as devnull, contextlib.redirect_stdout(devnull):
        yield


# ---------------------------------------------------------------------------------------------
# methods: each returns held-out predictions / embeddings and a log dict
# ---------------------------------------------------------------------------------------------
def run_crossmodal(fold: dict, *, max_epochs: int, patience: int, every: int, seed: int) -> dict:
    import lightning.pytorch as lpl

    import pertcausal as pc
    from pertcausal._engines.integration_metrics import feature_correlation

    tr_md = make_mudata(
        fold["train_cells"], fold["rna_train"], fold["gene_names"], fold["adt_train"], fold["tag_names"]
    )
    te_md = make_mudata(fold["test_cells"], fold["rna_test"], fold["gene_names"], fold["adt_test"], fold["tag_names"])
    te_rna = make_mudata(fold["test_cells"], fold["rna_test"], fold["gene_names"])

    class TranslationEarlyStopping(lpl.Callback):
        """Every ``every`` epochs: mean per-protein Pearson of RNA -> protein on the model's validation
        cells (inside the training set); stop after ``patience`` epochs without a gain; restore the best."""

        def __init__(self, model) -> None:
            self.model, self.best, self.best_epoch, self.state, self.trace = model, -np.inf, 0, None, []
            self.val_rna = self.val_y = None

        def on_train_epoch_end(self, trainer, pl_module) -> None:
            epoch = trainer.current_epoch + 1
            if epoch % every:
                return
            if self.val_rna is None:
                idx = self.model.validation_indices
                self.val_rna = make_mudata(fold["train_cells"][idx], fold["rna_train"][idx], fold["gene_names"])
                self.val_y = log1p_prop(fold["adt_train"][idx])
            pred = self.model.translate("rna", "adt", self.val_rna)  # puts the module in eval mode
            pl_module.train()
            r = float(np.nanmean(feature_correlation(pred, self.val_y)))
            self.trace.append((epoch, r))
            if r > self.best:
                self.best, self.best_epoch = r, epoch
                self.state = copy.deepcopy(pl_module.module.state_dict())
            elif epoch - self.best_epoch >= patience:
                trainer.should_stop = True

        def on_fit_end(self, trainer, pl_module) -> None:
            if self.state is not None:
                pl_module.module.load_state_dict(self.state)

    t0 = time.perf_counter()
    pc.models.CrossModalAE.setup_mudata(tr_md)
    model = pc.models.CrossModalAE(tr_md, n_latent=N_LATENT, n_hidden=256, n_layers=2)
    stopper = TranslationEarlyStopping(model)
    model.train(
        max_epochs,
        batch_size=256,
        train_size=0.9,
        progress_bar=False,
        random_state=seed,
        accelerator="cpu",
        devices=1,
        callbacks=[stopper],
    )
    fit_s = time.perf_counter() - t0
    emb_rna = model.get_latent_representation(te_md, modality="rna")
    emb_adt = model.get_latent_representation(te_md, modality="adt")
    pc.tl.translate(te_rna, source="rna", target="adt", model=model)
    pred = np.asarray(te_rna["adt_from_rna"].X, dtype=np.float64)
    assert list(te_rna["adt_from_rna"].var_names) == list(fold["tag_names"])
    return {
        "pred": {"crossmodal": pred},
        "emb": {"crossmodal": (emb_rna, emb_adt)},
        "seconds": {"crossmodal": time.perf_counter() - t0},
        "log": {
            "crossmodal": {
                "epochs run": len(model.history),
                "best epoch": stopper.best_epoch,
                "fit seconds": fit_s,
                "trace": stopper.trace,
            }
        },
    }


def run_totalvi(fold: dict, *, max_epochs: int | None, seed: int) -> dict:
    import scvi

    _quiet()
    n_tr, n_te = len(fold["train_cells"]), len(fold["test_cells"])
    cells = fold["train_cells"].append(fold["test_cells"])
    obs = pd.DataFrame({"split": pd.Categorical(["train"] * n_tr + ["heldout"] * n_te)}, index=cells)
    rna = sp.vstack([fold["rna_train"], fold["rna_test"]]).tocsr()
    tags = np.vstack([fold["adt_train"], np.zeros_like(fold["adt_test"])])  # held-out protein: missing
    mdata = make_mudata(cells, rna, fold["gene_names"], tags, fold["tag_names"], obs=obs)
    t0 = time.perf_counter()
    scvi.settings.seed = seed
    scvi.model.TOTALVI.setup_mudata(
        mdata, batch_key="split", modalities={"rna_layer": "rna", "protein_layer": "adt", "batch_key": "rna"}
    )
    model = scvi.model.TOTALVI(mdata, n_latent=N_LATENT)
    model.train(max_epochs=max_epochs, enable_progress_bar=False)
    fit_s = time.perf_counter() - t0
    te = np.arange(n_tr, n_tr + n_te)
    pred = {}
    for key, bg in (("totalvi", True), ("totalvi_fg", False)):
        _, pro = model.get_normalized_expression(
            indices=te, n_samples=25, include_protein_background=bg, transform_batch="train", return_numpy=True
        )
        pred[key] = log1p_prop(pro)
    hist = model.history
    return {
        "pred": pred,
        "emb": {},
        "seconds": {"totalvi": time.perf_counter() - t0},
        "log": {
            "totalvi": {
                "epochs run": len(hist["elbo_train"]),
                "best epoch": int(np.argmin(hist["elbo_validation"].to_numpy().ravel())) + 1,
                "fit seconds": fit_s,
            }
        },
    }


def _ridge(x_tr: np.ndarray, y_tr: np.ndarray):
    from sklearn.linear_model import RidgeCV

    return RidgeCV(alphas=np.logspace(-2, 5, 15), alpha_per_target=True).fit(x_tr, y_tr)


def run_mofa(fold: dict, *, seed: int) -> dict:
    import muon as mu

    t0 = time.perf_counter()
    xr_tr, xr_te = log1p_prop(fold["rna_train"]), log1p_prop(fold["rna_test"])
    xa_tr, xa_te = fold["y_train"], fold["y_test"]
    views = {}
    for name, a, b in (("rna", xr_tr, xr_te), ("adt", xa_tr, xa_te)):
        mean, sd = a.mean(0), a.std()  # centred per feature, one scale per view (scale_views by hand)
        views[name] = ((a - mean) / sd, (b - mean) / sd)
    # prefixed names: some genes and tags share a name (CD4, CD14, ...), MOFA's loadings are indexed by name
    names = {"rna": "rna:" + fold["gene_names"], "adt": "adt:" + fold["tag_names"]}
    mdata = make_mudata(
        fold["train_cells"], sp.csr_matrix(views["rna"][0]), names["rna"], views["adt"][0], names["adt"]
    )
    mdata["rna"].X = np.asarray(views["rna"][0], dtype=np.float32)
    with tempfile.TemporaryDirectory() as tmp, _silenced():
        mu.tl.mofa(
            mdata,
            n_factors=N_FACTORS,
            use_var=None,
            scale_views=False,
            seed=seed,
            quiet=True,
            verbose=False,
            outfile=str(Path(tmp) / "mofa.hdf5"),
            use_float32=True,
        )
    z_tr = np.asarray(mdata.obsm["X_mofa"], dtype=np.float64)
    lfs = pd.DataFrame(np.asarray(mdata.varm["LFs"], dtype=np.float64), index=mdata.var_names)
    k = z_tr.shape[1]
    w, prec = {}, {}
    for m in ("rna", "adt"):
        w[m] = lfs.loc[names[m]].to_numpy()
        resid = views[m][0] - z_tr @ w[m].T
        prec[m] = 1.0 / np.maximum(resid.var(0), 1e-6)

    def project(x: np.ndarray, ms: list[str]) -> np.ndarray:
        """Posterior mean of the factors given views ``ms`` (prior N(0, I), Gaussian noise)."""
        a = np.eye(k)
        b = 0.0
        for m in ms:
            a = a + (w[m] * prec[m][:, None]).T @ w[m]
            b = b + x[m] @ (w[m] * prec[m][:, None])
        return np.linalg.solve(a, b.T).T

    te = {m: views[m][1] for m in views}
    tr = {m: views[m][0] for m in views}
    emb_rna, emb_adt = project(te, ["rna"]), project(te, ["adt"])
    ridge = _ridge(project(tr, ["rna"]), xa_tr)
    pred = ridge.predict(emb_rna)
    return {
        "pred": {"mofa_ridge": pred},
        "emb": {"mofa": (emb_rna, emb_adt)},
        "seconds": {"mofa": time.perf_counter() - t0},
        "log": {"mofa": {"fit seconds": time.perf_counter() - t0}},
    }


def run_baselines(fold: dict, *, seed: int) -> dict:
    from sklearn.cross_decomposition import CCA
    from sklearn.decomposition import PCA
    from sklearn.preprocessing import StandardScaler

    t0 = time.perf_counter()
    xr_tr, xr_te = log1p_prop(fold["rna_train"]), log1p_prop(fold["rna_test"])
    scaler = StandardScaler().fit(xr_tr)
    pca = PCA(n_components=N_PCS, random_state=seed).fit(scaler.transform(xr_tr))
    pc_tr, pc_te = pca.transform(scaler.transform(xr_tr)), pca.transform(scaler.transform(xr_te))
    t_pca = time.perf_counter() - t0
    t1 = time.perf_counter()
    pred_ridge = _ridge(pc_tr, fold["y_train"]).predict(pc_te)
    t_ridge = time.perf_counter() - t1 + t_pca
    pred_mean = np.broadcast_to(fold["y_train"].mean(0), fold["y_test"].shape).copy()
    t2 = time.perf_counter()
    ys = StandardScaler().fit(fold["y_train"])
    cca = CCA(n_components=N_CCA, max_iter=2000).fit(pc_tr, ys.transform(fold["y_train"]))
    emb_rna, emb_adt = cca.transform(pc_te, ys.transform(fold["y_test"]))
    t_cca = time.perf_counter() - t2 + t_pca
    return {
        "pred": {"ridge_pca": pred_ridge, "train_mean": pred_mean},
        "emb": {"cca": (emb_rna, emb_adt)},
        "seconds": {"ridge_pca": t_ridge, "train_mean": 0.0, "cca": t_cca},
        "log": {},
    }


# ---------------------------------------------------------------------------------------------
# evaluation with pertcausal's own scoring functions
# ---------------------------------------------------------------------------------------------
def score_fold(fold: dict, results: dict) -> list[dict]:
    """Per-fold FOSCTTM (pc.tl.evaluate_integration) and per-protein Pearson/MSE of each translation."""
    import anndata as ad

    import pertcausal as pc

    rows = []
    ev = make_mudata(fold["test_cells"], fold["rna_test"], fold["gene_names"], fold["adt_test"], fold["tag_names"])
    for name, (e_rna, e_adt) in results["emb"].items():
        ev["rna"].obsm[f"X_{name}"], ev["adt"].obsm[f"X_{name}"] = e_rna, e_adt
        res = pc.tl.evaluate_integration(ev, use_rep=f"X_{name}", translations=[])
        val = res.set_index("metric")["value"]
        rows += [
            {"method": name, "metric": "foscttm", "value": float(val["foscttm"])},
            {"method": name, "metric": "match_top5", "value": float(val["match_top5"])},
        ]
    for name, pred in results["pred"].items():
        key = f"pred_{name}"
        ev.mod[key] = ad.AnnData(
            np.asarray(pred, dtype=np.float32),
            obs=pd.DataFrame(index=fold["test_cells"]),
            var=pd.DataFrame(index=fold["tag_names"]),
        )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ev.update()
    keys = [("rna", "adt", f"pred_{n}") for n in results["pred"] if n != "train_mean"]
    res = pc.tl.evaluate_integration(ev, mods=[], translations=keys)
    for name, pred in results["pred"].items():
        mse = float(np.mean((pred - fold["y_test"]) ** 2))
        rows.append({"method": name, "metric": "mse", "value": mse})
        if name == "train_mean":
            continue
        sel = res[res["translation"] == f"pred_{name}"].set_index("metric")["value"]
        rows += [
            {"method": name, "metric": "pearson_mean", "value": float(sel["translation_pearson_mean"])},
            {"method": name, "metric": "pearson_median", "value": float(sel["translation_pearson_median"])},
        ]
    return rows


def pooled_scores(cells: pd.Index, tags: np.ndarray, tag_names: pd.Index, preds: dict[str, np.ndarray]):
    """Per-protein Pearson over all cells (each predicted by the fold that held it out) and MSE."""
    import anndata as ad

    from pertcausal.tl import evaluate_integration

    ev = make_mudata(cells, sp.csr_matrix((len(cells), 1)), pd.Index(["dummy"]), tags, tag_names)
    for name, pred in preds.items():
        ev.mod[f"pred_{name}"] = ad.AnnData(
            pred.astype(np.float32), obs=pd.DataFrame(index=cells), var=pd.DataFrame(index=tag_names)
        )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ev.update()
    evaluate_integration(ev, mods=[], translations=[("rna", "adt", f"pred_{n}") for n in preds if n != "train_mean"])
    per = pd.DataFrame(
        {n: ev.uns["integration_metrics"]["translation"][f"pred_{n}"]["pearson"] for n in preds if n != "train_mean"}
    )
    y = log1p_prop(tags)
    mse = {n: float(np.mean((p - y) ** 2)) for n, p in preds.items()}
    return per, mse


# ---------------------------------------------------------------------------------------------
# tables and report
# ---------------------------------------------------------------------------------------------
def translation_table(per: pd.DataFrame, mse: dict, fold_rows: pd.DataFrame, seconds: dict, n_folds: int) -> str:
    def fold_stat(m: str, metric: str) -> str:
        v = fold_rows[(fold_rows["method"] == m) & (fold_rows["metric"] == metric)]["value"]
        return f"{v.mean():.3f} ± {v.std(ddof=1):.3f}" if len(v) > 1 else (f"{v.mean():.3f}" if len(v) else "n/a")

    rows = []
    for m in TRANSLATORS:
        if m not in mse:
            continue
        r = per[m] if m in per else None
        rows.append(
            [
                f"`{m}`",
                DESCRIPTION[m],
                float(np.nanmean(r)) if r is not None else "undefined",
                float(np.nanmedian(r)) if r is not None else "undefined",
                fold_stat(m, "pearson_mean") if r is not None else "undefined",
                int((r > per["totalvi"]).sum()) if (r is not None and "totalvi" in per and m != "totalvi") else "",
                mse[m],
                fold_stat(m, "mse"),
                f"{seconds.get(SECONDS_OF.get(m, m), np.nan):.1f}",
            ]
        )
    header = [
        "method",
        "what",
        "pooled mean Pearson",
        "pooled median Pearson",
        "per-fold mean Pearson (± sd)",
        "proteins better than totalVI",
        "pooled MSE",
        "per-fold MSE",
        f"seconds ({n_folds} folds)",
    ]
    return markdown_table(rows, header)


def integration_table(fold_rows: pd.DataFrame, seconds: dict, n_folds: int) -> str:
    rows = []
    for m in ["crossmodal", "totalvi", "mofa", "cca"]:
        sub = fold_rows[(fold_rows["method"] == m) & fold_rows["metric"].isin(["foscttm", "match_top5"])]
        if m != "totalvi" and not len(sub):
            continue

        def stat(metric: str, sub: pd.DataFrame = sub) -> str:
            v = sub[sub["metric"] == metric]["value"]
            return f"{v.mean():.3f} ± {v.std(ddof=1):.3f}" if len(v) > 1 else (f"{v.mean():.3f}" if len(v) else "n/a")

        rows.append(
            [f"`{m}`", DESCRIPTION.get(m, ""), stat("foscttm"), stat("match_top5"), f"{seconds.get(m, np.nan):.1f}"]
        )
    header = ["method", "what", "FOSCTTM RNA vs protein", "top-5 match", f"seconds ({n_folds} folds)"]
    return markdown_table(rows, header)


def marker_table(per: pd.DataFrame, names: list[str]) -> str:
    cols = [m for m in TRANSLATORS if m in per.columns]
    rows = [[n, *[float(per.loc[n, m]) for m in cols]] for n in names if n in per.index]
    return markdown_table(rows, ["protein", *[f"`{m}`" for m in cols]])


def plot(per: pd.DataFrame, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    others = [m for m in ("totalvi", "ridge_pca", "mofa_ridge") if m in per.columns]
    fig, axes = plt.subplots(1, len(others), figsize=(4.2 * len(others), 4.2), squeeze=False)
    for ax, m in zip(axes[0], others, strict=True):
        ax.scatter(per[m], per["crossmodal"], s=14, alpha=0.8)
        lo = float(np.nanmin(per[[m, "crossmodal"]].to_numpy())) - 0.05
        ax.plot([lo, 1], [lo, 1], color="grey", lw=0.8)
        for name in ("CD3", "CD4", "CD8", "CD14", "CD19", "CD45RA", "CD16", "IgG1"):
            if name in per.index:
                ax.annotate(name, (per.loc[name, m], per.loc[name, "crossmodal"]), fontsize=7)
        ax.set_xlabel(f"{m}: Pearson (pooled held-out cells)")
        ax.set_ylabel("crossmodal: Pearson")
        ax.set_title(f"per protein: CrossModalAE vs {m}", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="smoke run: 1 fold, few epochs, no file")
    parser.add_argument("--folds", type=int, default=5)
    parser.add_argument(
        "--first-folds",
        type=int,
        default=None,
        help="run only the first N folds (development; pooled scores then cover their cells)",
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--n-genes", type=int, default=2000, help="highly variable genes per fold")
    parser.add_argument(
        "--max-epochs",
        type=int,
        default=400,
        help="CrossModalAE epoch cap (its default rule gives 400 here); early stopping inside",
    )
    parser.add_argument("--patience", type=int, default=60, help="CrossModalAE early-stopping patience (epochs)")
    parser.add_argument("--every", type=int, default=10, help="CrossModalAE validation check interval (epochs)")
    parser.add_argument("--totalvi-epochs", type=int, default=None, help="totalVI max_epochs (default: its rule)")
    parser.add_argument("--no-totalvi", action="store_true")
    parser.add_argument("--no-mofa", action="store_true")
    parser.add_argument("--data", type=Path, default=DATA)
    parser.add_argument(
        "--output",
        type=Path,
        default=None,
        help=f"markdown report (default {OUTPUT.relative_to(ROOT)}; none with --quick)",
    )
    args = parser.parse_args(argv)
    if not args.data.exists():
        print(f"skipped: data not found at {args.data} (expected ../shared/data beside the repository)")
        return 0
    output = args.output if args.output is not None else (None if args.quick else OUTPUT)
    max_epochs = 20 if args.quick else args.max_epochs
    tvi_epochs = 20 if args.quick else args.totalvi_epochs
    _quiet()
    import torch
    from sklearn.model_selection import KFold

    torch.set_num_threads(max(1, len(os.sched_getaffinity(0))))
    load_start = os.getloadavg()[0]
    t_start = time.perf_counter()
    counts, genes, tags, tag_names, cells = load(args.data)
    y_all = log1p_prop(tags)
    print(f"{len(cells)} cells, {len(genes)} genes, {len(tag_names)} protein tags; {args.folds}-fold CV", flush=True)

    have_mofa = not args.no_mofa
    if have_mofa:
        try:
            import mofapy2  # noqa: F401
        except ImportError:
            print("mofapy2 is not installed: MOFA skipped")
            have_mofa = False

    folds = list(KFold(args.folds, shuffle=True, random_state=args.seed).split(np.arange(len(cells))))
    if args.quick or args.first_folds:
        folds = folds[: 1 if args.quick else args.first_folds]
    preds: dict[str, np.ndarray] = {}
    seconds: dict[str, float] = {}
    fold_rows, logs = [], []
    for k, (tr, te) in enumerate(folds):
        tf = time.perf_counter()
        cols = select_genes(counts, genes, tr, args.n_genes)
        fold = {
            "train_cells": cells[tr],
            "test_cells": cells[te],
            "gene_names": genes[cols],
            "rna_train": counts[tr][:, cols],
            "rna_test": counts[te][:, cols],
            "adt_train": tags[tr],
            "adt_test": tags[te],
            "tag_names": tag_names,
            "y_train": y_all[tr],
            "y_test": y_all[te],
        }
        runs = [run_baselines(fold, seed=args.seed)]
        runs.append(
            run_crossmodal(fold, max_epochs=max_epochs, patience=args.patience, every=args.every, seed=args.seed)
        )
        if not args.no_totalvi:
            runs.append(run_totalvi(fold, max_epochs=tvi_epochs, seed=args.seed))
        if have_mofa:
            runs.append(run_mofa(fold, seed=args.seed))
        merged: dict = {"pred": {}, "emb": {}, "seconds": {}, "log": {}}
        for r in runs:
            for key in merged:
                merged[key].update(r[key])
        rows = score_fold(fold, merged)
        fold_rows += [{**row, "fold": k} for row in rows]
        for name, pred in merged["pred"].items():
            preds.setdefault(name, np.zeros_like(y_all))[te] = pred
        for name, s in merged["seconds"].items():
            seconds[name] = seconds.get(name, 0.0) + s
        for name, lg in merged["log"].items():
            logs.append({"fold": k, "method": name, **lg})
        summ = pd.DataFrame(rows).pivot_table(index="method", columns="metric", values="value")
        print(f"fold {k + 1}/{len(folds)} ({time.perf_counter() - tf:.0f} s):\n{summ.round(3).to_string()}", flush=True)
        for name, lg in merged["log"].items():
            shown = {c: (round(v, 1) if isinstance(v, float) else v) for c, v in lg.items() if c != "trace"}
            print(f"  {name}: {shown}", flush=True)
            if "trace" in lg:
                print(
                    "    validation Pearson by epoch: " + ", ".join(f"{e}: {r:.3f}" for e, r in lg["trace"]), flush=True
                )

    if len(folds) < args.folds:  # only the held-out cells of the folds run have predictions
        te = np.sort(np.concatenate([f[1] for f in folds]))
        sel_cells, sel_tags, preds = cells[te], tags[te], {n: p[te] for n, p in preds.items()}
    else:
        sel_cells, sel_tags = cells, tags
    per, mse = pooled_scores(sel_cells, sel_tags, tag_names, preds)
    fold_df = pd.DataFrame(fold_rows)
    log_df = pd.DataFrame(logs)
    total = time.perf_counter() - t_start

    trans_md = translation_table(per, mse, fold_df, seconds, len(folds))
    integ_md = integration_table(fold_df, seconds, len(folds))
    marker_md = marker_table(per, KEY_MARKERS)
    full_md = marker_table(
        per.sort_values("crossmodal", ascending=False), list(per.sort_values("crossmodal", ascending=False).index)
    )
    per_fold = fold_df[fold_df["metric"] == "pearson_mean"].pivot_table(index="fold", columns="method", values="value")
    per_fold = per_fold[[m for m in TRANSLATORS if m in per_fold.columns]]
    per_fold_md = markdown_table(
        [[k + 1, *[float(per_fold.loc[k, m]) for m in per_fold.columns]] for k in per_fold.index],
        ["fold", *[f"`{m}`" for m in per_fold.columns]],
    )

    def _cell(v: object) -> object:
        return "" if v is None or (isinstance(v, float) and v != v) else (int(v) if isinstance(v, float) else v)

    log_md = markdown_table(
        [
            [
                f"`{r['method']}`",
                r["fold"] + 1,
                *[_cell(r.get(c)) for c in ("epochs run", "best epoch")],
                float(r["fit seconds"]),
            ]
            for r in logs
        ],
        ["method", "fold", "epochs run", "best epoch", "fit seconds"],
    )

    a = per["crossmodal"]
    lines = []
    if "totalvi" in per:
        b = per["totalvi"]
        fw = per_fold["crossmodal"] > per_fold["totalvi"]
        met = np.nanmean(a) >= np.nanmean(b)
        lines.append(
            f"- CrossModalAE translation correlation at least as good as totalVI's on held-out cells: pooled mean "
            f"per-protein Pearson {np.nanmean(a):.3f} vs {np.nanmean(b):.3f} (median {np.nanmedian(a):.3f} vs "
            f"{np.nanmedian(b):.3f}); higher for {int((a > b).sum())} of {int((a.notna() & b.notna()).sum())} "
            f"proteins and in {int(fw.sum())} of {len(fw)} folds ({'met' if met else 'NOT met'})."
        )
        if "totalvi_fg" in per:
            c = per["totalvi_fg"]
            lines.append(
                f"- against totalVI's foreground-only protein: {np.nanmean(a):.3f} vs {np.nanmean(c):.3f} "
                f"({'met' if np.nanmean(a) >= np.nanmean(c) else 'NOT met'})."
            )
    lines.append(
        f"- for information (no target), against the ridge baseline from 50 RNA PCs: {np.nanmean(a):.3f} vs "
        f"{np.nanmean(per['ridge_pca']):.3f}; higher for {int((a > per['ridge_pca']).sum())} of "
        f"{int(a.notna().sum())} proteins."
    )

    print("\nTranslation RNA -> protein, held-out cells:\n\n" + trans_md)
    print("\nIntegration, held-out cells (means over folds):\n\n" + integ_md)
    print("\nKey markers, pooled per-protein Pearson:\n\n" + marker_md)
    print("\nPer fold, mean per-protein Pearson:\n\n" + per_fold_md)
    print("\nTraining log:\n\n" + log_md)
    print("\n" + "\n".join(lines))
    print(f"total {total:.0f} s")
    if output is not None:
        figure = output.with_suffix(".png")
        plot(per, figure)
        info = machine_info(
            (
                "pertcausal",
                "numpy",
                "torch",
                "lightning",
                "scvi-tools",
                "muon",
                "mofapy2",
                "mudata",
                "scanpy",
                "scikit-learn",
            )
        )
        info["1-min load average at the start"] = f"{load_start:.2f}"
        command = "python benchmarks/integrate_citeseq.py " + " ".join(argv if argv is not None else sys.argv[1:])
        write_markdown(
            output,
            command=command.strip(),
            total=total,
            trans_md=trans_md,
            integ_md=integ_md,
            marker_md=marker_md,
            full_md=full_md,
            per_fold_md=per_fold_md,
            log_md=log_md,
            lines=lines,
            info=info,
            args=args,
            n_cells=len(cells),
            n_tags=len(tag_names),
            log_df=log_df,
        )
        print(f"wrote {output} and {figure}")
    return 0


def write_markdown(
    path: Path,
    *,
    command: str,
    total: float,
    trans_md: str,
    integ_md: str,
    marker_md: str,
    full_md: str,
    per_fold_md: str,
    log_md: str,
    lines: list[str],
    info: dict,
    args: argparse.Namespace,
    n_cells: int,
    n_tags: int,
    log_df: pd.DataFrame,
) -> None:
    cae = log_df[log_df["method"] == "crossmodal"]
    tvi = log_df[log_df["method"] == "totalvi"]
    text = f"""# CITE-seq: integration and RNA → protein translation on held-out cells

Written by `benchmarks/integrate_citeseq.py` (`{command}`); every number below comes from that run
({total:.0f} s in total).

**Data.** ECCITE-seq PBMC control sample (Mimitou et al., *Nat Methods* 2019; the CiteFuse example,
`../shared/data/eccite-pbmc-citefuse`): {n_cells} cells, RNA (19,521 genes) and 49 antibody-derived tags
(ADT), raw counts. Tags detected in fewer than {MIN_TAG_CELLS} cells are dropped before anything else (only
CD223/lag3, 2 counts in 2 cells: a fold's training cells could lack it entirely), leaving {n_tags}. No cell-type
labels are shipped, so there is no label-transfer metric.

**Protocol.** {args.folds}-fold cross-validation over cells (seed {args.seed}); every cell is held out once.
In each fold the {args.n_genes:,} most variable genes are chosen on the training cells only (scanpy
`highly_variable_genes(flavor="seurat_v3")` on raw counts); every method is fitted on the training cells
(totalVI: see below) and then embeds the held-out cells and predicts their protein from their RNA.

**Metrics.** Measured protein is `log1p(1e4 × count / the cell's ADT total)`, the scale of
`pc.tl.translate`. *Translation*: per-protein Pearson correlation across held-out cells between predicted and
measured protein, scored with `pc.tl.evaluate_integration` (translations given as `(source, target, key)`);
"pooled" pools the predictions of all folds (each cell predicted by the model that did not see it, 500 cells);
"per fold" is the mean over folds of the mean per-protein Pearson on that fold's 100 cells. MSE on the same
scale (scale-dependent: see the notes). *Integration*: FOSCTTM between a method's RNA-only and protein-only
embeddings of the held-out cells (`pc.tl.evaluate_integration`, euclidean; 0 = every cell's partner is its
nearest, 0.5 = random), the top-5 matching accuracy (fraction of held-out cells whose partner is among the 5
nearest of the other modality, of 100). Means ± sd over the folds. Seconds: fit + prediction, summed over
the folds.

## Methods

- **`crossmodal`**: `pc.models.CrossModalAE` with the package defaults (`n_latent=20`, 2 × 256 hidden units,
  KL weight 0.1, minibatches of 256, AdamW lr 1e-3, 10 % of the training cells as its validation cells).
  Trained on the training cells only. `CrossModalAE.train` has no early stopping and its default epoch rule
  gives 400 epochs here, so the script passes a Lightning callback (through `train`'s trainer keyword
  arguments) that translates the model's own validation cells every {args.every} epochs, stops after
  {args.patience} epochs without a gain in their mean per-protein Pearson (at most {args.max_epochs} epochs)
  and restores the best weights. These validation cells are inside the training set: the held-out cells play
  no part in training or stopping. Held-out cells: `model.get_latent_representation(mdata_heldout,
  modality=...)` and `pc.tl.translate(mdata_heldout_rna_only, source="rna", target="adt", model=model)`.
  No other CrossModalAE setting is run by the script (see "What was tried").
- **`totalvi`**: scvi-tools `TOTALVI` with its defaults (`n_latent=20`, early stopping on the validation ELBO,
  10 % validation cells, epoch cap from its rule: 400 here). totalVI's encoder reads RNA and protein together,
  so its documented route for cells without protein is used: all 500 cells are given, the held-out cells form
  a second batch whose protein counts are zero, which totalVI treats as missing (`protein_batch_mask`: no
  protein likelihood for that batch, adversarial batch mixing on). **totalVI therefore sees the held-out
  cells' RNA during training** (not their protein); CrossModalAE does not. Prediction:
  `get_normalized_expression(indices=held-out, transform_batch="train", n_samples=25)`: the expected protein
  counts, foreground plus background (`include_protein_background=True`, comparable to measured counts), or
  foreground only (`totalvi_fg`, background removed), then `log1p(1e4 × proportion)`. totalVI has a joint
  latent only (one encoder reads both modalities), so the RNA-vs-protein FOSCTTM does not apply to it. Its
  latent of a cell given RNA with zeroed protein against its latent given RNA and the measured protein is not
  a substitute: the encoder input is 2,000 genes and 48 tags, so both are dominated by the RNA and lie close
  whatever the integration quality.
- **`mofa` / `mofa_ridge`**: muon `mu.tl.mofa` (mofapy2, 10 factors, muon's default; spike-and-slab and ARD
  priors, `convergence_mode="fast"`) on the training cells' `log1p(1e4 × proportion)` RNA and protein,
  centred per feature and scaled to unit variance per view. MOFA+ is not an encoder model, so held-out cells
  are projected onto the factors from one view at a time with the posterior mean of its linear Gaussian model
  (prior N(0, I); per-feature noise variance from the training residuals): an RNA-only and a protein-only
  embedding. Translation: a ridge regression (penalty per protein by leave-one-out CV on the training cells)
  from the RNA-projected factors of the training cells to their protein, applied to the held-out cells'
  RNA-projected factors. (WNN, `mu.pp.neighbors`, builds a graph, not embeddings of new cells, and has no
  translation; it was not needed since mofapy2 installs.)
- **`cca`** (integration baseline): scikit-learn CCA, 10 components, between 50 RNA principal components
  and the standardised protein of the training cells; held-out cells transformed per view.
- **`ridge_pca`** (translation baseline): ridge regression from 50 principal components of the standardised
  `log1p(1e4 × proportion)` RNA (PCA and penalty fitted on the training cells) to protein.
- **`train_mean`** (translation baseline): each protein's mean over the training cells. A constant has no
  correlation: MSE only.

## Translation RNA → protein (held-out cells)

{trans_md}

"proteins better than totalVI" counts the {n_tags} proteins on the pooled per-protein Pearson.

### Per fold: mean per-protein Pearson

{per_fold_md}

### Key markers: pooled per-protein Pearson

{marker_md}

IgG1 and IgG2a are isotype controls (no target antigen): what a method predicts for them is background.

![Per-protein pooled Pearson of CrossModalAE against the others]({path.with_suffix(".png").name})

## Integration (held-out cells, means ± sd over folds)

{integ_md}

MOFA+ uses 10 factors, CCA 10 components, the autoencoders 20 latent dimensions; FOSCTTM is a rank measure
but not independent of the dimension.

## Training

{log_md}

CrossModalAE: best epoch by the validation-cell translation (checked every {args.every} epochs), epochs run
include the patience; mean {cae["fit seconds"].mean():.0f} s per fold. totalVI: epochs run under its own early
stopping (ELBO, patience 45), best epoch = lowest validation ELBO (scvi-tools does not restore it; the final
weights are used); mean {tvi["fit seconds"].mean() if len(tvi) else float("nan"):.0f} s per fold. totalVI trains
on 500 cells per fold, CrossModalAE on 400 (90 % of which update the weights).

## Against the target

{chr(10).join(lines)}

## What was tried

Nothing was tuned for this run: CrossModalAE and totalVI use their package defaults (CrossModalAE with the
early-stopping callback described above, whose patience of {args.patience} epochs and check every
{args.every} epochs were fixed before the first run of this script). Before this script existed, a prototype
on one random 80/20 split of the same cells (not one of the folds here) tried CrossModalAE with a fixed 400
epochs (the default rule), a fixed 200 epochs, and a fixed 400 epochs with KL weight 0.01, and totalVI with
a fixed 200 epochs. Those runs looked at that split's held-out cells, so they are disclosed here, but no
setting was changed because of them: all were above totalVI's translation correlation on that split, and the
fixed epochs were replaced by early stopping inside the training cells to keep the run short, not for
accuracy.

## Notes

- Pooled and per-fold means differ (most for the ridge baselines): pooling puts the predictions of five
  different models on one axis, so any shift in a protein's predicted level between folds lowers its pooled
  correlation.
- MSE depends on the scale of the prediction, not only on its pattern: `log1p` of an expected proportion
  (what CrossModalAE and totalVI predict) is larger than the expected `log1p` of the measured proportion
  (Jensen), while the ridge baselines are fitted on the measured scale directly. Pearson is the fair
  comparison across methods; MSE is shown as asked.
- totalVI is given an advantage by design (the held-out cells' RNA is in its training data, as its missing-
  protein mechanism requires), and CrossModalAE a lesser one: its stopping rule monitors translation itself on
  its validation cells, while totalVI stops on its ELBO.
- One dataset of 500 PBMCs; differences of a few hundredths in mean Pearson are within the fold-to-fold
  spread shown above.

## All proteins: pooled per-protein Pearson (sorted by CrossModalAE)

{full_md}

## Machine

{machine_markdown(info)}
"""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


if __name__ == "__main__":
    sys.exit(main())
