"""pertcausal.io: CMap GCT/GCTX readers and writers on the real CMap files, synthetic files and cmapPy."""

from __future__ import annotations

import warnings
from pathlib import Path

import anndata as ad
import h5py
import numpy as np
import pandas as pd
import pytest

import pertcausal as pc

# tests/ is not a package, so the data path of conftest.py is recomputed here.
ROOT = Path(__file__).resolve().parents[1]
L1000 = ROOT.parent / "shared" / "data" / "l1000-cmapr-3drugs-65lines"
GCT = L1000 / "modzs_n272x978.gct"
GCTX = L1000 / "modzs_n272x978.gctx"
H5AD = L1000 / "l1000_cmapr_modz_n272x978.h5ad"
N_OBS, N_VARS = 272, 978
MU = "\u00b5"  # the micro sign of CMap's dose strings ("10 µM")


def _need(path: Path) -> None:
    if not path.exists():
        pytest.skip(f"real data not found at {path} (expected ../shared/data beside the repo)")


def _assert_same(a: ad.AnnData, b: ad.AnnData) -> None:
    """Same matrix (bit for bit, NaN where NaN), names and metadata (values and dtypes)."""
    assert a.shape == b.shape
    assert a.X.dtype == b.X.dtype
    np.testing.assert_array_equal(a.X, b.X)  # treats NaN == NaN
    assert list(a.obs_names) == list(b.obs_names)
    assert list(a.var_names) == list(b.var_names)
    pd.testing.assert_frame_equal(a.obs, b.obs, check_exact=True)
    pd.testing.assert_frame_equal(a.var, b.var, check_exact=True)


@pytest.fixture(scope="module")
def real_gct() -> ad.AnnData:
    _need(GCT)
    return pc.io.read_gct(GCT)


@pytest.fixture(scope="module")
def real_gctx() -> ad.AnnData:
    _need(GCTX)
    return pc.io.read_gctx(GCTX)


@pytest.fixture
def small() -> ad.AnnData:
    """4 signatures x 5 genes with non-ASCII text, -666, NaN, ints and floats in the metadata."""
    rng = np.random.default_rng(0)
    x = rng.normal(size=(4, 5)).astype(np.float32)
    x[1, 2] = np.nan
    obs = pd.DataFrame(
        {
            "pert_iname": ["café", "naïve", f"{MU}-opioid agonist", "DMSO"],
            "pert_idose": [f"10 {MU}M", f"1 {MU}M", "500 nM", "-666"],
            "dose_um": [10.0, 1.0, 0.5, np.nan],
            "n_replicates": [3, 2, 5, -666],
        },
        index=[f"CPC001_A375_6H:BRD-{i}" for i in range(4)],
    )
    var = pd.DataFrame(
        {
            "pr_gene_symbol": ["DUSP6", "EGR1", "MYC", "ÄRZ1", "IER3"],
            "pr_gene_id": [1848, 1958, 4609, 1, 3726],
            "weight": [0.1, 1 / 3, 2.5e-8, 1e20, -1.5],
        },
        index=["202_at", "201694_s_at", "202431_s_at", "1_at", "201631_s_at"],
    )
    return ad.AnnData(x, obs=obs, var=var)


# ---------------------------------------------------------------------------------------------
# real CMap files
# ---------------------------------------------------------------------------------------------


