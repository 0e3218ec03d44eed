"""What a user's file or matrix can do to pertcausal: model files that run no code, and no silent corruption.

Each test here failed (or ran code, or returned wrong numbers without a word) before the input layer
refused or repaired the input it names.
"""

from __future__ import annotations

import logging
import re
import shutil
import warnings
from pathlib import Path

import anndata as ad
import mudata as md
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

import pertcausal as pc

SRC = Path(pc.__file__).resolve().parent
KEYS = {"perturbation_key": "perturbation", "context_key": "context", "control": "control"}


# ---------------------------------------------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------------------------------------------
class _Payload:
    """Unpickling this creates ``marker``: what a crafted model file would do instead."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


def _plant(path: Path, marker: Path) -> None:
    import torch

    torch.save({"weight": _Payload(marker)}, path)


def _assert_load_refuses_a_payload(model, load, tmp_path: Path) -> Path:
    """Save ``model``, replace its ``model.pt`` by a live payload, and check that ``load(folder)`` refuses it
    without running it; returns the folder and leaves the payload in place."""
    import torch

    live = tmp_path / "live_marker"  # the payload does run under a plain torch.load: the refusal protects
    _plant(tmp_path / "live.pt", live)
    torch.load(tmp_path / "live.pt", weights_only=False)
    assert live.exists()
    model.save(tmp_path / "m")
    _plant(tmp_path / "m" / "model.pt", tmp_path / "marker")
    with pytest.raises(ValueError, match=r"refused to load .*model\.pt.*not a weights-only file"):
        load(tmp_path / "m")
    assert not (tmp_path / "marker").exists()
    return tmp_path / "m"


def _snapshot(adata: ad.AnnData) -> dict:
    x = adata.X
    return {
        "X": x.copy(),
        "format": x.format if sp.issparse(x) else "dense",
        "obs": adata.obs.copy(),
        "var": adata.var.copy(),
        "layers": sorted(adata.layers),
        "obsm": sorted(adata.obsm),
        "uns": sorted(adata.uns),
    }


def _assert_unchanged(adata: ad.AnnData, snap: dict) -> None:
    x = adata.X
    if sp.issparse(x):
        assert x.format == snap["format"] and x.nnz == snap["X"].nnz
        np.testing.assert_array_equal(x.data, snap["X"].data)
        np.testing.assert_array_equal(x.indices, snap["X"].indices)
        np.testing.assert_array_equal(x.indptr, snap["X"].indptr)
    else:
        np.testing.assert_array_equal(x, snap["X"])
    pd.testing.assert_frame_equal(adata.obs, snap["obs"])
    pd.testing.assert_frame_equal(adata.var, snap["var"])
    assert sorted(adata.layers) == snap["layers"] and sorted(adata.obsm) == snap["obsm"]
    assert sorted(adata.uns) == snap["uns"]


def _screen(seed: int = 0) -> ad.AnnData:
    return pc.data.simulate_screen(n_perturbations=4, n_contexts=3, n_genes=20, seed=seed)["rna"].copy()


def _with_duplicates(x: sp.csr_matrix) -> sp.csr_matrix:
    """The same matrix with every stored entry split into two stored halves (legal in scipy)."""
    x = sp.csr_matrix(x)
    x.sort_indices()
    n = np.diff(x.indptr)
    out = sp.csr_matrix((np.repeat(x.data / 2, 2), np.repeat(x.indices, 2), np.r_[0, np.cumsum(2 * n)]), shape=x.shape)
    assert not out.has_canonical_format and abs(out - x).max() == 0
    return out


# ---------------------------------------------------------------------------------------------------------------
# model files never run code
# ---------------------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def cross_modal(tmp_path_factory):
    pytest.importorskip("lightning")
    mdata = pc.data.simulate_multimodal(n_cells=120, n_genes=40, n_proteins=8, random_state=0)
    model = pc.tl.integrate(mdata, n_latent=3, max_epochs=2, progress_bar=False, device="cpu", n_hidden=16)
    return mdata, model


@pytest.fixture(scope="module")
def sparse_shift():
    pytest.importorskip("scvi")
    adata = pc.data.simulate_sparse_shift(n_perturbations=3, n_cells_per_perturbation=30, n_latent=3, n_genes=40)
    pc.models.SparseShiftVAE.setup_anndata(adata, perturbation_key="perturbation", control="control")
    model = pc.models.SparseShiftVAE(adata, n_latent=3, n_hidden=16)
    model.train(max_epochs=2, progress_bar=False, heldout=["P1"], accelerator="cpu")
    return adata, model


def test_cross_modal_files_hold_tensors_and_json_only(cross_modal, tmp_path):
    import json

    import torch

    mdata, model = cross_modal
    model.save(tmp_path / "m")
    assert sorted(p.name for p in (tmp_path / "m").iterdir()) == ["model.json", "model.pt", "setup.json"]
    state = torch.load(tmp_path / "m" / "model.pt", weights_only=True)  # a plain weights-only read succeeds
    assert all(isinstance(v, torch.Tensor) for v in state.values())
    json.loads((tmp_path / "m" / "model.json").read_text())
    back = pc.models.CrossModalAE.load(tmp_path / "m", mdata)
    np.testing.assert_array_equal(back.get_latent_representation(), model.get_latent_representation())
    np.testing.assert_array_equal(back.validation_indices, model.validation_indices)
    pd.testing.assert_frame_equal(back.history, model.history, check_dtype=False)


def test_cross_modal_load_refuses_a_pickle_payload(cross_modal, tmp_path):
    mdata, model = cross_modal
    folder = _assert_load_refuses_a_payload(model, lambda d: pc.models.CrossModalAE.load(d, mdata), tmp_path)
    # a directory from an earlier version (model.pt a general pickle, no model.json) is refused unread
    (folder / "model.json").unlink()
    with pytest.raises(ValueError, match="no longer read"):
        pc.models.CrossModalAE.load(folder, mdata)
    assert not (tmp_path / "marker").exists()


def test_sparse_shift_save_load_without_pickles(sparse_shift, tmp_path):
    import torch

    adata, model = sparse_shift
    model.save(tmp_path / "m", save_anndata=True)
    assert sorted(p.name for p in (tmp_path / "m").iterdir()) == ["adata.h5ad", "model.json", "model.pt"]
    torch.load(tmp_path / "m" / "model.pt", weights_only=True)
    for back in (
        pc.models.SparseShiftVAE.load(tmp_path / "m", adata=adata),
        pc.models.SparseShiftVAE.load(tmp_path / "m"),  # with the saved data
    ):
        np.testing.assert_allclose(back.get_latent_representation(), model.get_latent_representation(), atol=1e-6)
        assert back.heldout_perturbations_ == ["P1"] and back.is_trained_
        np.testing.assert_array_equal(back.train_indices_, model.train_indices_)
        pd.testing.assert_frame_equal(back.history_["elbo_train"], model.history_["elbo_train"], check_dtype=False)
    # the registry records the setup arguments only (it held the whole count matrix before)
    assert set(model.registry_["setup_args"]) == {"perturbation_key", "control", "layer", "batch_key", "min_cells"}
    wrong = adata[:, ::-1].copy()
    with pytest.raises(ValueError, match="not the 40 genes the model was trained on"):
        pc.models.SparseShiftVAE.load(tmp_path / "m", adata=wrong)


def test_sparse_shift_load_refuses_a_pickle_payload(sparse_shift, tmp_path):
    adata, model = sparse_shift
    _assert_load_refuses_a_payload(model, lambda d: pc.models.SparseShiftVAE.load(d, adata=adata), tmp_path)
    marker = tmp_path / "marker"
    # scvi-tools' own format (pickled numpy arrays and DataFrames in model.pt) is refused, not unpickled
    from scvi.model.base import BaseModelClass

    BaseModelClass.save(model, str(tmp_path / "scvi"), overwrite=True)
    _plant(tmp_path / "scvi" / "model.pt", marker)
    with pytest.raises(ValueError, match="no longer read"):
        pc.models.SparseShiftVAE.load(tmp_path / "scvi", adata=adata)
    assert not marker.exists()


def test_nothing_in_the_package_unpickles_user_files():
    """The audit as a test: no general unpickler is reachable from the package's code."""
    pattern = re.compile(
        r"weights_only\s*=\s*False|allow_pickle\s*=\s*True|pickle\.loads?\(|read_pickle|cloudpickle|dill\.|"
        r"joblib\.load|yaml\.load\(|\beval\(|\bexec\(|shelve"
    )
    hits = []
    for path in SRC.rglob("*.py"):
        for i, line in enumerate(path.read_text().splitlines(), 1):
            code = line.split("#")[0]
            if pattern.search(code) and ".eval()" not in code:
                hits.append(f"{path.relative_to(SRC)}:{i}: {line.strip()}")
    assert not hits, hits


