"""Connectivity Map GCT (text, versions 1.2 and 1.3) and GCTX (HDF5) files as AnnData.

CMap stores genes (features) in rows and samples (signatures) in columns. The readers return
the scanpy layout: one observation per CMap column (``obs`` holds the column metadata) and one
variable per CMap row (``var`` holds the row metadata), so ``X`` is the transpose of the CMap
matrix. The writers are their inverse.

GCTX layout (as CMap and cmapPy write it)::

    attrs["version"] = b"GCTX1.0"
    0/DATA/0/matrix    shape (n_columns, n_rows) in HDF5 (C) order = (n_obs, n_vars)
    0/META/ROW/id      row (gene) ids; one 1-D dataset per row metadata field beside it
    0/META/COL/id      column (sample) ids; one 1-D dataset per column metadata field beside it
"""

from __future__ import annotations

import logging
import os
import warnings
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import pandas as pd

from .._utils._validate import _list

if TYPE_CHECKING:
    import h5py
    from anndata import AnnData

logger = logging.getLogger("pertcausal")

MATRIX = "0/DATA/0/matrix"
ROW = "0/META/ROW"
COL = "0/META/COL"
GCTX_VERSION = "GCTX1.0"
#: CMap's null value for metadata, kept as is by the readers and written for missing strings.
CMAP_NULL = "-666"
#: Text cells read as a missing number (NaN) in the matrix and in numeric metadata.
_NA_TOKENS = frozenset({"", "NA", "na", "N/A", "#N/A", "NaN", "nan", "-nan", "-NaN", "NULL", "null"})
_GCT_VERSIONS = ("1.2", "1.3")
# cmapPy / cmapR chunking of the matrix: at most 1000 genes and about 1 MiB of float32 per chunk.
_CHUNK_ELEMENTS = 1024 * 256
_GZIP_LEVEL = 6


# --------------------------------------------------------------------------------------------
# shared helpers
# --------------------------------------------------------------------------------------------


def _decode_bytes(values: Iterable[bytes]) -> tuple[list[str], str]:
    """Decode byte strings as UTF-8, or all of them as latin-1 when any is not valid UTF-8."""
    values = list(values)
    try:
        return [v.decode("utf-8") for v in values], "utf-8"
    except UnicodeDecodeError:
        return [v.decode("latin-1") for v in values], "latin-1"


def _maybe_numeric(values: list[str] | np.ndarray) -> np.ndarray:
    """Numbers when every value is a number or a missing-value token (and one is a number); else strings."""
    strings = pd.Series(np.asarray(values, dtype=object), dtype=object)
    na = strings.isin(_NA_TOKENS).to_numpy()
    if na.all():
        return strings.to_numpy()
    try:
        numbers = pd.to_numeric(strings[~na], errors="raise").to_numpy()
    except (ValueError, TypeError):
        return strings.to_numpy()
    if numbers.dtype.kind not in "iuf":
        return strings.to_numpy()
    if na.any():
        out = np.full(len(strings), np.nan)
        out[~na] = numbers
        return out
    return numbers


def _drop_id_field(fields: dict[str, np.ndarray], ids: list[str]) -> dict[str, np.ndarray]:
    """Drop a text field ``id`` that only repeats the ids (cmapR writes one into GCT files)."""
    if "id" in fields and np.array_equal(np.asarray(fields["id"], dtype=object), np.asarray(ids, dtype=object)):
        return {k: v for k, v in fields.items() if k != "id"}
    return fields


def _metadata_frame(fields: dict[str, np.ndarray], ids: list[str]) -> pd.DataFrame:
    return pd.DataFrame(fields, index=pd.Index(ids, dtype=object))


def _positions(
    wanted: Iterable[str] | str | None, ids: list[str], *, argname: str, what: str, path: Path
) -> np.ndarray | None:
    """Positions of the ids ``wanted`` among ``ids``, in the requested order."""
    if wanted is None:
        return None
    if isinstance(wanted, str):
        wanted = [wanted]
    wanted_index = pd.Index([str(w) for w in wanted], dtype=object)
    if wanted_index.has_duplicates:
        raise ValueError(f"{argname} repeats ids: {_list(wanted_index[wanted_index.duplicated()].unique())}")
    index = pd.Index(ids, dtype=object)
    if not index.is_unique:
        raise ValueError(
            f"the {what} ids of {path} are not unique ({_list(index[index.duplicated()].unique())}), "
            f"so {argname} cannot select by id"
        )
    pos = index.get_indexer(wanted_index)
    missing = wanted_index[pos < 0]
    if len(missing):
        raise KeyError(
            f"{argname}: {len(missing)} of the requested ids are not {what} ids of {path}: {_list(missing)}; "
            f"the file has {len(index)} {what} ids, e.g. {_list(index[:5])}"
        )
    return pos.astype(np.int64)