@pytest.mark.realdata
def test_real_gct_shape_and_metadata(real_gct: ad.AnnData) -> None:
    a = real_gct
    assert a.shape == (N_OBS, N_VARS)  # samples x genes: the transpose of the 978 x 272 GCT
    assert a.X.dtype == np.float32
    assert a.obs_names[0] == "CPC006_A549_6H:BRD-U88459701-000-01-8:10"
    assert a.var_names[:3].tolist() == ["200814_at", "222103_at", "201453_x_at"]
    # 16 column and 6 row metadata fields, minus the "id" field that repeats the ids
    assert a.obs.shape[1] == 15 and "id" not in a.obs
    assert a.var.columns.tolist() == ["is_bing", "is_lm", "pr_gene_id", "pr_gene_symbol", "pr_gene_title"]
    assert a.var["pr_gene_id"].dtype == np.int64 and a.var.loc["200814_at", "pr_gene_id"] == 5720
    assert a.var.loc["222103_at", "pr_gene_symbol"] == "ATF1"
    assert a.obs["distil_nsample"].iloc[:4].tolist() == [4, 5, 4, 5]
    assert a.obs["distil_ss"].iloc[0] == 2.6536
    assert (a.obs["distil_cc_q75"] == -666).sum() > 0  # CMap's null value is kept as is
    # first data line of the file: 200814_at ... -0.5236 0.4525 -0.1483
    np.testing.assert_array_equal(a.X[:3, 0], np.array([-0.5236, 0.4525, -0.1483], dtype=np.float32))
    assert a.uns["gct"] == {"format": "gct", "version": "1.3", "path": str(GCT)}


@pytest.mark.realdata
def test_real_gctx_shape_metadata_and_micro_sign(real_gctx: ad.AnnData) -> None:
    a = real_gctx
    assert a.shape == (N_OBS, N_VARS)
    with h5py.File(GCTX) as f:  # the HDF5 matrix is (columns, rows) = samples x genes
        m = f["0/DATA/0/matrix"]
        assert m.shape == (N_OBS, N_VARS)
        np.testing.assert_array_equal(a.X, m[()])
    assert a.obs_names[0] == "CPC006_A549_6H:BRD-U88459701-000-01-8:10"
    assert a.obs.shape[1] == 15 and a.var.shape[1] == 5
    # the latin-1 byte 0xB5 of the file is decoded as the micro sign
    assert set(a.obs["pert_idose"]) == {f"10 {MU}M", f"3 {MU}M", f"1 {MU}M", "500 nM", "100 nM"}
    assert (a.obs["pert_idose"] == f"10 {MU}M").sum() > 100
    assert a.var["pr_gene_id"].dtype == np.int64  # stored as text, every value a number
    assert a.obs["distil_ss"].dtype == np.float32  # stored as float32
    assert a.uns["gct"] == {"format": "gctx", "version": "GCTX1.0", "path": str(GCTX)}


@pytest.mark.realdata
def test_real_gct_and_gctx_agree(real_gct: ad.AnnData, real_gctx: ad.AnnData) -> None:
    a, b = real_gct, real_gctx
    assert list(a.obs_names) == list(b.obs_names)
    assert list(a.var_names) == list(b.var_names)
    # the GCT has 4 decimals; the GCTX the float32 values they were rounded from
    diff = np.abs(a.X.astype(np.float64) - b.X.astype(np.float64))
    assert diff.max() <= 5e-5 + 1e-6 * np.abs(b.X).max()
    assert diff.max() > 0  # they are not the same bits: the GCT is rounded
    for frame_a, frame_b in ((a.obs, b.obs), (a.var, b.var)):
        assert sorted(frame_a.columns) == sorted(frame_b.columns)
        for col in frame_b.columns:
            va, vb = frame_a[col].to_numpy(), frame_b[col].to_numpy()
            if vb.dtype.kind in "iuf":
                np.testing.assert_allclose(va.astype(np.float64), vb.astype(np.float64), rtol=2e-6, atol=5e-5)
            elif col == "pert_idose":  # cmapR wrote the latin-1 micro sign into the GCT as the text "<b5>"
                assert (a.obs[col].str.replace("<b5>", MU) == b.obs[col]).all()
                assert (a.obs[col].str.contains("<b5>")).sum() > 100
            else:
                assert (va == vb).all(), col


