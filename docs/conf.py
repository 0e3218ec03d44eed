"""Sphinx configuration for pertcausal.

Build with::

    python -m sphinx -W --keep-going -b html docs docs/_build/html

Notebooks are rendered with myst-nb but never executed. The tutorial notebooks
live in ``../tutorials``; they are copied into ``docs/notebooks/`` (git-ignored)
at build time so that the ``notebooks/*`` glob in ``tutorials.md`` picks them up.
"""

from __future__ import annotations

import shutil
import sys
from datetime import date
from importlib.metadata import PackageNotFoundError
from importlib.metadata import version as _version
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT / "src"))  # works from a source tree without installing

# -- Project information -------------------------------------------------------

project = "pertcausal"
author = "pertcausal developers"
copyright = f"{date.today():%Y}, {author}"  # noqa: A001
try:
    release = _version("pertcausal")
except PackageNotFoundError:  # pragma: no cover - docs built from an uninstalled tree
    release = "0.0.0"
version = ".".join(release.split(".")[:2])

# -- Tutorial notebooks ----------------------------------------------------------


def _copy_notebooks() -> list[Path]:
    """Copy ``../tutorials/*.ipynb`` into ``docs/notebooks/`` and return the copies."""
    src_dir = ROOT / "tutorials"
    dst_dir = HERE / "notebooks"
    notebooks = sorted(src_dir.glob("*.ipynb")) if src_dir.is_dir() else []
    if dst_dir.exists():
        shutil.rmtree(dst_dir)
    if not notebooks:
        return []
    dst_dir.mkdir()
    copied = []
    for nb in notebooks:
        target = dst_dir / nb.name
        shutil.copy2(nb, target)
        copied.append(target)
    return copied


_NOTEBOOKS = _copy_notebooks()

# -- General configuration -------------------------------------------------------

extensions = [
    "myst_nb",
    "sphinx.ext.autodoc",
    "sphinx.ext.autosummary",
    "sphinx.ext.napoleon",
    "sphinx_autodoc_typehints",  # must come after napoleon
    "sphinx.ext.mathjax",
    "sphinx.ext.viewcode",
]

# No intersphinx: the build environment has no network access.

templates_path: list[str] = []
exclude_patterns = ["_build", "Thumbs.db", ".DS_Store", "**.ipynb_checkpoints"]
source_suffix = {".rst": "restructuredtext", ".md": "myst-nb", ".ipynb": "myst-nb"}
master_doc = "index"

suppress_warnings: list[str] = []
if not _NOTEBOOKS:
    # tutorials.md globs ``notebooks/*``; the tutorial may not have been written yet.
    suppress_warnings.append("toc.empty_glob")

# autodoc / autosummary
autosummary_generate = True
autodoc_member_order = "groupwise"
autodoc_default_options = {"members": True, "inherited-members": False}
typehints_defaults = "braces"
always_document_param_types = False

# napoleon: numpy docstrings only
napoleon_google_docstring = False
napoleon_numpy_docstring = True
napoleon_include_init_with_doc = False
napoleon_use_rtype = True
napoleon_use_param = True

# MyST / myst-nb
myst_enable_extensions = ["colon_fence", "deflist", "dollarmath", "amsmath", "html_image"]
myst_heading_anchors = 3
nb_execution_mode = "off"
nb_merge_streams = True

# -- HTML output -----------------------------------------------------------------

html_theme = "sphinx_book_theme"
html_title = "pertcausal"
html_theme_options = {
    "repository_url": "https://github.com/pertcausal/pertcausal",
    "use_repository_button": True,
    "path_to_docs": "docs/",
    "navigation_with_keys": False,
}
html_show_sphinx = False
