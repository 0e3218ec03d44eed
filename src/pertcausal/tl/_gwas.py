"""``tl.gwas``: genetic association of a latent space (per donor or sample) with genotypes."""

from __future__ import annotations

import logging
import os
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from .._utils._params import h5_safe
from .._utils._progress import track
from .._utils._validate import _list, check_choice, is_mudata

if TYPE_CHECKING:
    from anndata import AnnData
    from mudata import MuData

    from ..pp._genotypes import Genotypes

logger = logging.getLogger("pertcausal")

TRANSFORMS = ("inverse_normal", "pca")
VARIANT_COLUMNS = ["variant", "chrom", "pos", "a1", "a2", "a1_freq"]
RESULT_COLUMNS = [*VARIANT_COLUMNS, "n", "n_missing", "phenotype", "beta", "se", "t", "p", "mlog10p"]
JOINT_COLUMNS = [*VARIANT_COLUMNS, "n", "n_missing", "statistic", "df1", "df2", "p", "mlog10p"]
DIRECTION_COLUMNS = [*VARIANT_COLUMNS, "n", "beta", "se", "t", "p", "mlog10p"]


# ---------------------------------------------------------------------------------------------
# phenotypes and covariates per sample
# ---------------------------------------------------------------------------------------------
def _embedding(data: AnnData | MuData, use_rep: str, mod: str | None) -> tuple[Any, np.ndarray, list[str]]:
    from .._utils._validate import get_modality

    adata = get_modality(data, mod) if (mod is not None or not is_mudata(data)) else data
    where = f"data.mod[{mod!r}]" if mod is not None else "data"
    if use_rep not in adata.obsm:
        raise KeyError(
            f"use_rep {use_rep!r} is not a key of {where}.obsm (run pertcausal.tl.integrate or store an "
            f"embedding there first); keys are: {_list(adata.obsm.keys())}"
        )
    rep = adata.obsm[use_rep]
    if isinstance(rep, pd.DataFrame):
        names = [str(c) for c in rep.columns]
        rep = rep.to_numpy()
    else:
        rep = np.asarray(rep.toarray() if hasattr(rep, "toarray") else rep)
        names = [f"{use_rep}_{i}" for i in range(rep.shape[1])]
    rep = np.asarray(rep, dtype=np.float64).reshape(rep.shape[0], -1)
    bad = ~np.isfinite(rep)
    if bad.any():
        rows = np.flatnonzero(bad.any(axis=1))
        raise ValueError(
            f"{where}.obsm[{use_rep!r}] has {int(bad.sum())} NaN/inf values in {len(rows)} observations "
            f"(e.g. {_list(adata.obs_names[rows[:5]])}); remove or impute them first"
        )
    return adata, rep, names