@pytest.mark.realdata
def test_real_gctx_matches_shipped_h5ad(real_gctx: ad.AnnData, real_gct: ad.AnnData) -> None:
    _need(H5AD)
    h = ad.read_h5ad(H5AD)
    b = real_gctx[h.obs_names, h.var_names]  # align by ids
    np.testing.assert_array_equal(b.X, h.X)  # bit for bit
    np.testing.assert_array_equal(b.X, h.layers["modz"])
    renamed = {"perturbation": "pert_iname", "context": "cell_id", "time": "pert_itime", "plate_prefix": "brew_prefix"}
    for h5ad_col, gctx_col in renamed.items():
        assert (h.obs[h5ad_col].astype(str).to_numpy() == b.obs[gctx_col].to_numpy()).all(), h5ad_col
    # the h5ad replaced "µ" by "u"
    assert (h.obs["dose"].astype(str).to_numpy() == b.obs["pert_idose"].str.replace(MU, "u").to_numpy()).all()
    for col in ("distil_nsample", "distil_ss", "pct_self_rank_q25", "is_gold"):
        np.testing.assert_array_equal(h.obs[col].to_numpy(), b.obs[col].to_numpy())
    assert (h.var["gene_symbol"].astype(str).to_numpy() == b.var["pr_gene_symbol"].to_numpy()).all()
    assert (h.var["entrez_id"].astype(int).to_numpy() == b.var["pr_gene_id"].to_numpy()).all()
    g = real_gct[h.obs_names, h.var_names]
    np.testing.assert_allclose(g.X, h.X, rtol=0, atol=5.1e-5)


@pytest.mark.realdata
@pytest.mark.parametrize("reader", ["gct", "gctx"])
def test_real_subset_equals_slice_of_full_read(reader: str, real_gct: ad.AnnData, real_gctx: ad.AnnData) -> None:
    path, full, read = (GCT, real_gct, pc.io.read_gct) if reader == "gct" else (GCTX, real_gctx, pc.io.read_gctx)
    rid = list(full.var_names[[500, 3, 977, 10, 0]])  # not sorted: the requested order is kept
    cid = list(full.obs_names[[271, 0, 100]])
    _assert_same(read(path, rid=rid, cid=cid), full[cid, rid].copy())
    _assert_same(read(path, rid=rid), full[:, rid].copy())
    _assert_same(read(path, cid=cid), full[cid, :].copy())
    sub = read(path, rid=rid, cid=cid)
    assert list(sub.var_names) == rid and list(sub.obs_names) == cid


@pytest.mark.realdata
def test_real_round_trips_are_exact(real_gct: ad.AnnData, real_gctx: ad.AnnData, tmp_path: Path) -> None:
    pc.io.write_gct(real_gct, tmp_path / "a.gct")
    _assert_same(pc.io.read_gct(tmp_path / "a.gct"), real_gct)
    pc.io.write_gctx(real_gctx, tmp_path / "b.gctx")
    back = pc.io.read_gctx(tmp_path / "b.gctx")
    _assert_same(back, real_gctx)
    assert set(back.obs["pert_idose"]) == set(real_gctx.obs["pert_idose"])  # "µ" survives
    # across formats: what the GCT holds goes through a GCTX unchanged
    pc.io.write_gctx(real_gct, tmp_path / "c.gctx")
    _assert_same(pc.io.read_gctx(tmp_path / "c.gctx"), real_gct)


@pytest.mark.realdata
def test_written_gctx_mimics_cmap_layout(real_gctx: ad.AnnData, tmp_path: Path) -> None:
    out = tmp_path / "b.gctx"
    pc.io.write_gctx(real_gctx, out)
    with h5py.File(GCTX) as ref, h5py.File(out) as new:
        assert dict(new.attrs) == dict(ref.attrs) == {"version": np.bytes_(b"GCTX1.0")}
        assert new["0/DATA/0/matrix"].shape == ref["0/DATA/0/matrix"].shape
        assert new["0/DATA/0/matrix"].dtype == ref["0/DATA/0/matrix"].dtype == np.float32
        assert new["0/DATA/0/matrix"].chunks == ref["0/DATA/0/matrix"].chunks == (268, 978)
        for group in ("0/META/ROW", "0/META/COL"):
            assert set(new[group]) == set(ref[group])
            for name in ref[group]:
                assert new[group][name].dtype.kind == ref[group][name].dtype.kind or name == "pr_gene_id"
                assert new[group][name].compression == "gzip"
        np.testing.assert_array_equal(new["0/META/COL/id"][()], ref["0/META/COL/id"][()])


