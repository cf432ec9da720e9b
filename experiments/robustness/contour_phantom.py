"""Proof (c) on the synthetic generator itself: the contour phantom (``data=contour_phantom``, a
planted rim on the drawn contour beside the 0-1 mm band) with contour perturbations; ICC(2,1)
and AUC of every tumour and 1 mm ring feature, and the counts kept per region at 0.75 and 0.9.

    PYTHONPATH=. python experiments/robustness/contour_phantom.py CACHE_DIR [N_CASES] [EXTRACTOR]

``CACHE_DIR`` holds the generated cohort, the perturbed masks and the feature cache (a second
run extracts nothing). ``tests/test_contour_phantom.py`` asserts the same statements inside the
paper pipeline (the filter fitted on training rows only).
"""

from __future__ import annotations

import sys
import warnings
from pathlib import Path

from hydra import compose, initialize_config_dir
from icc_table import icc_table, report  # beside this script

from her2study.config import register_configs
from her2study.tasks.common import cohort_and_features

REPO = Path(__file__).resolve().parents[2]


def overrides(cache: Path, n_cases: int = 40, extractor: str = "fast", extra=()) -> list[str]:
    return [
        "+exp=paper",
        "data=contour_phantom",
        f"data.synthetic.n_cases={n_cases}",
        f"extractor={extractor}",
        f"cache_dir={cache}",
        "region.ring_widths_mm=[1.0]",
        "region.signature_kinds=[tumour,ring]",
        "region.annotation_check=false",  # the bright rim is not a burned-in caliper
        "split.balance_on=null",
        "selection.robustness_threshold=0.9",
        "region.perturb.n=4",
        "evaluation.cv_folds=3",
        "selection.lasso_cv=3",
        "evaluation.bootstrap_reps=0",
        "execution.n_jobs=1",
        "execution.progress=false",
        *extra,
    ]


def main(cache: Path, n_cases: int, extractor: str, extra=()) -> None:
    register_configs()
    with initialize_config_dir(str(REPO / "conf"), version_base="1.3"):
        cfg = compose("config", overrides=overrides(cache, n_cases, extractor, extra))
    cohort, fs = cohort_and_features(cfg)
    report(icc_table(cohort, fs))


if __name__ == "__main__":
    warnings.simplefilter("ignore")
    args = sys.argv[1:]
    main(
        Path(args[0]),
        int(args[1]) if len(args) > 1 else 40,
        args[2] if len(args) > 2 else "fast",
        args[3:],  # further overrides, e.g. region.perturb.grow_mm=0.4
    )
