#!/bin/bash
# The margin answer recorded in README.md: every command, time-boxed, with date and load.
# Outputs under $OUT (default /tmp/band_exp); MLflow store and caches there too (not in git).
set -u
cd "$(dirname "$0")/../.."
OUT=${OUT:-/tmp/band_exp}
PY="env PYTHONPATH=$PWD ${PYTHON:-python}"
COMMON="tracking.tracking_uri=sqlite:///$OUT/mlflow.db cache_dir=$OUT/cache execution.n_jobs=2 execution.progress=false"
stamp() { date -u; uptime; }

# 1. synthetic default, training side: one paper run with every ring width (one sweep_id),
#    5 x repeated 5-fold CV of the whole pipeline on the 155 training cases, then task=compare
stamp
timeout 2400 $PY -m her2study +exp=paper extractor=fast \
  'region.ring_widths_mm=[0.5,1,1.5,2,2.5,3]' 'region.signature_kinds=[tumour,tumour+ring,ring]' \
  evaluation.cv_repeats=5 evaluation.bootstrap_reps=0 tracking.log_model=false $COMMON \
  hydra.run.dir=$OUT/paper_default study=margins_default
timeout 600 $PY -m her2study task=compare study=margins_default $COMMON \
  hydra.run.dir=$OUT/compare_default
stamp

# 2. synthetic default, nested per-width estimates + permutation test (small budget)
timeout 3000 $PY experiments/margins/nested_margins.py default --out $OUT/nested_default \
  --cache $OUT/cache --outer 3 --inner 3 --trials 40 --permutations 19 --permutation-trials 10 \
  --set selection.lasso_cv=5 selection.lasso_n_lambdas=10
stamp

# 3. band phantom: the proofs, which print their tables (-rP); nested_margins.py phantom runs the
#    same nested configuration outside pytest
timeout 3000 env HER2STUDY_BAND_PHANTOM_CACHE=$OUT/phantom_cache $PY -m pytest \
  tests/test_band_phantom.py -m "" -rP -p no:cacheprovider
stamp

# 4. how much of the band reaches the tumour mask (counterfactual renderings)
timeout 600 $PY experiments/margins/leakage.py --cases 20
