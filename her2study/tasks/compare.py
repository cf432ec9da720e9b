"""task=compare: "which margin?" answered on the training cases, across the runs of one sweep.

Gathers the parent paper runs of ``tracking.experiment`` that belong to one sweep (the tag
``sweep_id`` every paper run carries: a ``-m`` multirun's folder, else the run's own; the newest
sweep unless ``compare.sweep_id`` names one) and writes:

- ``margins.csv`` (one row per region choice of the sweep, tumour only included): ``region``,
  ``kind``, ``width_mm``, ``cv_auc``, ``cv_auc_ci_low``, ``cv_auc_ci_high`` -- the training-side
  repeated cross-validated AUC with the corrected resampled t interval (Nadeau-Bengio), the basis
  of the comparison -- and ``test_auc``, the test-set AUC, **descriptive only**: one small test set
  cannot rank margins, and choosing on it would tune on the test set;
- ``margins_paired.csv``: every region choice against tumour only, the paired difference of fold
  AUCs on the same folds (runs of one sweep share seed, split and folds), with its corrected
  interval and p;
- ``margins.png`` and ``report.html``.

For a sweep meant to answer the question, raise the CV repeats: ``evaluation.cv_repeats=5``.
"""

from __future__ import annotations

import logging
import re

import numpy as np
import pandas as pd

from her2study.errors import ConfigError
from her2study.evaluation.resampling import CI_METHOD, corrected_t_interval, difference_p
from her2study.report import compare_report
from her2study.reporting import paper_table3, to_markdown, to_text
from her2study.tasks.common import open_run, output_dir, result_set
from her2study.tracking import check_tracking_uri, runs_table, sanitize_key

log = logging.getLogger(__name__)

MARGIN_COLUMNS = [
    "region",
    "kind",
    "width_mm",
    "cv_auc",
    "cv_auc_ci_low",
    "cv_auc_ci_high",
    "test_auc",
]
_PATTERNS = (
    (re.compile(r"^Intra$"), "tumour"),
    (re.compile(r"^IntraPeri ([0-9.]+) mm$"), "tumour+ring"),
    (re.compile(r"^Peri ([0-9.]+) mm$"), "ring"),
    (re.compile(r"^IntraBand ([0-9.]+)-([0-9.]+) mm$"), "tumour+band"),
    (re.compile(r"^Band ([0-9.]+)-([0-9.]+) mm$"), "band"),
)
_RING = re.compile(r"^IntraPeri ([0-9.]+) mm$")


def region_of(signature: str) -> tuple[str, str, float] | None:
    """``IntraPeri 1 mm`` -> (``intra+ring1mm``, ``tumour+ring``, 1.0); None for non-regions."""
    for pattern, kind in _PATTERNS:
        m = pattern.match(signature)
        if not m:
            continue
        g = [float(x) for x in m.groups()]
        if kind == "tumour":
            return "intra", kind, 0.0
        if kind in ("tumour+ring", "ring"):
            name = f"ring{g[0]:g}mm"
            return (f"intra+{name}" if kind == "tumour+ring" else name), kind, g[0]
        name = f"band{g[0]:g}-{g[1]:g}mm"
        return (f"intra+{name}" if kind == "tumour+band" else name), kind, g[1]
    return None


