"""ICC(2,1) across contour perturbations and AUC of every feature of the planted rim/band cohort
that tests/test_robustness.py writes, with the counts kept per region at 0.75 and 0.9.

    PYTHONPATH=. python experiments/robustness/icc_table.py TEST_TMP_DIR

``TEST_TMP_DIR`` is the test's temporary folder (``.../test_contour_robustness_drops_0``): its
``cohort/`` and feature cache are read (the perturbed masks and features come from the cache).
"""

from __future__ import annotations

import sys
import warnings
from pathlib import Path

import pandas as pd
from hydra import compose, initialize_config_dir
from sklearn.metrics import roc_auc_score

from her2study.config import register_configs
from her2study.selection.robustness import RobustnessFilter, column_region
from her2study.tasks.common import cohort_and_features

REPO = Path(__file__).resolve().parents[2]


def kept_counts(df: pd.DataFrame, threshold: float) -> dict:
    by_region = df.assign(kept=df["icc"] >= threshold).groupby("region")["kept"]
    return by_region.agg(["size", "sum"]).to_dict("index")


def main(root: Path) -> None:
    register_configs()
    overrides = [
        "+exp=paper",
        "data=manifest",
        f"data.manifest={root / 'cohort' / 'manifest.csv'}",
        f"cache_dir={root / 'c'}",
        f"extractor.params_file={root / 'cohort' / 'params.yaml'}",
        "region.ring_widths_mm=[1.0]",
        "selection.robustness_threshold=0.9",
        "region.perturb.n=4",
        "execution.n_jobs=1",
        "execution.progress=false",
    ]
    with initialize_config_dir(str(REPO / "conf"), version_base="1.3"):
        cfg = compose("config", overrides=overrides)
    cohort, fs = cohort_and_features(cfg)
    report(icc_table(cohort, fs))


def icc_table(cohort, fs) -> pd.DataFrame:
    """ICC across the perturbations, AUC and region of every feature of ``fs``."""
    icc = RobustnessFilter().fit(fs.table).icc_
    y = cohort.labels.loc[fs.table.index]
    return pd.DataFrame(
        {
            "icc": icc,
            "auc": [roc_auc_score(y, fs.table[c]) for c in icc.index],
            "region": [column_region(c) for c in icc.index],
        },
        index=icc.index,
    )


def report(df: pd.DataFrame) -> None:
    """The table, then the features kept per region at 0.75 and 0.9 (all, signal-carrying)."""
    pd.set_option("display.width", 200)
    print(df.sort_values(["region", "icc"]).round(3).to_string())
    signal = df[(df["auc"] - 0.5).abs() > 0.4]
    for threshold in (0.75, 0.9):
        print(f"ICC >= {threshold}: all {kept_counts(df, threshold)}")
        print(f"ICC >= {threshold}: signal-carrying {kept_counts(signal, threshold)}")


if __name__ == "__main__":
    warnings.simplefilter("ignore")
    main(Path(sys.argv[1]))
