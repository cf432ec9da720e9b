"""The life of an MLflow run of her2study, against real SQLite stores and real processes.

A run names its owner; it ends FINISHED, FAILED (error class and one line, no traceback) or
KILLED; a run left RUNNING by a process that is gone is marked FAILED by the next run of its
study; task=compare says which runs it skipped and why; two processes opening a fresh store at
once both succeed; the paper task's run exists from the start; a search config error leaves no
run. No mocks: the processes are real and are killed by PID.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pandas as pd
import pytest
from mlflow.tracking import MlflowClient

from her2study.tracking import Tracker
from her2study.tracking.lifecycle import (
    ENDED_BY,
    ERROR_CLASS,
    OWNER_HOST,
    OWNER_PID,
    OWNER_PROC_START,
    owner_alive,
    owner_tags,
)

ROOT = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "PYTHONPATH": str(ROOT)}

# a job that opens a run (and a child) of study argv[2], prints their IDs, then waits
JOB = textwrap.dedent(
    """
    import sys, time
    from her2study.tracking import Tracker
    uri, study, sweep = sys.argv[1], sys.argv[2], sys.argv[3]
    tags = {"task": "paper", "sweep_id": sweep}
    with Tracker(uri, "lifecycle", run_name=sys.argv[4], tags=tags, study=study) as tr:
        with tr.child("fold"):
            print(tr.run_id, tr.current_run_id, flush=True)
            time.sleep(300)
    """
)


def launch_job(tmp_path, uri, study, sweep="s/1", name="job"):
    script = tmp_path / "job.py"
    script.write_text(JOB)
    return subprocess.Popen(
        [sys.executable, str(script), uri, study, sweep, name],
        stdout=subprocess.PIPE,
        text=True,
        env=ENV,
        cwd=tmp_path,
    )


def job_ids(proc):
    """(process, parent run ID, child run ID) once the job's runs are open."""
    line = proc.stdout.readline().split()
    assert len(line) == 2, f"job did not start (exit {proc.poll()})"
    return proc, line[0], line[1]


def start_job(tmp_path, uri, study, sweep="s/1", name="job"):
    return job_ids(launch_job(tmp_path, uri, study, sweep, name))


def end(proc, sig=signal.SIGKILL):
    try:
        os.kill(proc.pid, sig)
    except ProcessLookupError:
        pass
    proc.wait(timeout=60)


def test_owner_tags_and_liveness():
    tags = owner_tags()
    assert tags[OWNER_PID] == str(os.getpid()) and tags[OWNER_HOST] == socket.gethostname()
    assert owner_alive(tags)
    # the same PID, but a process started at another time: a reused PID, not the owner
    assert not owner_alive({**tags, OWNER_PROC_START: str(int(tags[OWNER_PROC_START]) + 1)})
    done = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"],
        text=True,
        capture_output=True,
        check=True,
    )
    assert not owner_alive({OWNER_PID: done.stdout.strip()})


def test_failed_run_names_the_error_in_one_line(tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    tr = Tracker(uri, "exp", study="s")
    with pytest.raises(ValueError), tr:
        with tr.child("fold"):
            raise ValueError("the mask of case 7 is empty\n  File x.py, line 3\n  secret")
    client = MlflowClient(uri)
    for run_id in (tr.run_id, tr.last_child_run_id):
        run = client.get_run(run_id)
        assert run.info.status == "FAILED"
        tags = run.data.tags
        assert tags[ERROR_CLASS] == "ValueError" and tags[ENDED_BY] == "error"
        assert tags["error"] == "ValueError: the mask of case 7 is empty"  # one line only
        assert "secret" not in "".join(tags.values()) and "Traceback" not in tags["error"]
        assert tags[OWNER_PID] == str(os.getpid()) and tags["her2study.study"] == "s"
    with Tracker(uri, "exp", study="s") as ok:
        pass
    assert client.get_run(ok.run_id).data.tags[ENDED_BY] == "finished"


def test_a_run_whose_owner_is_gone_is_marked_failed(tmp_path):
    """In process: a RUNNING run whose owner tags name a process that has exited (a real PID,
    its process gone) is marked FAILED by the next run of its study; one of a live owner is not."""
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    gone = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"],
        text=True,
        capture_output=True,
        check=True,
    ).stdout.strip()
    client = MlflowClient(uri)
    exp_id = client.create_experiment("lifecycle")
    mine = owner_tags()
    dead = client.create_run(
        exp_id, tags={**mine, OWNER_PID: gone, OWNER_PROC_START: "1", "her2study.study": "s"}
    ).info.run_id
    live = client.create_run(exp_id, tags={**mine, "her2study.study": "s"}).info.run_id
    with Tracker(uri, "lifecycle", study="s") as tr:
        assert tr.reaped == [dead]
    assert client.get_run(dead).info.status == "FAILED"
    assert client.get_run(dead).data.tags[ENDED_BY].startswith(f"dead owner: process {gone}")
    assert client.get_run(live).info.status == "RUNNING"  # this process: alive


