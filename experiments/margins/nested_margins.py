"""Per-region nested estimates and the permutation test of the nested procedure, on the synthetic
default cohort or on the band phantom (``data=band_phantom``); writes ``region_estimates.csv``,
``region_differences.csv`` and ``nested_estimate.json`` under ``--out``.

The search space is the region choice only (the paper's selection and logistic model fixed), so
that the budget goes to the question "which margin?":

- ``default``: tumour only and tumour + ring of 0.5 ... 3 mm (``ring_width_mm``);
- ``phantom``: tumour, ring only of 1 / 2.5 mm, band 1.5-2.5 mm (``region_kind``), the
  configuration of ``tests/test_band_phantom.py`` with ``--outer 5 --trials 24``.

    PYTHONPATH=. python experiments/margins/nested_margins.py default --out /tmp/m/default
    PYTHONPATH=. python experiments/margins/nested_margins.py phantom --out /tmp/m/phantom \
        --outer 5 --trials 24
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import yaml
from hydra import compose, initialize_config_dir

from her2study.config import register_configs
from her2study.search import nested_search, open_storage
from her2study.tasks.common import load_design

REPO = Path(__file__).resolve().parents[2]
PARAMS = {  # the phantom test's extractor: firstorder + GLCM on the original image
    "setting": {"binWidth": 10, "force2D": False, "label": 1, "minimumROISize": 4},
    "imageType": {"Original": {}},
    "featureClass": {"firstorder": None, "glcm": None},
}
COHORTS = {
    "default": {
        "overrides": ["extractor=fast", "region.ring_widths_mm=[0.5,1,1.5,2,2.5,3]"],
        "space": {"ring_width_mm": {"type": "categorical", "choices": [0, 0.5, 1, 1.5, 2, 2.5, 3]}},
    },
    "phantom": {
        "overrides": [
            "data=band_phantom",
            "data.synthetic.n_cases=120",
            "extractor=fast",
            "region.ring_widths_mm=[0.5,1.0,2.5]",
            "region.bands_mm=[[1.5,2.5]]",
            "selection.lasso_cv=3",
            "selection.lasso_n_lambdas=8",
            "search.permutation_trials=8",
        ],
        "space": {
            "region_kind": {"type": "categorical", "choices": ["tumour", "ring", "band"]},
            "ring_width_mm": {
                "type": "categorical",
                "choices": [1.0, 2.5],
                "when": {"region_kind": "ring"},
            },
        },
    },
}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("cohort", choices=sorted(COHORTS))
    ap.add_argument("--out", required=True)
    ap.add_argument("--cache", default="/tmp/band_exp/cache")
    ap.add_argument("--outer", type=int, default=3)
    ap.add_argument("--inner", type=int, default=3)
    ap.add_argument("--trials", type=int, default=40)
    ap.add_argument("--permutations", type=int, default=20)
    ap.add_argument("--permutation-trials", type=int, default=None)
    ap.add_argument("--set", nargs="*", default=[], help="more Hydra overrides")
    ap.add_argument("--shuffle", action="store_true", help="labels shuffled once (no signal)")
    args = ap.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    spec = COHORTS[args.cohort]
    overrides = list(spec["overrides"])
    if args.cohort == "phantom":
        (out / "params.yaml").write_text(yaml.safe_dump(PARAMS))
        overrides.append(f"extractor.params_file={out / 'params.yaml'}")
    register_configs()
    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        cfg = compose(
            "config",
            overrides=[
                "task=search",
                "tracking=off",
                "data.clinical_columns=[]",
                f"cache_dir={args.cache}",
                "execution.n_jobs=1",
                "execution.progress=false",
                f"search.outer_folds={args.outer}",
                f"search.inner_folds={args.inner}",
                "search.sampler=random",
                f"search.n_trials={args.trials}",
                f"search.permutations={args.permutations}",
                "search.final=false",
                *overrides,
                *args.set,
            ],
        )
    cfg.search.space = spec["space"]
    if args.permutation_trials:
        cfg.search.permutation_trials = args.permutation_trials
    design, _ = load_design(cfg)
    name = args.cohort
    if args.shuffle:
        import dataclasses

        import numpy as np
        import pandas as pd

        rng = np.random.default_rng(20261202)  # the test's shuffle
        y = pd.Series(rng.permutation(design.y.to_numpy()), index=design.y.index)
        design = dataclasses.replace(design, y=y)
        name += "_shuffled"
    storage = open_storage(f"sqlite:///{out / 'optuna.db'}")
    t0 = time.monotonic()
    res = nested_search(cfg, design, storage, name, final=False, progress=print)
    res.regions.to_csv(out / "region_estimates.csv", index=False)
    res.region_differences.to_csv(out / "region_differences.csv", index=False)
    est = {k: v for k, v in res.estimate.items() if k != "kinds"}
    (out / "nested_estimate.json").write_text(json.dumps(est, indent=2, default=str))
    print(res.regions.round(3).to_string(index=False))
    print(res.region_differences.round(3).to_string(index=False))
    keys = ("mean_outer_auc", "ci_low", "ci_high", "ci_method", "permutation_p")
    print({k: est.get(k) for k in keys}, f"{time.monotonic() - t0:.0f} s")


if __name__ == "__main__":
    main()
