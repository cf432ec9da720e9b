"""+exp=paper end to end on a small synthetic cohort: a real MLflow server, a margin sweep,
task=compare. Real pyradiomics extraction, real SQLite stores, real subprocesses."""

import json

import numpy as np
import pandas as pd
import pytest
from conftest import QUICK_FIT, SMALL, SMALL_N, run_cli
from mlflow.tracking import MlflowClient
from mlflow_server import mlflow_server  # noqa: F401  (fixture)

from her2study.regions import ring_spec

pytestmark = pytest.mark.e2e

# the shared synthetic cohort (conftest.SMALL, its features cached: pass cache_dir=<it>), the
# paper protocol's quick inner loops, two bootstrap replicates
PAPER = [*SMALL, *QUICK_FIT, "evaluation.bootstrap_reps=2"]


def test_paper_against_a_real_mlflow_server(tmp_path, synthetic_cache, mlflow_server):  # noqa: F811
    srv = mlflow_server
    args = ["+exp=paper", *PAPER, f"cache_dir={synthetic_cache}"]
    res = run_cli([*args, f"tracking.tracking_uri={srv.uri}"], tmp_path)
    out = res.stdout
    assert "Data: SYNTHETIC cohort" in out
    for name in ("Clinic", "Intra", "IntraPeri 1 mm", "IntraPeri 2 mm", "Nomogram"):
        assert name in out
    # the table files next to the paper's figures
    folder = next((tmp_path / "outputs" / "paper").iterdir())
    table3 = pd.read_csv(folder / "table3.csv")
    assert len(table3) == 10
    row = table3[(table3["set"] == "test") & (table3["signature"] == "IntraPeri 1 mm")].iloc[0]
    assert row["paper AUC (95% CI)"] == "0.868 (0.771-0.965)"
    assert "SYNTHETIC" in (folder / "table3.md").read_text().splitlines()[0]
    split = pd.read_csv(folder / "split.csv")
    # split.test_size=0.2584 (54 of 209): round(100 * 0.2584) = 26 test cases
    assert split["split"].value_counts().to_dict() == {"train": 74, "test": 26}

    # through the REST API: parent + five children, metrics, artifacts
    exp = srv.rest("experiments/get-by-name?experiment_name=paper")["experiment"]
    runs = srv.rest("runs/search", {"experiment_ids": [exp["experiment_id"]]})["runs"]
    tags = [{t["key"]: t["value"] for t in r["data"].get("tags", [])} for r in runs]
    parents = [r for r, t in zip(runs, tags, strict=True) if t.get("task") == "paper"]
    assert len(parents) == 1
    parent = parents[0]
    pid = parent["info"]["run_id"]
    children = [t for t in tags if t.get("mlflow.parentRunId") == pid]
    assert sorted(t["signature"] for t in children) == sorted(
        ["Clinic", "Intra", "IntraPeri 1 mm", "IntraPeri 2 mm", "Nomogram"]
    )
    metrics = {m["key"]: m["value"] for m in parent["data"]["metrics"]}
    assert metrics["IntraPeri_1_mm.test.auc"] == pytest.approx(row_auc(table3), abs=5e-4)
    assert {
        "Nomogram.test.hl_p",
        "Intra.train_apparent.brier",
        "Clinic.test.net_benefit_0.5",
    } <= set(metrics)
    ptags = {t["key"]: t["value"] for t in parent["data"]["tags"]}
    assert ptags["data_source"] == "synthetic" and ptags["mlflow.source.git.commit"]
    params = {p["key"]: p["value"] for p in parent["data"]["params"]}
    assert params["region.ring_widths_mm"] == "[1.0, 2.0]"
    assert params["data.synthetic"] == "True"
    # two ring widths: no scalar width, no "ring" role; a single run is its own sweep
    assert "region.ring_width_mm" not in params and params["region.kind"] == "tumour+rings"
    out_name = next((tmp_path / "outputs" / "paper").iterdir()).name
    assert params["sweep_id"] == ptags["sweep_id"] == f"paper/run:{out_name}"
    assert not any(".ring." in k for k in metrics) and metrics["test.tumour.auc"] > 0
    listed = srv.rest(f"artifacts/list?run_id={pid}&path=tables")["files"]
    assert "tables/table3.csv" in {f["path"] for f in listed}
    figs = {f["path"] for f in srv.rest(f"artifacts/list?run_id={pid}&path=figures")["files"]}
    assert {"figures/roc_test.png", "figures/dca_test.png", "figures/nomogram.png"} <= figs
    config = {f["path"] for f in srv.rest(f"artifacts/list?run_id={pid}&path=config")["files"]}
    assert "config/resolved.yaml" in config


def row_auc(table3):
    r = table3[(table3["set"] == "test") & (table3["signature"] == "IntraPeri 1 mm")].iloc[0]
    return float(r["AUC (95% CI)"].split(" ")[0])


