#!/bin/bash
# usage: experiments/groundwork/run_pair.sh CODE_DIR OUT_DIR  (a checkout; an output folder)
# The +exp=paper and small +exp=search runs compared by same_numbers.py; features cached in
# ${CACHE:-/tmp/her2study_cache} (shared by both checkouts so that extraction is not compared).
code=$1; out=$2; mkdir -p $out; cd $out
export PYTHONPATH=$code MPLBACKEND=Agg
py=${PYTHON:-python}
/usr/bin/time -v $py -m her2study +exp=paper cache_dir=${CACHE:-/tmp/her2study_cache} execution.progress=false hydra.run.dir=$out/paper > paper.log 2>&1
/usr/bin/time -v $py -m her2study +exp=search cache_dir=${CACHE:-/tmp/her2study_cache} execution.progress=false hydra.run.dir=$out/search \
  search.n_trials=4 search.outer_folds=3 search.inner_folds=3 search.n_startup_trials=2 \
  'region.ring_widths_mm=[1.0,2.0]' 'search.space.ring_width_mm={type:categorical,choices:[0,1,2]}' search.output_root=$out/optuna > search.log 2>&1
echo done