@pytest.mark.realdata
def test_real_gctx_uns_is_h5ad_writable(real_gctx: ad.AnnData, tmp_path: Path) -> None:
    real_gctx.write_h5ad(tmp_path / "a.h5ad")
    back = ad.read_h5ad(tmp_path / "a.h5ad")
    assert back.uns["gct"] == real_gctx.uns["gct"]
    np.testing.assert_array_equal(back.X, real_gctx.X)
    assert (back.obs["pert_idose"].astype(str) == real_gctx.obs["pert_idose"]).all()


@pytest.mark.realdata
def test_gctx_subset_reads_only_the_selection(monkeypatch: pytest.MonkeyPatch) -> None:
    """A subset read fancy-indexes the HDF5 matrix; it never reads the whole matrix."""
    _need(GCTX)
    reads: list[tuple[int, ...]] = []
    getitem = h5py.Dataset.__getitem__

    def spy(self, args, *rest, **kwargs):
        out = getitem(self, args, *rest, **kwargs)
        if self.name == "/0/DATA/0/matrix":
            reads.append(np.shape(out))
        return out

    def no_read_direct(self, *args, **kwargs):
        raise AssertionError("read_direct reads the whole matrix")

    monkeypatch.setattr(h5py.Dataset, "__getitem__", spy)
    monkeypatch.setattr(h5py.Dataset, "read_direct", no_read_direct)
    full = pc.io.read_gctx(GCTX)  # the spy sees the full read ...
    assert reads == [(N_OBS, N_VARS)]
    reads.clear()

    cid = list(full.obs_names[[200, 5, 17]])
    a = pc.io.read_gctx(GCTX, cid=cid)
    assert reads == [(3, N_VARS)]  # ... and only the 3 selected samples here
    reads.clear()
    rid = list(full.var_names[[900, 2]])
    b = pc.io.read_gctx(GCTX, rid=rid)
    assert reads == [(N_OBS, 2)]
    reads.clear()
    c = pc.io.read_gctx(GCTX, rid=rid, cid=cid)
    assert len(reads) == 1
    assert np.prod(reads[0]) <= max(3 * N_VARS, 2 * N_OBS) < N_OBS * N_VARS
    np.testing.assert_array_equal(a.X, full[cid].X)
    np.testing.assert_array_equal(b.X, full[:, rid].X)
    np.testing.assert_array_equal(c.X, full[cid, rid].X)


# ---------------------------------------------------------------------------------------------
# synthetic files
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("fmt", ["gct", "gctx"])
def test_synthetic_round_trip_exact(small: ad.AnnData, fmt: str, tmp_path: Path) -> None:
    write, read = (pc.io.write_gct, pc.io.read_gct) if fmt == "gct" else (pc.io.write_gctx, pc.io.read_gctx)
    write(small, tmp_path / f"s.{fmt}")
    back = read(tmp_path / f"s.{fmt}")
    _assert_same(back, small)
    assert back.obs.loc[small.obs_names[2], "pert_iname"] == f"{MU}-opioid agonist"
    assert back.obs["n_replicates"].dtype == np.int64 and back.obs["n_replicates"].iloc[-1] == -666
    assert np.isnan(back.obs["dose_um"].iloc[-1]) and np.isnan(back.X[1, 2])
    assert back.uns["gct"]["format"] == fmt


