"""Simulated genotypes with population structure, for GWAS tests and tutorials."""

from __future__ import annotations

import numpy as np
import pandas as pd

from ..pp._genotypes import Genotypes


def simulate_genotypes(
    n_samples: int = 500,
    n_variants: int = 1000,
    *,
    n_chromosomes: int = 2,
    n_populations: int = 1,
    fst: float = 0.05,
    maf_range: tuple[float, float] = (0.05, 0.5),
    missing_rate: float = 0.0,
    random_state: int = 0,
) -> Genotypes:
    """Diploid genotypes under the Balding-Nichols model, held in memory.

    Each variant has an ancestral allele frequency drawn uniformly from ``maf_range``; with several
    populations each population's frequency is drawn from a Beta distribution of divergence ``fst`` around it,
    and samples are split evenly among populations (``samples["population"]``). Calls are then set missing at
    random with probability ``missing_rate``. Variants are spread evenly over ``n_chromosomes`` chromosomes,
    10 kb apart; ``a1`` (the counted allele) is ``"A"``.

    Examples
    --------
    >>> import pertcausal as pc
    >>> geno = pc.data.simulate_genotypes(n_samples=100, n_variants=50, n_populations=2, random_state=0)
    >>> geno.shape
    (100, 50)
    """
    if n_samples < 1 or n_variants < 1 or n_populations < 1 or n_chromosomes < 1:
        raise ValueError("n_samples, n_variants, n_populations and n_chromosomes must be positive")
    lo, hi = maf_range
    if not 0 < lo <= hi <= 0.5:
        raise ValueError(f"maf_range must satisfy 0 < low <= high <= 0.5, got {maf_range}")
    if not 0 <= missing_rate < 1 or not 0 < fst < 1:
        raise ValueError(f"missing_rate must lie in [0, 1) and fst in (0, 1); got {missing_rate}, {fst}")
    rng = np.random.default_rng(random_state)
    p_anc = rng.uniform(lo, hi, n_variants)
    pop = np.arange(n_samples) % n_populations
    if n_populations == 1:
        freqs = p_anc[None, :]
    else:
        a = p_anc * (1 - fst) / fst
        b = (1 - p_anc) * (1 - fst) / fst
        freqs = rng.beta(a, b, size=(n_populations, n_variants))
    G = rng.binomial(2, freqs[pop]).astype(np.float32)
    if missing_rate:
        G[rng.random(G.shape) < missing_rate] = np.nan
    chrom = np.repeat(np.arange(1, n_chromosomes + 1), -(-n_variants // n_chromosomes))[:n_variants]
    pos = np.concatenate([np.arange(1, (chrom == c).sum() + 1) * 10_000 for c in range(1, n_chromosomes + 1)])
    variants = pd.DataFrame(
        {
            "variant": [f"var{j}" for j in range(n_variants)],
            "chrom": chrom.astype(str),
            "pos": pos,
            "a1": "A",
            "a2": "G",
        }
    )
    samples = pd.DataFrame(
        {"population": pd.Categorical([f"pop{k}" for k in pop]), "sex": rng.integers(1, 3, n_samples)},
        index=pd.Index([f"sample{i}" for i in range(n_samples)], name="iid"),
    )
    return Genotypes.from_array(G, samples=samples, variants=variants)
