"""Same config and seed -> identical numbers and selected features, with 1 or 2 workers;
input files are byte-identical after a run."""

import hashlib

import pandas as pd
import pytest

from her2study.__main__ import run

ARGS = [
    "+exp=paper",
    "evaluation.bootstrap_reps=0",
    "extractor=fast",
    "data.synthetic.n_cases=50",
    "execution.progress=false",
    "tracking=off",
    "selection.lasso_cv=5",
    "evaluation.cv_folds=3",
]


def _run(compose, monkeypatch, folder, *extra):
    folder.mkdir()
    monkeypatch.chdir(folder)
    assert run(compose(*ARGS, f"cache_dir={folder / 'cache'}", *extra)) == 0
    return next(folder.glob("outputs/*"))


@pytest.mark.slow
@pytest.mark.e2e
def test_identical_twice_and_with_two_workers(compose, monkeypatch, tmp_path):
    a = _run(compose, monkeypatch, tmp_path / "a", "execution.n_jobs=1")
    cohort = next((tmp_path / "a" / "cache" / "synthetic").iterdir())
    before = {
        p: hashlib.sha256(p.read_bytes()).hexdigest() for p in cohort.rglob("*") if p.is_file()
    }
    b = _run(compose, monkeypatch, tmp_path / "b", "execution.n_jobs=2")
    # a second run over the same inputs (cache a) must leave them byte-identical
    c = _run(
        compose,
        monkeypatch,
        tmp_path / "c",
        "execution.n_jobs=2",
        f"data.synthetic_dir={tmp_path / 'a' / 'cache' / 'synthetic'}",
    )
    after = {
        p: hashlib.sha256(p.read_bytes()).hexdigest() for p in cohort.rglob("*") if p.is_file()
    }
    assert before == after
    for other in (b, c):
        pd.testing.assert_frame_equal(
            pd.read_csv(a / "metrics.csv"), pd.read_csv(other / "metrics.csv")
        )
        for f in sorted(a.glob("features_*.csv")):
            pd.testing.assert_frame_equal(pd.read_csv(f), pd.read_csv(other / f.name))
        assert (a / "split.csv").read_bytes() == (other / "split.csv").read_bytes()