@pytest.mark.parametrize("fmt", ["gct", "gctx"])
def test_float_round_trip_is_bit_exact(fmt: str, tmp_path: Path) -> None:
    """Shortest round-trip text for floats: every float32 and float64 value reads back identical."""
    rng = np.random.default_rng(1)
    x32 = (rng.standard_normal((30, 40)) * 10.0 ** rng.uniform(-30, 30, size=(30, 40))).astype(np.float32)
    x64 = rng.standard_normal((30, 40)) * 10.0 ** rng.uniform(-200, 200, size=(30, 40))
    write, read = (pc.io.write_gct, pc.io.read_gct) if fmt == "gct" else (pc.io.write_gctx, pc.io.read_gctx)
    for x, dtype in ((x32, "float32"), (x64, None)):
        a = ad.AnnData(x)
        write(a, tmp_path / f"x.{fmt}")
        back = read(tmp_path / f"x.{fmt}", dtype=dtype)
        assert back.X.dtype == x.dtype
        np.testing.assert_array_equal(back.X, x)


def test_categorical_and_missing_text_are_written_as_text(tmp_path: Path) -> None:
    a = ad.AnnData(
        np.ones((3, 2), dtype=np.float32),
        obs=pd.DataFrame(
            {
                "cell_id": pd.Categorical(["A375", "MCF7", "A375"]),
                "note": ["ok", None, "x"],
                "gold": [True, False, True],
            },
            index=["s1", "s2", "s3"],
        ),
    )
    for write, read, ext in ((pc.io.write_gct, pc.io.read_gct, "gct"), (pc.io.write_gctx, pc.io.read_gctx, "gctx")):
        write(a, tmp_path / f"a.{ext}")
        back = read(tmp_path / f"a.{ext}")
        assert back.obs["cell_id"].tolist() == ["A375", "MCF7", "A375"]
        assert back.obs["note"].tolist() == ["ok", "-666", "x"]  # CMap's null value
        assert back.obs["gold"].tolist() == ["True", "False", "True"]


def test_write_gct_text_layout(small: ad.AnnData, tmp_path: Path) -> None:
    pc.io.write_gct(small, tmp_path / "s.gct")
    lines = (tmp_path / "s.gct").read_text(encoding="utf-8").splitlines()
    assert lines[0] == "#1.3"
    assert lines[1] == "5\t4\t3\t4"  # genes, samples, row fields, column fields
    assert lines[2].split("\t")[:4] == ["id", "pr_gene_symbol", "pr_gene_id", "weight"]
    assert lines[3].split("\t")[:5] == ["pert_iname", "na", "na", "na", "café"]
    assert lines[7].split("\t")[:4] == ["202_at", "DUSP6", "1848", "0.1"]
    assert len(lines) == 3 + 4 + 5


def test_read_gct_version_1_2(tmp_path: Path) -> None:
    path = tmp_path / "v12.gct"
    path.write_text(
        f"#1.2\n3\t2\nName\tDescription\tS1\tS2\ng1\tdesc one\t1.5\t-2\ng2\tna\tNaN\t0\ng3\t{MU}\t3\t4e-1\n",
        encoding="utf-8",
    )
    a = pc.io.read_gct(path)
    assert a.shape == (2, 3)
    assert list(a.obs_names) == ["S1", "S2"] and list(a.var_names) == ["g1", "g2", "g3"]
    np.testing.assert_array_equal(a.X, np.array([[1.5, np.nan, 3.0], [-2.0, 0.0, 0.4]], dtype=np.float32))
    assert a.var["Description"].tolist() == ["desc one", "na", MU]
    assert a.obs.shape[1] == 0
    assert a.uns["gct"]["version"] == "1.2"
    # written back as 1.2: same matrix and descriptions; obs metadata would be dropped with a warning
    pc.io.write_gct(a, tmp_path / "back.gct", version="1.2")
    _assert_same(pc.io.read_gct(tmp_path / "back.gct"), a)
    a.obs["dose"] = [1.0, 2.0]
    with pytest.warns(UserWarning, match=r"obs\['dose'\]"):
        pc.io.write_gct(a, tmp_path / "back.gct", version="1.2")


