"""A fully cached extraction, in-process: wall and CPU of ``extract_features`` alone.

Run from the folder holding ``.her2study_cache`` after ``python -m her2study task=extract
tracking=off`` (the 209-case default, tumour + 1 and 2 mm rings, paper settings):
``python experiments/benchmarks/cached_extraction.py [--reps 3]``. Prints one line per
repetition: imports, ``load_cohort`` and ``extract_features`` (wall and CPU seconds), entries
served from the cache, whether pyradiomics was imported and how many child processes exist.
"""

from __future__ import annotations

import argparse
import glob
import os
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _bench  # noqa: E402

PROBE = """
import os, sys, time, glob, yaml
t0, c0 = time.perf_counter(), time.process_time()
from her2study.cohort import load_cohort
from her2study.features import extract_features
from her2study.regions import region_specs
t1, c1 = time.perf_counter(), time.process_time()
cohort = load_cohort(sys.argv[1])
t2, c2 = time.perf_counter(), time.process_time()
params = yaml.safe_load(open(sys.argv[2]))["params"]
fs = extract_features(cohort, region_specs(True, [1.0, 2.0]), params, ".her2study_cache", n_jobs=2)
t3, c3 = time.perf_counter(), time.process_time()
print(f"imports {t1-t0:.2f} s (CPU {c1-c0:.2f}); load_cohort {t2-t1:.2f} s (CPU {c2-c1:.2f}); "
      f"extract_features {t3-t2:.2f} s (CPU {c3-c2:.2f}); cached {fs.n_cached}, extracted "
      f"{fs.n_extracted}; radiomics imported: {'radiomics' in sys.modules}")
"""


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--reps", type=int, default=3)
    args = ap.parse_args()
    manifest = sorted(glob.glob(".her2study_cache/synthetic/n209_*/manifest.csv"))
    if not manifest:
        sys.exit("no .her2study_cache/synthetic/n209_* here: run task=extract first")
    params = _bench.REPO / "conf" / "extractor" / "paper.yaml"
    print(_bench.machine_md(_bench.machine()))
    for _ in range(args.reps):
        out = subprocess.run(
            [sys.executable, "-c", PROBE, manifest[0], str(params)],
            capture_output=True,
            text=True,
            env={**os.environ, "PYTHONPATH": str(_bench.REPO)},
        )
        print(out.stdout.strip() or out.stderr[-2000:], flush=True)
    print(f"load average at end: {_bench.loadavg()}")


if __name__ == "__main__":
    main()