def choose_sweep(runs: pd.DataFrame, sweep_id: str | None, allow_mixed: bool) -> pd.DataFrame:
    """The runs of one sweep (named, else the newest), refusing to mix cohorts unless told."""
    col = "tags.sweep_id"
    if col not in runs or runs[col].isna().all():
        raise ConfigError(
            "these paper runs carry no sweep_id tag (made before it existed): rerun the sweep, "
            "e.g. python -m her2study -m +exp=paper 'region.ring_widths_mm=[0.5],[1],[2]'"
        )
    runs = runs[runs[col].notna()]
    if sweep_id is None:
        newest = runs.sort_values("start_time").iloc[-1]
        sweep_id = newest[col]
    chosen = runs[runs[col] == sweep_id]
    if chosen.empty:
        known = ", ".join(sorted(runs[col].unique())[-5:])
        raise ConfigError(f"no paper run with sweep_id {sweep_id!r}; recent sweeps: {known}")
    for tag, what in (("data_digest", "cohorts or splits"), ("extractor_digest", "extractors")):
        values = chosen.get(f"tags.{tag}")
        if values is not None and values.nunique() > 1 and not allow_mixed:
            raise ConfigError(
                f"sweep {sweep_id!r} mixes {values.nunique()} {what} (tag {tag}): compare runs "
                "of one cohort and one extractor, or set compare.allow_mixed=true to compare "
                "them anyway"
            )
    return chosen


def margin_rows(uri: str, runs: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """``margins.csv`` rows (one per region choice; tumour only once) and the fold AUCs behind
    them, from each run's metrics and its ``tables/cv_folds.csv`` artifact."""
    import mlflow

    rows, folds, seen = [], [], set()
    for _, run in runs.iterrows():
        path = mlflow.artifacts.download_artifacts(
            run_id=run["run_id"], artifact_path="tables/cv_folds.csv", tracking_uri=uri
        )
        table = pd.read_csv(path)
        for signature in table["signature"].unique():
            where = region_of(str(signature))
            if where is None or where[0] in seen:
                continue
            seen.add(where[0])

            def metric(k: str, sig=signature, r=run):
                return r.get("metrics." + sanitize_key(f"{sig}.{k}"), np.nan)

            rows.append(
                {
                    "region": where[0],
                    "kind": where[1],
                    "width_mm": where[2],
                    "cv_auc": metric("train_oof.cv_auc"),
                    "cv_auc_ci_low": metric("train_oof.cv_auc_ci_low"),
                    "cv_auc_ci_high": metric("train_oof.cv_auc_ci_high"),
                    "test_auc": metric("test.auc"),
                    "run_id": run["run_id"],
                    "signature": signature,
                }
            )
            folds.append(table[table["signature"] == signature].assign(region=where[0]))
    df = pd.DataFrame(rows, columns=[*MARGIN_COLUMNS, "run_id", "signature"])
    order = {"tumour": 0, "tumour+ring": 1, "ring": 2, "tumour+band": 3, "band": 4}
    df["_o"] = df["kind"].map(order)
    df = df.sort_values(["_o", "width_mm"]).drop(columns="_o").reset_index(drop=True)
    return df, (pd.concat(folds, ignore_index=True) if folds else pd.DataFrame())


def paired_differences(folds: pd.DataFrame) -> pd.DataFrame:
    """Every region choice minus tumour only, on the same (repeat, fold)."""
    base = folds[folds["region"] == "intra"].set_index(["repeat", "fold"])["auc"]
    rows = []
    for region, g in folds[folds["region"] != "intra"].groupby("region", sort=False):
        g = g.set_index(["repeat", "fold"])
        common = g.index.intersection(base.index)
        if not len(common):
            continue
        diff = g.loc[common, "auc"] - base.loc[common]
        ci = corrected_t_interval(
            diff.to_numpy(), g["n_train"].mean(), g["n_test"].mean(), bounds=None
        )
        rows.append(
            {
                "region": region,
                "versus": "intra",
                "cv_auc_diff": ci["mean"],
                "ci_low": ci["ci_low"],
                "ci_high": ci["ci_high"],
                "p": difference_p(ci),
                "n_folds": ci["n"],
                "ci_method": CI_METHOD,
            }
        )
    return pd.DataFrame(rows)


def plot_margins(table: pd.DataFrame, title: str, note: str | None = None):
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6.4, 4.4))
    ax = fig.add_subplot()
    for kind, color, marker in (
        ("tumour+ring", "#1f77b4", "o-"),
        ("ring", "#2ca02c", "^-"),
        ("tumour+band", "#9467bd", "D-"),
        ("band", "#8c564b", "v-"),
    ):
        t = table[table["kind"] == kind]
        if t.empty:
            continue
        err = np.vstack([t["cv_auc"] - t["cv_auc_ci_low"], t["cv_auc_ci_high"] - t["cv_auc"]])
        ax.errorbar(
            t["width_mm"],
            t["cv_auc"],
            yerr=err,
            fmt=marker,
            color=color,
            capsize=3,
            label=f"{kind}: training CV AUC (95% CI)",
        )
        ax.plot(
            t["width_mm"],
            t["test_auc"],
            "x",
            color=color,
            alpha=0.6,
            label=f"{kind}: test AUC (descriptive)",
        )
    tumour = table[table["kind"] == "tumour"]
    if len(tumour):
        r = tumour.iloc[0]
        ax.axhspan(r["cv_auc_ci_low"], r["cv_auc_ci_high"], color="grey", alpha=0.15)
        ax.axhline(r["cv_auc"], color="grey", lw=1, label="tumour only: training CV AUC")
    paper = paper_table3()
    pts = paper[(paper["set"] == "test") & paper["signature"].str.match(_RING)]
    ax.plot(
        pts["signature"].str.extract(_RING)[0].astype(float),
        pts["auc"],
        "s",
        mfc="none",
        color="#d62728",
        alpha=0.7,
        label="paper: test AUC",
    )
    ax.axhline(0.5, color="grey", lw=0.6, ls=":")
    ax.set_xlabel("outer edge of the peritumoral region (mm)")
    ax.set_ylabel("AUC")
    ax.set_title(title, fontsize=10)
    ax.legend(fontsize=7, loc="lower left")
    fig.tight_layout(rect=(0, 0.04 if note else 0, 1, 1))
    if note:
        fig.text(0.99, 0.005, note, ha="right", va="bottom", fontsize=7, color="grey")
    return fig


