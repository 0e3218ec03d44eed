"""``tl.clump``: group significant GWAS hits around lead variants by distance and linkage disequilibrium."""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from .._utils._validate import _list

if TYPE_CHECKING:
    from anndata import AnnData
    from mudata import MuData

    from ..pp._genotypes import Genotypes

CLUMP_COLUMNS = ["variant", "chrom", "pos", "phenotype", "p", "n_clumped", "start", "end", "clumped"]


def _hits_table(data: Any, key: str, phenotype: str | None) -> tuple[pd.DataFrame, dict | None]:
    """One row per variant: its p value (for ``phenotype``, the joint test, or the minimum over phenotypes)."""
    store = None
    if isinstance(data, pd.DataFrame):
        table = data
    else:
        if key not in data.uns:
            raise KeyError(
                f"key {key!r} is not in data.uns (run pertcausal.tl.gwas first); keys are: {_list(data.uns)}"
            )
        store = data.uns[key]
        if phenotype == "joint":
            if "joint" not in store:
                raise KeyError(f"data.uns[{key!r}] has no 'joint' table (run tl.gwas with joint=True)")
            table = store["joint"]
        else:
            table = store["results"]
    needed = {"variant", "chrom", "pos", "p"}
    if not needed <= set(table.columns):
        raise KeyError(f"the summary statistics lack columns {_list(sorted(needed - set(table.columns)))}")
    if "phenotype" in table.columns and phenotype not in (None, "joint"):
        present = pd.unique(table["phenotype"].astype(str))
        if phenotype not in set(present):
            raise ValueError(f"phenotype {phenotype!r} is not in the results; phenotypes are: {_list(present)}")
        table = table[table["phenotype"].astype(str) == phenotype]
    table = table[np.isfinite(table["p"].to_numpy(np.float64))]
    if "phenotype" in table.columns:
        order = table.sort_values("p", kind="stable")
        table = order.drop_duplicates("variant", keep="first")
    else:
        table = table.assign(phenotype="joint" if phenotype == "joint" else "")
    return table.reset_index(drop=True), store


def clump(
    data: AnnData | MuData | pd.DataFrame,
    genotypes: Genotypes | str | os.PathLike[str] | None = None,
    *,
    key: str = "gwas",
    phenotype: str | None = None,
    p1: float = 5e-8,
    p2: float = 1e-2,
    r2: float = 0.1,
    kb: float = 250,
    key_added: str = "clumps",
) -> pd.DataFrame:
    """Clump GWAS hits to lead variants, as ``plink --clump`` does.

    Variants with ``p <= p1`` become lead variants in order of significance; each takes the not yet clumped
    variants with ``p <= p2`` within ``kb`` kilobases on its chromosome and, when ``genotypes`` are given, in
    linkage disequilibrium with it (squared correlation of allele counts over the tested samples >= ``r2``).
    Without genotypes clumping is by distance only.

    Parameters
    ----------
    data
        Data on which :func:`pertcausal.tl.gwas` ran (results in ``uns[key]``) or a summary-statistics table.
    genotypes
        The genotypes of the scan (a :class:`~pertcausal.pp.Genotypes` or the PLINK path), for the LD test.
    key
        ``uns`` key of the GWAS results.
    phenotype
        Clump one phenotype, ``"joint"`` for the multivariate test, or None for each variant's smallest p
        over the phenotypes.
    p1, p2, r2, kb
        PLINK's clumping thresholds (index p value, secondary p value, LD r², window in kb).
    key_added
        With an AnnData/MuData the table is also stored as ``uns[key][key_added]``.

    Returns
    -------
    One row per clump: the lead ``variant``, ``chrom``, ``pos``, ``phenotype`` and ``p``, the number of other
    variants it took (``n_clumped``), the span (``start``, ``end``) and the clumped ids (``;``-separated).

    Examples
    --------
    >>> import pandas as pd, pertcausal as pc
    >>> table = pd.DataFrame({"variant": ["a", "b", "c"], "chrom": ["1", "1", "2"],
    ...                       "pos": [1_000, 50_000, 1_000], "p": [1e-10, 1e-4, 1e-9]})
    >>> pc.tl.clump(table)[["variant", "n_clumped"]].values.tolist()
    [['a', 1], ['c', 0]]
    """
    if not (0 < p1 <= 1 and 0 < p2 <= 1 and 0 <= r2 <= 1 and kb >= 0):
        raise ValueError(f"need 0 < p1, p2 <= 1, 0 <= r2 <= 1 and kb >= 0; got p1={p1}, p2={p2}, r2={r2}, kb={kb}")
    table, store = _hits_table(data, key, phenotype)
    geno = None
    sample_rows = None
    if genotypes is not None:
        from ..pp._genotypes import Genotypes, read_genotypes

        geno = genotypes if isinstance(genotypes, Genotypes) else read_genotypes(genotypes)
        if store is not None and "samples" in store:
            sample_rows = store["samples"]["genotype_row"].to_numpy(np.intp)
        ids = pd.Index(geno.variants["variant"].astype(str))
        gpos = ids.get_indexer(table["variant"].astype(str))
        if (gpos < 0).any():
            raise ValueError(
                f"{int((gpos < 0).sum())} variants of the results are not in the genotypes "
                f"(e.g. {_list(table['variant'][gpos < 0][:5])})"
            )
        table = table.assign(_gpos=gpos)
    cand = table[table["p"] <= p2].sort_values("p", kind="stable").reset_index(drop=True)
    chrom = cand["chrom"].astype(str).to_numpy()
    pos = cand["pos"].to_numpy(np.int64)
    pvals = cand["p"].to_numpy(np.float64)
    taken = np.zeros(len(cand), dtype=bool)
    window = kb * 1000
    rows = []
    for i in np.flatnonzero(pvals <= p1):
        if taken[i]:
            continue
        taken[i] = True
        near = np.flatnonzero(~taken & (chrom == chrom[i]) & (np.abs(pos - pos[i]) <= window))
        if geno is not None and len(near):
            G = geno.read(cand["_gpos"].to_numpy()[np.r_[i, near]], samples=sample_rows, dtype="float64")
            G = np.where(np.isnan(G), np.nanmean(G, axis=0), G)
            G -= G.mean(axis=0)
            norms = np.sqrt((G**2).sum(axis=0))
            with np.errstate(invalid="ignore", divide="ignore"):
                corr = (G[:, 1:].T @ G[:, 0]) / (norms[1:] * norms[0])
            near = near[np.nan_to_num(corr) ** 2 >= r2]
        taken[near] = True
        members = np.r_[i, near]
        rows.append(
            {
                "variant": str(cand["variant"].iloc[i]),
                "chrom": chrom[i],
                "pos": int(pos[i]),
                "phenotype": str(cand["phenotype"].iloc[i]),
                "p": float(pvals[i]),
                "n_clumped": len(near),
                "start": int(pos[members].min()),
                "end": int(pos[members].max()),
                "clumped": ";".join(cand["variant"].astype(str).iloc[near]),
            }
        )
    out = pd.DataFrame(rows, columns=CLUMP_COLUMNS)
    if store is not None:
        store[key_added] = out
    return out
