"""Parameter records that survive h5ad/h5mu ``.uns`` and JSON."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

_MAX_REPR = 200


def h5_safe(value: Any) -> Any:
    """``value`` as plain, storable values: ``None`` as ``"None"``, numpy scalars as Python ones, mappings
    and sequences element by element; anything else as its ``str`` (its type name when that is long, e.g. an
    array)."""
    if value is None:
        return "None"
    if isinstance(value, Mapping):
        return {str(k): h5_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [h5_safe(v) for v in value]
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, bool | int | float | str):
        return value
    text = str(value)
    return text if len(text) <= _MAX_REPR and not isinstance(value, np.ndarray) else type(value).__name__