def test_read_gct_latin1_fallback(tmp_path: Path) -> None:
    path = tmp_path / "latin1.gct"
    text = f"#1.3\n1\t2\t1\t1\nid\tsym\tS1\tS2\npert_idose\tna\t10 {MU}M\t500 nM\ng1\tDUSP6\t0.25\t-1\n"
    path.write_bytes(text.encode("latin-1"))
    with pytest.raises(UnicodeDecodeError):
        path.read_bytes().decode("utf-8")
    a = pc.io.read_gct(path)
    assert a.obs["pert_idose"].tolist() == [f"10 {MU}M", "500 nM"]
    np.testing.assert_array_equal(a.X[:, 0], np.array([0.25, -1.0], dtype=np.float32))


def test_gctx_non_utf8_dataset_decoded_as_latin1(tmp_path: Path) -> None:
    path = tmp_path / "latin1.gctx"
    with h5py.File(path, "w") as f:
        f.attrs["version"] = np.bytes_(b"GCTX1.0")
        f["0/DATA/0/matrix"] = np.arange(4, dtype=np.float32).reshape(2, 2)
        f["0/META/COL/id"] = np.array([b"s1", b"s2"])
        f["0/META/COL/pert_idose"] = np.array([b"10 \xb5M", b"500 nM"])  # as in CMap's file
        f["0/META/ROW/id"] = np.array([b"g1", b"g2"])
        f["0/META/ROW/pr_gene_symbol"] = np.array(["ÄRZ1".encode(), b"MYC"])  # UTF-8
    a = pc.io.read_gctx(path)
    assert a.obs["pert_idose"].tolist() == [f"10 {MU}M", "500 nM"]
    assert a.var["pr_gene_symbol"].tolist() == ["ÄRZ1", "MYC"]
    np.testing.assert_array_equal(a.X, np.array([[0, 1], [2, 3]], dtype=np.float32))


def test_layer_is_written(small: ad.AnnData, tmp_path: Path) -> None:
    small.layers["z"] = small.X * 2
    pc.io.write_gctx(small, tmp_path / "z.gctx", layer="z")
    np.testing.assert_array_equal(pc.io.read_gctx(tmp_path / "z.gctx").X, small.layers["z"])
    with pytest.raises(KeyError, match="layer 'nope'"):
        pc.io.write_gct(small, tmp_path / "z.gct", layer="nope")


# ---------------------------------------------------------------------------------------------
# bad input
# ---------------------------------------------------------------------------------------------


def _gct(tmp_path: Path, text: str, name: str = "bad.gct") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def test_gct_header_disagreeing_with_contents(tmp_path: Path) -> None:
    head = "#1.3\n3\t2\t1\t1\nid\tsym\tS1\tS2\ndose\tna\t1\t2\n"
    path = _gct(tmp_path, head + "g1\tA\t1\t2\ng2\tB\t3\t4\n")  # 2 data lines, 3 declared
    with pytest.raises(ValueError, match=r"bad\.gct.*declares 3 data rows.*has 2 data lines"):
        pc.io.read_gct(path)
    path = _gct(tmp_path, head.replace("3\t2", "2\t2") + "g1\tA\t1\t2\ng2\tB\t3\t4\t5\n")  # one field too many
    with pytest.raises(ValueError, match=r"bad\.gct, line 6: expected 4 .* found 5"):
        pc.io.read_gct(path)
    path = _gct(tmp_path, "#1.3\n2\t2\t1\nid\tsym\tS1\tS2\n")  # 3 counts for version 1.3
    with pytest.raises(ValueError, match=r"line 2: expected 4 tab-separated counts"):
        pc.io.read_gct(path)
    path = _gct(tmp_path, head.replace("3\t2", "1\t2") + "g1\tA\t1\tx\n")
    with pytest.raises(ValueError, match=r"line 5: the value 'x' of row 'g1', column 'S2' is not a number"):
        pc.io.read_gct(path)


def test_gct_unknown_version(tmp_path: Path) -> None:
    path = _gct(tmp_path, "#1.4\n1\t1\t0\t0\nid\tS1\ng1\t1\n")
    with pytest.raises(ValueError, match=r"unknown GCT version line '#1.4'"):
        pc.io.read_gct(path)
    path = _gct(tmp_path, "1\t1\t0\t0\nid\tS1\ng1\t1\n")
    with pytest.raises(ValueError, match="unknown GCT version line"):
        pc.io.read_gct(path)