@pytest.mark.slow
def test_runs_of_a_dead_process_are_marked_failed_by_the_next_run(tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    MlflowClient(uri)  # the store exists before the three jobs start side by side
    procs = [launch_job(tmp_path, uri, study) for study in ("s", "other-study", "s")]
    (dead, dead_parent, dead_child), (other, other_parent, _), alive_ids = map(job_ids, procs)
    alive, alive_parent, alive_child = alive_ids
    try:
        end(dead)  # SIGKILL: no handler runs, its runs stay RUNNING
        end(other)
        client = MlflowClient(uri)
        assert client.get_run(dead_parent).info.status == "RUNNING"
        with Tracker(uri, "lifecycle", study="s") as tr:
            assert sorted(tr.reaped) == sorted([dead_parent, dead_child])
        for run_id in (dead_parent, dead_child):
            run = client.get_run(run_id)
            assert run.info.status == "FAILED"
            why = run.data.tags[ENDED_BY]
            assert why.startswith("dead owner") and str(dead.pid) in why and tr.run_id in why
        # a live owner's runs and another study's runs are left alone
        assert client.get_run(alive_parent).info.status == "RUNNING"
        assert client.get_run(alive_child).info.status == "RUNNING"
        assert client.get_run(other_parent).info.status == "RUNNING"
    finally:
        end(alive, signal.SIGTERM)
    assert client.get_run(alive_parent).info.status == "KILLED"
    assert client.get_run(alive_parent).data.tags[ENDED_BY] == "SIGTERM"


def _paper_like_run(uri, sweep, name, fail=False):
    """A parent run carrying what task=compare reads from a paper run (metrics, the fold
    table, tags); ``fail`` ends it FAILED."""
    folds = pd.DataFrame(
        [
            {
                "signature": s,
                "region_kind": k,
                "repeat": 0,
                "fold": f,
                "n_train": 30,
                "n_test": 10,
                "auc": a + 0.02 * f,
            }
            for s, k, a in (("Intra", "intra", 0.7), ("IntraPeri 1 mm", "intra+peri", 0.75))
            for f in range(3)
        ]
    )
    metrics = {}
    for sig, g in folds.groupby("signature"):
        key = sig.replace(" ", "_")
        m = g["auc"].mean()
        metrics.update(
            {
                f"{key}.train_oof.cv_auc": m,
                f"{key}.train_oof.cv_auc_ci_low": m - 0.1,
                f"{key}.train_oof.cv_auc_ci_high": m + 0.1,
                f"{key}.test.auc": m,
            }
        )
    tr = Tracker(
        uri, "lifecycle", run_name=name, tags={"task": "paper", "sweep_id": sweep}, study="s"
    )
    with pytest.raises(RuntimeError) if fail else contextlib.nullcontext(), tr:
        tr.log_metrics(metrics)
        tr.log_table(folds, "tables/cv_folds.csv")
        if fail:
            raise RuntimeError("fit failed")
    return tr.run_id


def run_cli(args, cwd, timeout=600):
    return subprocess.run(
        [sys.executable, "-m", "her2study", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
        env=ENV,
    )


@pytest.mark.slow
@pytest.mark.e2e
def test_compare_says_which_runs_it_skipped_and_why(tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    sweep = "lifecycle/sweep-1"
    finished = _paper_like_run(uri, sweep, "paper rings=1mm")
    failed = _paper_like_run(uri, sweep, "paper rings=2mm", fail=True)
    killed_job, killed, _ = start_job(tmp_path, uri, "s", sweep, "paper rings=3mm")
    end(killed_job, signal.SIGTERM)
    dead_job, dead, _ = start_job(tmp_path, uri, "s", sweep, "paper rings=4mm")
    end(dead_job)  # left RUNNING; compare's own run marks it FAILED when it opens
    res = run_cli(
        [
            "task=compare",
            "study=s",
            "tracking.experiment=lifecycle",
            f"tracking.tracking_uri={uri}",
        ],
        tmp_path,
    )
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-3000:]
    out = res.stdout + res.stderr
    lines = [ln for ln in out.splitlines() if "skipped" in ln]
    assert len(lines) == 1, out[-3000:]
    line = lines[0]
    assert f"skipped 3 of 4 runs of sweep {sweep}" in line
    assert f"paper rings=2mm ({failed[:8]}): failed (RuntimeError)" in line
    assert f"paper rings=3mm ({killed[:8]}): killed (SIGTERM)" in line
    assert f"paper rings=4mm ({dead[:8]}): failed (dead owner)" in line
    assert finished[:8] not in line
    client = MlflowClient(uri)
    assert client.get_run(dead).info.status == "FAILED"
    margins = pd.read_csv(next((tmp_path / "outputs").rglob("margins.csv")))
    assert list(margins["region"]) == ["intra", "intra+ring1mm"]  # from the finished run only


@pytest.mark.slow
def test_fresh_store_opened_by_three_processes_at_once(tmp_path):
    """Both succeed: the SQLite store is created and migrated under a file lock by one."""
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    go = tmp_path / "go"
    script = tmp_path / "open.py"
    script.write_text(
        textwrap.dedent(
            """
            import os, sys, time
            from pathlib import Path
            from her2study.tracking import Tracker
            import mlflow  # everything imported: the race is on the store only
            print("ready", flush=True)
            while not Path(sys.argv[2]).exists():
                time.sleep(0.01)
            with Tracker(sys.argv[1], "race", study="race") as tr:
                tr.log_metrics({"auc": 0.5})
            print(tr.run_id)
            """
        )
    )
    procs = [
        subprocess.Popen(
            [sys.executable, str(script), uri, str(go)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=ENV,
            cwd=tmp_path,
        )
        for _ in range(3)
    ]
    assert [p.stdout.readline().strip() for p in procs] == ["ready"] * 3
    go.touch()  # all three open the store at the same moment
    results = [p.communicate(timeout=300) for p in procs]
    for p, (_out, err) in zip(procs, results, strict=True):
        assert p.returncode == 0, err[-3000:]
    ids = [out.strip().splitlines()[-1] for out, _ in results]
    client = MlflowClient(uri)
    assert {client.get_run(i).info.status for i in ids} == {"FINISHED"}
    assert len(set(ids)) == 3


@pytest.mark.e2e
def test_search_config_error_leaves_no_run(tmp_path):
    db = tmp_path / "mlflow.db"
    res = run_cli(
        [
            "+exp=search",
            f"tracking.tracking_uri=sqlite:///{db}",
            "region.ring_widths_mm=[1]",
            "search.space.ring_width_mm={type: categorical, choices: [1, 7]}",
        ],
        tmp_path,
    )
    assert res.returncode == 2, res.stdout[-2000:] + res.stderr[-2000:]
    assert "7" in res.stdout + res.stderr and "Traceback" not in res.stdout + res.stderr
    if db.exists():  # nothing may have been opened in it
        client = MlflowClient(f"sqlite:///{db}")
        exps = client.search_experiments()
        assert not client.search_runs([e.experiment_id for e in exps])


def _first_run(db: Path) -> str | None:
    """The first run ID in a SQLite store, read with sqlite3 in read-only mode (no MLflow
    client here: it would create or migrate the store the study is creating)."""
    if not db.exists():
        return None
    try:
        with contextlib.closing(sqlite3.connect(f"file:{db}?mode=ro", uri=True)) as con:
            row = con.execute("SELECT run_uuid FROM runs ORDER BY start_time LIMIT 1").fetchone()
    except sqlite3.Error:  # tables not made yet
        return None
    return row[0] if row else None


@pytest.mark.slow
@pytest.mark.e2e
def test_paper_run_exists_from_the_start_and_ends_killed_on_sigterm(tmp_path):
    """The parent run opens before extraction: SIGTERM during the work leaves a KILLED run
    (not none, not RUNNING), with no results written."""
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "her2study",
            "+exp=paper",
            "extractor=fast",
            "data.synthetic.n_cases=40",
            "execution.progress=false",
            "execution.n_jobs=1",
            f"tracking.tracking_uri={uri}",
            f"cache_dir={tmp_path / 'cache'}",
        ],
        cwd=tmp_path,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        env=ENV,
    )
    try:
        run_id = None
        deadline = time.monotonic() + 300
        while run_id is None and time.monotonic() < deadline and proc.poll() is None:
            time.sleep(0.5)
            run_id = _first_run(tmp_path / "mlflow.db")
        assert run_id is not None, "no run while the study works"
        assert not list(tmp_path.rglob("table3.csv"))  # the work had not finished
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=120)
        assert proc.returncode != 0
    finally:
        if proc.poll() is None:
            end(proc)
    run = MlflowClient(uri).get_run(run_id)
    assert run.info.status == "KILLED", err[-2000:]
    assert run.data.tags[ENDED_BY] == "SIGTERM" and run.data.tags["task"] == "paper"
    assert not list(tmp_path.rglob("table3.csv"))