def _take(values: np.ndarray, pos: np.ndarray | None) -> np.ndarray:
    return values if pos is None else values[pos]


def _as_dtype(x: np.ndarray, dtype: Any) -> np.ndarray:
    return x if dtype is None else np.asarray(x, dtype=np.dtype(dtype))


def _gct_uns(fmt: str, version: str, path: Path) -> dict[str, str]:
    return {"format": fmt, "version": version, "path": str(path)}


def _dense(adata: AnnData, layer: str | None) -> np.ndarray:
    import scipy.sparse as sp

    if layer is None:
        x = adata.X
    elif layer not in adata.layers:
        raise KeyError(f"layer {layer!r} is not a layer of adata; layers are: {_list(adata.layers)}")
    else:
        x = adata.layers[layer]
    if x is None:
        raise ValueError("adata.X is None; there is no matrix to write (pass layer= to write a layer)")
    x = x.toarray() if sp.issparse(x) else np.asarray(x)
    if x.dtype.kind == "b":
        x = x.astype(np.float32)
    if x.dtype.kind not in "iuf":
        raise TypeError(f"the matrix to write must be numeric, got dtype {x.dtype}")
    return x


def _column(series: pd.Series) -> np.ndarray:
    """A metadata column as a numeric array (int/float) or an object array of str (missing -> -666)."""
    dtype = series.dtype
    if pd.api.types.is_numeric_dtype(dtype) and not pd.api.types.is_bool_dtype(dtype):
        if isinstance(dtype, np.dtype):
            return series.to_numpy()
        if series.isna().any():  # nullable extension dtypes (Int64, Float32, ...)
            return series.to_numpy(dtype=np.float64, na_value=np.nan)
        return series.to_numpy(dtype=getattr(dtype, "numpy_dtype", np.float64))
    values = series.astype(object).to_numpy()
    return np.array([CMAP_NULL if _is_missing(v) else str(v) for v in values], dtype=object)


def _is_missing(value: Any) -> bool:
    return value is None or (pd.api.types.is_scalar(value) and bool(pd.isna(value)))


def _metadata_columns(df: pd.DataFrame, ids: pd.Index, *, where: str) -> list[tuple[str, np.ndarray]]:
    """``(name, values)`` for each column to write; a column ``id`` equal to the ids is skipped."""
    names = [str(c) for c in df.columns]
    dup = pd.Index(names)[pd.Index(names).duplicated()]
    if len(dup):
        raise ValueError(f"{where} has duplicated column names once turned into strings: {_list(dup.unique())}")
    out = []
    for name, col in zip(names, df.columns):
        values = _column(df[col])
        if (
            name == "id"
            and values.dtype == object
            and np.array_equal(values, np.asarray(ids, dtype=str).astype(object))
        ):
            continue
        out.append((name, values))
    return out


# --------------------------------------------------------------------------------------------
# GCT text
# --------------------------------------------------------------------------------------------


def _decode_text(raw: bytes, path: Path) -> tuple[str, str]:
    try:
        text, encoding = raw.decode("utf-8"), "utf-8"
    except UnicodeDecodeError:
        text, encoding = raw.decode("latin-1"), "latin-1"
        logger.info("%s is not valid UTF-8; decoded it as latin-1", path)
    return text.removeprefix("\ufeff"), encoding


def _parse_numbers(
    cells: np.ndarray, *, path: Path, line_numbers: np.ndarray, row_ids: list[str], col_ids: list[str]
) -> np.ndarray:
    """Parse a 2-D object array of number strings (missing-value tokens -> NaN) as float64."""
    flat = pd.Series(cells.ravel(), dtype=object)
    flat[flat.isin(_NA_TOKENS).to_numpy()] = "nan"
    try:
        return flat.to_numpy().astype(np.float64).reshape(cells.shape)
    except ValueError:
        bad = np.flatnonzero(pd.to_numeric(flat, errors="coerce").isna().to_numpy() & (flat != "nan").to_numpy())
        i, j = divmod(int(bad[0]), cells.shape[1])
        raise ValueError(
            f"{path}, line {line_numbers[i]}: the value {flat.iloc[bad[0]]!r} of row {row_ids[i]!r}, "
            f"column {col_ids[j]!r} is not a number"
        ) from None