def paper_runs(uri: str, experiment: str) -> pd.DataFrame:
    """The experiment's parent paper runs (any status); a missing store, experiment or run is
    a :class:`ConfigError` (nothing is created)."""
    check_tracking_uri(uri)  # the store is read even with tracking=off
    runs = runs_table(uri, experiment, filter_string="tags.task = 'paper'")
    if runs.empty:
        raise ConfigError(
            f"no paper runs in MLflow experiment '{experiment}' at {uri}; run e.g. "
            "python -m her2study -m +exp=paper 'region.ring_widths_mm=[0.5],[1],[2]' first"
        )
    return runs


def run(cfg) -> int:
    uri, experiment = cfg.tracking.tracking_uri, cfg.tracking.experiment
    paper_runs(uri, experiment)  # a wrong store or study leaves no run (and no new store)
    # opened before the work (a failed compare shows as a FAILED run; runs of the study left
    # RUNNING by a dead process are marked FAILED first); renamed once the sweep is known
    with open_run(cfg, "compare", "compare") as tracker:
        return compare(cfg, uri, experiment, tracker)


def skip_reason(run: pd.Series) -> str:
    """``<run name> (<id>): killed`` / ``failed (<error class or dead owner>)`` / ``running
    (pid <n> on <host>)``: why task=compare leaves a run out."""
    status = str(run.get("status", "?")).lower()
    ended_by = run.get("tags.her2study.ended_by")
    detail = None
    if status == "failed":
        detail = run.get("tags.her2study.error_class")
        if not isinstance(detail, str) and isinstance(ended_by, str):
            detail = ended_by.split(":", 1)[0]  # "dead owner"
    elif status == "running":
        pid, host = run.get("tags.her2study.owner.pid"), run.get("tags.her2study.owner.host")
        if isinstance(pid, str):
            detail = f"pid {pid} on {host}, not finished"
    elif status == "killed" and isinstance(ended_by, str):
        detail = ended_by
    name = run.get("tags.mlflow.runName")
    name = name if isinstance(name, str) else "run"
    return f"{name} ({str(run['run_id'])[:8]}): {status}" + (f" ({detail})" if detail else "")


