"""her2study.tracking against real MLflow stores: SQLite files and a real `mlflow server`.

No mocks. conftest.py sets MPLBACKEND=Agg before matplotlib is imported.
"""

from __future__ import annotations

import json
import math
import socket
import threading
import time
import urllib.parse

import matplotlib.pyplot as plt
import mlflow
import mlflow.data
import mlflow.sklearn
import numpy as np
import pandas as pd
import pytest
from mlflow.tracking import MlflowClient
from mlflow.utils.validation import MAX_PARAM_VAL_LENGTH
from mlflow_server import free_port, mlflow_server  # noqa: F401
from omegaconf import OmegaConf
from sklearn.linear_model import LogisticRegression

from her2study.tracking import (
    SKIPPED_METRICS_TAG,
    Tracker,
    TrackingError,
    check_tracking_uri,
    child_runs,
    flatten_config,
    looks_identifying,
    pseudonymise,
    runs_table,
    sanitize_key,
)

# Model logging infers pip requirements in a subprocess (~2-3 s); tests pin them instead.
PIP = ["scikit-learn", "pandas", "numpy"]


@pytest.fixture(autouse=True)
def _no_stray_store(tmp_path_factory, monkeypatch):
    """Run in an empty folder and check that no store (./mlflow.db, ./mlruns, ./mlartifacts)
    was made there: everything must go to the URIs the tests pass."""
    cwd = tmp_path_factory.mktemp("cwd")
    monkeypatch.chdir(cwd)
    uri_before = mlflow.get_tracking_uri()
    yield
    assert sorted(p.name for p in cwd.iterdir()) == []
    assert mlflow.active_run() is None
    assert mlflow.get_tracking_uri() == uri_before  # the Tracker restores the global URI


def _xy(n=40, seed=0):
    rng = np.random.default_rng(seed)
    X = pd.DataFrame(rng.normal(size=(n, 3)), columns=["f_a", "f_b", "f_c"])
    y = (X["f_b"] + 0.3 * rng.normal(size=n) > 0).astype(int)
    return X, y


def _artifacts(client, run_id, path=None):
    out = []
    for a in client.list_artifacts(run_id, path):
        out.extend(_artifacts(client, run_id, a.path) if a.is_dir else [a.path])
    return out