def read_gct(
    path: str | os.PathLike[str],
    *,
    rid: Iterable[str] | None = None,
    cid: Iterable[str] | None = None,
    dtype: str | np.dtype | None = "float32",
) -> AnnData:
    """Read a CMap GCT text file (version 1.2 or 1.3) as signatures x genes.

    The GCT matrix has genes (features) in rows and samples (signatures) in columns; the
    AnnData has one observation per GCT column and one variable per GCT row, as scanpy
    expects, so ``X`` is the transpose of the matrix in the file.

    Metadata values are text in a GCT; a metadata field becomes numeric when every value parses
    as a number (cells such as ``NaN``, ``NA`` or empty become NaN), as cmapPy does, so e.g.
    ``"007"`` becomes ``7``. CMap writes ``-666`` for a missing metadata value; it is kept as
    is (the number ``-666``, or the string ``"-666"`` in a text field). A metadata field ``id``
    that repeats the ids (cmapR writes one) is dropped. The file is decoded as UTF-8, or as
    latin-1 when it is not valid UTF-8.

    Parameters
    ----------
    path
        The ``.gct`` file.
    rid
        Ids of the rows (genes) to read, in the order wanted; ``None`` reads all.
    cid
        Ids of the columns (samples) to read, in the order wanted; ``None`` reads all.
    dtype
        Data type of ``X``; ``None`` keeps float64.

    Returns
    -------
    AnnData
        Samples x genes, the transpose of the file's matrix. ``obs_names`` are the column ids and
        ``obs`` holds the column metadata (none in version 1.2); ``var_names`` are the row ids and
        ``var`` holds the row metadata (``Description`` in version 1.2); ``uns["gct"]`` records
        ``{"format": "gct", "version": "1.2" or "1.3", "path": str(path)}``.

    Raises
    ------
    ValueError
        The version line is not ``#1.2`` or ``#1.3``, the dimensions in the header disagree with
        the number of lines or fields, or a matrix value is not a number.
    KeyError
        Ids in ``rid`` or ``cid`` are not in the file.

    Examples
    --------
    >>> import tempfile
    >>> from pathlib import Path
    >>> import anndata as ad
    >>> import numpy as np
    >>> import pandas as pd
    >>> import pertcausal as pc
    >>> adata = ad.AnnData(
    ...     np.arange(6, dtype=np.float32).reshape(2, 3),
    ...     obs=pd.DataFrame({"pert_iname": ["vemurafenib", "DMSO"], "pert_dose": [10.0, 0.0]}, index=["s1", "s2"]),
    ...     var=pd.DataFrame({"pr_gene_symbol": ["DUSP6", "EGR1", "MYC"]}, index=["g1", "g2", "g3"]),
    ... )
    >>> tmp = tempfile.TemporaryDirectory()
    >>> path = Path(tmp.name) / "example.gct"
    >>> pc.io.write_gct(adata, path)
    >>> back = pc.io.read_gct(path)
    >>> back
    AnnData object with n_obs × n_vars = 2 × 3
        obs: 'pert_iname', 'pert_dose'
        var: 'pr_gene_symbol'
        uns: 'gct'
    >>> np.array_equal(back.X, adata.X)
    True
    >>> pc.io.read_gct(path, cid=["s2"], rid=["g3", "g1"]).X
    array([[5., 3.]], dtype=float32)
    >>> tmp.cleanup()
    """
    from anndata import AnnData

    path = Path(path)
    raw = path.read_bytes()
    if raw.startswith(b"\x89HDF"):
        raise ValueError(f"{path} is an HDF5 file, not a GCT text file; read it with pertcausal.io.read_gctx")
    text, _ = _decode_text(raw, path)
    lines = [line.removesuffix("\r") for line in text.split("\n")]
    while lines and lines[-1] == "":
        lines.pop()
    if not lines:
        raise ValueError(f"{path} is empty; a GCT file starts with a version line '#1.2' or '#1.3'")

    version_fields = lines[0].split("\t")
    version = version_fields[0].strip().removeprefix("#")
    if not lines[0].startswith("#") or version not in _GCT_VERSIONS or any(f.strip() for f in version_fields[1:]):
        raise ValueError(f"{path}: unknown GCT version line {lines[0][:50]!r}; expected '#1.2' or '#1.3'")
    n_dims = 4 if version == "1.3" else 2
    dims_line = lines[1] if len(lines) > 1 else ""
    dims_fields = [d.strip() for d in dims_line.split("\t") if d.strip()]
    try:
        dims = [int(d) for d in dims_fields]
    except ValueError:
        dims = []
    if len(dims) != n_dims or min(dims, default=0) < 0:
        expected = "n_rows n_columns n_row_metadata n_column_metadata" if version == "1.3" else "n_rows n_columns"
        raise ValueError(f"{path}, line 2: expected {n_dims} tab-separated counts ({expected}), found {dims_line!r}")
    n_rows, n_cols = dims[0], dims[1]
    n_row_meta, n_col_meta = (dims[2], dims[3]) if version == "1.3" else (1, 0)

    n_header = 3 + n_col_meta
    n_data = len(lines) - n_header
    if n_data != n_rows:
        raise ValueError(
            f"{path}: the header declares {n_rows} data rows (line 2: {dims_line!r}) but the file has "
            f"{max(n_data, 0)} data lines after {n_header} header lines"
        )
    width = 1 + n_row_meta + n_cols
    rows = [line.split("\t") for line in lines[2:]]
    for i, fields in enumerate(rows):
        if len(fields) != width:
            raise ValueError(
                f"{path}, line {i + 3}: expected {width} tab-separated fields (1 id + {n_row_meta} row metadata + "
                f"{n_cols} columns, from the header) but found {len(fields)}"
            )

    header = rows[0]
    row_fields = header[1 : 1 + n_row_meta]
    col_ids = header[1 + n_row_meta :]
    col_rows = rows[1 : 1 + n_col_meta]
    col_fields = [r[0] for r in col_rows]
    for what, names in (("row", row_fields), ("column", col_fields)):
        dup = pd.Index(names)[pd.Index(names).duplicated()]
        if len(dup):
            raise ValueError(f"{path}: duplicated {what} metadata field names: {_list(dup.unique())}")
    data = rows[1 + n_col_meta :]
    row_ids = [r[0] for r in data]

    rpos = _positions(rid, row_ids, argname="rid", what="row", path=path)
    cpos = _positions(cid, col_ids, argname="cid", what="column", path=path)

    sel_rows = np.arange(n_rows) if rpos is None else rpos
    sel_cols = np.arange(n_cols) if cpos is None else cpos
    sel_row_ids = [row_ids[i] for i in sel_rows]
    sel_col_ids = [col_ids[j] for j in sel_cols]
    cells = np.array([r[1 + n_row_meta :] for r in data], dtype=object).reshape(n_rows, n_cols)
    values = _parse_numbers(
        cells[np.ix_(sel_rows, sel_cols)],
        path=path,
        line_numbers=n_header + 1 + sel_rows,
        row_ids=sel_row_ids,
        col_ids=sel_col_ids,
    )
    x = np.ascontiguousarray(_as_dtype(values.T, dtype))

    row_meta = np.array([r[1 : 1 + n_row_meta] for r in data], dtype=object).reshape(n_rows, n_row_meta)
    row_strings = _drop_id_field({name: row_meta[:, k] for k, name in enumerate(row_fields)}, row_ids)
    col_strings = _drop_id_field({r[0]: np.array(r[1 + n_row_meta :], dtype=object) for r in col_rows}, col_ids)
    var = _metadata_frame({k: _maybe_numeric(v[sel_rows]) for k, v in row_strings.items()}, sel_row_ids)
    obs = _metadata_frame({k: _maybe_numeric(v[sel_cols]) for k, v in col_strings.items()}, sel_col_ids)
    logger.info("read %d samples x %d genes from %s (GCT %s)", x.shape[0], x.shape[1], path, version)
    return AnnData(X=x, obs=obs, var=var, uns={"gct": _gct_uns("gct", version, path)})


