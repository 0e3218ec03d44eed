"""Progress bars that can be switched off (tqdm, as scvi-tools uses by default)."""

from __future__ import annotations

from collections.abc import Iterable
from typing import TypeVar

T = TypeVar("T")


def track(
    iterable: Iterable[T], *, enabled: bool = True, description: str = "", total: int | None = None
) -> Iterable[T]:
    """Wrap ``iterable`` in a tqdm progress bar when ``enabled``."""
    if not enabled:
        return iterable
    from tqdm.auto import tqdm

    return tqdm(iterable, desc=description, total=total, leave=False)