def test_parent_children_params_metrics_artifacts_model(tmp_path):
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    X, y = _xy()
    long_value = "x" * (MAX_PARAM_VAL_LENGTH + 1000)
    medium_value = "y" * 600  # above MLflow 1's 500-char limit, below MLflow 3's
    params = {f"p{i:03d}": i for i in range(150)}
    params.update({"long": long_value, "medium": medium_value, "region.ring_widths_mm": [1.0, 2.0]})

    with Tracker(uri, "exp1", run_name="paper", tags={"task": "paper"}) as tr:
        assert tr.run_id and tr.experiment_id
        tr.log_params(params)
        tr.log_metrics(
            {
                "auc": 0.8,
                "IntraPeri 1 mm auc": 0.75,
                "brier": float("nan"),
                "ece": None,
                "n": np.int64(40),
                "bad": float("inf"),
            }
        )
        fig, ax = plt.subplots()
        ax.plot([0, 1], [0, 1])
        tr.log_figure(fig, "figures/roc.png")
        plt.close(fig)
        table = pd.DataFrame({"case_id": ["C001", "C002"], "p": [0.1, 0.9]})
        tr.log_table(table, "tables/preds.csv")
        tr.log_table(table, "tables/preds.md")
        tr.log_dict({"a": 1, "b": [1, 2]}, "config.yaml")
        tr.log_text("hello", "notes.txt")
        children = []
        for k in range(2):
            with tr.child(f"fold-{k}", tags={"fold": k}) as cid:
                assert tr.current_run_id == cid
                tr.log_metrics({"auc": 0.7 + 0.1 * k}, step=k)
                children.append(cid)
            assert tr.last_child_run_id == cid
        assert tr.current_run_id == tr.run_id
        parent = tr.run_id

    client = MlflowClient(uri)
    run = client.get_run(parent)
    assert run.info.status == "FINISHED"
    assert run.data.tags["task"] == "paper"
    # params: 153 of them (more than one batch: MLflow splits), long value cut to its limit
    p = run.data.params
    assert len(p) == 153
    assert p["long"] == long_value[:MAX_PARAM_VAL_LENGTH]  # truncated by MLflow's client
    assert p["medium"] == medium_value
    assert p["region.ring_widths_mm"] == "[1.0, 2.0]"
    assert p["p149"] == "149"
    # metrics: sanitised names, non-finite skipped and named in the tag
    m = run.data.metrics
    assert m == {"auc": 0.8, "IntraPeri_1_mm_auc": 0.75, "n": 40.0}
    assert set(run.data.tags[SKIPPED_METRICS_TAG].split(",")) == {"brier", "ece", "bad"}
    # children
    for k, cid in enumerate(children):
        c = client.get_run(cid)
        assert c.data.tags["mlflow.parentRunId"] == parent
        assert c.data.tags["mlflow.runName"] == f"fold-{k}"
        assert c.data.tags["fold"] == str(k)
        assert c.info.status == "FINISHED"
        assert math.isclose(c.data.metrics["auc"], 0.7 + 0.1 * k)
        assert [h.step for h in client.get_metric_history(cid, "auc")] == [k]
    # artifacts
    arts = set(_artifacts(client, parent))
    assert {
        "figures/roc.png",
        "tables/preds.csv",
        "tables/preds.md",
        "config.yaml",
        "notes.txt",
    } <= arts
    local = mlflow.artifacts.download_artifacts(
        run_id=parent,
        artifact_path="tables/preds.csv",
        tracking_uri=uri,
        dst_path=str(tmp_path / "dl"),
    )
    pd.testing.assert_frame_equal(pd.read_csv(local), table)
    md = mlflow.artifacts.download_artifacts(
        run_id=parent,
        artifact_path="tables/preds.md",
        tracking_uri=uri,
        dst_path=str(tmp_path / "dl"),
    )
    assert open(md).read().splitlines()[:3] == ["| case_id | p |", "|---|---|", "| C001 | 0.1 |"]
    # artifacts sit next to the database, not in the current directory's ./mlruns
    exp = client.get_experiment(run.info.experiment_id)
    assert exp.artifact_location.startswith(str(tmp_path / "mlartifacts"))
    # read back for the compare task
    t = runs_table(uri, "exp1")
    assert list(t["run_id"]) == [parent]
    assert t.loc[0, "metrics.auc"] == 0.8 and t.loc[0, "params.medium"] == medium_value
    c = child_runs(uri, parent)
    assert list(c["run_id"]) == children
    assert runs_table(uri, "exp1", filter_string="metrics.auc > 0.9").empty
    with pytest.raises(TrackingError, match="No MLflow experiment named 'nope'"):
        runs_table(uri, "nope")


def test_failing_body_marks_parent_and_child_failed(tmp_path):
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    tr = Tracker(uri, "exp")
    with pytest.raises(RuntimeError, match="boom"), tr:
        with tr.child("fold-0"):
            raise RuntimeError("boom")
    client = MlflowClient(uri)
    parent = client.get_run(tr.run_id)
    assert parent.info.status == "FAILED"
    assert "RuntimeError: boom" in parent.data.tags["error"]
    assert client.get_run(tr.last_child_run_id).info.status == "FAILED"
    assert mlflow.active_run() is None