def _text_cells(values: np.ndarray) -> np.ndarray:
    """Values as GCT text: shortest round-trip repr for floats (NaN -> 'NaN'), str otherwise."""
    if values.dtype.kind == "f":
        out = values.astype(str).astype(object)
        out[np.isnan(values)] = "NaN"
        return out
    if values.dtype.kind in "iu":
        return values.astype(str).astype(object)
    return values.astype(object)


def _check_text(strings: Iterable[str], what: str) -> None:
    for s in strings:
        if "\t" in s or "\n" in s or "\r" in s:
            raise ValueError(f"{what} contains a tab or line break, which GCT text cannot hold: {s!r}")


def write_gct(
    adata: AnnData,
    path: str | os.PathLike[str],
    *,
    version: Literal["1.3", "1.2"] = "1.3",
    layer: str | None = None,
) -> None:
    """Write signatures x genes to a CMap GCT text file (the inverse of :func:`read_gct`).

    The file has genes (``var``) in rows and samples (``obs``) in columns. Version 1.3 writes
    ``var`` as row metadata and ``obs`` as column metadata; version 1.2 has neither, only a
    ``Description`` per row (``var["Description"]`` when present, else ``na``), and warns about
    the metadata it drops. Floats are written with the shortest text that reads back to the same
    number, so :func:`read_gct` returns exactly what was written (float32 metadata comes back as
    float64 with the same digits, as all text metadata is parsed as float64). Missing numbers are
    written as ``NaN``, missing text metadata as CMap's ``-666``; categorical and boolean metadata
    are written as text. The file is UTF-8.

    Parameters
    ----------
    adata
        Samples x genes.
    path
        The ``.gct`` file to write (overwritten).
    version
        GCT version, ``"1.3"`` (with metadata) or ``"1.2"``.
    layer
        Layer to write (``None`` for ``.X``).

    Raises
    ------
    ValueError
        An id, field name or text value contains a tab or a line break, or ``version`` is unknown.

    Examples
    --------
    >>> import tempfile
    >>> from pathlib import Path
    >>> import anndata as ad
    >>> import numpy as np
    >>> import pandas as pd
    >>> import pertcausal as pc
    >>> adata = ad.AnnData(
    ...     np.array([[0.5, -1.25]], dtype=np.float32),
    ...     obs=pd.DataFrame({"pert_idose": ["10 µM"]}, index=["s1"]),
    ...     var=pd.DataFrame({"pr_gene_symbol": ["DUSP6", "EGR1"]}, index=["g1", "g2"]),
    ... )
    >>> tmp = tempfile.TemporaryDirectory()
    >>> path = Path(tmp.name) / "example.gct"
    >>> pc.io.write_gct(adata, path)
    >>> print(path.read_text(encoding="utf-8"), end="")  # doctest: +NORMALIZE_WHITESPACE
    #1.3
    2 1 1 1
    id pr_gene_symbol s1
    pert_idose na 10 µM
    g1 DUSP6 0.5
    g2 EGR1 -1.25
    >>> tmp.cleanup()
    """
    if version not in _GCT_VERSIONS:
        raise ValueError(f"version must be one of {_list(_GCT_VERSIONS)}, got {version!r}")
    path = Path(path)
    x = _dense(adata, layer)
    obs_ids = [str(i) for i in adata.obs_names]
    var_ids = [str(i) for i in adata.var_names]
    _check_text(obs_ids, "an obs name")
    _check_text(var_ids, "a var name")

    if version == "1.3":
        row_cols = _metadata_columns(adata.var, adata.var_names, where="adata.var")
        col_cols = _metadata_columns(adata.obs, adata.obs_names, where="adata.obs")
    else:
        dropped = [f"obs[{c!r}]" for c in adata.obs.columns] + [
            f"var[{c!r}]" for c in adata.var.columns if c != "Description"
        ]
        if dropped:
            warnings.warn(
                f"GCT 1.2 holds no sample metadata and one row description; not written: {_list(dropped)}",
                UserWarning,
                stacklevel=2,
            )
        if "Description" in adata.var.columns:
            desc = _column(adata.var["Description"])
        else:
            desc = np.full(adata.n_vars, "na", dtype=object)
        row_cols, col_cols = [("Description", desc)], []
    row_cells = [(name, _text_cells(v)) for name, v in row_cols]
    col_cells = [(name, _text_cells(v)) for name, v in col_cols]
    for name, cells in (*row_cells, *col_cells):
        _check_text([name], "a metadata field name")
        _check_text(cells, f"metadata field {name!r}")

    n_obs, n_vars = x.shape
    matrix = _text_cells(np.asarray(x).T)  # genes x samples
    if version == "1.3":
        lines = ["#1.3", f"{n_vars}\t{n_obs}\t{len(row_cells)}\t{len(col_cells)}"]
        lines.append("\t".join(["id", *(name for name, _ in row_cells), *obs_ids]))
        filler = ["na"] * len(row_cells)
        lines.extend("\t".join([name, *filler, *cells]) for name, cells in col_cells)
    else:
        lines = ["#1.2", f"{n_vars}\t{n_obs}", "\t".join(["Name", "Description", *obs_ids])]
    for j in range(n_vars):
        lines.append("\t".join([var_ids[j], *(cells[j] for _, cells in row_cells), *matrix[j]]))
    with open(path, "w", encoding="utf-8", newline="\n") as fh:
        fh.write("\n".join(lines) + "\n")
    logger.info("wrote %d samples x %d genes to %s (GCT %s)", n_obs, n_vars, path, version)


