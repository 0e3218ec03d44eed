"""The Sphinx documentation builds without warnings."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"

# Modules the build needs: sphinx itself and the extensions/theme named in docs/conf.py.
_DOC_MODULES = ("sphinx", "myst_nb", "sphinx_autodoc_typehints", "sphinx_book_theme")


@pytest.mark.slow
def test_docs_build_without_warnings(tmp_path: Path) -> None:
    missing = [m for m in _DOC_MODULES if importlib.util.find_spec(m) is None]
    if missing:
        pytest.skip(f"documentation dependencies not installed: {', '.join(missing)} (pip install -e '.[doc]')")
    cmd = [
        sys.executable,
        "-m",
        "sphinx",
        "-W",
        "--keep-going",
        "-b",
        "html",
        "-d",
        str(tmp_path / "doctrees"),
        str(DOCS),
        str(tmp_path / "html"),
    ]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, (
        f"sphinx build failed (rc={proc.returncode}):\n{proc.stderr[-6000:]}\n--- stdout ---\n{proc.stdout[-3000:]}"
    )
    assert (tmp_path / "html" / "index.html").is_file()