# ---------------------------------------------------------------------------------------------------------------
# PLINK: a .fam that disagrees with the .bed
# ---------------------------------------------------------------------------------------------------------------
def _write_plink(folder: Path, genotypes: np.ndarray, name: str = "g") -> Path:
    from bed_reader import to_bed

    n, m = genotypes.shape
    bed = folder / f"{name}.bed"
    to_bed(
        bed,
        genotypes.astype(np.float32),
        properties={"iid": [f"s{i}" for i in range(n)], "sid": [f"v{j}" for j in range(m)]},
    )
    return bed


def _edit_fam(bed: Path, rows: list[str], name: str) -> Path:
    out = bed.with_name(f"{name}.bed")
    shutil.copy(bed, out)
    shutil.copy(bed.with_suffix(".bim"), out.with_suffix(".bim"))
    out.with_suffix(".fam").write_text("\n".join(rows) + "\n")
    return out


@pytest.mark.parametrize("n", [277, 278, 279, 280])
def test_fam_with_a_row_deleted_or_added_is_refused(tmp_path, n):
    pytest.importorskip("bed_reader")
    rng = np.random.default_rng(n)
    geno = rng.binomial(2, rng.uniform(0.1, 0.5, size=300), size=(n, 300)).astype(np.float32)
    bed = _write_plink(tmp_path, geno)
    g = pc.pp.read_genotypes(bed)
    np.testing.assert_array_equal(g.read(), geno)
    rows = bed.with_suffix(".fam").read_text().splitlines()
    deleted = _edit_fam(bed, rows[:100] + rows[101:], "deleted")
    added = _edit_fam(bed, rows[:50] + ["x x 0 0 0 -9"] + rows[50:], "added")
    # the file size fits both: only the padding bits tell
    for broken, listed in ((deleted, n - 1), (added, n + 1)):
        if (listed + 3) // 4 != (n + 3) // 4:
            with pytest.raises(ValueError, match="has .* bytes but"):
                pc.pp.read_genotypes(broken)
            continue
        with pytest.raises(
            ValueError,
            match=rf"{re.escape(str(broken.with_suffix('.fam')))}' lists {listed} samples but "
            rf".*{re.escape(broken.name)}",
        ) as info:
            pc.pp.read_genotypes(broken)
        assert f"fits {4 * ((n + 3) // 4) - 3} to {4 * ((n + 3) // 4)} samples" in str(info.value)


