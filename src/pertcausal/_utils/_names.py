"""Observation names of (perturbation, context) pairs that no pair of labels can share."""

from __future__ import annotations

from collections.abc import Iterable

#: separator of the two labels in a pair's name: ``"perturbation|context"``
PAIR_SEP = "|"


def _escape(label: object) -> str:
    return str(label).replace("\\", "\\\\").replace(PAIR_SEP, "\\" + PAIR_SEP)


def pair_name(perturbation: object, context: object) -> str:
    """The obs name of one pair: ``"perturbation|context"``.

    A ``|`` (or ``\\``) inside a label is escaped with a backslash, so the name is unique to the pair:
    ``("a|b", "c")`` gives ``a\\|b|c`` and ``("a", "b|c")`` gives ``a|b\\|c``. Labels without these
    characters are written as they are.

    Examples
    --------
    >>> pair_name("IFNB", "B cells")
    'IFNB|B cells'
    >>> pair_name("a|b", "c") != pair_name("a", "b|c")
    True
    """
    return f"{_escape(perturbation)}{PAIR_SEP}{_escape(context)}"


def pair_names(perturbations: Iterable[object], contexts: Iterable[object]) -> list[str]:
    """:func:`pair_name` of each (perturbation, context) pair of two aligned sequences."""
    perts = [str(p) for p in perturbations]
    ctxs = [str(c) for c in contexts]
    if len(perts) != len(ctxs):
        raise ValueError(f"{len(perts)} perturbation labels but {len(ctxs)} context labels")
    if any(PAIR_SEP in s or "\\" in s for s in set(perts) | set(ctxs)):  # escape only where needed
        return [pair_name(p, c) for p, c in zip(perts, ctxs)]
    return [f"{p}{PAIR_SEP}{c}" for p, c in zip(perts, ctxs)]