def test_read_gct_on_hdf5_points_to_read_gctx(small: ad.AnnData, tmp_path: Path) -> None:
    pc.io.write_gctx(small, tmp_path / "s.gctx")
    with pytest.raises(ValueError, match="read_gctx"):
        pc.io.read_gct(tmp_path / "s.gctx")


def test_gctx_missing_groups(small: ad.AnnData, tmp_path: Path) -> None:
    path = tmp_path / "s.gctx"
    pc.io.write_gctx(small, path)
    with h5py.File(path, "a") as f:
        del f["0/META/COL"]
    with pytest.raises(ValueError, match=r"s\.gctx is not a GCTX file: missing HDF5 path\(s\) '0/META/COL'"):
        pc.io.read_gctx(path)
    with h5py.File(path, "a") as f:
        del f["0/META/ROW/id"]
    with pytest.raises(ValueError, match=r"'0/META/ROW/id', '0/META/COL'"):
        pc.io.read_gctx(path)


def test_gctx_shape_disagreeing_with_ids(small: ad.AnnData, tmp_path: Path) -> None:
    path = tmp_path / "s.gctx"
    pc.io.write_gctx(small, path)
    with h5py.File(path, "a") as f:
        del f["0/META/COL/id"]
        f["0/META/COL/id"] = np.array([b"a", b"b"])
    with pytest.raises(ValueError, match=r"0/META/COL/id has 2 ids, expected 4"):
        pc.io.read_gctx(path)


@pytest.mark.parametrize("fmt", ["gct", "gctx"])
def test_unknown_and_repeated_ids(small: ad.AnnData, fmt: str, tmp_path: Path) -> None:
    write, read = (pc.io.write_gct, pc.io.read_gct) if fmt == "gct" else (pc.io.write_gctx, pc.io.read_gctx)
    path = tmp_path / f"s.{fmt}"
    write(small, path)
    with pytest.raises(KeyError, match=r"rid: 2 of the requested ids are not row ids.*'nope1', 'nope2'"):
        read(path, rid=["202_at", "nope1", "nope2"])
    with pytest.raises(KeyError, match=r"cid: 1 of the requested ids are not column ids.*'202_at'"):
        read(path, cid=["202_at"])  # a gene id is not a sample id
    with pytest.raises(ValueError, match="rid repeats ids: '202_at'"):
        read(path, rid=["202_at", "1_at", "202_at"])


def test_write_rejects_what_the_format_cannot_hold(small: ad.AnnData, tmp_path: Path) -> None:
    small.obs["bad"] = ["a\tb", "c", "d", "e"]
    with pytest.raises(ValueError, match="metadata field 'bad' contains a tab"):
        pc.io.write_gct(small, tmp_path / "s.gct")
    assert not (tmp_path / "s.gct").exists()  # nothing half-written
    del small.obs["bad"]
    small.var["a/b"] = 1
    with pytest.raises(ValueError, match="column 'a/b' cannot be a GCTX metadata dataset name"):
        pc.io.write_gctx(small, tmp_path / "s.gctx")
    with pytest.raises(ValueError, match="version must be one of"):
        pc.io.write_gct(small, tmp_path / "s.gct", version="1.4")  # type: ignore[arg-type]


# ---------------------------------------------------------------------------------------------
# cmapPy (the reference parser) where it is installed
# ---------------------------------------------------------------------------------------------


def _cmappy_parse():
    pytest.importorskip("cmapPy")
    from cmapPy.pandasGEXpress.parse import parse

    def quiet(*args, **kwargs):
        with warnings.catch_warnings():  # cmapPy calls pd.to_numeric(errors="ignore"), deprecated in pandas 2.2
            warnings.simplefilter("ignore", FutureWarning)
            return parse(*args, **kwargs)

    return quiet