@pytest.mark.slow
@pytest.mark.e2e
def test_margin_sweep_and_compare(tmp_path, synthetic_cache):
    store = f"sqlite:///{tmp_path / 'mlflow.db'}"
    run_cli(
        [
            "-m",
            "+exp=paper",
            *PAPER,
            f"cache_dir={synthetic_cache}",
            "tracking.log_model=false",
            "study=sweep",
            f"tracking.tracking_uri={store}",
            "region.ring_widths_mm=[0.5],[1.0],[3.0]",
        ],
        tmp_path,
    )
    jobs = sorted((tmp_path / "multirun" / "sweep").glob("*/*/table3.csv"))
    assert len(jobs) == 3
    # the chart view's inputs: a scalar ring width, one sweep id, role-based metric keys
    client = MlflowClient(store)
    exp = client.get_experiment_by_name("sweep")
    runs = client.search_runs([exp.experiment_id])
    parents = [r for r in runs if r.data.tags.get("task") == "paper"]
    assert len(parents) == 3
    sweep_dir = "sweep/" + next((tmp_path / "multirun" / "sweep").iterdir()).name
    case_ids = pd.read_csv(jobs[0].parent / "split.csv").iloc[:, 0]
    assert len(case_ids) == SMALL_N
    for p in parents:
        params, m = p.data.params, p.data.metrics
        assert params["sweep_id"] == p.data.tags["sweep_id"] == sweep_dir
        assert params["region.kind"] == "tumour+ring"
        width = float(params["region.ring_width_mm"])
        assert params["region.ring_widths_mm"] == f"[{width}]"
        sig = f"IntraPeri_{width:g}_mm"
        for set_name in ("test", "train_corrected"):
            assert m[f"{set_name}.ring.auc"] == m[f"{sig}.{set_name}.auc"]
        assert m["test.tumour.auc"] == m["Intra.test.auc"]
        assert {"test.clinic.auc", "test.nomogram.auc"} <= set(m)
        assert "skipped_metrics" not in p.data.tags  # NaN cells are left out, not flagged
        (inp,) = p.inputs.dataset_inputs  # the features + label: digest, schema, no rows
        ds = inp.dataset
        assert ds.name == f"synthetic-features-{ds.digest}" and len(ds.digest) >= 8
        assert json.loads(ds.profile)["num_rows"] == SMALL_N
        cols = {c["name"] for c in json.loads(ds.schema)["mlflow_colspec"]}
        ring = ring_spec(width).name + "_"
        assert "label" in cols and any(c.startswith(ring) for c in cols)
        stored = ds.name + ds.schema + ds.profile + ds.source
        assert not any(str(i) in stored for i in case_ids)
    assert sorted(float(p.data.params["region.ring_width_mm"]) for p in parents) == [0.5, 1, 3]
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId")]
    assert len(children) == 12  # Clinic, Intra, IntraPeri <w> mm, Nomogram per job
    for c in children:
        assert c.data.tags["sweep_id"] == c.data.params["sweep_id"] == sweep_dir
        assert "region.ring_width_mm" in c.data.params
    assert sorted(c.data.tags.get("role") for c in children if "role" in c.data.tags) == sorted(
        ["clinic", "tumour", "ring", "nomogram"] * 3
    )
    res = run_cli(["task=compare", "study=sweep", f"tracking.tracking_uri={store}"], tmp_path)
    assert "Data: SYNTHETIC" in res.stdout and "descriptive only" in res.stdout
    out = next((tmp_path / "outputs" / "sweep").glob("*/margins.csv")).parent
    table = pd.read_csv(out / "margins.csv")
    assert list(table.columns) == [
        "region",
        "kind",
        "width_mm",
        "cv_auc",
        "cv_auc_ci_low",
        "cv_auc_ci_high",
        "test_auc",
    ]
    assert list(table["region"]) == ["intra", "intra+ring0.5mm", "intra+ring1mm", "intra+ring3mm"]
    assert list(table["kind"]) == ["tumour"] + ["tumour+ring"] * 3
    assert list(table["width_mm"]) == [0.0, 0.5, 1.0, 3.0]
    assert (table["cv_auc_ci_low"] < table["cv_auc"]).all()
    assert (table["cv_auc"] < table["cv_auc_ci_high"]).all()
    assert table["test_auc"].between(0, 1).all()
    paired = pd.read_csv(out / "margins_paired.csv")
    assert sorted(paired["region"]) == ["intra+ring0.5mm", "intra+ring1mm", "intra+ring3mm"]
    assert (paired["ci_low"] <= paired["cv_auc_diff"]).all() and paired["p"].between(0, 1).all()
    assert (out / "margins.png").stat().st_size > 10_000


def test_numbers_drop_nan_and_signature_roles():
    from omegaconf import OmegaConf

    from her2study.tasks.common import dashboard_params, region_kind, signature_role
    from her2study.tasks.paper import _numbers

    row = pd.Series(
        {"set": "test", "signature": "Intra", "auc": 0.7, "hl_p": np.nan, "n": np.int64(3)}
    )
    assert _numbers(row, "test.tumour.") == {"test.tumour.auc": 0.7, "test.tumour.n": 3.0}
    assert _numbers(pd.Series({"auc": np.inf}))["auc"] == np.inf  # unexpected: the tracker flags it
    assert signature_role("IntraPeri 1 mm", [1.0]) == "ring"
    assert signature_role("IntraPeri 1 mm", [1.0, 2.0]) is None
    assert [signature_role(n, [1.0]) for n in ("Intra", "Clinic", "Nomogram")] == [
        "tumour",
        "clinic",
        "nomogram",
    ]

    def region(**kw):
        base = {"include_intra": True, "ring_widths_mm": [2.0], "bands_mm": []}
        return OmegaConf.create({"study": "s", "region": {**base, **kw}})

    assert dashboard_params(region()) == {
        "region.kind": "tumour+ring",
        "sweep_id": "s/interactive",  # outside Hydra; a -m job gets <study>/<sweep folder>
        "region.ring_width_mm": 2.0,
    }
    assert "region.ring_width_mm" not in dashboard_params(region(ring_widths_mm=[1, 2]))
    assert region_kind(region(include_intra=False, bands_mm=[[1, 2]])) == "ring+band"
    assert region_kind(region(ring_widths_mm=[])) == "tumour"