def test_children_from_worker_threads_nest_under_parent(tmp_path):
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    ids: list[str] = []
    errors: list[BaseException] = []

    with Tracker(uri, "exp") as tr:

        def trial(k):
            try:
                with tr.child(f"trial-{k}") as cid:
                    tr.log_metrics({"score": k})
                    ids.append(cid)
            except BaseException as e:  # pragma: no cover - reported below
                errors.append(e)

        threads = [threading.Thread(target=trial, args=(k,)) for k in range(3)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        tr.log_metrics({"best": 2})
        parent = tr.run_id
    assert not errors
    client = MlflowClient(uri)
    assert client.get_run(parent).data.metrics == {"best": 2.0}
    for cid in ids:
        r = client.get_run(cid)
        assert r.data.tags["mlflow.parentRunId"] == parent and r.info.status == "FINISHED"
    assert sorted(child_runs(uri, parent)["metrics.score"]) == [0.0, 1.0, 2.0]


def test_disabled_tracker_writes_nothing(tmp_path):
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    X, y = _xy()
    with Tracker(uri, "exp", enabled=False) as tr:
        assert tr.run_id is None and tr.experiment_id is None
        tr.log_params({"a": 1})
        tr.log_metrics({"auc": 0.5})
        tr.set_tags({"a": "b"})
        tr.log_text("x", "x.txt")
        tr.log_table(pd.DataFrame({"a": [1]}), "t.csv")
        tr.log_dict({"a": 1}, "d.json")
        tr.log_artifacts(tmp_path)
        with tr.child("c") as cid:
            assert cid is None
        from her2study.model_artifact import log_model

        card = {"columns": ["f_a", "f_b", "f_c"], "extraction": {}}
        assert log_model(tr, "m", LogisticRegression().fit(X, y), card, 0.5) is None
    assert not (tmp_path / "mlflow.db").exists()
    assert list(tmp_path.iterdir()) == []


def test_unreachable_server_fails_fast_naming_the_uri(tmp_path):
    uri = f"http://127.0.0.1:{free_port()}"
    t0 = time.monotonic()
    with pytest.raises(TrackingError) as ei:
        with Tracker(uri, "exp"):
            pytest.fail("body must not run")  # pragma: no cover
    assert time.monotonic() - t0 < 10
    msg = str(ei.value)
    assert uri in msg and "mlflow server" in msg and "tracking=off" in msg
    assert isinstance(ei.value, ValueError)  # a user error (her2study.errors.USER_ERRORS)


def test_hung_server_times_out():
    # A socket that accepts connections (kernel backlog) but never answers.
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        s.listen(8)
        uri = f"http://127.0.0.1:{s.getsockname()[1]}"
        t0 = time.monotonic()
        with pytest.raises(TrackingError, match="not reachable") as ei:
            check_tracking_uri(uri, timeout=1.0)
        assert time.monotonic() - t0 < 5
        assert uri in str(ei.value)


def test_sqlite_uri_checks(tmp_path):
    check_tracking_uri(f"sqlite:///{tmp_path}/ok.db")
    check_tracking_uri("sqlite://")  # in-memory
    with pytest.raises(TrackingError, match="does not exist"):
        check_tracking_uri(f"sqlite:///{tmp_path}/missing/dir/mlflow.db")
    with pytest.raises(TrackingError, match="No MLflow database"):
        runs_table(f"sqlite:///{tmp_path}/never.db", "exp")
    assert not (tmp_path / "never.db").exists()


def test_mlflow_server_end_to_end(mlflow_server, tmp_path):  # noqa: F811
    srv = mlflow_server
    check_tracking_uri(srv.uri)
    with Tracker(srv.uri, "remote", run_name="parent") as tr:
        tr.log_params({"model": "lr"})
        tr.log_metrics({"auc": 0.81})
        tr.log_table(pd.DataFrame({"a": [1, 2]}), "tables/a.csv")
        with tr.child("fold-0"):
            tr.log_metrics({"auc": 0.77}, step=0)
        parent, child = tr.run_id, tr.last_child_run_id
        exp_id = tr.experiment_id

    runs = srv.rest("runs/search", {"experiment_ids": [exp_id]})["runs"]
    by_id = {r["info"]["run_id"]: r for r in runs}
    assert set(by_id) == {parent, child}
    assert by_id[parent]["info"]["status"] == "FINISHED"

    def metrics(r):
        return {m["key"]: m["value"] for m in r["data"].get("metrics", [])}

    def tags(r):
        return {t["key"]: t["value"] for t in r["data"].get("tags", [])}

    assert metrics(by_id[parent]) == {"auc": 0.81}
    assert metrics(by_id[child]) == {"auc": 0.77}
    assert tags(by_id[child])["mlflow.parentRunId"] == parent
    listing = srv.rest(f"artifacts/list?run_id={parent}&path=tables")
    assert [f["path"] for f in listing["files"]] == ["tables/a.csv"]
    q = urllib.parse.urlencode({"run_uuid": parent, "path": "tables/a.csv"})
    assert srv.get_bytes(f"/get-artifact?{q}").decode().splitlines() == ["a", "1", "2"]
    # the artifact went through the server's proxy into --artifacts-destination
    assert list(srv.artifacts_destination.rglob("a.csv"))
    t = runs_table(srv.uri, "remote")
    assert list(t["run_id"]) == [parent]

    # Dashboard over a local store: runs written straight into the SQLite file (artifacts in
    # mlartifacts/ beside it) are served by an `mlflow server` on that file too.
    with Tracker(srv.backend_store_uri, "local") as tr:
        tr.log_metrics({"auc": 0.5})
        tr.log_text("hi", "notes.txt")
        local_run = tr.run_id
    run = srv.rest(f"runs/get?run_id={local_run}")["run"]
    assert metrics(run) == {"auc": 0.5}
    listing = srv.rest(f"artifacts/list?run_id={local_run}")
    assert [f["path"] for f in listing["files"]] == ["notes.txt"]
    q = urllib.parse.urlencode({"run_uuid": local_run, "path": "notes.txt"})
    assert srv.get_bytes(f"/get-artifact?{q}") == b"hi"


def test_flatten_config():
    nested = {
        "region": {"ring_widths_mm": [1.0, 2.0], "include_intra": True, "bands_mm": []},
        "seed": 42,
        "extractor": {"params": {"setting": {"binWidth": 25}}, "empty": {}},
        "hydra": {"run": {"dir": "x"}},
    }
    flat = flatten_config(nested)
    assert flat == {
        "region.ring_widths_mm": "[1.0, 2.0]",
        "region.include_intra": True,
        "region.bands_mm": "[]",
        "seed": 42,
        "extractor.params.setting.binWidth": 25,
        "extractor.empty": "{}",
    }
    cfg = OmegaConf.create(
        {
            "study": "s1",
            "tracking": {"experiment": "${study}", "uri": "sqlite:///mlflow.db"},
            "region": {"ring_widths_mm": [1.0, 2.0]},
            "data": {"manifest": "???", "secret": {"key": 1}},
            "hydra": {"job": {"name": "x"}},
        }
    )
    flat = flatten_config(cfg, exclude=("hydra", "data.secret"))
    assert flat == {
        "study": "s1",
        "tracking.experiment": "s1",
        "tracking.uri": "sqlite:///mlflow.db",
        "region.ring_widths_mm": "[1.0, 2.0]",
        "data.manifest": "???",
    }
    assert "hydra.job.name" in flatten_config(cfg, exclude=())


def test_sanitize_key():
    assert sanitize_key("IntraPeri 1 mm") == "IntraPeri_1_mm"
    assert sanitize_key("ring 0-2 µm (AUC)") == "ring_0-2_um__AUC_"
    assert sanitize_key("a//b/../c/") == "a/b/c"
    assert sanitize_key("fold:1/auc") == "fold:1/auc"
    assert sanitize_key("") == "_"
    assert len(sanitize_key("k" * 1000)) == 250


def test_looks_identifying_and_pseudonymise():
    flagged = [
        "Doe^Jane",
        "DOE^JANE^M",
        "Jane Doe",
        "DOE, JANE",
        "Jane_Doe",
        "Mary Ann Smith",
        "12345678",
        "MRN1234567",
        "PID-0012345",
        "123-45-6789",
        "Jane Doe 2",
    ]
    fine = ["SYN0001", "C001", "case_12", "P17", "HER2_POS_03", "lesion-7", "B12345", "ab12"]
    assert looks_identifying(flagged + fine) == flagged
    codes = pseudonymise(["Doe^Jane", "MRN1234567", "Doe^Jane"], salt="s3cret")
    assert set(codes) == {"Doe^Jane", "MRN1234567"}
    assert all(c.startswith("anon-") and len(c) == 17 for c in codes.values())
    assert all(int(c[5:], 16) >= 0 for c in codes.values())
    assert pseudonymise(["Doe^Jane"], salt="s3cret") == {"Doe^Jane": codes["Doe^Jane"]}
    assert pseudonymise(["Doe^Jane"], salt="other")["Doe^Jane"] != codes["Doe^Jane"]
    assert looks_identifying(codes.values()) == []
    with pytest.raises(ValueError):
        pseudonymise(["a"], salt="")


def test_experiment_kind_tag_on_new_and_existing_experiments(tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    with Tracker(uri, "fresh"):
        pass
    client = MlflowClient(uri)
    assert client.get_experiment_by_name("fresh").tags["mlflow.experimentKind"] == (
        "custom_model_development"
    )
    # an experiment made without the tag (older her2study, by hand) gets it when opened
    client.create_experiment("old", artifact_location=str(tmp_path / "art"))
    assert "mlflow.experimentKind" not in client.get_experiment_by_name("old").tags
    with Tracker(uri, "old"):
        pass
    assert client.get_experiment_by_name("old").tags["mlflow.experimentKind"] == (
        "custom_model_development"
    )


def test_log_dataset_stores_digest_schema_and_no_case_ids(tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    X, y = _xy()
    ids = [f"PAT-{i:04d}-DOE" for i in range(len(X))]
    table = X.assign(label=y.values).set_index(pd.Index(ids, name="case_id"))
    frame = table.reset_index(drop=True)
    expected = mlflow.data.from_pandas(frame, targets="label").digest
    with Tracker(uri, "data") as tr:
        digest = tr.log_dataset(frame, "synthetic-features", targets="label")
    assert digest == expected
    # other values, other digest: the digest identifies the data, not just its shape
    assert mlflow.data.from_pandas(frame.assign(f_a=0.0), targets="label").digest != digest
    run = MlflowClient(uri).get_run(tr.run_id)
    (inp,) = run.inputs.dataset_inputs
    ds = inp.dataset
    assert ds.digest == digest and ds.name == f"synthetic-features-{digest}"
    assert {t.key: t.value for t in inp.tags}["mlflow.data.context"] == "training"
    assert [c["name"] for c in json.loads(ds.schema)["mlflow_colspec"]] == [
        "f_a",
        "f_b",
        "f_c",
        "label",
    ]
    assert json.loads(ds.profile) == {"num_rows": 40, "num_elements": 160}
    stored = ds.name + ds.schema + ds.profile + ds.source
    assert not any(i in stored for i in ids) and "PAT-" not in stored


@pytest.mark.parametrize("sig", ["SIGTERM", "SIGINT"])
def test_signal_ends_parent_and_child_killed(tmp_path, sig):
    import signal
    import subprocess
    import sys

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    script = tmp_path / "job.py"
    script.write_text(
        "import sys, time\n"
        "from her2study.tracking import Tracker\n"
        "with Tracker(sys.argv[1], 'sig') as tr:\n"
        "    with tr.child('fold'):\n"
        "        print(tr.run_id, tr.current_run_id, flush=True)\n"
        "        time.sleep(120)\n"
    )
    # SIGINT as a terminal delivers it: a process started from a background job inherits
    # SIGINT ignored, and Python then installs no KeyboardInterrupt handler at all
    proc = subprocess.Popen(
        [sys.executable, str(script), uri],
        stdout=subprocess.PIPE,
        text=True,
        cwd=tmp_path,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    try:
        parent, child = proc.stdout.readline().split()
        proc.send_signal(getattr(signal, sig))
        assert proc.wait(timeout=60) != 0
    finally:
        proc.kill()
    client = MlflowClient(uri)
    assert client.get_run(child).info.status == "KILLED"
    assert client.get_run(parent).info.status == "KILLED"
    assert "RunTerminated" in client.get_run(parent).data.tags["error"] or sig == "SIGINT"


def test_server_refusing_access_names_the_credential_variables():
    """A real HTTP server that answers 401 (an MLflow server behind basic auth without
    credentials): one message naming the variables MLflow's client reads."""
    import http.server

    class Refuse(http.server.BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802 - http.server's name
            self.send_response(401)
            self.send_header("WWW-Authenticate", 'Basic realm="mlflow"')
            self.end_headers()
            self.wfile.write(b"You are not authenticated.")

        do_POST = do_GET  # noqa: N815 - MLflow 3 searches experiments with a POST

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Refuse)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        uri = f"http://127.0.0.1:{server.server_address[1]}"
        with pytest.raises(TrackingError, match="refused access") as ei:
            check_tracking_uri(uri, timeout=2.0)
        msg = str(ei.value)
        assert "MLFLOW_TRACKING_USERNAME" in msg and "tracking=off" in msg and uri in msg
    finally:
        server.shutdown()
        server.server_close()


def test_log_dataset_reuses_digest_and_schema_from_the_fit_cache(tmp_path):
    """With a fit cache active (task=paper), a re-run logs the same dataset entity (name, digest,
    schema, profile) without recomputing MLflow's digest and schema; other values miss."""
    from her2study.fitcache import use_fit_cache

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    X, y = _xy()
    frame = X.assign(label=y.values)
    logged = []
    with use_fit_cache(tmp_path / "cache") as cache:
        for _ in range(2):
            with Tracker(uri, "data") as tr:
                tr.log_dataset(frame, "synthetic-features", targets="label")
            (inp,) = MlflowClient(uri).get_run(tr.run_id).inputs.dataset_inputs
            logged.append(inp.dataset)
        assert (cache.misses, cache.hits) == (1, 1)
        first, second = logged
        for field in ("name", "digest", "schema", "profile", "source_type"):
            assert getattr(second, field) == getattr(first, field), field
        assert first.digest == mlflow.data.from_pandas(frame, targets="label").digest
        with Tracker(uri, "data") as tr:
            digest = tr.log_dataset(frame.assign(f_a=0.0), "synthetic-features", targets="label")
        assert cache.misses == 2 and digest != first.digest