def _per_sample(
    data: Any, adata: Any, rep: np.ndarray, names: list[str], sample_key: str | None, covariates: Sequence[str]
) -> tuple[pd.DataFrame, pd.DataFrame, pd.Series]:
    """Mean embedding, covariates and cell count per sample (one row per observation without ``sample_key``).

    Keys are looked up in the embedding's obs, then (a modality of a MuData) in the MuData's obs."""
    from .._utils._validate import obs_column

    named = [("covariate", c) for c in covariates] + ([("sample_key", sample_key)] if sample_key else [])
    obs = pd.DataFrame(index=adata.obs_names)
    for argname, key in named:
        obs[key] = obs_column(data, adata, key, argname).values
    if sample_key is None:
        ids = pd.Index(adata.obs_names.astype(str))
        if ids.duplicated().any():
            raise ValueError(
                f"obs_names are not unique sample ids ({_list(ids[ids.duplicated()].unique())} repeat); pass "
                "sample_key= to average the observations of each sample"
            )
        pheno = pd.DataFrame(rep, index=ids, columns=names)
        n_cells = pd.Series(1, index=ids, name="n_cells")
        cov_obs = obs[list(covariates)].set_axis(ids)
    else:
        labels = obs[sample_key]
        if labels.isna().any():
            raise ValueError(
                f"obs[{sample_key!r}] has {int(labels.isna().sum())} missing values; every cell needs a sample"
            )
        codes, uniques = pd.factorize(labels.astype(str), sort=True)
        counts = np.bincount(codes, minlength=len(uniques))
        sums = np.zeros((len(uniques), rep.shape[1]))
        np.add.at(sums, codes, rep)
        ids = pd.Index(uniques, name=sample_key)
        pheno = pd.DataFrame(sums / counts[:, None], index=ids, columns=names)
        n_cells = pd.Series(counts, index=ids, name="n_cells")
        cov_obs = pd.DataFrame(index=ids)
        for c in covariates:
            col = obs[c]
            if pd.api.types.is_numeric_dtype(col) and not pd.api.types.is_bool_dtype(col):
                cov_obs[c] = pd.Series(np.asarray(col, dtype=np.float64)).groupby(codes).mean().to_numpy()
            else:
                per = pd.Series(col.astype(str).to_numpy()).groupby(codes).nunique()
                varying = per[per > 1]
                if len(varying):
                    raise ValueError(
                        f"covariate {c!r} is categorical but varies within {len(varying)} samples "
                        f"(e.g. {_list(ids[varying.index[:5]])}); a sample-level covariate must be constant per sample"
                    )
                cov_obs[c] = pd.Series(col.astype(str).to_numpy()).groupby(codes).first().to_numpy()
    return pheno, cov_obs, n_cells


def _covariate_matrix(cov: pd.DataFrame) -> pd.DataFrame:
    """Numeric covariates as they are, categorical ones one-hot with the first level dropped; NaN is an error."""
    cols = {}
    for c in cov.columns:
        col = cov[c]
        if col.isna().any():
            raise ValueError(
                f"covariate {c!r} has {int(col.isna().sum())} missing values (e.g. samples "
                f"{_list(col.index[col.isna()][:5])}); impute them or drop those samples"
            )
        if pd.api.types.is_numeric_dtype(col) and not pd.api.types.is_bool_dtype(col):
            values = col.to_numpy(np.float64)
            if not np.isfinite(values).all():
                raise ValueError(f"covariate {c!r} has infinite values")
            cols[c] = values
        else:
            dummies = pd.get_dummies(col.astype(str), prefix=c, drop_first=True, dtype=np.float64)
            cols.update({k: dummies[k].to_numpy() for k in dummies.columns})
    return pd.DataFrame(cols, index=cov.index)


def _match_samples(ids: pd.Index, genotypes: Genotypes) -> tuple[np.ndarray, np.ndarray]:
    geno_ids = pd.Index(genotypes.samples.index.astype(str))
    idx = geno_ids.get_indexer(ids.astype(str))
    matched = idx >= 0
    if not matched.any():
        raise ValueError(
            f"none of the {len(ids)} sample ids of the data (e.g. {_list(ids[:3])}) is a sample of the genotypes "
            f"(e.g. {_list(geno_ids[:3])}); samples are matched by id (.fam IID), never by position"
        )
    if not matched.all():
        warnings.warn(
            f"{int(matched.sum())} of {len(ids)} samples have genotypes and are tested; {int((~matched).sum())} "
            f"without genotypes are left out (e.g. {_list(ids[~matched][:5])})",
            stacklevel=3,
        )
    return np.flatnonzero(matched), idx[matched]


# ---------------------------------------------------------------------------------------------
# variant selection and genetic PCs
# ---------------------------------------------------------------------------------------------
def _select_variants(genotypes: Genotypes, chromosomes: Sequence[str] | str | None) -> np.ndarray:
    from ..pp._genotypes import normalize_chrom

    if chromosomes is None:
        return np.arange(genotypes.n_variants)
    wanted = normalize_chrom([chromosomes] if isinstance(chromosomes, str | int) else list(chromosomes))
    present = pd.unique(genotypes.variants["chrom"])
    unknown = [c for c in wanted if c not in set(present)]
    if unknown:
        raise ValueError(f"chromosomes {_list(unknown)} are not in the genotypes; chromosomes are: {_list(present)}")
    return np.flatnonzero(genotypes.variants["chrom"].isin(set(wanted)).to_numpy())


