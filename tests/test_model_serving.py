"""The exported model served as MLflow serves it: ``mlflow models serve`` on 127.0.0.1, a real
HTTP POST to /invocations, probabilities and classes at the model's own threshold back."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.error
import urllib.request
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from conftest import noise_features
from mlflow_server import HOST, free_port, stop_process_group

pytestmark = pytest.mark.server

START_TIMEOUT_S = 120.0


def _post(url: str, body: dict, timeout: float = 30.0) -> tuple[int, dict]:
    req = urllib.request.Request(
        url,
        data=json.dumps(body).encode(),
        method="POST",
        headers={"Content-Type": "application/json"},
    )
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read() or b"{}")


@pytest.fixture
def served_model(tmp_path):
    """A her2study pipeline (its own selection estimators inside) saved by save_model and
    served by ``mlflow models serve --env-manager local``; yields (url, model, card, X)."""
    from her2study.model_artifact import load_model, save_model
    from her2study.models import make_radiomics_pipeline

    X, _, y = noise_features(n=80, p=6)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        pipe = make_radiomics_pipeline(mw_alpha=0.5, lasso_cv=3).fit(X, y)
    card = {
        "columns": list(X.columns),
        "extraction": {
            "params": {},
            "regions": ["intra", "peri1mm", "peri2mm"],
            "fov": "nonzero",
            "mask_label": None,
            "ring_widths_mm": [1.0, 2.0],
        },
    }
    p = pipe.predict_proba(X)[:, 1]
    threshold = float(np.quantile(p[p > 0.5], 0.5))  # a cut well above 0.5
    folder = save_model(tmp_path / "model", pipe, card, threshold)
    model, card = load_model(folder)
    port = free_port()
    bin_dir = str(Path(sys.executable).parent)  # uvicorn, started by `mlflow models serve`
    env = {**os.environ, "PATH": bin_dir + os.pathsep + os.environ.get("PATH", "")}
    log = tmp_path / "serve.log"
    cmd = [sys.executable, "-m", "mlflow", "models", "serve", "-m", str(folder)]
    cmd += ["--env-manager", "local", "-h", HOST, "-p", str(port)]
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            cmd,
            cwd=tmp_path,
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
            env=env,
        )
    url = f"http://{HOST}:{port}"
    try:
        deadline = time.monotonic() + START_TIMEOUT_S
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"mlflow models serve exited:\n{log.read_text()[-3000:]}")
            try:
                with urllib.request.urlopen(url + "/ping", timeout=2) as resp:
                    if resp.status == 200:
                        break
            except (urllib.error.URLError, OSError):
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"no answer on {url}/ping:\n{log.read_text()[-3000:]}")
            time.sleep(0.25)
        yield url, model, card, X
    finally:
        stop_process_group(proc)


def test_served_model_answers_with_probabilities_at_its_threshold(served_model):
    url, model, card, X = served_model
    rows = X.iloc[:40]
    local = model.predict(rows)
    body = {"dataframe_split": {"columns": list(rows.columns), "data": rows.to_numpy().tolist()}}
    status, answer = _post(url + "/invocations", body)
    assert status == 200, answer
    got = pd.DataFrame(answer["predictions"])
    assert list(got.columns) == ["probability", "predicted_class"]
    prob = got["probability"].to_numpy()
    assert ((prob > 0) & (prob < 1)).all() and len(np.unique(prob)) > 10  # not 0/1 labels
    np.testing.assert_allclose(prob, local["probability"], rtol=0, atol=1e-9)
    assert (got["predicted_class"] == (prob >= card["threshold"])).all()
    between = (prob >= 0.5) & (prob < card["threshold"])
    assert between.any() and (got.loc[between, "predicted_class"] == 0).all()  # not a 0.5 cut
    # a threshold given with the request
    status, moved = _post(url + "/invocations", {**body, "params": {"threshold": 0.5}})
    assert status == 200
    assert (pd.DataFrame(moved["predictions"])["predicted_class"] == (prob >= 0.5)).all()
    # the signature is enforced: a missing column is the client's error, not a guess
    short = {"dataframe_split": {"columns": list(rows.columns[1:]), "data": [[0.0] * 17]}}
    status, error = _post(url + "/invocations", short)
    assert status == 400 and rows.columns[0] in json.dumps(error)
