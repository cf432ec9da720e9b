"""The whole ``python -m her2study +exp=paper`` run, cold and warm, timed phase by phase.

Run: ``python experiments/benchmarks/paper_run.py [--quick] [--reps 1] [-- extra overrides]``

Each repetition makes a fresh temporary working folder (so an empty ``.her2study_cache`` and a
new ``mlflow.db`` there: MLflow goes to ``sqlite:///mlflow.db`` in that folder) and runs, as
subprocesses:

* cold: ``python -m her2study +exp=paper`` -- synthetic cohort written, features extracted for
  intra + 1 mm + 2 mm, five signatures, tables, figures, MLflow parent + child runs;
* warm: the same command again in the same folder (cohort and features from the cache).

Measured: wall time, CPU time, peak RSS (summed over the process tree, sampled every 0.25 s;
and the largest single process from wait4), and the split read from the run's own log
(``outputs/*/*/__main__.log``, millisecond timestamps) and from the arrival time of its stdout
lines:

* start-up + cohort: process start -> log ``cohort: N cases`` (cold: includes writing the
  synthetic cohort, whose end is logged as ``wrote synthetic cohort``);
* extraction: ``cohort:`` -> ``features: ...`` log line;
* modelling: ``features:`` -> the printed ``Data: ...`` line (five signatures fitted, metrics,
  DeLong tests, tables and figures written);
* MLflow: ``Data:`` -> process exit (MLflow import, SQLite store creation or migration check,
  parent + child runs with params, metrics, artifacts, figures and sklearn models; interpreter
  exit). The run opens before any work (its ``MLflow run <id> (experiment ...)`` line comes
  first); the task's closing ``MLflow run <id>, experiment ...`` line, logged once everything
  is logged, splits this phase into logging and interpreter exit.

Target from issue 14: warm >= 20x faster than cold (cold wall / warm wall, the two runs side by
side), tracking on, with the default bootstrap validation (the 209-case default). The earlier
targets (< 5 min cold, < 30 s warm on 2 cores) are reported beside it.
``--quick``: ``data.synthetic.n_cases=40 extractor=fast``.
"""

from __future__ import annotations

import argparse
import datetime as dt
import re
import shutil
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _bench  # noqa: E402

LOG_LINE = re.compile(r"^\[(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3})\]\[([^\]]+)\]\[(\w+)\] - (.*)")
TARGET_COLD_S, TARGET_WARM_S = 300.0, 30.0
TARGET_SPEED_UP = 20.0  # cold wall / warm wall (issue 14)


def parse_log(path: Path) -> list[tuple[float, str, str]]:
    """(epoch seconds, logger, message) of every record of a Hydra job log."""
    out = []
    for line in path.read_text(errors="replace").splitlines():
        m = LOG_LINE.match(line)
        if m:
            t = dt.datetime.strptime(m.group(1), "%Y-%m-%d %H:%M:%S,%f").timestamp()
            out.append((t, m.group(2), m.group(4)))
    return out


def first(records, pred):
    return next((r for r in records if pred(r)), None)