# --------------------------------------------------------------------------------------------
# GCTX (HDF5)
# --------------------------------------------------------------------------------------------


def _check_gctx_layout(f: h5py.File, path: Path) -> None:
    import h5py

    required = (MATRIX, ROW, f"{ROW}/id", COL, f"{COL}/id")
    missing: list[str] = []
    for p in required:
        if any(p.startswith(m + "/") for m in missing):
            continue
        if p not in f:
            missing.append(p)
    if missing:
        raise ValueError(
            f"{path} is not a GCTX file: missing HDF5 path(s) {_list(missing)}. A GCTX file holds the matrix "
            f"(samples x genes in HDF5 order) at {MATRIX!r}, the row (gene) metadata under {ROW!r} and the column "
            f"(sample) metadata under {COL!r}, each group with an 'id' dataset"
        )
    for p, kind in ((MATRIX, h5py.Dataset), (ROW, h5py.Group), (COL, h5py.Group)):
        if not isinstance(f[p], kind):
            raise ValueError(f"{path}: {p!r} should be an HDF5 {kind.__name__.lower()}, found {type(f[p]).__name__}")


def _read_strings(dset: h5py.Dataset) -> tuple[list[str], str]:
    values = dset[()]
    values = np.atleast_1d(values)
    if values.dtype.kind == "U":
        return [str(v) for v in values], "utf-8"
    return _decode_bytes(v if isinstance(v, bytes) else str(v).encode("utf-8") for v in values)


