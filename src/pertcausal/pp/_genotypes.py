"""Genotypes for ``tl.gwas``: PLINK 1 files read lazily in variant blocks (bed-reader), or arrays in memory."""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from .._utils._validate import _list

BIM_COLUMNS = ["chrom", "variant", "cm", "pos", "a1", "a2"]
FAM_COLUMNS = ["fid", "iid", "father", "mother", "sex", "phenotype"]
AUTOSOMES = tuple(str(i) for i in range(1, 23))
# PLINK's numeric codes for the non-autosomal chromosomes
_CHROM_ALIASES = {"23": "X", "24": "Y", "25": "XY", "26": "MT", "M": "MT", "chrM": "MT"}


def normalize_chrom(values: Sequence[Any] | pd.Series) -> pd.Series:
    """Chromosome labels as PLINK prints them: ``"1"``..``"22"``, ``"X"``, ``"Y"``, ``"XY"``, ``"MT"``."""
    codes, uniques = pd.factorize(pd.Series(values, dtype=str), sort=False)
    clean = pd.Series(uniques).str.strip().str.replace(r"^chr", "", regex=True, case=False)
    clean = clean.map(lambda c: _CHROM_ALIASES.get(c, c.upper() if c.lower() in {"x", "y", "xy", "mt"} else c))
    return pd.Series(clean.to_numpy()[codes])