def finished_runs(runs: pd.DataFrame, sweep: str) -> pd.DataFrame:
    """The FINISHED runs of a sweep; one line says which others are skipped and why."""
    done = runs["status"].astype(str) == "FINISHED"
    others = runs[~done]
    line = "; ".join(skip_reason(r) for _, r in others.iterrows())
    if not done.any():
        raise ConfigError(
            f"no finished paper run in sweep {sweep!r} ({line}): rerun the sweep, or name "
            "another with compare.sweep_id=..."
        )
    if len(others):
        log.warning(f"compare: skipped {len(others)} of {len(runs)} runs of sweep {sweep}: {line}")
    return runs[done]


def compare(cfg, uri: str, experiment: str, tracker) -> int:
    """The margins of one sweep, inside the open compare run ``tracker``."""
    runs = paper_runs(uri, experiment)  # read again: dead runs were marked when it opened
    ccfg = cfg.compare
    runs = choose_sweep(runs, ccfg.sweep_id, bool(ccfg.allow_mixed))
    sweep = runs["tags.sweep_id"].iloc[0]
    runs = finished_runs(runs, sweep)
    margins, folds = margin_rows(uri, runs)
    if margins.empty or margins["cv_auc"].isna().all():
        raise ConfigError(
            f"the runs of sweep {sweep!r} have no training-side CV AUC (train_oof.cv_auc): "
            "they were made before it existed; rerun the sweep"
        )
    synthetic = runs.get("params.data.synthetic", pd.Series(["False"])).astype(str)
    synthetic = bool(synthetic.str.lower().eq("true").all())
    source = (
        "SYNTHETIC cohort (simulated ultrasound; not clinical data)"
        if synthetic
        else ("user cohort")
    )
    out = output_dir(cfg)
    with result_set(out) as stage:  # moved into out at the end: no partial result set
        margins[MARGIN_COLUMNS].to_csv(stage / "margins.csv", index=False)
        paired = paired_differences(folds) if len(folds) else pd.DataFrame()
        paired.to_csv(stage / "margins_paired.csv", index=False)
        note = (
            f"Training-side repeated CV AUC with {CI_METHOD} intervals; test AUC descriptive "
            f"only. Sweep {sweep}, {len(runs)} runs."
        )
        (stage / "margins.md").write_text(
            f"_{source}_\n\n{note}\n\n" + to_markdown(margins[MARGIN_COLUMNS]) + "\n\n"
            "Paired against tumour only (same folds):\n\n" + to_markdown(paired) + "\n"
        )
        fig = plot_margins(
            margins,
            f"Which margin? ({experiment}, training CV)",
            note=source if synthetic else None,
        )
        fig.savefig(stage / "margins.png", dpi=120)
        report = compare_report(
            stage,
            table=margins[MARGIN_COLUMNS],
            figure=fig,
            source=source,
            synthetic=synthetic,
            experiment=experiment,
            paired=paired,
            note=note,
        )
    report = out / report.name
    log.info(
        f"\nData: {source}\n{note}\n"
        + to_text(margins[MARGIN_COLUMNS].round(3))
        + "\n\npaired against tumour only:\n"
        + to_text(paired.round(3))
        + f"\n\noutputs: {out}"
    )
    tracker.rename(f"compare {sweep}")
    tracker.set_tags({"sweep_id": sweep, "compared_runs": len(runs)})
    tracker.log_table(margins[MARGIN_COLUMNS], "margins.csv")
    tracker.log_table(paired, "margins_paired.csv")
    tracker.log_figure(fig, "margins.png")
    tracker.log_artifact(report, "report")
    return 0
