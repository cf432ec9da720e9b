"""Nested-search speed: reuse of fitted selection steps versus refitting every pipeline.

Runs the same nested search (default space of ``conf/search/default.yaml``, TPE with the same
seed) on the 209-case synthetic default with the paper's extractor, features from the cache:

* ``plain``: every trial refits the whole Pipeline in every inner fold (``search.reuse=false``);
* ``reuse``: fitted pipeline prefixes (scale + correlation, + Mann-Whitney, + LASSO, + model) are
  memoised per inner fold and shared by trials (``search.reuse=true``);
* ``reuse, 2 threads``: the same with ``search.n_jobs=2``;
* ``reuse, 2 processes``: the same with the outer folds in two worker processes
  (``search.outer_n_jobs=2``, round 3).

Neither reuse nor processes change any result: the plain, reuse and processes rows run the same
trials (same objective values, hence the same TPE proposals); the script checks that their
out-of-fold predictions are identical (``same`` column). Threads do not promise that (two trials
in flight change what TPE sees).

Extract the features first, from the folder you will run this in (the cache is relative)::

    cd /tmp/somewhere
    python -m her2study task=extract 'region.ring_widths_mm=[0.5,1,1.5,2,3]' tracking=off
    python /path/to/experiments/benchmarks/search_speed.py [--trials 10 --outer 3 --inner 3]
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
import warnings
from pathlib import Path

CONF = Path(__file__).resolve().parents[2] / "conf"


def make_cfg(overrides):
    from hydra import compose, initialize_config_dir

    from her2study.config import register_configs

    register_configs()
    group = (
        "search=default"
        if "- search:" in (CONF / "config.yaml").read_text()
        else ("+search=default")
    )
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return compose(
            "config", overrides=[group, "tracking=off", "execution.progress=false", *overrides]
        )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--outer", type=int, default=3)
    ap.add_argument("--inner", type=int, default=3)
    ap.add_argument("--trials", type=int, default=10)
    ap.add_argument("--lasso-cv", type=int, default=5)
    ap.add_argument("--skip-threads", action="store_true")
    ap.add_argument("--skip-processes", action="store_true")
    ap.add_argument("--cache-dir", default=None, help="cache_dir of the extracted features")
    args = ap.parse_args()
    warnings.simplefilter("ignore")
    os.environ.setdefault("MPLBACKEND", "Agg")

    from her2study.search import nested_search, open_storage
    from her2study.tasks.search import load_design

    base = [
        "region.ring_widths_mm=[0.5,1,1.5,2,3]",
        f"selection.lasso_cv={args.lasso_cv}",
        f"search.outer_folds={args.outer}",
        f"search.inner_folds={args.inner}",
        f"search.n_trials={args.trials}",
        "search.final=false",
        *([f"cache_dir={args.cache_dir}"] if args.cache_dir else []),
    ]
    t = time.perf_counter()
    design, cohort = load_design(make_cfg(base))
    print(
        f"features from cache: {design.X.shape[0]} cases x {design.X.shape[1]} columns "
        f"({time.perf_counter() - t:.1f} s); {cohort.source}"
    )
    runs = [("plain", ["search.reuse=false"]), ("reuse", ["search.reuse=true"])]
    if not args.skip_threads:
        runs.append(("reuse, 2 threads", ["search.reuse=true", "search.n_jobs=2"]))
    if not args.skip_processes:
        runs.append(("reuse, 2 processes", ["search.reuse=true", "search.outer_n_jobs=2"]))
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name, extra in runs:
            cfg = make_cfg(base + extra)
            url = f"sqlite:///{Path(tmp) / (name.replace(' ', '_').replace(',', '') + '.db')}"
            t = time.perf_counter()
            res = nested_search(
                cfg,
                design,
                open_storage(url),
                "bench",
                final=False,
                progress=lambda s: print("   ", s),
            )
            wall = time.perf_counter() - t
            probs = res.oof["prob"].to_numpy()
            if name == "plain":
                plain_probs = probs
            same = "threads" not in name and bool((probs == plain_probs).all())
            n = int(res.folds["n_trials"].sum())
            c = res.cache
            rows.append(
                (
                    name,
                    wall,
                    n,
                    n / wall * 60,
                    c["fits"],
                    c["hits"],
                    res.estimate["pooled_auc"],
                    res.estimate["mean_outer_auc"],
                    same,
                )
            )
            print(f"{name}: {wall:.1f} s")
    print(
        "\n| run | wall s | trials | trials/min | step fits | reused | pooled AUC | "
        "mean outer AUC | same predictions as plain |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r[0]} | {r[1]:.1f} | {r[2]} | {r[3]:.1f} | {r[4]} | {r[5]} | {r[6]:.4f} | "
            f"{r[7]:.4f} | {'yes' if r[8] else ('-' if 'threads' in r[0] else 'NO')} |"
        )
    print(
        "speed-up over plain (trials/min): "
        + ", ".join(f"{r[0]} {r[3] / rows[0][3]:.2f}x" for r in rows[1:])
    )


if __name__ == "__main__":
    main()
