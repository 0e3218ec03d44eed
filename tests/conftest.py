from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data"
KANG = DATA / "kang2018-ifnb-muscat" / "kang2018_ifnb_muscat_subset.h5ad"
PAPALEXI = DATA / "papalexi2021-thp1-sceptre" / "papalexi2021_thp1_299genes.h5ad"
TGGATES = DATA / "tggates-small-toxicogx" / "tggates_small_hepatocyte.h5ad"
L1000 = DATA / "l1000-cmapr-3drugs-65lines" / "l1000_cmapr_modz_n272x978.h5ad"


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    try:
        import torch

        has_cuda = torch.cuda.is_available()
    except ImportError:
        has_cuda = False
    skip = pytest.mark.skip(reason="needs a CUDA device; none is available here")
    for item in items:
        if "gpu" in item.keywords and not has_cuda:
            item.add_marker(skip)


def _need(path: Path) -> None:
    if not path.exists():
        pytest.skip(f"real data not found at {path} (expected ../shared/data beside the repo)")


@pytest.fixture(scope="session")
def kang_cells():
    import anndata as ad

    _need(KANG)
    a = ad.read_h5ad(KANG)
    a.obs["context"] = a.obs["cluster_id"].astype(str) + "_" + a.obs["donor"].astype(str)
    return a


@pytest.fixture(scope="session")
def kang_signatures(kang_cells):
    import pertcausal as pc

    return pc.pp.signatures(
        kang_cells, perturbation_key="group_id", context_key="context", control="ctrl", layer="logcounts"
    )


@pytest.fixture(scope="session")
def papalexi_cells():
    import anndata as ad

    _need(PAPALEXI)
    return ad.read_h5ad(PAPALEXI)


@pytest.fixture(scope="session")
def tggates_arrays():
    """TG-GATEs hepatocyte arrays (log2 levels, matched vehicle controls; session-scoped: copy before modifying)."""
    import anndata as ad

    _need(TGGATES)
    return ad.read_h5ad(TGGATES)


@pytest.fixture(scope="session")
def l1000_signatures():
    """CMap L1000 level-5 signatures, 3 drugs x 65 cell lines (effects; session-scoped)."""
    import anndata as ad

    _need(L1000)
    return ad.read_h5ad(L1000)


@pytest.fixture(scope="session")
def screen():
    """Small cell-level simulated screen (session-scoped: copy before modifying)."""
    import pertcausal as pc

    return pc.data.simulate_screen(n_perturbations=12, n_contexts=5, n_genes=40, n_cells=30, seed=1)


@pytest.fixture
def mdata(screen):
    return screen.copy()


@pytest.fixture(scope="session")
def rng():
    return np.random.default_rng(0)