class Genotypes:
    """Allele counts of samples x variants, read in blocks of variants without loading the whole set.

    Values count allele ``a1`` of :attr:`variants` (PLINK's A1, the fifth ``.bim`` column) as 0, 1 or 2, with
    NaN for a missing call. Create one with :func:`pertcausal.pp.read_genotypes` (PLINK 1 ``.bed/.bim/.fam``)
    or :meth:`from_array` (a matrix in memory, e.g. a simulation).

    Attributes
    ----------
    samples
        One row per sample, indexed by the sample id (the ``.fam`` IID), with ``fid``, ``father``, ``mother``,
        ``sex`` (1 male, 2 female, 0 unknown).
    variants
        One row per variant, in file order: ``variant`` (id), ``chrom``, ``pos``, ``cm``, ``a1`` (counted
        allele), ``a2``.
    """

    def __init__(self, samples: pd.DataFrame, variants: pd.DataFrame, *, path: str | None = None) -> None:
        self.samples = samples
        self.variants = variants.reset_index(drop=True)
        self.path = path
        self._array: np.ndarray | None = None

    # -- construction -------------------------------------------------------------------------------
    @classmethod
    def from_array(
        cls,
        genotypes: np.ndarray,
        *,
        samples: Sequence[str] | pd.DataFrame | None = None,
        variants: Sequence[str] | pd.DataFrame | None = None,
    ) -> Genotypes:
        """Genotypes held in memory: ``genotypes`` is samples x variants (counts of ``a1``, NaN missing).

        ``samples`` are ids (or a DataFrame indexed by id); ``variants`` ids or a DataFrame with at least
        ``variant``, ``chrom`` and ``pos`` (``a1``/``a2`` default to ``"A"``/``"B"``).
        """
        g = np.asarray(genotypes, dtype=np.float32)
        if g.ndim != 2:
            raise ValueError(f"genotypes must be a 2-d samples x variants array, got shape {g.shape}")
        n, m = g.shape
        finite = g[np.isfinite(g)]
        if finite.size and (finite.min() < 0 or finite.max() > 2):
            raise ValueError(
                f"genotypes must count alleles (0..2, NaN missing); values range over [{finite.min()}, {finite.max()}]"
            )
        if samples is None:
            samples = [f"sample{i}" for i in range(n)]
        if not isinstance(samples, pd.DataFrame):
            samples = pd.DataFrame(index=pd.Index([str(s) for s in samples], name="iid"))
        if len(samples) != n:
            raise ValueError(f"{len(samples)} sample ids were given for genotypes with {n} rows (samples)")
        samples = samples.copy()
        for col, default in (("fid", "0"), ("father", "0"), ("mother", "0"), ("sex", 0)):
            if col not in samples.columns:
                samples[col] = default
        if variants is None:
            variants = [f"var{j}" for j in range(m)]
        if not isinstance(variants, pd.DataFrame):
            variants = pd.DataFrame({"variant": [str(v) for v in variants], "chrom": "1", "pos": np.arange(1, m + 1)})
        if len(variants) != m:
            raise ValueError(f"{len(variants)} variants were described for genotypes with {m} columns (variants)")
        variants = variants.copy()
        for col in ("variant", "chrom", "pos"):
            if col not in variants.columns:
                raise KeyError(f"variants must have a {col!r} column; columns are: {_list(variants.columns)}")
        variants["chrom"] = normalize_chrom(variants["chrom"]).to_numpy()
        for col, default in (("cm", 0.0), ("a1", "A"), ("a2", "B")):
            if col not in variants.columns:
                variants[col] = default
        variants = variants[
            [
                "variant",
                "chrom",
                "pos",
                "cm",
                "a1",
                "a2",
                *variants.columns.drop(["variant", "chrom", "pos", "cm", "a1", "a2"]).tolist(),
            ]
        ]
        obj = cls(samples, variants)
        obj._array = g
        return obj

    # -- shape --------------------------------------------------------------------------------------
    @property
    def n_samples(self) -> int:
        return len(self.samples)

    @property
    def n_variants(self) -> int:
        return len(self.variants)

    @property
    def shape(self) -> tuple[int, int]:
        return (self.n_samples, self.n_variants)

    def __repr__(self) -> str:
        where = f" from {self.path!r}" if self.path else " in memory"
        return f"Genotypes: {self.n_samples} samples x {self.n_variants} variants{where}"

    # -- reading ------------------------------------------------------------------------------------
    def read(
        self,
        variants: slice | np.ndarray | Sequence[int] | None = None,
        *,
        samples: np.ndarray | Sequence[int] | None = None,
        dtype: str | np.dtype = "float32",
        num_threads: int | None = None,
    ) -> np.ndarray:
        """Counts of ``a1`` for the given variant positions (and sample positions): samples x variants.

        Consecutive positions are read as one slice (a contiguous read of the ``.bed``)."""
        vidx = slice(None) if variants is None else variants
        if isinstance(vidx, np.ndarray | list | tuple):
            pos = np.asarray(vidx, dtype=np.intp)
            if len(pos) and pos[-1] - pos[0] == len(pos) - 1 and (np.diff(pos) == 1).all():
                vidx = slice(int(pos[0]), int(pos[-1]) + 1)
        sidx = slice(None) if samples is None else np.asarray(samples, dtype=np.intp)
        if self._array is not None:
            block = self._array[:, vidx]
            return np.asarray(block[sidx], dtype=dtype)
        from bed_reader import open_bed

        with open_bed(self.path, iid_count=self.n_samples, sid_count=self.n_variants, num_threads=num_threads) as bed:
            return bed.read(index=(sidx, vidx), dtype=dtype, order="F", num_threads=num_threads)

    def iter_blocks(
        self,
        chunk_size: int = 10_000,
        *,
        variants: np.ndarray | None = None,
        samples: np.ndarray | None = None,
        dtype: str | np.dtype = "float32",
    ) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """Yield ``(variant_positions, block)`` for consecutive blocks of at most ``chunk_size`` variants."""
        positions = np.arange(self.n_variants) if variants is None else np.asarray(variants, dtype=np.intp)
        for start in range(0, len(positions), chunk_size):
            pos = positions[start : start + chunk_size]
            yield pos, self.read(pos, samples=samples, dtype=dtype)


