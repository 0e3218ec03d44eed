"""Sphinx configuration for pertcausal.

Build with::

    python -m sphinx -W --keep-going -b html docs docs/_build/html

Notebooks are rendered with myst-nb but never executed. The tutorial notebooks
live in ``../tutorials``; they are copied into ``docs/notebooks/`` (git-ignored)
at build time so that the ``notebooks/*`` glob in ``tutorials.md`` picks them up.
"""

from __future__ import annotations

import re
import shutil
import sys
import warnings
from datetime import date
from importlib.metadata import PackageNotFoundError
from importlib.metadata import version as _version
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT / "src"))  # works from a source tree without installing

# sphinx-autodoc-typehints still calls an API that Sphinx 10 removes; that is not our warning to fix.
warnings.filterwarnings("ignore", message=".*set_application.*", module="sphinx_autodoc_typehints")

# -- Project information -------------------------------------------------------

project = "pertcausal"
author = "pertcausal developers"
copyright = f"{date.today():%Y}, {author}"
try:
    release = _version("pertcausal")
except PackageNotFoundError:  # pragma: no cover - docs built from an uninstalled tree
    release = "0.0.0"
version = ".".join(release.split(".")[:2])

REPOSITORY_URL = "https://github.com/pertcausal/pertcausal"

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
    "repository_url": REPOSITORY_URL,
    "use_repository_button": True,
    "path_to_docs": "docs/",
    "navigation_with_keys": False,
}
html_show_sphinx = False


# -- Hooks -----------------------------------------------------------------------

_TUTORIAL_TOCTREE = "```{toctree}\n:glob: true\n:maxdepth: 1\n\nnotebooks/*\n```"


def _drop_empty_tutorial_toctree(app, docname: str, source: list[str]) -> None:
    """Without any notebook the ``notebooks/*`` glob matches nothing, which Sphinx warns about.

    That warning cannot be silenced with ``suppress_warnings``, so drop the toctree instead.
    """
    if docname == "tutorials" and not _NOTEBOOKS:
        source[0] = source[0].replace(
            _TUTORIAL_TOCTREE, "*No tutorial notebook was found in `tutorials/` when these docs were built.*"
        )


_LINK_RE = re.compile(r"(\]\(|^\[[^\]]+\]:[ \t]*)(?P<target>[^)\s#]*)(?P<anchor>#[^)\s]*)?", re.MULTILINE)
_IMAGE_SUFFIXES = (".png", ".svg", ".jpg", ".jpeg", ".gif", ".webp")


def _readme_target(target: str) -> str:
    """Map a link written relative to the repository root (as GitHub shows README.md) to the docs."""
    if not target or re.match(r"^[a-zA-Z][a-zA-Z0-9+.-]*:", target) or target.startswith("/"):
        return target  # pure anchor, URL (http:, mailto:, ...) or absolute path
    path = target.removeprefix("./")
    if path.lower().endswith(_IMAGE_SUFFIXES):
        return target  # images are handled by the include's :relative-images: option
    if path.startswith("docs/"):
        return path.removeprefix("docs/")
    if path == "CHANGELOG.md":
        return "changelog.md"
    if path.startswith("tutorials/") and path.endswith(".ipynb"):
        name = path.removeprefix("tutorials/")
        if any(nb.name == name for nb in _NOTEBOOKS):
            return f"notebooks/{name}"
    # Anything else in the repository (benchmarks/, src/, LICENSE, ...) is not part of the docs: link to GitHub.
    return f"{REPOSITORY_URL}/blob/main/{path}"


def _rewrite_readme_links(app, relative_path: Path, parent_docname: str, content: list[str]) -> None:
    """``index.md`` includes ``../README.md``, whose links are relative to the repository root."""
    if Path(relative_path).name != "README.md":
        return

    def repl(m: re.Match) -> str:
        return m.group(1) + _readme_target(m.group("target")) + (m.group("anchor") or "")

    content[0] = _LINK_RE.sub(repl, content[0])


def setup(app):
    app.connect("source-read", _drop_empty_tutorial_toctree)
    app.connect("include-read", _rewrite_readme_links)