def test_padding_check_does_not_refuse_a_common_a1_allele(tmp_path):
    """Where A1 is the common allele, most calls are homozygous A1 and read as 0 bits, as padding does: a real
    last sample that is homozygous A1 everywhere is plausible there and must not be taken for padding."""
    pytest.importorskip("bed_reader")
    rng = np.random.default_rng(0)
    geno = np.full((279, 400), 2.0, dtype=np.float32)
    rare = rng.random(geno.shape) < 0.002
    geno[rare] = 1.0
    geno[-1] = 2.0
    bed = _write_plink(tmp_path, geno)
    np.testing.assert_array_equal(pc.pp.read_genotypes(bed).read(), geno)


@pytest.mark.realdata
def test_hapmap_fam_edits_are_refused(tmp_path):
    src = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "hapmap279-snprelate" / "hapmap279.bed"
    if not src.exists():
        pytest.skip(f"real data not found at {src}")
    assert pc.pp.read_genotypes(src).shape == (279, 5000)
    rows = src.with_suffix(".fam").read_text().splitlines()
    shutil.copy(src, tmp_path / "h.bed")
    shutil.copy(src.with_suffix(".bim"), tmp_path / "h.bim")
    for name, fam, listed in (("del", rows[:100] + rows[101:], 278), ("add", [*rows, "x x 0 0 0 -9"], 280)):
        bed = _edit_fam(tmp_path / "h.bed", fam, name)
        with pytest.raises(ValueError, match=f"lists {listed} samples but"):
            pc.pp.read_genotypes(bed)


