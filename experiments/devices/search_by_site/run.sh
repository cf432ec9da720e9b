#!/bin/bash
# The nested search on the synthetic 3-device cohort: leave-one-site-out outer folds (out_*) and,
# for reference, 3-fold stratified outer folds with every site seen (strat_*), each without and
# with in-fold ComBat. Run from a scratch folder: bash experiments/devices/search_by_site/run.sh
set -e
COMMON=(+exp=search extractor=fast data.synthetic.n_cases=150 data.synthetic.devices=3
  data.synthetic.device_strength=2 data.synthetic.band_strength=6 data.site_column=device
  "data.clinical_columns=[]" search.use_clinical=false "region.ring_widths_mm=[1.0]"
  region.annotation_check=false
  search.space.ring_width_mm=null search.space.use_clinical=null search.space.lasso_rule=null
  search.space.svm=null search.space.random_forest=null "search.space.model.choices=[logistic,ridge]"
  search.n_trials=8 search.n_startup_trials=4 search.inner_folds=5 selection.lasso_cv=5
  search.final=false tracking.enabled=false execution.n_jobs=1 execution.progress=false
  "cache_dir=${CACHE:-cache}")
for h in null combat; do
  python -m her2study "${COMMON[@]}" split.method=leave_one_site_out selection.harmonise=$h \
    study=loso_$h hydra.run.dir=out_$h > log_$h.txt 2>&1
  python -m her2study "${COMMON[@]}" split.method=block search.outer_folds=3 \
    selection.harmonise=$h study=strat_$h hydra.run.dir=strat_$h > logs_$h.txt 2>&1
done
