"""Small helpers shared by the benchmark scripts: paths, machine description, markdown tables."""

from __future__ import annotations

import datetime as _dt
import os
import platform
import subprocess
from collections.abc import Iterable, Sequence
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = ROOT.parent / "shared" / "data"


def cpu_model() -> str:
    """CPU model name from ``/proc/cpuinfo`` (falls back to :func:`platform.processor`)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def n_cores() -> int:
    """CPU cores this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        return os.cpu_count() or 1


def _version(pkg: str) -> str:
    try:
        return version(pkg)
    except PackageNotFoundError:
        return "not installed"


def git_revision() -> str:
    """Short commit of the repository, with ``+dirty`` when the working tree has changes."""
    try:
        rev = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain"], cwd=ROOT, capture_output=True, text=True, check=True
        ).stdout.strip()
        return rev + ("+dirty" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def peak_memory_gb() -> float:
    """This process's own peak resident memory in GB: ``VmHWM`` from ``/proc/self/status`` on Linux.

    ``ru_maxrss`` is the fallback elsewhere; on Linux it would also carry the parent's peak across fork and
    exec, which matters for benchmarks that measure a child process.
    """
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024**2
    except OSError:
        pass
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2


def machine_info(packages: Iterable[str] = ("pertcausal", "numpy", "torch")) -> dict[str, str]:
    """Where and with what a benchmark ran: CPU, cores, GPU, Python, package versions, date."""
    info = {
        "date": _dt.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z"),
        "cpu": cpu_model(),
        "cores": str(n_cores()),
        "gpu": "none",
        "python": platform.python_version(),
        "platform": platform.platform(),
        "git": git_revision(),
    }
    if hasattr(os, "getloadavg"):  # other work on the machine inflates timings
        info["load average (1/5/15 min)"] = " / ".join(f"{v:.2f}" for v in os.getloadavg())
    try:
        import torch

        if torch.cuda.is_available():
            info["gpu"] = torch.cuda.get_device_name(0)
    except ImportError:
        pass
    for pkg in packages:
        info[pkg] = _version(pkg)
    return info


def machine_markdown(info: dict[str, str]) -> str:
    """A machine description as a markdown bullet list."""
    return "\n".join(f"- **{k}**: {v}" for k, v in info.items())


def markdown_table(rows: Sequence[Sequence[object]], header: Sequence[str], *, digits: int = 3) -> str:
    """A GitHub-flavoured markdown table; floats are rounded to ``digits`` decimals, text left-aligned."""

    def fmt(v: object) -> str:
        if isinstance(v, float):
            return "nan" if v != v else f"{v:.{digits}f}"
        return str(v)

    cells = [[fmt(v) for v in row] for row in rows]

    def is_number(v: object) -> bool:
        if isinstance(v, int | float):
            return True
        try:
            float(str(v))
        except ValueError:
            return False
        return True

    numeric = [bool(rows) and all(is_number(row[j]) for row in rows) for j in range(len(header))]
    align = ["---:" if num else ":---" for num in numeric]
    lines = ["| " + " | ".join(header) + " |", "| " + " | ".join(align) + " |"]
    lines += ["| " + " | ".join(row) + " |" for row in cells]
    return "\n".join(lines)


def imputation_summary(res: pd.DataFrame, *, top_k: int, pooled: bool = True) -> tuple[pd.DataFrame, str]:
    """:func:`pertcausal.tl.summarize_imputation` of an evaluation as a markdown table.

    Adds ``seconds`` (prediction time summed over the held-out pairs). ``pooled=False`` for a subset of
    the pairs: the pooled Pearson of the results is over all of them, so it is not shown.
    """
    import pertcausal as pc

    s = pc.tl.summarize_imputation(res)
    if not pooled:
        s["pooled_pearson"] = float("nan")
    s["seconds"] = res.groupby("method", observed=True)["seconds_per_pair"].sum()
    columns = {
        "pearson_top_k": f"top-{top_k} DE Pearson",
        "pooled_pearson": "pooled Pearson",
        "r2": "mean R2",
        "cosine": "mean cosine",
        "reliability_spearman": "Spearman(reliability, error)",
        "rel_error_reliable_half": "rel. error, reliable half",
        "rel_error_other_half": "rel. error, other half",
        "seconds": "seconds",
    }
    rows = [[m, *(float(s.loc[m, c]) for c in columns), int(s.loc[m, "n_pairs"])] for m in s.index]
    return s, markdown_table(rows, ["method", *columns.values(), "pairs"])


def epoch_timer() -> Any:
    """A Lightning callback whose ``times`` list gets the wall time of each training epoch."""
    import time

    import lightning.pytorch as lpl

    class EpochTimer(lpl.Callback):
        def __init__(self) -> None:
            self.times: list[float] = []
            self._t = 0.0

        def on_train_epoch_start(self, trainer: Any, module: Any) -> None:
            self._t = time.perf_counter()

        def on_train_epoch_end(self, trainer: Any, module: Any) -> None:
            self.times.append(time.perf_counter() - self._t)

    return EpochTimer()


def print_timing(epoch_seconds: Sequence[float], total_seconds: float) -> None:
    """The last line a timed child run prints: per-epoch and total seconds and the peak memory, as JSON."""
    import json

    print(json.dumps({"epoch_seconds": list(epoch_seconds), "total_seconds": total_seconds,
                      "peak_rss_gb": peak_memory_gb()}))  # fmt: skip


def run_child(script: str, method: str, data: Path, argv: Sequence[str]) -> dict[str, Any]:
    """Run ``script --method METHOD --data DATA *argv`` in a fresh process (its own peak memory) and return the
    JSON of its last line (:func:`print_timing`)."""
    import json
    import sys

    cmd = [sys.executable, script, "--method", method, "--data", str(data), *argv]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode:
        print(proc.stderr[-3000:])
        raise SystemExit(f"{method} failed")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def speed_parser(doc: str, *, name: str) -> Any:
    """The options the speed benchmarks share (size, epochs, threads, device, work folder, output page, and the
    hidden ``--method``/``--data`` of a child run); each script adds its own."""
    import argparse

    ap = argparse.ArgumentParser(description=doc.splitlines()[0])
    ap.add_argument("--cells", type=int, default=100_000)
    ap.add_argument("--genes", type=int, default=2_000)
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--workdir", default=f"/tmp/pertcausal_{name}")
    ap.add_argument("--method", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--data", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--out", default=str(ROOT / "docs" / "benchmarks" / f"{name}.md"))
    return ap