def _read_metadata(group: h5py.Group, n: int, path: Path) -> tuple[list[str], dict[str, np.ndarray]]:
    import h5py

    ids, encoding = _read_strings(group["id"])
    if len(ids) != n:
        raise ValueError(f"{path}: {group.name}/id has {len(ids)} ids, expected {n} from the matrix shape")
    fields: dict[str, np.ndarray] = {}
    for name in group:
        if name == "id":
            continue
        dset = group[name]
        if not isinstance(dset, h5py.Dataset) or dset.ndim != 1 or dset.shape[0] != n:
            shape = getattr(dset, "shape", "a group")
            raise ValueError(f"{path}: metadata {dset.name!r} should be a 1-D dataset of length {n}, found {shape}")
        if dset.dtype.kind in "biuf":  # numbers keep their dtype
            fields[name] = dset[()]
        else:
            strings, enc = _read_strings(dset)
            if enc != "utf-8":
                logger.info("%s: %s is not valid UTF-8; decoded it as %s", path, dset.name, enc)
            fields[name] = _maybe_numeric(strings)
    if encoding != "utf-8":
        logger.info("%s: %s/id is not valid UTF-8; decoded it as %s", path, group.name, encoding)
    return ids, fields


def _sorted_selection(pos: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Sorted positions for h5py and the permutation that restores the requested order."""
    order = np.argsort(pos, kind="stable")
    restore = np.empty_like(order)
    restore[order] = np.arange(len(order))
    return pos[order], restore


def _read_matrix(dset: h5py.Dataset, obs_pos: np.ndarray | None, var_pos: np.ndarray | None) -> np.ndarray:
    """Read ``dset[obs_pos][:, var_pos]`` touching only the selected rows/columns of the HDF5 matrix.

    h5py fancy-indexes one axis at a time (with increasing positions); when both axes are
    selected, the axis whose selection reads fewer values within the bounding range of the other
    is fancy-indexed and the other is sliced to that range.
    """
    if obs_pos is None and var_pos is None:
        return dset[()]
    n_obs, n_vars = dset.shape
    if (obs_pos is not None and len(obs_pos) == 0) or (var_pos is not None and len(var_pos) == 0):
        shape = (n_obs if obs_pos is None else len(obs_pos), n_vars if var_pos is None else len(var_pos))
        return np.empty(shape, dtype=dset.dtype)
    if var_pos is None:
        rows, restore = _sorted_selection(obs_pos)
        return dset[rows, :][restore]
    if obs_pos is None:
        cols, restore = _sorted_selection(var_pos)
        return dset[:, cols][:, restore]
    rows, restore_rows = _sorted_selection(obs_pos)
    cols, restore_cols = _sorted_selection(var_pos)
    r0, r1 = int(rows[0]), int(rows[-1]) + 1
    c0, c1 = int(cols[0]), int(cols[-1]) + 1
    if len(rows) * (c1 - c0) <= len(cols) * (r1 - r0):
        block = dset[rows, c0:c1][:, cols - c0]
    else:
        block = dset[r0:r1, cols][rows - r0, :]
    return block[np.ix_(restore_rows, restore_cols)]


def _gctx_version(f: h5py.File) -> str:
    version = f.attrs.get("version")
    if version is None:
        return "unknown"
    if isinstance(version, np.ndarray):
        version = version.ravel()[0] if version.size else ""
    if isinstance(version, bytes):
        version = version.decode("utf-8", errors="replace")
    return str(version)


def read_gctx(
    path: str | os.PathLike[str],
    *,
    rid: Iterable[str] | None = None,
    cid: Iterable[str] | None = None,
    dtype: str | np.dtype | None = "float32",
) -> AnnData:
    """Read a CMap GCTX (HDF5) file as signatures x genes.

    The matrix at ``0/DATA/0/matrix`` is stored with shape ``(n_columns, n_rows)`` in HDF5 terms,
    i.e. samples x genes, which is the AnnData layout; ``0/META/COL`` holds the sample ids and
    metadata (``obs``) and ``0/META/ROW`` the gene ids and metadata (``var``). With ``rid`` or
    ``cid``, only the selected rows/columns of the matrix are read from the file.

    Byte strings are decoded as UTF-8, or as latin-1 for a dataset that is not valid UTF-8 (CMap
    files have a latin-1 "µ" in dose strings). Text metadata becomes numeric when every value
    parses as a number, as in :func:`read_gct` and cmapPy; numeric datasets keep their dtype.
    CMap's missing value ``-666`` is kept as is.

    Parameters
    ----------
    path
        The ``.gctx`` file.
    rid
        Ids of the rows (genes) to read, in the order wanted; ``None`` reads all.
    cid
        Ids of the columns (samples) to read, in the order wanted; ``None`` reads all.
    dtype
        Data type of ``X``; ``None`` keeps the file's.

    Returns
    -------
    AnnData
        Samples x genes. ``obs_names`` are ``0/META/COL/id`` and ``obs`` holds the other datasets
        of ``0/META/COL``; ``var_names`` are ``0/META/ROW/id`` and ``var`` holds the other datasets
        of ``0/META/ROW``; ``uns["gct"]`` records
        ``{"format": "gctx", "version": <the file's "version" attribute>, "path": str(path)}``.

    Raises
    ------
    ValueError
        An HDF5 path of the GCTX layout is missing, or the shapes of the matrix and the metadata
        disagree.
    KeyError
        Ids in ``rid`` or ``cid`` are not in the file.

    Examples
    --------
    >>> import tempfile
    >>> from pathlib import Path
    >>> import anndata as ad
    >>> import numpy as np
    >>> import pandas as pd
    >>> import pertcausal as pc
    >>> adata = ad.AnnData(
    ...     np.arange(6, dtype=np.float32).reshape(2, 3),
    ...     obs=pd.DataFrame({"pert_idose": ["10 µM", "500 nM"]}, index=["s1", "s2"]),
    ...     var=pd.DataFrame({"pr_gene_id": [1843, 1958, 4609]}, index=["g1", "g2", "g3"]),
    ... )
    >>> tmp = tempfile.TemporaryDirectory()
    >>> path = Path(tmp.name) / "example.gctx"
    >>> pc.io.write_gctx(adata, path)
    >>> back = pc.io.read_gctx(path)
    >>> back.uns["gct"]["version"], back.obs["pert_idose"].tolist()
    ('GCTX1.0', ['10 µM', '500 nM'])
    >>> pc.io.read_gctx(path, cid=["s2", "s1"], rid=["g3"]).X
    array([[5.],
           [2.]], dtype=float32)
    >>> tmp.cleanup()
    """
    import h5py
    from anndata import AnnData

    path = Path(path)
    with h5py.File(path, "r") as f:
        _check_gctx_layout(f, path)
        dset = f[MATRIX]
        if dset.ndim != 2:
            raise ValueError(f"{path}: {MATRIX!r} should be 2-D, found shape {dset.shape}")
        n_obs, n_vars = dset.shape
        col_ids, col_fields = _read_metadata(f[COL], n_obs, path)
        row_ids, row_fields = _read_metadata(f[ROW], n_vars, path)
        rpos = _positions(rid, row_ids, argname="rid", what="row", path=path)
        cpos = _positions(cid, col_ids, argname="cid", what="column", path=path)
        x = _as_dtype(_read_matrix(dset, cpos, rpos), dtype)
        version = _gctx_version(f)

    obs = _metadata_frame(
        {k: _take(v, cpos) for k, v in col_fields.items()},
        col_ids if cpos is None else [col_ids[i] for i in cpos],
    )
    var = _metadata_frame(
        {k: _take(v, rpos) for k, v in row_fields.items()},
        row_ids if rpos is None else [row_ids[i] for i in rpos],
    )
    logger.info("read %d samples x %d genes from %s (%s)", x.shape[0], x.shape[1], path, version)
    return AnnData(X=x, obs=obs, var=var, uns={"gct": _gct_uns("gctx", version, path)})


def _hdf5_strings(values: Iterable[str]) -> tuple[np.ndarray, Any]:
    """Fixed-length byte strings (as CMap writes them), UTF-8 encoded; the HDF5 type says UTF-8 when not ASCII."""
    import h5py

    encoded = [s.encode("utf-8") for s in values]
    length = max((len(b) for b in encoded), default=1) or 1
    array = np.array(encoded, dtype=f"S{length}")
    ascii_only = all(b.isascii() for b in encoded)
    return array, (array.dtype if ascii_only else h5py.string_dtype("utf-8", length))


def _write_metadata(group: h5py.Group, ids: list[str], columns: list[tuple[str, np.ndarray]]) -> None:
    import h5py

    for name, values in (("id", np.asarray(ids, dtype=object)), *columns):
        compression = {"compression": "gzip", "compression_opts": _GZIP_LEVEL} if len(values) else {}
        if values.dtype != object:
            group.create_dataset(name, data=values, **compression)
            continue
        data, dtype = _hdf5_strings(values)
        dset = group.create_dataset(name, shape=data.shape, dtype=dtype, **compression)
        if len(data):  # write the UTF-8 bytes as they are (h5py would refuse to convert ASCII -> UTF-8)
            dset.id.write(h5py.h5s.ALL, h5py.h5s.ALL, data, mtype=dset.id.get_type())


def write_gctx(adata: AnnData, path: str | os.PathLike[str], *, layer: str | None = None) -> None:
    """Write signatures x genes to a CMap GCTX (HDF5) file (the inverse of :func:`read_gctx`).

    The layout is CMap's: file attribute ``version = b"GCTX1.0"``; the matrix at
    ``0/DATA/0/matrix`` with shape ``(n_obs, n_vars)`` in HDF5 terms (CMap's columns x rows),
    chunked as cmapPy does; ``0/META/COL/id`` and ``0/META/ROW/id`` with the obs/var names and one
    gzip-compressed 1-D dataset per ``obs``/``var`` column beside them, in the column order
    (groups track creation order). Text is stored as fixed-length byte strings, as CMap does,
    encoded as UTF-8 (the HDF5 string type says UTF-8 where a value is not ASCII); numbers keep
    their dtype; missing text is written as CMap's ``-666``; categorical and boolean columns are
    written as text.

    Parameters
    ----------
    adata
        Samples x genes.
    path
        The ``.gctx`` file to write (overwritten).
    layer
        Layer to write (``None`` for ``.X``).

    Raises
    ------
    ValueError
        A metadata column name contains ``/`` or is ``id`` with values other than the names.

    Examples
    --------
    >>> import tempfile
    >>> from pathlib import Path
    >>> import anndata as ad
    >>> import h5py
    >>> import numpy as np
    >>> import pertcausal as pc
    >>> adata = ad.AnnData(np.zeros((2, 3), dtype=np.float32))
    >>> tmp = tempfile.TemporaryDirectory()
    >>> path = Path(tmp.name) / "example.gctx"
    >>> pc.io.write_gctx(adata, path)
    >>> with h5py.File(path) as f:
    ...     print(f.attrs["version"], f["0/DATA/0/matrix"].shape, sorted(f["0/META/COL"]))
    b'GCTX1.0' (2, 3) ['id']
    >>> tmp.cleanup()
    """
    import h5py

    path = Path(path)
    x = _dense(adata, layer)
    if x.dtype.kind != "f":
        x = x.astype(np.float64)
    row_cols = _metadata_columns(adata.var, adata.var_names, where="adata.var")
    col_cols = _metadata_columns(adata.obs, adata.obs_names, where="adata.obs")
    for where, cols in (("adata.var", row_cols), ("adata.obs", col_cols)):
        for name, _ in cols:
            if "/" in name or name in ("", ".", "id"):
                raise ValueError(
                    f"{where} column {name!r} cannot be a GCTX metadata dataset name "
                    "(no '/', not empty, and 'id' only when it equals the names); rename it"
                )
    obs_ids = [str(i) for i in adata.obs_names]
    var_ids = [str(i) for i in adata.var_names]

    n_obs, n_vars = x.shape
    chunks = None
    if n_obs and n_vars:
        genes = min(n_vars, 1000)
        chunks = (min(n_obs, max(1, _CHUNK_ELEMENTS // genes)), genes)
    with h5py.File(path, "w") as f:
        f.attrs["version"] = np.bytes_(GCTX_VERSION.encode())
        f.create_dataset(MATRIX, data=x, chunks=chunks)
        _write_metadata(f.create_group(COL, track_order=True), obs_ids, col_cols)
        _write_metadata(f.create_group(ROW, track_order=True), var_ids, row_cols)
    logger.info("wrote %d samples x %d genes to %s (%s)", n_obs, n_vars, path, GCTX_VERSION)