@pytest.mark.slow
@pytest.mark.e2e
@pytest.mark.timeout(1800)
def test_two_paper_studies_started_at_once_in_a_fresh_folder(tmp_path):
    """The issue's case: two ``+exp=paper`` at once where no ``mlflow.db`` exists yet (the
    default store ``sqlite:///mlflow.db`` of the folder). Without the store lock one of them
    died inside MLflow's migration. (Separate feature caches: only the store is shared.)"""
    procs = [
        subprocess.Popen(
            [
                sys.executable,
                "-m",
                "her2study",
                "+exp=paper",
                "extractor=fast",
                "data.synthetic.n_cases=40",
                "execution.progress=false",
                "execution.n_jobs=1",
                "evaluation.cv_folds=3",
                "selection.lasso_cv=5",
                "evaluation.bootstrap_reps=2",
                "tracking.log_model=false",
                f"region.ring_widths_mm=[{k + 1}]",
                f"cache_dir=cache{k}",
                f"hydra.run.dir=outputs/job{k}",
            ],
            cwd=tmp_path,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=ENV,
        )
        for k in range(2)
    ]
    results = [p.communicate(timeout=1500) for p in procs]
    for p, (out, err) in zip(procs, results, strict=True):
        assert p.returncode == 0, out[-1500:] + err[-3000:]
        assert "Traceback" not in err
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    exp = client.get_experiment_by_name("paper")
    parents = [r for r in client.search_runs([exp.experiment_id]) if r.data.tags.get("task")]
    assert sorted(r.info.run_name for r in parents) == ["paper rings=1mm", "paper rings=2mm"]
    assert {r.info.status for r in parents} == {"FINISHED"}


