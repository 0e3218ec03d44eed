"""Model files that load without running code: tensors through ``torch.load(weights_only=True)``, the rest JSON.

A ``model.pt`` written by ``torch.save`` of arbitrary Python objects is a pickle, and unpickling a file
can execute any code its author chose, before a single check runs. pertcausal's model files therefore
hold only a flat mapping of names to tensors, read with PyTorch's restricted unpickler, and everything
else (setup, training history, indices, hyper-parameters) as JSON, whose reader builds plain values only.
"""

from __future__ import annotations

import json
import pickle
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

#: written into every model's JSON file; a directory without it was not written by this code
FORMAT = "pertcausal-model/1"
#: dtypes an array may have in a JSON file: booleans, integers, floats, strings, and objects of those
_KINDS = "biufUO"


def save_tensors(path: str | Path, tensors: Mapping[str, Any]) -> None:
    """Write a flat ``name -> tensor`` mapping (a module's ``state_dict``) with ``torch.save``."""
    import torch

    bad = [k for k, v in tensors.items() if not isinstance(v, torch.Tensor)]
    if bad:
        raise TypeError(f"only tensors go into a model's weights file; not tensors: {bad[:5]}")
    torch.save(dict(tensors), path)


def load_tensors(path: str | Path) -> dict[str, Any]:
    """Read a weights file with ``torch.load(weights_only=True)``, which unpickles nothing but tensors.

    A file holding any other object (a pickled class, a function to call, a numpy array) is refused with a
    ValueError naming the file, before anything in it runs.
    """
    import torch

    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"the model weights file {str(path)!r} does not exist")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        first = str(err).strip().splitlines()
        raise ValueError(
            f"refused to load {str(path)!r}: it is not a weights-only file ({first[0] if first else 'pickled objects'}"
            "). A model file whose unpickling needs more than tensors can run code when it is loaded, so "
            "pertcausal reads only tensors; load models saved by this version of pertcausal, from a source you trust"
        ) from None
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ValueError(f"{str(path)!r} does not hold a mapping of names to tensors, as a pertcausal model file does")
    return state


def write_json(path: str | Path, value: Any) -> None:
    """Write ``value`` as JSON, numpy arrays and DataFrames included (:func:`to_json`)."""
    Path(path).write_text(json.dumps(to_json(value), indent=1))


def read_description(path: str | Path, class_name: str) -> dict[str, Any]:
    """The JSON description ``path`` of a saved ``class_name`` (written by :func:`write_json`), with clear errors
    for another format.

    A directory with a weights file but no description was written by an earlier version of pertcausal
    (or by scvi-tools), whose ``model.pt`` is a general pickle; it is refused rather than unpickled.
    """
    path = Path(path)
    if not path.exists():
        raise ValueError(
            f"{str(path)!r} does not exist: this is not a model directory written by this version of pertcausal "
            "(earlier versions and scvi-tools wrote pickled model.pt files, which can run code when loaded and are "
            "no longer read; load such a file once with the version that wrote it, in a session you trust, and "
            "save it again with this one)"
        )
    try:
        meta = from_json(json.loads(path.read_text()))
    except (json.JSONDecodeError, TypeError, ValueError) as err:
        raise ValueError(
            f"the {class_name} description {str(path)!r} is not a valid pertcausal model file: {err}"
        ) from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT or meta.get("class") != class_name:
        found = meta.get("class") if isinstance(meta, dict) else None
        raise ValueError(
            f"{str(path)!r} does not describe a {class_name} saved by pertcausal (format {FORMAT!r})"
            + (f"; it describes a {found}" if found and found != class_name else "")
        )
    return meta


def to_json(value: Any, where: str = "value") -> Any:
    """``value`` as JSON values: mappings (string keys), lists, numbers, strings, None, and tagged numpy arrays
    (dtype kinds bool, int, float, str, or objects of those) and DataFrames; anything else is a TypeError."""
    if value is None or isinstance(value, bool | int | float | str):
        return value
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, Mapping):
        return {str(k): to_json(v, f"{where}[{k!r}]") for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [to_json(v, f"{where}[{i}]") for i, v in enumerate(value)]
    if isinstance(value, np.ndarray):
        if value.dtype.kind not in _KINDS:
            raise TypeError(f"{where}: arrays of dtype {value.dtype} cannot be stored in a model file")
        items = [to_json(v, where) for v in value.ravel().tolist()] if value.dtype.kind == "O" else value.tolist()
        dtype = "object" if value.dtype.kind == "O" else value.dtype.str
        return {"__ndarray__": items, "dtype": dtype, "shape": list(value.shape)}
    if isinstance(value, pd.DataFrame):
        return {
            "__dataframe__": to_json(value.to_numpy(), where),
            "columns": to_json(np.asarray(value.columns), where),
            "index": to_json(np.asarray(value.index), where),
            "index_name": None if value.index.name is None else str(value.index.name),
        }
    raise TypeError(f"{where}: a {type(value).__name__} cannot be stored in a model file")


def from_json(value: Any) -> Any:
    """The inverse of :func:`to_json`: plain values, with tagged arrays and DataFrames rebuilt."""
    if isinstance(value, list):
        return [from_json(v) for v in value]
    if not isinstance(value, dict):
        return value
    if "__ndarray__" in value:
        dtype = value["dtype"]
        if dtype == "object":
            return np.array(value["__ndarray__"], dtype=object).reshape(value["shape"])
        dt = np.dtype(dtype)
        if dt.kind not in _KINDS:
            raise ValueError(f"unexpected array dtype {dtype!r}")
        return np.asarray(value["__ndarray__"], dtype=dt).reshape(value["shape"])
    if "__dataframe__" in value:
        index = pd.Index(from_json(value["index"]), name=value.get("index_name"))
        return pd.DataFrame(from_json(value["__dataframe__"]), index=index, columns=from_json(value["columns"]))
    return {k: from_json(v) for k, v in value.items()}
