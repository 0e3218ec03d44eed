"""Similarity of effect profiles to a query signature: cosine, Pearson and CMap-style connectivity (arrays only)."""

from __future__ import annotations

import numpy as np

# rows x genes of one block of the running-sum computation (bounded memory, ~16 MiB per array)
_BLOCK_ELEMENTS = 2**21


def cosine_scores(effects: np.ndarray, query: np.ndarray) -> np.ndarray:
    """Cosine similarity of each row of ``effects`` with ``query``; a zero row scores 0."""
    norms = np.linalg.norm(effects, axis=1) * np.linalg.norm(query)
    dots = effects @ query
    out = np.zeros(len(effects))
    np.divide(dots, norms, out=out, where=norms > 0)
    return np.clip(out, -1.0, 1.0)


def pearson_scores(effects: np.ndarray, query: np.ndarray) -> np.ndarray:
    """Pearson correlation of each row of ``effects`` with ``query``; a constant row scores 0."""
    return cosine_scores(effects - effects.mean(axis=1, keepdims=True), query - query.mean())


def _enrichment(hit: np.ndarray, ranked: np.ndarray, weight: float) -> np.ndarray:
    """Signed weighted Kolmogorov-Smirnov enrichment score of one gene set per row.

    ``hit[i, j]`` says whether the gene at rank ``j`` of row ``i`` is in the set and ``ranked[i, j]``
    is that gene's value (rows sorted descending). The running sum steps up by
    ``|value|**weight / sum over the set`` at a hit and down by ``1 / n_miss`` at a miss; the score is
    its largest deviation from zero, with its sign (the positive one on a tie). A row whose set
    genes all have weight 0 falls back to equal weights (the classic KS statistic).
    """
    n_hit = int(hit[0].sum())
    n_miss = hit.shape[1] - n_hit
    w = np.where(hit, np.abs(ranked) ** weight, 0.0)
    total = w.sum(axis=1, keepdims=True)
    flat = total[:, 0] <= 0
    if flat.any():
        w[flat] = hit[flat]
        total[flat] = n_hit
    dev = np.cumsum(w, axis=1) / total - np.cumsum(~hit, axis=1) / n_miss
    hi, lo = dev.max(axis=1), dev.min(axis=1)
    return np.where(hi >= -lo, hi, lo)


def connectivity_scores(
    effects: np.ndarray, up: np.ndarray | None, down: np.ndarray | None, *, weight: float = 1.0
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """CMap-style weighted connectivity of each row of ``effects`` with an up and a down gene set.

    Each row is ranked descending; ``es_up``/``es_down`` are the weighted KS enrichment scores of
    the sets (``up``/``down``: boolean masks over the columns, or None). The score is
    ``(es_up - es_down) / 2`` when the two have different signs and 0 otherwise (CMap's WTCS rule);
    with one set only it is ``es_up`` or ``-es_down``. Returns ``(score, es_up, es_down)`` (NaN for
    a missing set). Works through blocks of rows so memory stays bounded.
    """
    n, g = effects.shape
    es_up, es_down = np.full(n, np.nan), np.full(n, np.nan)
    block = max(1, _BLOCK_ELEMENTS // max(g, 1))
    for start in range(0, n, block):
        e = effects[start : start + block]
        order = np.argsort(-e, axis=1, kind="stable")
        ranked = np.take_along_axis(e, order, axis=1)
        if up is not None:
            es_up[start : start + block] = _enrichment(up[order], ranked, weight)
        if down is not None:
            es_down[start : start + block] = _enrichment(down[order], ranked, weight)
    if up is not None and down is not None:
        score = np.where(np.sign(es_up) != np.sign(es_down), (es_up - es_down) / 2, 0.0)
    elif up is not None:
        score = es_up.copy()
    else:
        score = -es_down
    return score, es_up, es_down
