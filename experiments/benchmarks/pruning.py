"""Pruning the nested search over inner folds: nested AUC and AUC per minute, pruned vs not.

The same nested search (default space of ``conf/search/default.yaml``, TPE with the same seed,
the same outer and inner folds) runs side by side in one process on real pyradiomics features
of a synthetic cohort (``extractor=fast``, or ``--extractor paper``; tumour + 0.5, 1, 1.5, 2
and 3 mm rings, extracted once into ``--workdir``'s cache):

* ``none``: every trial runs every inner fold (the default, ``search.pruner=none``);
* ``median`` / ``successive_halving``: the trial stops after an inner fold whose running mean
  AUC trails the others' (``search.pruner=...``); PRUNED trials count toward ``n_trials``;
* ``<pruner>, same time``: the pruner given the trials that fit in the unpruned run's time
  (``n_trials`` scaled by the time ratio), i.e. what the saved time buys.

Per run: wall seconds, trials (COMPLETE / PRUNED), inner folds fitted, the nested estimate
(mean outer AUC with its corrected interval; pooled out-of-fold AUC) and AUC per minute
(mean outer AUC divided by the search's wall minutes, and by its CPU minutes -- the process's
own CPU time, less disturbed by other work on a shared machine; the ratio to ``none`` is the
speed-up at that quality).

    python experiments/benchmarks/pruning.py [--cases 100 --trials 20 --outer 3 --inner 5]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
import warnings
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
CONF = HERE.parents[1] / "conf"

from _bench import loadavg, machine, machine_md, md_table, write_result  # noqa: E402


def make_cfg(overrides):
    from hydra import compose, initialize_config_dir

    from her2study.config import register_configs

    register_configs()
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return compose(
            "config",
            overrides=[
                "task=search",
                "search=default",
                "tracking=off",
                "execution.progress=false",
                *overrides,
            ],
        )


def study_counts(storage, prefix: str) -> dict:
    import optuna
    from optuna.trial import TrialState

    out = {"complete": 0, "pruned": 0, "failed": 0, "folds": 0}
    for summary in optuna.get_all_study_summaries(storage):
        if not summary.study_name.startswith(prefix + "/outer"):
            continue
        study = optuna.load_study(study_name=summary.study_name, storage=storage)
        for t in study.get_trials(deepcopy=False):
            out["complete"] += t.state == TrialState.COMPLETE
            out["pruned"] += t.state == TrialState.PRUNED
            out["failed"] += t.state == TrialState.FAIL
            out["folds"] += len(t.user_attrs.get("fold_auc", []))
    return out


def run_one(design, base, name, pruner, n_trials, tmp) -> dict:
    from her2study.search import nested_search, open_storage

    cfg = make_cfg(base + [f"search.pruner={pruner}", f"search.n_trials={n_trials}"])
    url = f"sqlite:///{Path(tmp) / (name.replace(' ', '_').replace(',', '') + '.db')}"
    storage = open_storage(url)
    load = loadavg()
    t, cpu = time.perf_counter(), time.process_time()
    res = nested_search(
        cfg, design, storage, "bench", final=False, progress=lambda s: print("   ", s, flush=True)
    )
    wall, cpu = time.perf_counter() - t, time.process_time() - cpu
    c = study_counts(storage, "bench")
    est = res.estimate
    auc = float(est["mean_outer_auc"])
    row = {
        "run": name,
        "pruner": pruner,
        "n_trials": n_trials,
        "wall_s": round(wall, 1),
        "cpu_s": round(cpu, 1),
        "complete": c["complete"],
        "pruned": c["pruned"],
        "failed": c["failed"],
        "inner_folds_fitted": c["folds"],
        "nested_auc": round(auc, 4),
        "ci_low": round(float(est["ci_low"]), 4),
        "ci_high": round(float(est["ci_high"]), 4),
        "pooled_oof_auc": round(float(est["pooled_auc"]), 4),
        "auc_per_min": round(auc / (wall / 60), 4),
        "auc_per_cpu_min": round(auc / (cpu / 60), 4),
        "load_at_start": load,
    }
    print(f"{name}: {row}", flush=True)
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cases", type=int, default=100)
    ap.add_argument("--outer", type=int, default=3)
    ap.add_argument("--inner", type=int, default=5)
    ap.add_argument("--trials", type=int, default=20)
    ap.add_argument("--lasso-cv", type=int, default=3)
    ap.add_argument("--pruners", default="median,successive_halving")
    ap.add_argument("--no-same-time", action="store_true", help="skip the equal-time runs")
    ap.add_argument("--workdir", default=None, help="where the features cache lives")
    ap.add_argument("--extractor", default="fast", help="fast | paper (the default's settings)")
    ap.add_argument("--tag", default="", help="results/pruning<tag>.md")
    args = ap.parse_args()
    warnings.simplefilter("ignore")
    os.environ.setdefault("MPLBACKEND", "Agg")
    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="pruning_bench_"))
    workdir.mkdir(parents=True, exist_ok=True)
    os.chdir(workdir)

    from her2study.tasks.common import load_design

    info = machine()
    base = [
        f"extractor={args.extractor}",
        f"data.synthetic.n_cases={args.cases}",
        "region.ring_widths_mm=[0.5,1,1.5,2,3]",
        f"selection.lasso_cv={args.lasso_cv}",
        f"search.outer_folds={args.outer}",
        f"search.inner_folds={args.inner}",
        "search.final=false",
        "execution.n_jobs=1",
    ]
    t = time.perf_counter()
    design, cohort = load_design(make_cfg(base))
    print(
        f"features: {design.X.shape[0]} cases x {design.X.shape[1]} columns "
        f"({time.perf_counter() - t:.1f} s); {cohort.source}",
        flush=True,
    )
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        rows.append(run_one(design, base, "none", "none", args.trials, tmp))
        plain_wall = rows[0]["wall_s"]
        for pruner in [p for p in args.pruners.split(",") if p]:
            row = run_one(design, base, pruner, pruner, args.trials, tmp)
            rows.append(row)
            if not args.no_same_time:
                n_same = max(args.trials, round(args.trials * plain_wall / row["wall_s"]))
                rows.append(run_one(design, base, f"{pruner}, same time", pruner, n_same, tmp))
    cols = [
        "run",
        "n_trials",
        "wall_s",
        "cpu_s",
        "complete",
        "pruned",
        "inner_folds_fitted",
        "nested_auc",
        "ci_low",
        "ci_high",
        "pooled_oof_auc",
        "auc_per_min",
        "auc_per_cpu_min",
        "load_at_start",
    ]
    for r in rows:
        r["auc_per_min_vs_none"] = round(r["auc_per_min"] / rows[0]["auc_per_min"], 2)
        r["auc_per_cpu_min_vs_none"] = round(r["auc_per_cpu_min"] / rows[0]["auc_per_cpu_min"], 2)
    cols[-1:-1] = ["auc_per_min_vs_none", "auc_per_cpu_min_vs_none"]
    cmd = "python experiments/benchmarks/pruning.py " + " ".join(sys.argv[1:])
    md = "\n\n".join(
        [
            "# Pruning the nested search over inner folds",
            f"Command: `{cmd}`",
            machine_md(info),
            f"{design.X.shape[0]} cases x {design.X.shape[1]} columns; outer {args.outer}-fold, "
            f"inner {args.inner}-fold, default space, TPE, lasso_cv={args.lasso_cv}, "
            "no final search; `n_trials` per outer-fold study (PRUNED trials count).",
            md_table(rows, cols),
            f"load average at the end: {loadavg()}",
        ]
    )
    write_result(f"pruning{args.tag}", False, md, rows)


if __name__ == "__main__":
    main()
