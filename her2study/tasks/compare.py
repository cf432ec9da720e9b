"""task=compare: the margin question across runs of a study — AUC against ring width.

Gathers the parent runs of ``tracking.experiment`` from MLflow (e.g. a ``-m`` sweep over
``region.ring_widths_mm``), and writes one table and one plot: training and test AUC with 95% CI of
each ``IntraPeri <w> mm`` signature against w, with the paper's 1 mm and 2 mm points beside them.
"""

from __future__ import annotations

import ast
import logging
import re

import numpy as np
import pandas as pd

from her2study.errors import ConfigError
from her2study.regions import ring_label
from her2study.report import compare_report
from her2study.reporting import paper_table3, to_markdown, to_text
from her2study.tasks.common import output_dir
from her2study.tracking import Tracker, check_tracking_uri, runs_table, sanitize_key

log = logging.getLogger(__name__)

_RING = re.compile(r"^IntraPeri ([0-9.]+) mm$")


def margin_table(runs: pd.DataFrame) -> pd.DataFrame:
    """One row per (run, ring width): train/test AUC and CI, the data source."""
    rows = []
    for _, run in runs.iterrows():
        widths = run.get("params.region.ring_widths_mm")
        if widths is None or pd.isna(widths):
            continue
        for w in ast.literal_eval(str(widths)):
            name = ring_label(w)
            row = {
                "run_id": run["run_id"],
                "ring_width_mm": float(w),
                "data_synthetic": run.get("params.data.synthetic"),
            }
            for s in ("train", "test"):
                for k in ("auc", "auc_ci_low", "auc_ci_high"):
                    col = "metrics." + sanitize_key(f"{name}.{s}.{k}")
                    row[f"{s}_{k}"] = run.get(col, np.nan)
            intra = "metrics." + sanitize_key("Intra.test.auc")
            row["intra_test_auc"] = run.get(intra, np.nan)
            rows.append(row)
    df = pd.DataFrame(rows)
    if df.empty:
        return df
    return df.sort_values(["ring_width_mm", "run_id"]).reset_index(drop=True)


def plot_margins(table: pd.DataFrame, title: str, note: str | None = None):
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6.4, 4.4))
    ax = fig.add_subplot()
    o = 0.02 * max(table["ring_width_mm"].max(), 1)
    for s, color, dx in (("train", "#1f77b4", -1.5 * o), ("test", "#d62728", 0.5 * o)):
        x = table["ring_width_mm"] + dx
        y = table[f"{s}_auc"]
        err = np.vstack([y - table[f"{s}_auc_ci_low"], table[f"{s}_auc_ci_high"] - y])
        ax.errorbar(x, y, yerr=err, fmt="o-", color=color, capsize=3, label=f"her2study {s}")
    paper = paper_table3()
    for s, color, dx in (("train", "#1f77b4", -0.5 * o), ("test", "#d62728", 1.5 * o)):
        pts = paper[(paper["set"] == s) & paper["signature"].str.match(_RING)]
        w = pts["signature"].str.extract(_RING)[0].astype(float)
        err = np.vstack([pts["auc"] - pts["auc_ci_low"], pts["auc_ci_high"] - pts["auc"]])
        ax.errorbar(
            w + dx,
            pts["auc"],
            yerr=err,
            fmt="s",
            mfc="none",
            color=color,
            capsize=3,
            alpha=0.7,
            label=f"paper {s}",
        )
    ax.axhline(0.5, color="grey", lw=0.6, ls=":")
    ax.set_xlabel("peritumoral ring width (mm)")
    ax.set_ylabel("AUC (95% CI), tumour + ring signature")
    ax.set_title(title, fontsize=10)
    ax.legend(fontsize=8, loc="lower left")
    fig.tight_layout(rect=(0, 0.04 if note else 0, 1, 1))
    if note:
        fig.text(0.99, 0.005, note, ha="right", va="bottom", fontsize=7, color="grey")
    return fig


def run(cfg) -> int:
    uri, experiment = cfg.tracking.tracking_uri, cfg.tracking.experiment
    check_tracking_uri(uri)
    runs = runs_table(uri, experiment, filter_string="tags.task = 'paper'")
    table = margin_table(runs)
    if table.empty:
        raise ConfigError(
            f"no paper runs with ring signatures in MLflow experiment '{experiment}' at {uri}; "
            "run e.g. python -m her2study -m +exp=paper 'region.ring_widths_mm=[0.5],[1],[2]' first"
        )
    synthetic = table["data_synthetic"].astype(str).str.lower().eq("true").all()
    source = (
        "SYNTHETIC cohort (simulated ultrasound; not clinical data)" if synthetic else "user cohort"
    )
    out = output_dir(cfg)
    table.to_csv(out / "margins.csv", index=False)
    (out / "margins.md").write_text(f"_{source}_\n\n" + to_markdown(table) + "\n")
    fig = plot_margins(table, f"Which margin? ({experiment})", note=source if synthetic else None)
    fig.savefig(out / "margins.png", dpi=120)
    report = compare_report(
        out,
        table=table,
        figure=fig,
        source=source,
        synthetic=bool(synthetic),
        experiment=experiment,
    )
    shown = table[
        [
            "ring_width_mm",
            "train_auc",
            "train_auc_ci_low",
            "train_auc_ci_high",
            "test_auc",
            "test_auc_ci_low",
            "test_auc_ci_high",
        ]
    ].round(3)
    log.info(f"\nData: {source}\n" + to_text(shown) + f"\n\noutputs: {out}")
    with Tracker(
        uri,
        experiment,
        enabled=cfg.tracking.enabled,
        run_name="compare margins",
        tags={"task": "compare"},
    ) as tracker:
        tracker.log_table(table, "margins.csv")
        tracker.log_figure(fig, "margins.png")
        tracker.log_artifact(report, "report")
    return 0