def _pca_variants(genotypes: Genotypes, variants: np.ndarray, n_samples: int, max_variants: int | None) -> np.ndarray:
    from ..pp._genotypes import AUTOSOMES

    auto = variants[genotypes.variants["chrom"].to_numpy()[variants].astype(str) != "X"]
    auto = auto[np.isin(genotypes.variants["chrom"].to_numpy()[auto], AUTOSOMES)] if len(auto) else auto
    if len(auto) == 0:
        auto = variants
    cap = max_variants if max_variants is not None else max(2000, min(50_000, int(1e8 // max(n_samples, 1))))
    if len(auto) > cap:
        auto = auto[np.linspace(0, len(auto) - 1, cap).round().astype(np.intp)]
    return auto


def _compute_genetic_pcs(
    genotypes: Genotypes,
    variants: np.ndarray,
    sample_rows: np.ndarray,
    n_pcs: int,
    *,
    maf: float,
    max_missing: float,
    max_variants: int | None,
    chunk_size: int,
    seed: int,
) -> tuple[np.ndarray, np.ndarray, int]:
    from .._engines.gwas import call_summary, genetic_pcs

    chosen = _pca_variants(genotypes, variants, len(sample_rows), max_variants)
    blocks = []
    for _, G in genotypes.iter_blocks(chunk_size, variants=chosen, samples=sample_rows, dtype="float32"):
        _, n_miss, freq = call_summary(G)
        keep = (n_miss / G.shape[0] <= max_missing) & (np.minimum(freq, 1 - freq) >= max(maf, 0.01))
        blocks.append(G[:, keep])
    G = np.concatenate(blocks, axis=1) if blocks else np.zeros((len(sample_rows), 0), np.float32)
    if G.shape[1] <= n_pcs:
        raise ValueError(
            f"only {G.shape[1]} variants pass the filters for genetic PCs, too few for n_genetic_pcs={n_pcs}"
        )
    scores, ratio = genetic_pcs(G, n_pcs, seed=seed)
    return scores, ratio, G.shape[1]


# ---------------------------------------------------------------------------------------------
# one block, run locally or on a dask worker
# ---------------------------------------------------------------------------------------------
def _scan_block(
    genotypes: Genotypes,
    positions: np.ndarray,
    sample_rows: np.ndarray,
    design: Any,
    opts: dict[str, Any],
    backend: Any,
) -> dict[str, Any]:
    from .._engines.gwas import associate_block, call_summary, direction_block

    G = genotypes.read(positions, samples=sample_rows, dtype=opts["dtype"])
    miss, n_missing, freq = call_summary(G)
    minor = np.minimum(freq, 1 - freq)
    # monomorphic variants (and those without calls, minor = NaN) fail the MAF filter, whatever ``maf`` is
    low_maf = (minor < opts["maf"]) | ~(minor > 0)
    too_missing = n_missing / G.shape[0] > opts["max_missing"]
    keep = ~low_maf & ~too_missing
    n_filtered = {"maf": int(low_maf.sum()), "missing": int(too_missing.sum())}
    G = G[:, keep]
    res = associate_block(G, design, backend, missing=opts["missing"], joint=opts["joint"], miss=miss[:, keep])
    if opts["direction"] and G.shape[1]:
        res["direction"] = direction_block(G.astype(np.float64, copy=False), design, opts["direction_rows"])
    res["positions"] = positions[keep]
    res["n_filtered"] = n_filtered
    return res


def _block_tables(res: dict[str, Any], genotypes: Genotypes, phenotypes: list[str], opts: dict[str, Any]) -> dict:
    var = genotypes.variants.iloc[res["positions"]]
    m, P = len(var), len(phenotypes)
    meta = {
        "variant": var["variant"].to_numpy(),
        "chrom": var["chrom"].to_numpy(),
        "pos": var["pos"].to_numpy(np.int64),
        "a1": var["a1"].to_numpy(),
        "a2": var["a2"].to_numpy(),
        "a1_freq": res["a1_freq"],
        "n": res["n"],
        "n_missing": res["n_missing"],
    }
    long = {k: np.repeat(v, P) for k, v in meta.items()}
    long["phenotype"] = np.tile(np.asarray(phenotypes, dtype=object), m)
    for k in ("beta", "se", "t", "p", "mlog10p"):
        long[k] = res[k].reshape(-1)
    out = {"results": pd.DataFrame(long, columns=RESULT_COLUMNS)}
    if "joint_p" in res:
        joint = dict(meta)
        joint.update({k: res[f"joint_{k}"] for k in ("statistic", "df1", "df2", "p", "mlog10p")})
        out["joint"] = pd.DataFrame(joint, columns=JOINT_COLUMNS)
    if "direction" in res:
        d = {k: meta[k] for k in VARIANT_COLUMNS}
        d.update(res["direction"])
        out["direction"] = pd.DataFrame(d, columns=DIRECTION_COLUMNS)
    return out


class _Writer:
    """Appends per-block tables to a parquet or TSV file."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        name = self.path.name.lower()
        if name.endswith(".parquet"):
            self.kind = "parquet"
        elif name.endswith((".tsv", ".tsv.gz", ".txt", ".txt.gz")):
            self.kind = "tsv"
        else:
            raise ValueError(f"out={str(path)!r}: use a .parquet, .tsv or .tsv.gz file name")
        self._writer: Any = None
        self._first = True

    def write(self, table: pd.DataFrame) -> None:
        if self.kind == "parquet":
            import pyarrow as pa
            import pyarrow.parquet as pq

            t = pa.Table.from_pandas(table, preserve_index=False)
            if self._writer is None:
                self._writer = pq.ParquetWriter(self.path, t.schema)
            self._writer.write_table(t)
        else:
            table.to_csv(self.path, sep="\t", index=False, header=self._first, mode="w" if self._first else "a")
        self._first = False

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()


def _resolve_backend_device(device: str) -> Any:
    """None (numpy on the CPU) or a torch device."""
    if device == "cpu":
        return None
    if device == "auto":
        try:
            import torch
        except ImportError:
            return None
        return torch.device("cuda") if torch.cuda.is_available() else None
    from .._utils._device import resolve_device

    dev = resolve_device(device)
    return None if dev.type == "cpu" else dev


# ---------------------------------------------------------------------------------------------
# the public function
# ---------------------------------------------------------------------------------------------
def gwas(
    data: AnnData | MuData,
    genotypes: Genotypes | str | os.PathLike[str],
    *,
    use_rep: str = "X_pertcausal",
    mod: str | None = None,
    sample_key: str | None = None,
    covariates: Sequence[str] = (),
    n_genetic_pcs: int = 10,
    pca_variants: int | None = None,
    transform: str | Sequence[str] | None = "inverse_normal",
    maf: float = 0.01,
    max_missing: float = 0.05,
    missing: str = "mean",
    chromosomes: Sequence[str] | str | None = None,
    x_sex_covariate: bool = True,
    joint: bool = True,
    direction_test: bool = False,
    direction_fraction: float = 0.1,
    device: str = "auto",
    dtype: str = "float64",
    chunk_size: int = 10_000,
    out: str | os.PathLike[str] | None = None,
    store_p: float = 1e-5,
    client: Any = None,
    key_added: str = "gwas",
    progress_bar: bool = True,
    random_state: int = 0,
) -> pd.DataFrame:
    """Genome-wide association of each latent dimension (per donor or sample) with genotypes.

    The dimensions of an embedding (``obsm[use_rep]``, e.g. from :func:`pertcausal.tl.integrate`) are
    treated as quantitative phenotypes. With ``sample_key`` the cells of each sample are averaged first. The
    phenotypes are optionally whitened (``"pca"``) and, after adjustment for the covariates and genetic
    principal components, rank-based inverse-normal transformed. Every variant is then tested against every
    phenotype by ordinary least squares with the covariates and PCs, as batched matrix products over blocks
    of variants on the chosen device, together with a joint F test of the variant across all phenotypes.

    Parameters
    ----------
    data
        AnnData or MuData with the embedding in ``obsm[use_rep]`` (of ``data.mod[mod]`` when ``mod`` is given).
        Without ``sample_key`` each observation is one sample whose id is its obs name.
    genotypes
        A :class:`~pertcausal.pp.Genotypes` (:func:`pertcausal.pp.read_genotypes`) or the path of PLINK 1
        files. Samples are matched to the data by id (the ``.fam`` IID), never by position.
    use_rep
        Key of the embedding in ``obsm`` (an array or a DataFrame whose columns name the phenotypes).
    mod
        Modality of a MuData whose ``obsm`` holds the embedding; by default the MuData's own ``obsm``.
    sample_key
        obs column naming each cell's donor/sample: the phenotype of a sample is the mean of its cells
        (cell counts are kept in ``uns[key_added]["samples"]``).
    covariates
        obs columns to adjust for: numeric ones as they are (averaged per sample), categorical ones one-hot
        (constant within a sample).
    n_genetic_pcs
        Genetic principal components computed from the genotypes (autosomal variants passing the filters,
        standardised) and added to the covariates; 0 for none.
    pca_variants
        At most this many variants, evenly spaced, for the genetic PCs (default: as many as fit in about
        400 MB, at least 2,000 and at most 50,000).
    transform
        ``"inverse_normal"`` (default; after covariate adjustment, as transferGWAS does), ``"pca"``
        (decorrelate the phenotypes into unit-variance principal components), both as a list (PCA first), or
        None.
    maf, max_missing
        Variants with minor allele frequency below ``maf`` or a fraction of missing calls above
        ``max_missing`` (among the tested samples) are not tested; their counts go into ``params``
        (monomorphic variants always count as failing ``maf``).
    missing
        ``"mean"`` replaces a missing call by the variant's mean dosage (the count is reported in
        ``n_missing``); ``"drop"`` leaves the variant's missing samples out of its regression, as PLINK 2 does
        (use it to reproduce ``plink2 --glm``; mean imputation changes the results of variants with missing
        calls).
    chromosomes
        Restrict the scan to these chromosomes (e.g. ``["1", "2"]`` or ``"X"``).
    x_sex_covariate
        As PLINK 2 does, add sex (from the genotypes' ``.fam``) as a covariate for chrX variants, whose male
        calls are coded 0/2.
    joint
        Also run the multivariate test of each variant across all phenotypes (exact F of Wilks' lambda),
        stored as ``uns[key_added]["joint"]``.
    direction_test
        Also run the 1-df direction-projection test of the ml4h latent-space GWAS
        (``uns[key_added]["direction"]``): each variant's direction of effect in the latent space is estimated
        on a random ``direction_fraction`` of the samples, the other samples are projected on it, and the
        projections are tested against the genotype. Sample splitting keeps the test exact; pooling
        cross-fitted folds instead would inflate it (see :func:`pertcausal._engines.gwas.direction_block`).
    direction_fraction
        Fraction of samples that estimate the directions (ml4h uses 0.1).
    device
        ``"auto"`` (CUDA when present, else numpy on the CPU), ``"cpu"`` or ``"cuda"``.
    dtype
        ``"float64"`` (default) or ``"float32"`` for the genotype products (faster, about 1e-6 relative error).
    chunk_size
        Variants per block: memory is about samples x chunk_size x 8 bytes.
    out
        Write the per-phenotype table to this ``.parquet`` or ``.tsv(.gz)`` file block by block instead of
        keeping it in memory; ``uns`` and the return value then hold only rows with ``p <= store_p``.
    store_p
        With ``out``: the p-value threshold of the rows kept in memory.
    client
        A ``dask.distributed.Client``: the variant blocks are scanned on its workers (same results).
    key_added
        Results go to ``data.uns[key_added]``.
    progress_bar
        Show a progress bar over the variant blocks.
    random_state
        Seed of the genetic PCA and of the folds of the direction test.

    Returns
    -------
    The per-(variant, phenotype) summary statistics: ``variant``, ``chrom``, ``pos``, ``a1`` (the effect
    allele: the allele counted by ``beta``, PLINK's A1), ``a2``, ``a1_freq``, ``n``, ``n_missing``,
    ``phenotype``, ``beta``, ``se``, ``t``, ``p``. The same table is stored in ``data.uns[key_added]["results"]``
    beside ``"joint"``, ``"direction"`` (when asked), ``"phenotypes"`` (the transformed phenotypes, per
    sample), ``"covariates"`` (including the genetic PCs), ``"samples"``, ``"lambda_gc"`` (genomic inflation
    per phenotype) and ``"params"``. Nothing is written to ``data`` when the run fails.

    Examples
    --------
    >>> import numpy as np, anndata as ad, pertcausal as pc
    >>> rng = np.random.default_rng(0)
    >>> geno = pc.data.simulate_genotypes(n_samples=300, n_variants=200, random_state=0)
    >>> z = rng.normal(size=(300, 4))
    >>> z[:, 0] += 0.6 * geno.read([7])[:, 0]
    >>> adata = ad.AnnData(obs={"sex": rng.integers(1, 3, 300)}, obsm={"X_pertcausal": z})
    >>> adata.obs_names = geno.samples.index
    >>> res = pc.tl.gwas(adata, geno, covariates=["sex"], n_genetic_pcs=2, progress_bar=False)
    >>> res.sort_values("p").iloc[0][["variant", "phenotype"]].tolist()
    ['var7', 'X_pertcausal_0']
    """
    from .._engines.gwas import Backend, genomic_inflation, inverse_normal, make_design, pca_whiten
    from ..pp._genotypes import Genotypes, read_genotypes

    # ---- validate arguments -------------------------------------------------------------------
    check_choice(missing, ("mean", "drop"), argname="missing")
    check_choice(dtype, ("float64", "float32"), argname="dtype")
    transforms = [] if transform is None else [transform] if isinstance(transform, str) else list(transform)
    for t in transforms:
        check_choice(t, TRANSFORMS, argname="transform")
    if "pca" in transforms:
        transforms = ["pca"] + [t for t in transforms if t != "pca"]
    if not 0 <= maf < 0.5:
        raise ValueError(f"maf must lie in [0, 0.5), got {maf}")
    if not 0 <= max_missing <= 1:
        raise ValueError(f"max_missing must lie in [0, 1], got {max_missing}")
    if n_genetic_pcs < 0 or chunk_size < 1:
        raise ValueError(f"n_genetic_pcs ({n_genetic_pcs}) must be >= 0 and chunk_size ({chunk_size}) >= 1")
    if direction_test and not 0 < direction_fraction < 1:
        raise ValueError(f"direction_fraction must lie in (0, 1), got {direction_fraction}")
    if not isinstance(genotypes, Genotypes):
        genotypes = read_genotypes(genotypes)
    dev = _resolve_backend_device(device)
    writer = _Writer(out) if out is not None else None  # checks the suffix before any work

    # ---- phenotypes and covariates per sample, matched to the genotypes -----------------------
    adata, rep, names = _embedding(data, use_rep, mod)
    pheno, cov_obs, n_cells = _per_sample(data, adata, rep, names, sample_key, list(covariates))
    n_data_samples = len(pheno)
    data_rows, sample_rows = _match_samples(pheno.index, genotypes)
    pheno, cov_obs, n_cells = pheno.iloc[data_rows], cov_obs.iloc[data_rows], n_cells.iloc[data_rows]
    sd = pheno.std(axis=0, ddof=0).to_numpy()
    const = sd <= 1e-12 * np.maximum(np.abs(pheno.to_numpy()).max(axis=0), 1e-300)
    if const.any():
        raise ValueError(
            f"phenotypes {_list(np.asarray(names)[const])} have zero variance over the {len(pheno)} genotyped "
            "samples; drop them from the embedding"
        )
    cov = _covariate_matrix(cov_obs)
    variants = _select_variants(genotypes, chromosomes)

    pcs_ratio = np.zeros(0)
    if n_genetic_pcs:
        pcs, pcs_ratio, n_pca_var = _compute_genetic_pcs(
            genotypes,
            variants,
            sample_rows,
            n_genetic_pcs,
            maf=maf,
            max_missing=max_missing,
            max_variants=pca_variants,
            chunk_size=chunk_size,
            seed=random_state,
        )
        for i in range(n_genetic_pcs):
            cov[f"genetic_PC{i + 1}"] = pcs[:, i]
    n_cov = cov.shape[1]
    if n_cov + 3 > len(pheno):
        raise ValueError(
            f"{n_cov} covariate columns (with {n_genetic_pcs} genetic PCs) need more than the {len(pheno)} "
            "genotyped samples; use fewer covariates or PCs"
        )

    Y = pheno.to_numpy(np.float64)
    ph_names = list(names)
    if "pca" in transforms:
        Y, _ = pca_whiten(Y)
        ph_names = [f"{use_rep}_PC{i + 1}" for i in range(Y.shape[1])]
    if "inverse_normal" in transforms:
        Y = inverse_normal(make_design(Y, cov.to_numpy(), joint=False).Yr)
    design = make_design(Y, cov.to_numpy(), joint=joint)
    if joint and design.W is None:
        warnings.warn(
            f"the joint test needs fewer phenotypes ({Y.shape[1]}) than residual degrees of freedom "
            f"({design.df}); it is skipped",
            stacklevel=2,
        )

    # PLINK 2 adds sex as a covariate for chrX variants (males coded 0/2, as in the .bed)
    is_x = genotypes.variants["chrom"].to_numpy()[variants].astype(str) == "X"
    designs = [design]
    x_sex_used = False
    if x_sex_covariate and is_x.any():
        sex = pd.to_numeric(genotypes.samples["sex"], errors="coerce").to_numpy()[sample_rows]
        if np.isin(sex, [1, 2]).all() and len(np.unique(sex)) == 2:
            try:
                designs.append(make_design(Y, np.column_stack([cov.to_numpy(), sex == 2]), joint=joint))
                x_sex_used = True
            except ValueError:  # sex is already among the covariates
                pass
        else:
            warnings.warn(
                "chrX variants are tested without the sex covariate: the genotypes' sex (.fam) is unknown for "
                f"{int((~np.isin(sex, [1, 2])).sum())} tested samples or only one sex is present",
                stacklevel=2,
            )

    rng = np.random.default_rng(random_state)
    opts = {
        "maf": maf,
        "max_missing": max_missing,
        "missing": missing,
        "joint": design.W is not None,
        "direction": direction_test,
        "dtype": dtype,
        "direction_rows": rng.permutation(len(Y)) < round(direction_fraction * len(Y)) if direction_test else None,
    }
    blocks: list[tuple[np.ndarray, int]] = []
    for which, part in ((0, variants[~is_x]), (len(designs) - 1, variants[is_x])):
        blocks += [(part[i : i + chunk_size], which) for i in range(0, len(part), chunk_size)]
    backends = [Backend(d.right(), device=dev, dtype=dtype) for d in designs]

    # ---- scan ---------------------------------------------------------------------------------
    def results_iter() -> Any:
        if client is None:
            for pos, which in blocks:
                yield _scan_block(genotypes, pos, sample_rows, designs[which], opts, backends[which])
            return
        from distributed import wait

        # the workers compute on their CPUs with numpy, whatever ``device`` is here
        cpu = [Backend(d.right(), device=None, dtype=dtype) for d in designs]
        remote = client.scatter([genotypes, *designs, *cpu], broadcast=True)
        remote_designs, remote_backends = remote[1 : 1 + len(designs)], remote[1 + len(designs) :]
        window = max(2, 2 * len(client.scheduler_info().get("workers", {})))
        futures: list[Any] = []
        for i, (pos, which) in enumerate(blocks):
            args = (remote[0], pos, sample_rows, remote_designs[which], opts, remote_backends[which])
            futures.append(client.submit(_scan_block, *args, pure=False))
            if i >= window - 1:
                wait(futures[0])
                yield futures.pop(0).result()
        for f in futures:
            yield f.result()

    tables: dict[str, list[pd.DataFrame]] = {"results": [], "joint": [], "direction": []}
    p_all: list[np.ndarray] = []
    n_filtered = {"maf": 0, "missing": 0}
    try:
        for res in track(results_iter(), enabled=progress_bar, description="gwas", total=len(blocks)):
            for k in n_filtered:
                n_filtered[k] += res["n_filtered"][k]
            p_all.append(res["p"].astype(np.float32))
            tabs = _block_tables(res, genotypes, ph_names, opts)
            res_tab = tabs.pop("results")
            if writer is not None:
                writer.write(res_tab)
                res_tab = res_tab[res_tab["p"] <= store_p]
            tables["results"].append(res_tab)
            for k, v in tabs.items():
                tables[k].append(v)
    finally:
        if writer is not None:
            writer.close()

    def concat(name: str, columns: list[str]) -> pd.DataFrame:
        parts = [t for t in tables[name] if len(t)]
        df = pd.concat(parts, ignore_index=True) if parts else pd.DataFrame(columns=columns)
        for c in ("chrom", "phenotype"):
            if c in df.columns:
                df[c] = df[c].astype(str).astype("category")
        for c in ("variant", "a1", "a2"):
            if c in df.columns:
                df[c] = df[c].astype(str)
        return df

    results = concat("results", RESULT_COLUMNS)
    p_mat = np.concatenate(p_all, axis=0) if p_all else np.zeros((0, len(ph_names)), np.float32)
    lambda_gc = {ph: genomic_inflation(p_mat[:, i]) for i, ph in enumerate(ph_names)}
    n_tested = int(p_mat.shape[0])

    store: dict[str, Any] = {
        "results": results,
        "phenotypes": pd.DataFrame(Y, index=pheno.index.astype(str), columns=ph_names),
        "covariates": cov.set_axis(pheno.index.astype(str)),
        "samples": pd.DataFrame(
            {"n_cells": n_cells.to_numpy(), "genotype_row": sample_rows}, index=pheno.index.astype(str)
        ),
        "lambda_gc": lambda_gc,
    }
    if opts["joint"]:
        joint_df = concat("joint", JOINT_COLUMNS)
        store["joint"] = joint_df
        store["lambda_gc"]["joint"] = genomic_inflation(joint_df["p"].to_numpy()) if len(joint_df) else float("nan")
    if direction_test:
        store["direction"] = concat("direction", DIRECTION_COLUMNS)
        store["lambda_gc"]["direction"] = genomic_inflation(store["direction"]["p"].to_numpy())
    store["params"] = {
        "use_rep": use_rep,
        "sample_key": sample_key,
        "covariates": [str(c) for c in covariates],
        "n_genetic_pcs": int(n_genetic_pcs),
        "genetic_pcs_variance_ratio": [float(v) for v in pcs_ratio],
        "transform": transforms,
        "maf": float(maf),
        "max_missing": float(max_missing),
        "missing": missing,
        "x_sex_covariate": bool(x_sex_used),
        "direction_test": bool(direction_test),
        "direction_fraction": float(direction_fraction),
        "n_samples": len(Y),
        "n_samples_without_genotypes": int(n_data_samples - len(data_rows)),
        "n_phenotypes": len(ph_names),
        "n_variants": int(len(variants)),
        "n_variants_tested": n_tested,
        "n_filtered_maf": n_filtered["maf"],
        "n_filtered_missing": n_filtered["missing"],
        "effect_allele": "a1 (PLINK A1, .bim column 5)",
        "genotypes": genotypes.path or "in memory",
        "out": None if out is None else str(out),
        "device": "cpu" if dev is None else str(dev),
        "dtype": dtype,
    }
    if n_genetic_pcs:
        store["params"]["n_pca_variants"] = int(n_pca_var)
    store["params"] = h5_safe(store["params"])
    data.uns[key_added] = store
    logger.info("tl.gwas: %d variants x %d phenotypes tested on %d samples", n_tested, len(ph_names), len(Y))
    return results