def _read_table(path: Path, names: list[str], *, what: str) -> pd.DataFrame:
    if not path.exists():
        raise FileNotFoundError(f"the {what} file {str(path)!r} does not exist (expected beside the .bed file)")
    table = pd.read_csv(path, sep=r"\s+", header=None, dtype=str, engine="c")
    if table.shape[1] != len(names):
        raise ValueError(
            f"{str(path)!r} has {table.shape[1]} columns; a PLINK {what} file has {len(names)}: {', '.join(names)}"
        )
    table.columns = names
    return table


#: variants whose last bytes are read to check the .fam against the .bed (evenly spread over the file)
PADDING_CHECK_VARIANTS = 2000
#: a last .fam sample reading as padding in every variant read is called absent from the .bed when a real
#: sample would be that uniform with a probability below this (from how often the other samples' calls are not 0)
_PADDING_P = 1e-6


def _check_sample_count(bed: Path, fam: Path, n_samples: int, n_variants: int) -> None:
    """Check the ``.fam``'s sample count against the ``.bed``'s padding bits, which PLINK writes as zeros.

    Each variant takes ``ceil(n / 4)`` bytes, so the file size is the same for 4 consecutive sample counts
    (277-280 samples: 70 bytes a variant) and a ``.fam`` with a row deleted or added still passes it; every
    later sample would then read its neighbour's genotypes. The last byte of a variant holds the 2-bit
    calls of its last samples in its low bits and zero padding above them. On a sample of variants:

    - a set padding bit (where the ``.fam`` says there is no sample) means the ``.bed`` has more samples
      than the ``.fam``;
    - a last ``.fam`` sample whose bits are zero in every variant read (homozygous A1, what padding reads as)
      means it has fewer, when the other samples' calls are non-zero often enough that a real sample would be
      zero everywhere with a probability below ``1e-6`` (so data where A1 is the common allele are not refused).
    """
    per_variant = (n_samples + 3) // 4
    if n_variants == 0 or n_samples < 2:
        return
    used = n_samples - 4 * (per_variant - 1)  # calls in the last byte of a variant, 1..4
    picks = np.unique(np.linspace(0, n_variants - 1, min(n_variants, PADDING_CHECK_VARIANTS)).astype(np.int64))
    width = min(per_variant, 2)  # the last two bytes (or one) of each variant, read where they lie
    with open(bed, "rb") as fh:
        fd = fh.fileno()
        raw = b"".join(os.pread(fd, width, 3 + (int(j) + 1) * per_variant - width) for j in picks)
    tail = np.frombuffer(raw, dtype=np.uint8).reshape(len(picks), width)
    calls = np.stack([(tail >> (2 * k)) & 0b11 for k in range(4)], axis=-1).reshape(len(picks), -1)
    last = calls[:, -4:]  # slot k: sample position 4 * (per_variant - 1) + k
    fits = f"the .bed's size fits {4 * per_variant - 3} to {4 * per_variant} samples"
    occupied = last.any(axis=0)
    if occupied[used:].any():
        at_least = 4 * (per_variant - 1) + int(np.flatnonzero(occupied)[-1]) + 1
        n_set = int((last[:, at_least - 1 - 4 * (per_variant - 1)] != 0).sum())
        raise ValueError(
            f"{str(fam)!r} lists {n_samples} samples but {str(bed)!r} holds genotypes for at least {at_least}: "
            f"{fits}, and the padding bits (zero in files PLINK writes) of sample position {at_least} are set in "
            f"{n_set} of {len(picks)} variants read. The .fam lacks samples of the .bed, so every sample after the "
            "first missing one would read its neighbour's genotypes"
        )
    if not occupied[used - 1]:
        others = calls[:, : calls.shape[1] - 4 + used - 1]  # the other real samples' calls
        nonzero = float((others != 0).mean()) if others.size else 0.0
        if nonzero > 0 and len(picks) * np.log1p(-min(nonzero, 1.0 - 1e-12)) < np.log(_PADDING_P):
            holds = 4 * (per_variant - 1) + (int(np.flatnonzero(occupied)[-1]) + 1 if occupied.any() else 0)
            raise ValueError(
                f"{str(fam)!r} lists {n_samples} samples but {str(bed)!r} seems to hold {holds}: {fits}, and the "
                f"last .fam sample reads as zero padding (homozygous A1) in all {len(picks)} variants read, where "
                f"the other samples' calls are non-zero {100 * nonzero:.0f}% of the time. The .fam has a row the "
                ".bed lacks, so every sample after it would read its neighbour's genotypes"
            )


