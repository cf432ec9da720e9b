"""Render a her2study report in headless Chromium and save a screenshot.

Checks that the self-contained report displays in a real browser with no console or script
errors, and leaves a PNG to look at.

Usage (from the repository root)::

    # a report a run wrote (task=paper / search / compare)
    python experiments/report/render_report.py outputs/paper/<date>/report.html

    # a demo report of a small fake study (noise features, real fitting and figures), then render
    python experiments/report/render_report.py --demo experiments/report/demo

    # the whole page: a tall window
    python experiments/report/render_report.py report.html --height 12000 --png full.png

Needs Chromium (Debian: ``apt-get install chromium``). Exits 1 when the browser reports a
console message or an uncaught script error, 2 when Chromium is missing.
"""

from __future__ import annotations

import argparse
import os
import sys
import warnings
from pathlib import Path

os.environ.setdefault("MPLBACKEND", "Agg")
REPO = Path(__file__).resolve().parents[2]


def demo_report(out_dir: Path) -> Path:
    """A report of a small fake study: 120 cases of noise features with two planted signals."""
    import numpy as np
    import pandas as pd
    from hydra import compose, initialize_config_dir

    from her2study.cohort.manifest import Cohort
    from her2study.config import register_configs
    from her2study.report import paper_report
    from her2study.reporting import compare_with_paper
    from her2study.split import block_split
    from her2study.study import evaluate_signatures, fit_signatures, paired_delong
    from her2study.tasks.paper import make_figures

    register_configs()
    with initialize_config_dir(str(REPO / "conf"), version_base="1.3"):
        cfg = compose("config", overrides=["+exp=paper", "selection.lasso_cv=5"])
    rng = np.random.default_rng(0)
    n, p = 120, 30
    y = rng.permutation(np.r_[np.ones(72, int), np.zeros(n - 72, int)])
    cols = [f"{r}_original_feature_{i}" for r in ("intra", "peri1mm", "peri2mm") for i in range(p)]
    X = pd.DataFrame(rng.normal(size=(n, len(cols))), columns=cols)
    X[cols[0]] += 1.0 * y
    X[cols[p]] += 1.2 * y
    X.index = pd.Index([f"P{i:03d}" for i in range(n)], name="case_id")
    clinical = pd.DataFrame(
        {
            "age": rng.normal(52, 12, n).round(),
            "er_pct": np.clip(rng.normal(70 + 8 * y, 25), 0, 100).round(),
            "node_positive": rng.integers(0, 2, n),
        },
        index=X.index,
    )
    table = clinical.assign(label=y)
    split = block_split(table, "label", test_size=54 / 209, seed=1)
    labels = table["label"]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        fits = fit_signatures(X, clinical, labels, split, [1.0, 2.0], cfg)
        metrics = evaluate_signatures(fits, labels, split, cfg)
        figures = make_figures(fits, labels, split, cfg, "SYNTHETIC cohort (demo)")
    cohort = Cohort(table=table[["label", *clinical.columns]], source="synthetic", synthetic=True)
    return paper_report(
        out_dir,
        cfg=cfg,
        cohort=cohort,
        split=split,
        fits=fits,
        metrics=metrics,
        comparison=compare_with_paper(metrics),
        tests=paired_delong(fits, labels, split),
        figures=figures,
        clinical_columns=list(clinical.columns),
        features=X,
    )


def main(argv=None) -> int:
    from her2study.report.browser import find_chromium, screenshot

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("report", nargs="?", type=Path, help="report.html to render")
    ap.add_argument("--demo", type=Path, metavar="DIR", help="write a demo report into DIR first")
    ap.add_argument("--png", type=Path, help="screenshot path (default: next to the report)")
    ap.add_argument("--width", type=int, default=1280)
    ap.add_argument("--height", type=int, default=2400)
    args = ap.parse_args(argv)
    if (args.report is None) == (args.demo is None):
        ap.error("give a report.html or --demo DIR")
    if find_chromium() is None:
        print("Chromium not found on PATH (Debian: apt-get install chromium)", file=sys.stderr)
        return 2
    report = demo_report(args.demo) if args.demo else args.report
    png = args.png or report.with_name(report.stem + "_screenshot.png")
    run = screenshot(report, png, window=(args.width, args.height))
    size = report.stat().st_size / 1e6
    print(f"report {report} ({size:.2f} MB) -> screenshot {png} (exit {run.returncode})")
    if run.console_errors:
        print("browser console:\n  " + "\n  ".join(run.console_errors), file=sys.stderr)
        return 1
    return 0 if run.returncode == 0 and png.is_file() else 1


if __name__ == "__main__":
    sys.exit(main())