def test_a_run_that_fails_after_opening_has_its_config_params(tmp_path, monkeypatch):
    """task=paper opens its run, then the up-front checks fail (24 cases: too few per class
    for LASSO's 10-fold CV): the FAILED run in the SQLite store already has the config as
    params, not only tags; what the task learns later (the cohort's size) is not there."""
    from conftest import compose_config, noise_features

    from her2study import __version__
    from her2study.__main__ import run

    X, clinical, y = noise_features(n=24, p=5)
    X.join(clinical).assign(label=y).reset_index().to_csv(tmp_path / "f.csv", index=False)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.chdir(tmp_path)
    cfg = compose_config(
        "+exp=paper",
        "data=features",
        f"data.features_table={tmp_path / 'f.csv'}",
        "data.clinical_columns=[age]",
        "execution.progress=false",
        f"tracking.tracking_uri={uri}",
        "study=fails",
    )
    assert run(cfg) == 2
    runs = MlflowClient(uri).search_runs(
        [MlflowClient(uri).get_experiment_by_name("fails").experiment_id]
    )
    assert len(runs) == 1
    failed = runs[0]
    assert failed.info.status == "FAILED" and failed.data.tags[ERROR_CLASS] == "PreflightError"
    params = failed.data.params
    assert params["seed"] == "42" and params["study"] == "fails"
    assert params["selection.lasso_cv"] == str(cfg.selection.lasso_cv)
    assert params["data.clinical_columns"] == "['age']" and params["task.name"] == "paper"
    assert params["her2study.version"] == __version__
    assert "data.n_cases" not in params  # never reached


def test_a_param_logged_again_is_kept_and_a_changed_one_resolved(tmp_path):
    """MLflow refuses to change a param: the tracker logs the same value once and a value the
    task resolved later as ``resolved.<key>`` beside the configured one."""
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    with Tracker(uri, "exp", study="s", params={"seed": 1, "space": "[0, 1]"}) as tr:
        tr.log_params({"seed": 1, "space": "[0]", "n_cases": 30})
        tr.log_params({"space": "[0]"})
    params = MlflowClient(uri).get_run(tr.run_id).data.params
    assert params == {"seed": "1", "space": "[0, 1]", "resolved.space": "[0]", "n_cases": "30"}
