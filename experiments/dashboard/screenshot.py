"""Screenshot of a margin sweep in MLflow's dashboard (the runs table of the training view).

    # a real two-width sweep on a small synthetic cohort, into ./mlflow.db
    python -m her2study -m +exp=paper study=margins extractor=fast data.synthetic.n_cases=40 \
        execution.n_jobs=1 evaluation.cv_folds=3 selection.lasso_cv=5 \
        evaluation.bootstrap_reps=2 tracking.log_model=false 'region.ring_widths_mm=[1],[2]'
    # serve it on a free 127.0.0.1 port, render the runs page in headless Chromium, stop the server
    python experiments/dashboard/screenshot.py --store mlflow.db --experiment margins \
        --out experiments/dashboard/runs_table.png

The server is the test suite's helper (``tests/mlflow_server.py``: its own process group, stopped
by PID); the browser is :mod:`her2study.report.browser`. ``tests/test_dashboard.py`` makes and
checks the same page (REST + DOM) in CI.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "tests"))  # the server helper of the test suite

from mlflow_server import running_mlflow_server  # noqa: E402

from her2study.report.browser import find_chromium, screenshot  # noqa: E402


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--store", required=True, type=Path, help="the SQLite file of the sweep")
    ap.add_argument("--experiment", default="margins")
    ap.add_argument("--out", type=Path, default=Path(__file__).with_name("runs_table.png"))
    ap.add_argument("--wait-ms", type=int, default=20_000, help="virtual time for the page")
    args = ap.parse_args(argv)
    if find_chromium() is None:
        print("no Chromium on PATH (apt-get install chromium)", file=sys.stderr)
        return 2
    store = args.store.resolve()
    with (
        tempfile.TemporaryDirectory() as work,
        running_mlflow_server(
            Path(work), backend_store_uri=f"sqlite:///{store}", artifacts_destination=Path(work)
        ) as srv,
    ):
        exp = srv.rest(f"experiments/get-by-name?experiment_name={args.experiment}")
        exp_id = exp["experiment"]["experiment_id"]
        # workflowType=machine_learning: the "Model training" view (MLflow 3 opens GenAI first)
        url = f"{srv.uri}/#/experiments/{exp_id}/runs?workflowType=machine_learning"
        res = screenshot(url, args.out, window=(1600, 900), timeout=240, wait_ms=args.wait_ms)
    if res.returncode != 0 or not args.out.is_file():
        print(res.stderr[-2000:], file=sys.stderr)
        return 1
    print(f"{args.out} ({args.out.stat().st_size} bytes) from {url.replace(srv.uri, '<server>')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
