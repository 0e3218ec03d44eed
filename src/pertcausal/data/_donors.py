"""Single cells of genotyped donors whose latent state carries planted genetic effects, for latent-space GWAS."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from .._utils._validate import _list

if TYPE_CHECKING:
    from anndata import AnnData

    from ..pp._genotypes import Genotypes

MIN_CAUSAL_MAF = 0.1


def _allele_frequencies(genotypes: Genotypes, positions: np.ndarray) -> np.ndarray:
    """Frequency of ``a1`` over the non-missing calls of each variant at ``positions``, read block by block."""
    freq = np.full(len(positions), np.nan)
    done = 0
    for pos, G in genotypes.iter_blocks(10_000, variants=positions, dtype="float32"):
        n_called = np.sum(~np.isnan(G), axis=0)
        with np.errstate(invalid="ignore", divide="ignore"):
            freq[done : done + len(pos)] = np.nansum(G, axis=0, dtype=np.float64) / (2.0 * n_called)
        done += len(pos)
    return freq


def _choose_causal(
    genotypes: Genotypes, causal: Sequence[str] | None, n_causal: int, rng: np.random.Generator
) -> np.ndarray:
    """Positions (rows of ``genotypes.variants``) of the causal variants."""
    from ..pp._genotypes import AUTOSOMES

    ids = genotypes.variants["variant"].astype(str)
    if causal is not None:
        if isinstance(causal, str):
            causal = [causal]
        wanted = pd.Index([str(v) for v in causal])
        if wanted.duplicated().any():
            raise ValueError(f"causal variants repeat: {_list(wanted[wanted.duplicated()].unique())}")
        unique = ids.drop_duplicates()  # a repeated id in the .bim: its first occurrence
        found = pd.Index(unique.to_numpy()).get_indexer(wanted)
        pos = np.where(found >= 0, unique.index.to_numpy()[found], -1).astype(np.intp)
        unknown = wanted[pos < 0]
        if len(unknown):
            raise ValueError(
                f"causal variants {_list(unknown)} are not variant ids of the genotypes "
                f"(e.g. {_list(ids.iloc[:5])}); pass ids from genotypes.variants['variant']"
            )
        return pos
    if n_causal < 0:
        raise ValueError(f"n_causal must be >= 0, got {n_causal}")
    if n_causal == 0:
        return np.zeros(0, dtype=np.intp)
    autosomal = np.flatnonzero(genotypes.variants["chrom"].astype(str).isin(AUTOSOMES).to_numpy())
    if len(autosomal) == 0:
        present = pd.unique(genotypes.variants["chrom"].astype(str))
        raise ValueError(
            f"no autosomal variant (chromosomes 1-22) to make causal; chromosomes are: {_list(present)}; "
            "pass causal= explicitly"
        )
    freq = _allele_frequencies(genotypes, autosomal)
    maf = np.minimum(freq, 1 - freq)
    eligible = autosomal[np.nan_to_num(maf, nan=0.0) >= MIN_CAUSAL_MAF]
    if len(eligible) == 0:
        raise ValueError(
            f"none of the {len(autosomal)} autosomal variants has a minor allele frequency >= {MIN_CAUSAL_MAF} "
            f"(largest {np.nanmax(maf) if np.isfinite(maf).any() else float('nan'):.3g}); pass causal= explicitly"
        )
    if n_causal > len(eligible):
        raise ValueError(
            f"n_causal={n_causal} but only {len(eligible)} autosomal variants have a minor allele frequency "
            f">= {MIN_CAUSAL_MAF}"
        )
    return np.sort(rng.choice(eligible, size=n_causal, replace=False))


def simulate_donor_cells(
    genotypes: Genotypes,
    *,
    n_cells: int = 50,
    n_genes: int = 200,
    n_programs: int = 8,
    causal: Sequence[str] | None = None,
    n_causal: int = 5,
    effect: float = 0.5,
    donor_sd: float = 0.5,
    dispersion: float = 0.1,
    random_state: int = 0,
) -> AnnData:
    """Single-cell counts of every donor of ``genotypes``, with genetic effects on a latent cell state.

    A ground truth for latent-space GWAS (:func:`pertcausal.tl.gwas`). Each cell ``c`` of donor ``d`` has a
    latent state in ``n_programs`` dimensions (gene programs),

    ``state[c] = sum_v effect[v] * g_std[d, v] + donor_sd * u[d] + e[c]``,

    where ``g_std[d, v]`` is the donor's count of allele ``a1`` of causal variant ``v``, standardised over the
    donors (missing calls at the mean, i.e. 0), ``effect[v]`` is ``±effect`` on 1 or 2 programs chosen at
    random for each causal variant (0 on the others), ``u[d]`` is a standard normal non-genetic donor effect
    and ``e[c]`` standard normal cell-to-cell variation. Genes load on the programs through a random loading
    matrix ``W`` (``n_programs x n_genes``, entries normal with sd ``1 / sqrt(n_programs)``) and counts are
    negative binomial with mean ``library[c] * exp(b + state[c] @ W)``, a gene baseline ``b`` (mean count
    about 2 per gene), a log-normal library size factor and variance ``mean + dispersion * mean**2``.

    Parameters
    ----------
    genotypes
        A :class:`~pertcausal.pp.Genotypes` (:func:`pertcausal.pp.read_genotypes` or
        :func:`pertcausal.data.simulate_genotypes`); every sample becomes a donor.
    n_cells
        Cells per donor.
    n_genes
        Genes.
    n_programs
        Dimensions of the latent state.
    causal
        Variant ids (``genotypes.variants["variant"]``, compared as strings) of the causal variants. By
        default ``n_causal`` variants are drawn at random among the autosomal variants with minor allele
        frequency >= 0.1.
    n_causal
        Number of causal variants drawn when ``causal`` is None (0 simulates no genetic effect).
    effect
        Shift of each affected program per standard deviation of the causal genotype (the sign, drawn at
        random, is stored; a positive effect raises the program with each copy of ``a1``).
    donor_sd
        Standard deviation of the non-genetic donor effect on each program.
    dispersion
        Negative binomial overdispersion; 0 gives Poisson counts.
    random_state
        Seed: the same seed and genotypes give the same cells.

    Returns
    -------
    AnnData of ``n_donors * n_cells`` cells x ``n_genes`` genes with raw counts in ``X`` (sparse CSR,
    float32), ``obs["donor"]`` (the genotype sample id, categorical in the order of ``genotypes.samples``)
    and ``obs["n_counts"]``. ``uns["simulation"]`` holds the ground truth:

    ``"causal"``
        One row per causal variant and affected program: ``variant``, ``position`` (row of
        ``genotypes.variants``), ``chrom``, ``pos``, ``a1``, ``a2``, ``a1_freq``, ``program``, ``effect``
        (per standard deviation of the ``a1`` count) and ``beta_per_allele`` (per copy of ``a1``).
    ``"donor_state"``
        The true donor-level states, donors x programs (genetic plus non-genetic part).
    ``"genetic_state"``
        Their genetic part alone.
    ``"loadings"``
        Programs x genes loading matrix ``W``; ``"gene_baseline"``, the baseline ``b`` per gene.
    ``"params"``
        The arguments.

    Examples
    --------
    >>> import pertcausal as pc
    >>> geno = pc.data.simulate_genotypes(n_samples=20, n_variants=50, random_state=0)
    >>> cells = pc.data.simulate_donor_cells(geno, n_cells=10, n_genes=30, n_causal=2, random_state=0)
    >>> cells.shape
    (200, 30)
    >>> cells.obs["donor"].nunique()
    20
    >>> cells.uns["simulation"]["donor_state"].shape
    (20, 8)
    """
    import scipy.sparse as sp
    from anndata import AnnData

    from ..pp._genotypes import Genotypes

    if not isinstance(genotypes, Genotypes):
        raise TypeError(
            f"genotypes must be a pertcausal.pp.Genotypes (from pc.pp.read_genotypes or "
            f"pc.data.simulate_genotypes), got {type(genotypes).__name__}"
        )
    for name, value in (("n_cells", n_cells), ("n_genes", n_genes), ("n_programs", n_programs)):
        if isinstance(value, bool) or int(value) != value or value < 1:
            raise ValueError(f"{name} must be a positive integer, got {value!r}")
    if donor_sd < 0 or dispersion < 0 or not np.isfinite(effect):
        raise ValueError(
            f"donor_sd ({donor_sd}) and dispersion ({dispersion}) must be >= 0 and effect ({effect}) finite"
        )
    n_donors = genotypes.n_samples
    if n_donors < 2:
        raise ValueError(f"need at least 2 donors (samples of the genotypes) to standardise genotypes, got {n_donors}")
    rng = np.random.default_rng(random_state)
    n_cells, n_genes, n_programs = int(n_cells), int(n_genes), int(n_programs)

    # ---- causal variants and the genetic part of the donor states -----------------------------
    positions = _choose_causal(genotypes, causal, n_causal, rng)
    G = genotypes.read(positions, dtype="float64") if len(positions) else np.zeros((n_donors, 0))
    freq = np.nanmean(G, axis=0) / 2 if len(positions) else np.zeros(0)
    sd = np.nanstd(G, axis=0) if len(positions) else np.zeros(0)
    flat = ~(sd > 0)
    if flat.any():
        bad = genotypes.variants["variant"].to_numpy()[positions[flat]]
        raise ValueError(f"causal variants {_list(bad)} do not vary over the {n_donors} donors (or are all missing)")
    g_std = np.nan_to_num((G - 2 * freq) / np.where(flat, 1.0, sd), nan=0.0)

    B = np.zeros((len(positions), n_programs))
    rows = []
    var = genotypes.variants
    for j, p in enumerate(positions):
        k = int(rng.integers(1, 3)) if n_programs > 1 else 1
        programs = np.sort(rng.choice(n_programs, size=k, replace=False))
        signs = rng.choice([-1.0, 1.0], size=k)
        B[j, programs] = signs * effect
        for prog, s in zip(programs, signs):
            rows.append(
                {
                    "variant": str(var["variant"].iat[p]),
                    "position": int(p),
                    "chrom": str(var["chrom"].iat[p]),
                    "pos": int(var["pos"].iat[p]),
                    "a1": str(var["a1"].iat[p]),
                    "a2": str(var["a2"].iat[p]),
                    "a1_freq": float(freq[j]),
                    "program": f"program{prog}",
                    "effect": float(s * effect),
                    "beta_per_allele": float(s * effect / sd[j]),
                }
            )
    columns = ["variant", "position", "chrom", "pos", "a1", "a2", "a1_freq", "program", "effect", "beta_per_allele"]
    causal_table = pd.DataFrame(rows, columns=columns)
    genetic = g_std @ B
    donor_state = genetic + donor_sd * rng.standard_normal((n_donors, n_programs))

    # ---- cells: latent states, gene rates and counts ------------------------------------------
    W = rng.standard_normal((n_programs, n_genes)) / np.sqrt(n_programs)
    baseline = rng.normal(np.log(2.0), 1.0, n_genes)
    donor_of_cell = np.repeat(np.arange(n_donors), n_cells)
    state = donor_state[donor_of_cell] + rng.standard_normal((len(donor_of_cell), n_programs))
    library = np.exp(rng.normal(0.0, 0.3, len(donor_of_cell)))
    log_mu = state @ W + baseline
    np.clip(log_mu, None, 12.0, out=log_mu)  # guards against overflow with extreme effects
    mu = library[:, None] * np.exp(log_mu)
    if dispersion > 0:
        mu = rng.gamma(1.0 / dispersion, mu * dispersion)
    counts = rng.poisson(mu).astype(np.float32)
    X = sp.csr_matrix(counts)

    # ---- AnnData ------------------------------------------------------------------------------
    donors = pd.Index(genotypes.samples.index.astype(str))
    cell_in_donor = np.tile(np.arange(n_cells), n_donors)
    obs = pd.DataFrame(
        {
            "donor": pd.Categorical.from_codes(donor_of_cell, categories=donors),
            "n_counts": counts.sum(axis=1).astype(np.float32),
        },
        index=pd.Index(donors.to_numpy()[donor_of_cell] + "_cell" + cell_in_donor.astype(str), dtype=object),
    )
    programs = [f"program{i}" for i in range(n_programs)]
    genes = [f"gene{i:04d}" for i in range(n_genes)]
    adata = AnnData(X=X, obs=obs, var=pd.DataFrame(index=genes))
    adata.uns["simulation"] = {
        "causal": causal_table,
        "donor_state": pd.DataFrame(donor_state, index=donors, columns=programs),
        "genetic_state": pd.DataFrame(genetic, index=donors, columns=programs),
        "loadings": pd.DataFrame(W, index=programs, columns=genes),
        "gene_baseline": pd.Series(baseline, index=genes, name="gene_baseline").to_frame(),
        "params": {
            "n_cells": n_cells,
            "n_genes": n_genes,
            "n_programs": n_programs,
            "n_causal": len(positions),
            "effect": float(effect),
            "donor_sd": float(donor_sd),
            "dispersion": float(dispersion),
            "min_causal_maf": MIN_CAUSAL_MAF,
            "random_state": int(random_state),
        },
    }
    return adata
