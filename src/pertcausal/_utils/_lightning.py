"""Quiet Lightning fits: no "GPU available" / tips chatter and no warnings that do not concern the user."""

from __future__ import annotations

import logging
import warnings
from collections.abc import Iterator
from contextlib import contextmanager

_IGNORED = (
    ".*does not have many workers.*",
    ".*smaller than the logging interval.*",
    ".*LeafSpec.*is deprecated.*",
    ".*module\\(s\\) in eval mode at the start of training.*",
    ".*There are missing indices.*",
)


@contextmanager
def quiet_lightning() -> Iterator[None]:
    """Silence Lightning's rank-zero info messages and known harmless warnings inside the block."""
    names = ("lightning.pytorch.utilities.rank_zero", "lightning.pytorch.accelerators.cuda")
    loggers = [logging.getLogger(n) for n in names]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.WARNING)
    try:
        with warnings.catch_warnings():
            for message in _IGNORED:
                warnings.filterwarnings("ignore", message=message)
            yield
    finally:
        for lg, level in zip(loggers, levels, strict=True):
            lg.setLevel(level)
