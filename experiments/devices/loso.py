"""Leave-one-device-out vs all-devices CV on a synthetic cohort with devices, with and without
ComBat inside the fold. Features come from the real pipeline (synthetic images -> regions ->
pyradiomics, cached); each protocol is the paper task's (``her2study.results.leave_one_site_out``).

    PYTHONPATH=. python experiments/devices/loso.py OUT_DIR [hydra overrides...]

Writes OUT_DIR/by_site_<none|combat>.csv and OUT_DIR/drops.csv, prints the drop table.
"""

from __future__ import annotations

import logging
import sys
import time
import warnings
from pathlib import Path

import pandas as pd

REPO = Path(__file__).resolve().parents[2]
BASE = [
    "+exp=paper",
    "extractor=fast",
    "data.synthetic.n_cases=120",
    "data.synthetic.devices=3",
    "data.site_column=device",
    "region.ring_widths_mm=[1.0]",
    "region.signature_kinds=[tumour+ring]",
    "data.clinical_columns=[]",
    "evaluation.cv_folds=5",
    "selection.lasso_cv=5",
    "evaluation.bootstrap_reps=0",
    "execution.n_jobs=1",
    "execution.progress=false",
    "tracking.enabled=false",
]


def compose(overrides):
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    from her2study.config import register_configs

    register_configs()
    with initialize_config_dir(str(REPO / "conf"), version_base="1.3"):
        return hydra_compose("config", overrides=list(overrides))


def drops(by_site: pd.DataFrame) -> pd.DataFrame:
    from her2study.report.transport import drop_table

    return drop_table(by_site)


def run(out: Path, overrides: list[str]) -> pd.DataFrame:
    from her2study.results import leave_one_site_out
    from her2study.split import site_values
    from her2study.tasks.common import cohort_and_features

    out.mkdir(parents=True, exist_ok=True)
    rows = []
    for harmonise in ("null", "combat"):
        cfg = compose(
            BASE + [f"cache_dir={out / 'cache'}", *overrides, f"selection.harmonise={harmonise}"]
        )
        t0 = time.time()
        cohort, fs = cohort_and_features(cfg)
        sites = site_values(cohort.table, "device", "leave_one_site_out")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            by_site, _ = leave_one_site_out(
                fs.table,
                cohort.table[[]],
                cohort.labels,
                sites,
                [1.0],
                cfg,
                covariates=cohort.table,
            )
        by_site.to_csv(
            out / f"by_site_{'none' if harmonise == 'null' else harmonise}.csv", index=False
        )
        d = drops(by_site).assign(harmonise=harmonise, seconds=round(time.time() - t0, 1))
        rows.append(d)
    table = pd.concat(rows, ignore_index=True)
    table.to_csv(out / "drops.csv", index=False)
    return table


if __name__ == "__main__":
    logging.basicConfig(level=logging.WARNING)
    sys.path.insert(0, str(REPO))
    result = run(Path(sys.argv[1]), sys.argv[2:])
    print(result.to_string(index=False))
    per_site = result[result["site"] != "all (pooled)"]
    print("mean over devices:")
    print(per_site.groupby(["harmonise", "signature"])[result.columns[2:5]].mean())