def _assert_matches_cmappy(ours: ad.AnnData, gctoo, *, exact_numbers: bool = True) -> None:
    np.testing.assert_array_equal(ours.X, gctoo.data_df.T.to_numpy())
    assert list(ours.obs_names) == list(gctoo.col_metadata_df.index)
    assert list(ours.var_names) == list(gctoo.row_metadata_df.index)
    for frame, theirs in ((ours.obs, gctoo.col_metadata_df), (ours.var, gctoo.row_metadata_df)):
        theirs = theirs.drop(columns=[c for c in ["id"] if c in theirs and c not in frame])
        assert sorted(frame.columns) == sorted(theirs.columns)
        for col in frame.columns:
            a, b = frame[col].to_numpy(), theirs[col].to_numpy()
            if a.dtype.kind in "iuf":
                a = np.where(a == -666, np.nan, a.astype(np.float64))  # cmapPy turns -666 into NaN
                if exact_numbers:
                    np.testing.assert_array_equal(a, b.astype(np.float64), err_msg=col)
                else:  # cmapPy reads float32 metadata through its text repr
                    np.testing.assert_allclose(a, b.astype(np.float64), rtol=1e-6, err_msg=col)
            else:
                assert (a == b.astype(str)).all(), col


@pytest.mark.realdata
def test_gct_matches_cmappy(real_gct: ad.AnnData) -> None:
    parse = _cmappy_parse()
    _assert_matches_cmappy(real_gct, parse(str(GCT)))
    sub = pc.io.read_gct(GCT, rid=list(real_gct.var_names[[7, 1]]), cid=list(real_gct.obs_names[[9, 2, 4]]))
    theirs = parse(str(GCT), rid=list(sub.var_names), cid=list(sub.obs_names))
    np.testing.assert_array_equal(sub.X, theirs.data_df.loc[sub.var_names, sub.obs_names].T.to_numpy())


@pytest.mark.realdata
def test_gctx_matches_cmappy(real_gctx: ad.AnnData, tmp_path: Path) -> None:
    parse = _cmappy_parse()
    try:
        theirs = parse(str(GCTX))
    except UnicodeDecodeError:
        # cmapPy 4.0.1 decodes metadata as ASCII and fails on the latin-1 "µ" of the original file; compare on a
        # copy written by write_gctx with "µ" spelt "u" (which also shows that cmapPy reads what we write)
        ascii_copy = real_gctx.copy()
        ascii_copy.obs["pert_idose"] = ascii_copy.obs["pert_idose"].str.replace(MU, "u")
        path = tmp_path / "ascii.gctx"
        pc.io.write_gctx(ascii_copy, path)
        ours, theirs = pc.io.read_gctx(path), parse(str(path))
        _assert_matches_cmappy(ours, theirs, exact_numbers=False)
        rid, cid = list(ours.var_names[[40, 3]]), list(ours.obs_names[[100, 7, 50]])
        sub = parse(str(path), rid=rid, cid=cid)
        np.testing.assert_array_equal(pc.io.read_gctx(path, rid=rid, cid=cid).X, sub.data_df.loc[rid, cid].T.to_numpy())
    else:  # pragma: no cover - a cmapPy that decodes the original file
        _assert_matches_cmappy(real_gctx, theirs, exact_numbers=False)


def test_cmappy_reads_what_write_gct_writes(small: ad.AnnData, tmp_path: Path) -> None:
    parse = _cmappy_parse()
    pc.io.write_gct(small, tmp_path / "s.gct")
    theirs = parse(str(tmp_path / "s.gct"), convert_neg_666=False)
    np.testing.assert_array_equal(small.X, theirs.data_df.T.to_numpy())
    assert theirs.col_metadata_df["pert_iname"].tolist() == small.obs["pert_iname"].tolist()
    np.testing.assert_array_equal(theirs.row_metadata_df["weight"].to_numpy(), small.var["weight"].to_numpy())
    assert theirs.row_metadata_df["pr_gene_id"].tolist() == small.var["pr_gene_id"].tolist()
