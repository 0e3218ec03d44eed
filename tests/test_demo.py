from __future__ import annotations

import pandas as pd


def test_demo_writes_table_and_figures(tmp_path):
    from pertcausal.__main__ import main

    assert main(["demo", "--out", str(tmp_path), "--device", "cpu"]) == 0
    table = pd.read_csv(tmp_path / "demo_metrics.csv", index_col="method")
    assert set(table.index) == {
        "ntk",
        "synthetic_interventions",
        "nearest_context",
        "additive",
        "mean_over_contexts",
        "mean_over_perturbations",
        "soft_impute",
    }
    # against the simulator's true effects on never-measured pairs
    assert table.loc["ntk", "pearson"] > 0.9
    assert table.loc["synthetic_interventions", "pearson"] > 0.9
    assert table.loc["mean_over_perturbations", "pearson"] < 0.5
    for name in ("demo_imputation.png", "demo_prediction_scatter.png", "demo.h5mu"):
        assert (tmp_path / name).stat().st_size > 1000