def read_genotypes(path: str | os.PathLike[str]) -> Genotypes:
    """Open PLINK 1 genotypes (``.bed/.bim/.fam``) for block-wise reading, without loading the genotypes.

    Parameters
    ----------
    path
        The ``.bed`` file, or the common prefix of the three files.

    Returns
    -------
    A :class:`~pertcausal.pp.Genotypes` whose ``samples`` come from the ``.fam`` file (indexed by IID) and
    ``variants`` from the ``.bim`` file. Values count the ``.bim`` A1 allele (fifth column), PLINK's
    convention, which :func:`pertcausal.tl.gwas` reports as the effect allele.

    The ``.bed`` size is checked against the ``.bim`` and ``.fam`` line counts, and, on up to 2,000 variants
    spread over the file, the zero padding bits of each variant's last byte against the ``.fam``'s sample
    count: a ``.fam`` with a row missing or added (the size alone cannot tell 277 from 280 samples) is
    refused with a message naming both files, where every later sample would otherwise read its
    neighbour's genotypes.

    Examples
    --------
    >>> import pertcausal as pc
    >>> geno = pc.pp.read_genotypes("../shared/data/hapmap279-snprelate/hapmap279.bed")  # doctest: +SKIP
    >>> geno.shape  # doctest: +SKIP
    (279, 5000)
    """
    p = Path(path)
    prefix = p.with_suffix("") if p.suffix.lower() in {".bed", ".bim", ".fam"} else p
    bed, bim, fam = (prefix.with_name(prefix.name + ext) for ext in (".bed", ".bim", ".fam"))
    if not bed.exists():
        raise FileNotFoundError(f"the PLINK .bed file {str(bed)!r} does not exist")
    variants = _read_table(bim, BIM_COLUMNS, what=".bim")
    samples = _read_table(fam, FAM_COLUMNS, what=".fam")
    n, m = len(samples), len(variants)
    expected = 3 + m * ((n + 3) // 4)
    size = bed.stat().st_size
    with open(bed, "rb") as fh:
        magic = fh.read(3)
    if magic[:2] != b"\x6c\x1b":
        raise ValueError(f"{str(bed)!r} is not a PLINK 1 .bed file (magic bytes {magic[:2].hex()} instead of 6c1b)")
    if magic[2:3] != b"\x01":
        raise ValueError(
            f"{str(bed)!r} is in the old individual-major layout; convert it to SNP-major with "
            "`plink --bfile PREFIX --make-bed --out NEW`"
        )
    if size != expected:
        raise ValueError(
            f"{str(bed)!r} has {size} bytes but {m} variants (.bim) x {n} samples (.fam) need {expected}: "
            "the file is truncated or the .bim/.fam do not belong to it"
        )
    _check_sample_count(bed, fam, n, m)
    if samples["iid"].duplicated().any():
        dup = samples["iid"][samples["iid"].duplicated()].unique()
        raise ValueError(f"the .fam file has duplicated sample ids (IID): {_list(dup)}")
    samples = samples.set_index("iid")
    samples["sex"] = pd.to_numeric(samples["sex"], errors="coerce").fillna(0).astype(int)
    variants["pos"] = pd.to_numeric(variants["pos"], errors="raise").astype(np.int64)
    variants["cm"] = pd.to_numeric(variants["cm"], errors="coerce").fillna(0.0)
    variants["chrom"] = normalize_chrom(variants["chrom"]).to_numpy()
    variants = variants[["variant", "chrom", "pos", "cm", "a1", "a2"]]
    return Genotypes(samples.drop(columns=["phenotype"]), variants, path=str(bed))