# ---------------------------------------------------------------------------------------------------------------
# silent corruption of signatures
# ---------------------------------------------------------------------------------------------------------------
def _reference_effects(adata: ad.AnnData) -> pd.DataFrame:
    """Mean log1p(1e4 x proportion) of each (perturbation, context) minus that of its context's controls, in float64."""
    x = adata.X.toarray() if sp.issparse(adata.X) else np.asarray(adata.X)
    x = x.astype(np.float64)
    lib = x.sum(1, keepdims=True)
    y = np.log1p(np.divide(x * 1e4, lib, out=np.zeros_like(x), where=lib > 0))
    obs = adata.obs.astype(str)
    out = {}
    for (p, c), rows in obs.groupby(["perturbation", "context"]).indices.items():
        if p == "control":
            continue
        ctrl = np.flatnonzero((obs["perturbation"] == "control").to_numpy() & (obs["context"] == c).to_numpy())
        out[(p, c)] = y[rows].mean(0) - y[ctrl].mean(0)
    return pd.DataFrame(out).T


def test_float16_counts_whose_library_sizes_overflow(tmp_path):
    a = _screen()
    x = a.X.toarray() + 4000  # counts whose every library exceeds float16's largest value, 65,504
    assert (x.sum(1) > 65_504).all() and x.max() < 60_000
    a16 = ad.AnnData(X=x.astype(np.float16), obs=a.obs.copy(), var=a.var.copy())
    snap = _snapshot(a16)
    sig = pc.pp.signatures(a16, **KEYS)
    ref = _reference_effects(a16)
    got = pd.DataFrame(sig.X, index=pd.MultiIndex.from_frame(sig.obs[["perturbation", "context"]].astype(str)))
    np.testing.assert_allclose(got.loc[ref.index].to_numpy(), ref.to_numpy(), atol=1e-5)
    assert np.abs(sig.X).max() > 0.1  # every effect was exactly 0 before
    _assert_unchanged(a16, snap)


@pytest.mark.parametrize("fmt", ["csr", "csc"])
def test_unsummed_duplicate_entries(fmt):
    a = _screen()
    ref = pc.pp.signatures(a, **KEYS)
    dup = a.copy()
    dup.X = _with_duplicates(a.X) if fmt == "csr" else _with_duplicates(a.X.T.tocsr()).T
    assert dup.X.format == fmt
    snap = _snapshot(dup)
    sig = pc.pp.signatures(dup, **KEYS)
    np.testing.assert_allclose(sig.X, ref.X, atol=1e-6)  # log1p of each half changed them by up to 1.85
    np.testing.assert_allclose(sig.layers["se"], ref.layers["se"], atol=1e-6)
    _assert_unchanged(dup, snap)  # the user's matrix keeps its duplicates
    assert not dup.X.has_canonical_format


def test_normalize_true_refuses_negative_values():
    a = _screen()
    a.layers["log"] = np.log1p(a.X.toarray()) - 1.0
    snap = _snapshot(a)
    with pytest.raises(
        ValueError,
        match=r"normalize=True needs counts, but adata.layers\['log'\] holds negative values \(smallest -1\)",
    ):
        pc.pp.signatures(a, **KEYS, layer="log", normalize=True)
    _assert_unchanged(a, snap)
    sig = pc.pp.signatures(a, **KEYS, layer="log", normalize=False)
    assert np.isfinite(sig.X).all()