def phases(m: _bench.Measured, log: Path | None) -> dict:
    """Split the run into phases from its log and its stdout arrival times."""
    rec = parse_log(log) if log else []
    cohort = first(rec, lambda r: r[2].startswith("cohort: "))
    wrote = first(rec, lambda r: r[2].startswith("wrote synthetic cohort"))
    feats = first(rec, lambda r: r[2].startswith("features: "))
    mlrun = first(reversed(rec), lambda r: r[2].startswith("MLflow run "))  # the closing one
    data = next((t for t, s, text in m.lines if s == "out" and text.startswith("Data: ")), None)
    out: dict = {}
    if cohort:
        out["startup_cohort_s"] = cohort[0] - m.start
    if wrote:
        out["cohort_written_at_s"] = wrote[0] - m.start
    if cohort and feats:
        out["extraction_s"] = feats[0] - cohort[0]
        hit = re.search(r"(\d+) region entries from cache, (\d+) extracted", feats[2])
        if hit:
            out["entries_cached"], out["entries_extracted"] = int(hit[1]), int(hit[2])
        shape = re.search(r"features: (\d+) cases x (\d+) columns", feats[2])
        if shape:
            out["cases"], out["feature_columns"] = int(shape[1]), int(shape[2])
    if feats and data:
        out["modelling_s"] = data - feats[0]
    if data:
        out["mlflow_s"] = m.end - data
        if mlrun and mlrun[0] >= data:
            out["mlflow_logging_s"] = mlrun[0] - data
            out["exit_s"] = m.end - mlrun[0]
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="40 cases, fast extractor")
    ap.add_argument("--reps", type=int, default=1, help="cold+warm pairs, each in a new folder")
    ap.add_argument("--keep", action="store_true", help="keep the temporary folders")
    ap.add_argument("--echo", action="store_true", help="echo the runs' output")
    ap.add_argument(
        "--no-whatif",
        action="store_true",
        help="skip the extra warm runs without model logging / without MLflow",
    )
    ap.add_argument("overrides", nargs="*", help="extra Hydra overrides")
    args = ap.parse_args()

    overrides = ["+exp=paper"]
    if args.quick:
        overrides += ["data.synthetic.n_cases=40", "extractor=fast"]
    overrides += args.overrides
    cmd = [sys.executable, "-m", "her2study", *overrides]
    info = _bench.machine()
    rows = []
    folders = []
    try:
        for rep in range(args.reps):
            cwd = Path(tempfile.mkdtemp(prefix="her2bench_paper_"))
            folders.append(cwd)
            kinds = {"cold": [], "warm": []}
            if not args.no_whatif:
                kinds["warm, tracking.log_model=false"] = ["tracking.log_model=false"]
                kinds["warm, tracking=off"] = ["tracking=off"]
                kinds["warm (again)"] = []
            for kind, extra in kinds.items():
                before = set(cwd.glob("outputs/*/*/__main__.log"))
                print(f"rep {rep} {kind}: {' '.join(cmd[1:] + extra)} (cwd {cwd})", flush=True)
                m = _bench.run_measured(cmd + extra, cwd=cwd, echo=args.echo)
                if m.returncode != 0:
                    raise RuntimeError(f"{kind} run failed (rc={m.returncode}):\n{m.tail(40)}")
                logs = sorted(set(cwd.glob("outputs/*/*/__main__.log")) - before)
                row = {
                    "rep": rep,
                    "run": kind,
                    "wall_s": m.wall_s,
                    "cpu_s": m.user_s + m.sys_s,
                    "peak_tree_rss_mib": m.tree_peak_mib,
                    "max_single_rss_mib": m.maxrss_mib,
                    **phases(m, logs[-1] if logs else None),
                    "load_after": _bench.loadavg().split()[0],
                }
                rows.append(row)
                print(
                    "   " + ", ".join(f"{k}={_bench.fmt(v, 1)}" for k, v in row.items()), flush=True
                )
        info["load average at end (1/5/15 min)"] = _bench.loadavg()
    finally:
        if not args.keep:
            for f in folders:
                shutil.rmtree(f, ignore_errors=True)

    cold = [r for r in rows if r["run"] == "cold"]
    warm = [r for r in rows if r["run"] == "warm"]
    whatif = []
    for rep in range(args.reps):
        base = [
            r
            for r in rows
            if r["rep"] == rep and r["run"].startswith("warm") and "=" not in r["run"]
        ]
        ref = sum(r["wall_s"] for r in base) / len(base)
        for r in rows:
            if r["rep"] == rep and r["run"].startswith("warm"):
                whatif.append(
                    {
                        "rep": rep,
                        "run": r["run"],
                        "wall s": r["wall_s"],
                        "ratio to mean of plain warm runs": r["wall_s"] / ref,
                        "mlflow_s": r.get("mlflow_s"),
                    }
                )
    summary = []
    for c, w in zip(cold, warm, strict=True):
        gen = c.get("startup_cohort_s", float("nan")) - w.get("startup_cohort_s", float("nan"))
        summary.append(
            {
                "rep": c["rep"],
                "cold wall s": c["wall_s"],
                "warm wall s": w["wall_s"],
                "warm / cold": w["wall_s"] / c["wall_s"],
                "cold / warm (speed-up)": c["wall_s"] / w["wall_s"],
                "cold / warm CPU": c["cpu_s"] / w["cpu_s"],
                "cohort generation s (cold - warm start-up)": gen,
                "cold peak tree RSS MiB": c["peak_tree_rss_mib"],
                "warm peak tree RSS MiB": w["peak_tree_rss_mib"],
            }
        )
    worst_cold = max(r["wall_s"] for r in cold)
    worst_warm = max(r["wall_s"] for r in warm)
    speed_up = min(c["wall_s"] / w["wall_s"] for c, w in zip(cold, warm, strict=True))
    ratio = (
        f"speed-up cold / warm {speed_up:.1f}x vs target {TARGET_SPEED_UP:.0f}x: "
        f"**{'met' if speed_up >= TARGET_SPEED_UP else 'NOT met'}**"
    )
    if args.quick:
        verdict = f"{ratio} (quick run: the targets apply to the full 209-case run)"
    else:
        verdict = (
            ratio
            + "; "
            + (
                f"cold {worst_cold:.0f} s vs target {TARGET_COLD_S:.0f} s: "
                f"**{'met' if worst_cold < TARGET_COLD_S else 'NOT met'}**; "
                f"warm {worst_warm:.1f} s vs target {TARGET_WARM_S:.0f} s: "
                f"**{'met' if worst_warm < TARGET_WARM_S else 'NOT met'}**"
            )
        )
    phase_cols = [
        "rep",
        "run",
        "wall_s",
        "startup_cohort_s",
        "extraction_s",
        "modelling_s",
        "mlflow_s",
        "mlflow_logging_s",
        "exit_s",
    ]
    other_cols = [
        "rep",
        "run",
        "wall_s",
        "cpu_s",
        "peak_tree_rss_mib",
        "max_single_rss_mib",
        "cohort_written_at_s",
        "cases",
        "feature_columns",
        "entries_cached",
        "entries_extracted",
        "load_after",
    ]
    title = "quick smoke run" if args.quick else "full run"
    md = f"""## `python -m her2study +exp=paper`, cold and warm ({title})

Command (in a fresh temporary folder, then again in the same folder):
`python -m her2study {" ".join(overrides)}`; MLflow to `sqlite:///mlflow.db` in that folder;
execution defaults (`execution.n_jobs=2`, loky).

Machine:
{_bench.machine_md(info)}

Targets: warm >= {TARGET_SPEED_UP:.0f}x faster than cold; cold < {TARGET_COLD_S:.0f} s, warm <
{TARGET_WARM_S:.0f} s on 2 cores -- {verdict}.

{_bench.md_table(summary)}

### Warm run without model logging / without MLflow (what-if, same folder, run in turn)

{_bench.md_table(whatif) if len(whatif) > len(warm) else "(skipped: --no-whatif)"}

### Where the time goes (seconds)

{_bench.md_table(rows, phase_cols)}

`startup_cohort_s`: process start -> `cohort:` log line (interpreter, imports, Hydra compose,
and in the cold run writing the synthetic cohort); `extraction_s`: `cohort:` -> `features:`;
`modelling_s`: `features:` -> printed `Data:` line (signatures, metrics, DeLong, tables,
figures); `mlflow_s`: `Data:` -> exit, split into `mlflow_logging_s` (-> the task's closing
`MLflow run` log line: params, metrics, dataset, artifacts, child runs with sklearn models; the
run itself opened at start) and `exit_s` (interpreter exit).

### Other measurements

{_bench.md_table(rows, other_cols)}

`peak_tree_rss_mib`: summed RSS of the run and its worker processes, sampled every 0.25 s (an
upper bound: pages shared between processes count in each). `max_single_rss_mib`: largest
single process (wait4). `cohort_written_at_s`: time from start of the `wrote synthetic cohort`
log line (cold only).
"""
    _bench.write_result("paper_run", args.quick, md, rows)


if __name__ == "__main__":
    main()
