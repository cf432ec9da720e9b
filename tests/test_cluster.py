"""The cluster paths for real, on loopback: one Optuna study on a PostgreSQL server searched by two
worker processes (the same trials give the same results as one worker), and feature extraction
on a Dask scheduler with process workers (``dask scheduler`` + ``dask worker``, as on several
machines), bit-identical to the local joblib backend.

PostgreSQL: ``HER2STUDY_TEST_POSTGRES`` (``.ci/run`` starts Debian's server and sets it; the test
then fails if the server cannot be reached), else the same default URL, skipped when no server
answers there."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import optuna
import pandas as pd
import pytest
from conftest import FAST_PARAMS, REPO
from test_search import _complete, _spawn, noise_overrides, noise_table  # noqa: F401

from her2study.search import open_storage

pytestmark = [pytest.mark.server, pytest.mark.slow]

PG_DEFAULT = "postgresql://her2study:her2study@127.0.0.1:5432/her2study_test"


@pytest.fixture(scope="module")
def pg_url():
    url = os.environ.get("HER2STUDY_TEST_POSTGRES")
    required = bool(url)
    url = url or PG_DEFAULT
    psycopg2 = pytest.importorskip("psycopg2", reason="psycopg2 (pip install -e '.[cluster]')")
    dsn = url.replace("postgresql+psycopg2://", "postgresql://")
    try:
        psycopg2.connect(dsn, connect_timeout=5).close()
    except psycopg2.OperationalError as exc:
        why = f"no PostgreSQL server answers at {url.split('@')[-1]} ({str(exc).strip()})"
        if required:
            pytest.fail(f"HER2STUDY_TEST_POSTGRES is set but {why}")
        pytest.skip(f"{why}: start one as .ci/run does (pg_ctlcluster 15 main start)")
    return url


def _trials(storage, name) -> dict:
    return {t.number: t for t in _complete(storage, name)}


def test_two_workers_on_postgresql_match_one_worker(noise_table, tmp_path, pg_url):  # noqa: F811
    """The same study (name, data, seed) searched by one worker, then -- deleted and searched
    again -- by two worker processes at once: trial n has the same parameters (per-trial seeded
    random sampler) and the same inner AUC whichever worker ran it."""
    study = f"pg_{uuid.uuid4().hex[:8]}"
    names = [f"{study}/outer0_0", f"{study}/outer0_1"]
    over = noise_overrides(noise_table, pg_url, study) + [
        "search.n_trials=6",
        "search.outer_folds=2",
        "search.sampler=random",
    ]
    storage = open_storage(pg_url)
    try:
        proc = _spawn(tmp_path, over)
        out, err = proc.communicate(timeout=600)
        assert proc.returncode == 0, err[-3000:]
        one = {n: _trials(storage, n) for n in names}
        assert all(len(one[n]) == 6 for n in names)
        for n in names:
            optuna.delete_study(study_name=n, storage=storage)

        for i in range(2):
            (tmp_path / f"w{i}").mkdir()
        procs = [_spawn(tmp_path / f"w{i}", over, slow=0.5) for i in range(2)]
        for p in procs:
            out, err = p.communicate(timeout=600)
            assert p.returncode == 0, err[-3000:]
        for n in names:
            two = _trials(storage, n)
            assert 6 <= len(two) <= 7, (n, sorted(two))  # a trial in flight may finish late
            workers = {t.user_attrs["worker"] for t in two.values()}
            assert len(workers) == 2, (n, workers)  # both processes searched this study
            common = sorted(set(one[n]) & set(two))
            assert common == list(range(6)), (n, sorted(one[n]), sorted(two))
            for k in common:
                assert two[k].params == one[n][k].params, (n, k)
                assert two[k].value == one[n][k].value, (n, k)
                assert two[k].user_attrs["fold_auc"] == one[n][k].user_attrs["fold_auc"]
            best = max(common, key=lambda k: (one[n][k].value, -k))
            assert best == max(common, key=lambda k: (two[k].value, -k))
    finally:
        for s in optuna.get_all_study_summaries(storage):
            if s.study_name.startswith(study + "/"):
                optuna.delete_study(study_name=s.study_name, storage=storage)


# ------------------------------------------------------------------------------------------
# Dask: a scheduler and process workers, as on several machines
# ------------------------------------------------------------------------------------------


def _dask_cli() -> list[str]:
    exe = Path(sys.executable).with_name("dask")
    return [str(exe)] if exe.exists() else [sys.executable, "-m", "dask"]


def _start(cmd, tmp_path, name):
    env = dict(
        os.environ, PYTHONPATH=os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])
    )
    log = open(tmp_path / f"{name}.log", "w")  # noqa: SIM115 - closed with the process
    proc = subprocess.Popen(
        cmd, cwd=tmp_path, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
    )
    return proc, log


def _stop(proc, log):
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)  # the process group this test started
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    log.close()


def test_dask_scheduler_and_worker_processes_match_local_extraction(make_cohort, tmp_path):
    pytest.importorskip("distributed", reason="the dask extra (pip install -e '.[cluster]')")
    import dask
    from distributed import Client

    from her2study.cohort import load_cohort
    from her2study.features import extract_features
    from her2study.regions import region_specs

    cohort = load_cohort(make_cohort(n=6))
    specs = region_specs(True, [1.0], [[1.0, 2.0]])
    local = extract_features(cohort, specs, FAST_PARAMS, tmp_path / "local", n_jobs=1)

    sched_file = tmp_path / "scheduler.json"
    cli = _dask_cli()
    procs = [
        _start(
            [
                *cli,
                "scheduler",
                "--host",
                "127.0.0.1",
                "--port",
                "0",
                "--no-dashboard",
                "--scheduler-file",
                str(sched_file),
            ],
            tmp_path,
            "scheduler",
        )
    ]
    try:
        deadline = time.time() + 120
        while not sched_file.exists() and time.time() < deadline:
            assert procs[0][0].poll() is None, (tmp_path / "scheduler.log").read_text()
            time.sleep(0.2)
        address = json.loads(sched_file.read_text())["address"]
        assert address.startswith("tcp://127.0.0.1:")
        procs.append(
            _start(
                [
                    *cli,
                    "worker",
                    address,
                    "--nworkers",
                    "2",
                    "--nthreads",
                    "1",
                    "--host",
                    "127.0.0.1",
                    "--no-dashboard",
                    "--local-directory",
                    str(tmp_path),
                ],
                tmp_path,
                "worker",
            )
        )
        with Client(address, timeout=60) as client:
            client.wait_for_workers(2, timeout=180)
            pids = set(client.run(os.getpid).values())
            assert len(pids) == 2 and os.getpid() not in pids  # two worker processes
            with dask.config.set({"scheduler-address": address}):
                remote = extract_features(
                    cohort, specs, FAST_PARAMS, tmp_path / "shared_cache", n_jobs=2, backend="dask"
                )
            ran = client.run(lambda: "her2study.features.extraction" in sys.modules)
        assert any(ran.values()), ran  # the cases were extracted in the worker processes
        assert remote.n_extracted == 6 * len(specs) and remote.n_cached == 0
        pd.testing.assert_frame_equal(local.table, remote.table, check_exact=True)
        pd.testing.assert_frame_equal(local.region_stats, remote.region_stats, check_exact=True)
        assert local.table.to_numpy().tobytes() == remote.table.to_numpy().tobytes()
        # the workers wrote the shared cache folder: a local run now finds every entry there
        again = extract_features(cohort, specs, FAST_PARAMS, tmp_path / "shared_cache", n_jobs=1)
        assert again.n_cached == 6 * len(specs) and again.n_extracted == 0
        pd.testing.assert_frame_equal(again.table, local.table, check_exact=True)
    finally:
        for proc, log in reversed(procs):
            _stop(proc, log)
