"""The MLflow dashboard of a margin sweep, checked as a user sees it.

A real two-width sweep (``-m +exp=paper region.ring_widths_mm=[1],[2]`` on a small synthetic
cohort, real pyradiomics) goes into a SQLite store; a real ``mlflow server`` on 127.0.0.1 serves
it. Through the REST API: both runs, the scalar ring-width param, the common AUC key. In
headless Chromium: the experiment's training-runs page lists both runs, and each run's page
shows its ring width and its ``test.ring.auc`` with the value the REST API returned. A
screenshot of the runs table is taken (``experiments/dashboard/`` holds the committed one,
made by ``experiments/dashboard/screenshot.py``).
"""

from __future__ import annotations

import html
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from mlflow_server import running_mlflow_server

from her2study.report.browser import dump_dom, find_chromium, screenshot

pytestmark = [
    pytest.mark.slow,
    pytest.mark.e2e,
    pytest.mark.server,
    pytest.mark.browser,
    pytest.mark.timeout(2400),  # two paper jobs + a server + four page renders on 2 cores
]

ROOT = Path(__file__).resolve().parents[1]
SWEEP = [
    "-m",
    "+exp=paper",
    "study=margins",
    "extractor=fast",
    "data.synthetic.n_cases=40",
    "execution.progress=false",
    "evaluation.cv_folds=3",
    "selection.lasso_cv=5",
    "evaluation.bootstrap_reps=2",
    "tracking.log_model=false",
    "region.ring_widths_mm=[1],[2]",
]
WAIT_MS = 20_000  # virtual time for MLflow's single-page app to fetch and render


def page_text(dom: str) -> str:
    """The visible text of a DOM dump: scripts and styles dropped, tags removed, one space."""
    dom = re.sub(r"<(script|style)\b.*?</\1>", " ", dom, flags=re.S | re.I)
    return re.sub(r"\s+", " ", html.unescape(re.sub(r"<[^>]+>", " ", dom)))


def rendered(url: str) -> str:
    res = dump_dom(url, timeout=240, wait_ms=WAIT_MS, window=(1600, 3000))
    assert res.returncode == 0, res.stderr[-2000:]
    return page_text(res.stdout)


def test_margin_sweep_in_the_dashboard(tmp_path):
    db = tmp_path / "mlflow.db"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    res = subprocess.run(
        [sys.executable, "-m", "her2study", *SWEEP, f"tracking.tracking_uri=sqlite:///{db}"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=1500,
        env=env,
    )
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-3000:]

    with running_mlflow_server(
        tmp_path / "server",
        backend_store_uri=f"sqlite:///{db}",
        artifacts_destination=tmp_path / "mlartifacts",
    ) as srv:
        # REST: the experiment opens on training runs; two paper runs of one sweep
        exp = srv.rest("experiments/get-by-name?experiment_name=margins")["experiment"]
        exp_tags = {t["key"]: t["value"] for t in exp.get("tags", [])}
        assert exp_tags["mlflow.experimentKind"] == "custom_model_development"
        found = srv.rest(
            "runs/search",
            {"experiment_ids": [exp["experiment_id"]], "filter": "tags.task = 'paper'"},
        )["runs"]
        assert len(found) == 2
        runs = {}
        for r in found:
            params = {p["key"]: p["value"] for p in r["data"]["params"]}
            metrics = {m["key"]: m["value"] for m in r["data"]["metrics"]}
            tags = {t["key"]: t["value"] for t in r["data"]["tags"]}
            assert r["info"]["status"] == "FINISHED" and tags["her2study.ended_by"] == "finished"
            assert 0 <= metrics["test.ring.auc"] <= 1  # the common key of the chart view
            assert "mlflow.parentRunId" not in tags
            runs[float(params["region.ring_width_mm"])] = (r["info"], metrics, tags)
        assert sorted(runs) == [1.0, 2.0]  # the scalar x axis of the sweep
        assert len({t["sweep_id"] for _, _, t in runs.values()}) == 1

        chromium = find_chromium()
        if chromium is None:
            pytest.skip(
                "REST checked; the page check needs Chromium (apt-get install chromium; CI "
                "installs it)"
            )
        # the page: MLflow's own UI, as a user opens it
        base = f"{srv.uri}/#/experiments/{exp['experiment_id']}"
        table = rendered(f"{base}/runs?workflowType=machine_learning")
        for width, (info, metrics, _tags) in runs.items():
            name = info["run_name"]
            assert name == f"paper rings={width:g}mm" and name in table
            page = rendered(f"{base}/runs/{info['run_id']}")
            assert name in page
            assert f"region.ring_width_mm {width}" in page
            assert f"test.ring.auc {metrics['test.ring.auc']}" in page
        png = tmp_path / "runs_table.png"
        shot = screenshot(
            f"{base}/runs?workflowType=machine_learning",
            png,
            window=(1600, 900),
            timeout=240,
            wait_ms=WAIT_MS,
        )
        assert shot.returncode == 0, shot.stderr[-2000:]
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 20_000