def test_labels_containing_the_pair_separator_get_distinct_names():
    a = _screen()
    ctrl = a.obs["perturbation"] == "control"
    p = a.obs["perturbation"].astype(str).to_numpy()
    c = a.obs["context"].astype(str).to_numpy()
    treated = np.flatnonzero(~ctrl.to_numpy())
    half = treated[: len(treated) // 2]
    rest = treated[len(treated) // 2 :]
    p[half], c[half] = "a|b", "c"
    p[rest], c[rest] = "a", "b|c"
    c[ctrl.to_numpy()] = np.where(np.arange(ctrl.sum()) % 2, "c", "b|c")
    a.obs = pd.DataFrame({"perturbation": p, "context": c}, index=a.obs_names)
    sig = pc.pp.signatures(a, **KEYS, min_cells=1)
    assert list(sig.obs_names) == ["a|b\\|c", "a\\|b|c"]
    assert sig.obs_names.is_unique
    pairs = set(zip(sig.obs["perturbation"].astype(str), sig.obs["context"].astype(str)))
    assert pairs == {("a", "b|c"), ("a|b", "c")}
    imp = pc.tl.impute(sig, method="mean_over_perturbations", progress_bar=False)
    assert imp.obs_names.is_unique and imp.n_obs == 4
    for name, row in imp.obs.iterrows():
        assert name == pc._utils._names.pair_name(row["perturbation"], row["context"])


def test_joined_keys_that_collide_are_refused():
    a = _screen()
    a.obs["compound"] = np.where(a.obs["perturbation"] == "control", "control", "x_y")
    a.obs.loc[a.obs_names[a.obs["perturbation"] == "P001"], "compound"] = "x"
    a.obs["dose"] = np.where(a.obs["perturbation"] == "P001", "y_1", "1")
    snap = _snapshot(a)
    with pytest.raises(ValueError, match=r"joined with key_sep='_' give the same label 'x_y_1' to different values"):
        pc.pp.signatures(a, perturbation_key=["compound", "dose"], context_key="context", control="control")
    _assert_unchanged(a, snap)
    sig = pc.pp.signatures(
        a, perturbation_key=["compound", "dose"], context_key="context", control="control", key_sep="/"
    )
    assert {"x_y/1", "x/y_1"} <= set(sig.obs["perturbation"])


# ---------------------------------------------------------------------------------------------------------------
# the grid's contexts: never from nothing, always from controls
# ---------------------------------------------------------------------------------------------------------------
def test_unused_context_level_is_not_imputed(caplog):
    sig = pc.data.simulate_effects(n_perturbations=6, n_contexts=4, n_genes=10, seed=0)
    sig.obs["context"] = sig.obs["context"].cat.add_categories(["GHOST"])
    with caplog.at_level(logging.WARNING, logger="pertcausal"):
        imp = pc.tl.impute(sig, method="additive", progress_bar=False)
    assert "GHOST" not in set(imp.obs["context"].astype(str)) and imp.n_obs == 6 * 4
    assert "no observed pair and no control mean" in caplog.text and "'GHOST'" in caplog.text
    res = pc.tl.evaluate_imputation(sig, methods=["additive"], holdout="context", n_folds=4, progress_bar=False)
    assert "GHOST" not in set(res["context"].astype(str))


def test_context_with_controls_only_is_predicted_after_slicing():
    mdata = pc.data.simulate_screen(n_perturbations=4, n_contexts=3, n_genes=20, seed=0)
    sig = pc.pp.signatures(mdata, **KEYS)
    held = sig.obs["context"].cat.categories[-1]
    train = sig[sig.obs["context"] != held].copy()  # anndata drops the now-unused category
    assert held not in set(train.obs["context"].cat.categories)
    imp = pc.tl.impute(train, method="mean_over_contexts", progress_bar=False)
    rows = imp.obs["context"] == held
    assert rows.sum() == 4 and not imp.obs.loc[rows, "observed"].any()
    truth = sig[sig.obs["context"] == held]
    pred = imp[rows.to_numpy()]
    assert np.isfinite(pred.X).all()
    # the held context's control mean is its baseline, so layers["mean"] is control mean + effect there
    np.testing.assert_allclose(
        pred.layers["mean"] - pred.X, np.tile(sig.uns["control_mean"].loc[held], (4, 1)), rtol=1e-5
    )
    # and every pair of the complete grid before (each perturbation was measured there) is in the grid now
    assert set(truth.obs["perturbation"].astype(str)) <= set(imp.obs.loc[rows, "perturbation"].astype(str))


# ---------------------------------------------------------------------------------------------------------------
# say it when a result is not what was asked for
# ---------------------------------------------------------------------------------------------------------------
def test_rank_perturbations_says_which_query_genes_are_missing():
    sig = pc.data.simulate_effects(n_perturbations=10, n_contexts=3, n_genes=30, seed=0)
    imp = pc.tl.impute(sig, method="additive", progress_bar=False)
    down = ["G0001", "G0002", "NOPE1", "NOPE2", "NOPE3", "NOPE4"]
    with pytest.raises(ValueError, match=r"only 2 of the query's 6 genes are in imputed.var_names \(missing: 'NOPE1'"):
        pc.tl.rank_perturbations(imp, context="C000", down=down)
    with pytest.warns(
        UserWarning, match=r"2 of the query's 6 genes are not in imputed.var_names .* uses 4: missing 'NOPE1', 'NOPE2'"
    ):
        res = pc.tl.rank_perturbations(imp, context="C000", down=["G0001", "G0002", "G0003", "G0004", "NOPE1", "NOPE2"])
    assert (res["n_genes"] == 4).all() and res.attrs["n_query_genes"] == 6
    out = pc.tl.rank_perturbations(imp, context="C000", down=down, min_genes=2)
    assert (out["n_genes"] == 2).all()
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a query that matches fully says nothing
        pc.tl.rank_perturbations(imp, context="C000", down=["G0001", "G0002"])
    with pytest.raises(ValueError, match="min_genes must be a positive integer"):
        pc.tl.rank_perturbations(imp, context="C000", down=down, min_genes=0)


def test_causal_graph_refuses_missing_labels():
    pytest.importorskip("lightning")
    adata = pc.data.simulate_factor_graph(n_genes=10, n_modules=2, n_regimes=3, n_cells_per_regime=30)
    adata.obs["perturbation"] = adata.obs["perturbation"].astype(object)
    adata.obs.iloc[:3, adata.obs.columns.get_loc("perturbation")] = np.nan
    snap = _snapshot(adata)
    with pytest.raises(ValueError, match=r"perturbation_key 'perturbation' has 3 missing value\(s\) in obs of adata"):
        pc.tl.causal_graph(adata, perturbation_key="perturbation", control="control", max_epochs=1, progress_bar=False)
    _assert_unchanged(adata, snap)


def test_sparse_shift_errors_name_the_users_key():
    pytest.importorskip("scvi")
    adata = pc.data.simulate_sparse_shift(n_perturbations=3, n_cells_per_perturbation=20, n_latent=3, n_genes=40)
    adata.obs["guide"] = adata.obs["perturbation"]
    del adata.obs["perturbation"]
    with pytest.raises(ValueError, match=r"control 'nope' is not a value of obs\['guide'\]"):
        pc.tl.sparse_shift(
            adata, perturbation_key="guide", control="nope", n_latent=3, max_epochs=1, progress_bar=False
        )
    adata.obs["guide"] = adata.obs["guide"].cat.add_categories(["unused"])
    with pytest.raises(ValueError, match=r"obs\['guide'\] has categories with no cell: 'unused'"):
        pc.models.SparseShiftVAE.setup_anndata(adata, perturbation_key="guide", control="control")


def test_integrate_rerun_and_likelihood_warning_and_translate():
    pytest.importorskip("lightning")
    mdata = pc.data.simulate_multimodal(n_cells=120, n_genes=40, n_proteins=8, random_state=0)
    third = mdata["adt"].copy()
    third.var_names = [f"{v}_b" for v in third.var_names]
    mdata = md.MuData({"rna": mdata["rna"], "adt": mdata["adt"], "adt2": third})
    fast = {"n_latent": 3, "max_epochs": 1, "progress_bar": False, "device": "cpu", "n_hidden": 16}
    pc.tl.integrate(mdata, **fast)
    assert all("X_pertcausal" in mdata[m].obsm for m in ("rna", "adt", "adt2"))
    model = pc.tl.integrate(mdata, mods=["rna", "adt"], **fast)
    assert "X_pertcausal" not in mdata["adt2"].obsm  # no stale embedding of the earlier run
    assert "X_pertcausal" in mdata["adt"].obsm and mdata.uns["X_pertcausal"]["params"]["modalities"] == ["rna", "adt"]
    with pytest.raises(ValueError, match="no cell lacks the target"):
        pc.tl.translate(mdata, source="rna", target="adt", model=model, cells="unmeasured")
    assert "adt_from_rna" not in mdata.mod
    # log-normalised RNA switches to a Gaussian likelihood: said, naming the modality
    lognorm = mdata["rna"].copy()
    lognorm.X = np.log1p(lognorm.X.toarray() if sp.issparse(lognorm.X) else lognorm.X)
    m2 = md.MuData({"rna": lognorm, "adt": mdata["adt"]})
    with pytest.warns(
        UserWarning,
        match=r"modality 'rna' is modelled with a Gaussian likelihood because its X does not hold raw counts",
    ):
        model = pc.tl.integrate(m2, **fast)
    assert model.setup["likelihoods"]["rna"] == "gaussian"
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)
        pc.models.CrossModalAE.setup_mudata(m2, likelihoods={"rna": "gaussian"})  # chosen: no warning


# ---------------------------------------------------------------------------------------------------------------
# clear errors instead of crashes
# ---------------------------------------------------------------------------------------------------------------
DUP = r"var_names holds 1 duplicated name\(s\) \(e.g. 'G0001'\).*var_names_make_unique\(\)"


def test_duplicate_var_names_refused_by_every_entry_point():
    mdata = pc.data.simulate_screen(n_perturbations=4, n_contexts=3, n_genes=20, seed=0)
    names = list(mdata["rna"].var_names)
    names[2] = names[1]
    mdata["rna"].var_names = names
    mdata.update()
    snap = _snapshot(mdata["rna"])
    with pytest.raises(ValueError, match=DUP.replace("G0001", re.escape(names[1]))):
        pc.pp.signatures(mdata, **KEYS)
    with pytest.raises(ValueError, match=DUP.replace("G0001", re.escape(names[1]))):
        pc.tl.impute(mdata, method="additive", **KEYS, progress_bar=False)
    _assert_unchanged(mdata["rna"], snap)
    assert "impute" not in mdata.mod
    sig = pc.data.simulate_effects(n_perturbations=4, n_contexts=3, n_genes=10, seed=0)
    sig.var_names = ["G0000", "G0001", "G0001", *sig.var_names[3:]]
    with pytest.raises(ValueError, match=DUP):
        pc.tl.impute(sig, method="additive", progress_bar=False)
    with pytest.raises(ValueError, match=DUP):
        pc.tl.evaluate_imputation(sig, methods=["additive"], progress_bar=False)


def test_duplicate_var_names_in_the_model_tools():
    pytest.importorskip("lightning")
    multi = pc.data.simulate_multimodal(n_cells=60, n_genes=20, n_proteins=5, random_state=0)
    multi["rna"].var_names = ["G0000", "G0001", "G0001", *multi["rna"].var_names[3:]]
    with pytest.raises(ValueError, match=r"mdata.mod\['rna'\]." + DUP):
        pc.tl.integrate(multi, n_latent=2, max_epochs=1, progress_bar=False, device="cpu")
    assert "X_pertcausal" not in multi.obsm
    graph = pc.data.simulate_factor_graph(n_genes=6, n_modules=2, n_regimes=3, n_cells_per_regime=20)
    graph.var_names = ["G0000", "G0001", "G0001", *graph.var_names[3:]]
    for genes in (None, ["G0000", "G0003"]):
        with pytest.raises(ValueError, match=DUP):
            pc.tl.causal_graph(graph, perturbation_key="perturbation", control="control", genes=genes, max_epochs=1)
    pytest.importorskip("scvi")
    cells = pc.data.simulate_sparse_shift(n_perturbations=3, n_cells_per_perturbation=20, n_latent=3, n_genes=40)
    cells.var_names = ["G0000", "G0001", "G0001", *cells.var_names[3:]]
    with pytest.raises(ValueError, match=DUP):
        pc.tl.sparse_shift(cells, perturbation_key="perturbation", control="control", max_epochs=1, progress_bar=False)


def test_backed_input(tmp_path):
    a = _screen()
    a.write_h5ad(tmp_path / "sparse.h5ad")
    dense = a.copy()
    dense.X = dense.X.toarray()
    dense.write_h5ad(tmp_path / "dense.h5ad")
    ref = pc.pp.signatures(a, **KEYS)
    for name in ("sparse", "dense"):  # pp.signatures streams backed input
        backed = ad.read_h5ad(tmp_path / f"{name}.h5ad", backed="r")
        np.testing.assert_allclose(pc.pp.signatures(backed, **KEYS).X, ref.X, atol=1e-6)
        backed.file.close()
    pytest.importorskip("lightning")
    graph = pc.data.simulate_factor_graph(n_genes=6, n_modules=2, n_regimes=3, n_cells_per_regime=20)
    graph.write_h5ad(tmp_path / "graph.h5ad")
    backed = ad.read_h5ad(tmp_path / "graph.h5ad", backed="r")
    with pytest.raises(
        ValueError, match=r"is backed .*graph.h5ad.*tl.causal_graph reads the whole matrix.*to_memory\(\)"
    ):
        pc.tl.causal_graph(backed, perturbation_key="perturbation", control="control", max_epochs=1)
    backed.file.close()
    pytest.importorskip("scvi")
    cells = pc.data.simulate_sparse_shift(n_perturbations=3, n_cells_per_perturbation=20, n_latent=3, n_genes=40)
    cells.write_h5ad(tmp_path / "cells.h5ad")
    backed = ad.read_h5ad(tmp_path / "cells.h5ad", backed="r")
    with pytest.raises(ValueError, match=r"is backed .*tl.sparse_shift reads the whole matrix"):
        pc.tl.sparse_shift(backed, perturbation_key="perturbation", control="control", max_epochs=1, progress_bar=False)
    backed.file.close()


def test_obs_keys_are_found_in_the_modality_then_the_mudata():
    mdata = pc.data.simulate_screen(n_perturbations=4, n_contexts=3, n_genes=20, seed=0)
    ref = pc.pp.signatures(mdata, **KEYS)
    mdata.obs["condition"] = mdata["rna"].obs["perturbation"].astype(str).to_numpy()
    mdata.obs["cell_type"] = mdata["rna"].obs["context"].astype(str).to_numpy()
    keys = {"perturbation_key": "condition", "context_key": "cell_type", "control": "control"}
    sig = pc.pp.signatures(mdata, **keys)
    np.testing.assert_allclose(sig.X, ref.X)
    pc.tl.impute(mdata, method="additive", **keys, progress_bar=False)
    assert mdata["impute"].n_obs == 12
    with pytest.raises(
        KeyError,
        match=r"'guide' is not a column of mdata\['rna'\].obs or of mdata.obs; "
        r".*mdata.obs columns are: 'condition', 'cell_type'",
    ):
        pc.pp.signatures(mdata, **{**keys, "perturbation_key": "guide"})
