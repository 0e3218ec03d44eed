"""Packaging consistency: conda recipe vs pyproject, light imports, CI command, version."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PYPROJECT = ROOT / "pyproject.toml"
RECIPE = ROOT / "recipe" / "recipe.yaml"
README = ROOT / "README.md"
CI_RUN = ROOT / ".ci" / "run"

# PyPI name -> conda-forge name, where they differ.
# matplotlib-base is the conda-forge package libraries depend on (matplotlib adds the Qt backend);
# it installs the same `matplotlib` distribution, so `pip check` is satisfied.
PYPI_TO_CONDA = {"torch": "pytorch", "matplotlib": "matplotlib-base"}

HEAVY_MODULES = ("torch", "scvi", "pertpy", "jax", "scanpy", "bed_reader", "dask", "distributed")


def _pyproject() -> dict:
    with PYPROJECT.open("rb") as f:
        return tomllib.load(f)


def _recipe() -> dict:
    yaml = pytest.importorskip("yaml", reason="pyyaml is needed to parse recipe/recipe.yaml")
    return yaml.safe_load(RECIPE.read_text())


def _norm_spec(spec: str) -> str:
    """Normalise a version specifier: no spaces, clauses sorted (``>=1, <2`` == ``<2,>=1``)."""
    clauses = [c.strip().replace(" ", "") for c in spec.split(",") if c.strip()]
    return ",".join(sorted(clauses))


def _pep508(req: str) -> tuple[str, str]:
    from packaging.requirements import Requirement

    r = Requirement(req)
    assert r.marker is None and not r.extras, f"runtime dependency {req!r} needs a hand-written conda equivalent"
    name = re.sub(r"[-_.]+", "-", r.name).lower()
    return PYPI_TO_CONDA.get(name, name), _norm_spec(str(r.specifier))


def _conda(req: str) -> tuple[str, str]:
    name, _, spec = req.strip().partition(" ")
    return name.lower(), _norm_spec(spec)


def test_recipe_run_requirements_match_pyproject() -> None:
    recipe = _recipe()
    assert recipe["schema_version"] == 1
    assert recipe["build"]["noarch"] == "python"

    run = recipe["requirements"]["run"]
    assert all(isinstance(r, str) for r in run), "conditional run requirements are not expected"
    recipe_reqs = {_conda(r) for r in run if _conda(r)[0] != "python"}
    pyproject_reqs = {_pep508(r) for r in _pyproject()["project"]["dependencies"]}
    only_recipe, only_pyproject = sorted(recipe_reqs - pyproject_reqs), sorted(pyproject_reqs - recipe_reqs)
    assert recipe_reqs == pyproject_reqs, f"only in recipe: {only_recipe}; only in pyproject: {only_pyproject}"
    assert len(run) == len(recipe_reqs) + 1, "duplicate entries in the recipe's run requirements"
    assert "python >=${{ python_min }}" in run


def test_recipe_python_min_matches_requires_python() -> None:
    recipe = _recipe()
    requires_python = _pyproject()["project"]["requires-python"]
    m = re.fullmatch(r"\s*>=\s*(\d+\.\d+)\s*", requires_python)
    assert m, f"requires-python {requires_python!r} is not of the form '>=X.Y'"
    assert str(recipe["context"]["python_min"]) == m.group(1)
    assert "python ${{ python_min }}.*" in recipe["requirements"]["host"]


def test_recipe_version_and_imports() -> None:
    recipe = _recipe()
    assert str(recipe["context"]["version"]) == _pyproject()["project"]["version"]
    assert str(recipe["context"]["name"]) == _pyproject()["project"]["name"]
    (test,) = (t["python"] for t in recipe["tests"] if "python" in t)
    assert set(test["imports"]) >= {"pertcausal", "pertcausal.pp", "pertcausal.tl", "pertcausal.pl", "pertcausal.data"}
    assert test["pip_check"] is True


def test_import_is_light() -> None:
    code = (
        "import json, sys\n"
        "import pertcausal\n"
        f"heavy = {list(HEAVY_MODULES)!r}\n"
        "print(json.dumps(sorted(m for m in heavy if m in sys.modules)))\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr
    loaded = json.loads(proc.stdout.strip().splitlines()[-1])
    assert loaded == [], f"`import pertcausal` imported heavy modules: {loaded}"


def _command_lines(text: str) -> list[str]:
    """Lines with line continuations joined and whitespace collapsed."""
    text = re.sub(r"\\\r?\n", " ", text)
    return [" ".join(line.split()) for line in text.splitlines()]


def _readme_code_lines() -> list[str]:
    """Lines inside fenced code blocks of README.md, shell prompts stripped."""
    lines, in_fence = [], False
    for raw in README.read_text().splitlines():
        if raw.lstrip().startswith(("```", "~~~")):
            in_fence = not in_fence
            continue
        if in_fence:
            lines.append(raw)
    return [re.sub(r"^\$\s+", "", line) for line in _command_lines("\n".join(lines))]


def test_ci_runs_readme_test_command() -> None:
    assert CI_RUN.is_file(), ".ci/run is missing"
    ci_commands = [line for line in _command_lines(CI_RUN.read_text()) if "pytest" in line and not line.startswith("#")]
    assert ci_commands, ".ci/run does not run pytest"

    readme_commands = [line for line in _readme_code_lines() if "pytest" in line]
    assert readme_commands, "README.md has no test command (a code line containing `pytest`)"
    # The command CI runs must be written verbatim in the README.
    assert any(cmd in readme_commands for cmd in ci_commands), (
        f".ci/run runs {ci_commands}, but README.md documents {readme_commands}"
    )


def test_version_matches_pyproject() -> None:
    import pertcausal

    assert pertcausal.__version__ == _pyproject()["project"]["version"]
