"""The entry point as a user runs it: real subprocesses, real files."""

import pandas as pd
import pytest
from conftest import QUICK_FIT, SMALL, run_cli


def test_extract_on_small_synthetic_cohort(tmp_path):
    args = [
        "task=extract",
        "extractor=fast",
        "data.synthetic.n_cases=10",
        "region.overlays=2",
        "execution.progress=false",
    ]
    first = run_cli(args, tmp_path, code=None, timeout=300)
    assert first.returncode == 0, first.stderr[-3000:]
    assert "SYNTHETIC" in first.stdout
    assert "0 region entries from cache, 30 extracted" in first.stdout
    outputs = sorted((tmp_path / "outputs").glob("*/*/features.parquet"))
    table = pd.read_parquet(outputs[0])
    assert table.shape[0] == 10
    assert {"label", "age", "er_pct"} <= set(table.columns)
    assert any(c.startswith("peri1mm_original_") for c in table.columns)
    assert len(list((tmp_path / "outputs").glob("*/*/overlays/*.png"))) == 2
    second = run_cli(args, tmp_path, code=None, timeout=300)
    assert "30 region entries from cache, 0 extracted" in second.stdout


def test_config_typo_fails_at_compose_time(tmp_path):
    res = run_cli(["region.ring_widht_mm=1"], tmp_path, code=None, timeout=60)
    assert res.returncode != 0
    assert "ring_widht_mm" in res.stderr
    assert not (tmp_path / ".her2study_cache").exists()


def test_bad_manifest_exits_2_with_every_problem(tmp_path):
    pd.DataFrame(
        {
            "case_id": ["a", "a", "b"],
            "image": ["x.nii.gz", "y.nii.gz", "z.png"],
            "mask": ["xm.nii.gz", "ym.nii.gz", "zm.png"],
            "label": [0, 1, 2],
        }
    ).to_csv(tmp_path / "m.csv", index=False)
    res = run_cli(
        ["task=extract", "data=manifest", f"data.manifest={tmp_path / 'm.csv'}"],
        tmp_path,
        code=None,
        timeout=60,
    )
    assert res.returncode == 2
    err = res.stderr + res.stdout
    assert "duplicate case id" in err and "is not 0 or 1" in err and "file not found" in err
    assert "Traceback" not in err


@pytest.mark.parametrize("task", ["nonsense"])
def test_unknown_task(tmp_path, task):
    res = run_cli([f"task={task}"], tmp_path, code=None, timeout=60)
    assert res.returncode == 2  # a config that cannot be composed is a user error
    err = res.stderr + res.stdout
    assert "Could not find 'task/nonsense'" in err and "paper" in err and "search" in err


@pytest.mark.slow
@pytest.mark.e2e
def test_pseudonymise_ids_and_keep_the_salt_secret(tmp_path, synthetic_cache):
    import os

    args = [
        "+exp=paper",
        *SMALL,  # the shared cohort; its features from the shared cache (read-only)
        *QUICK_FIT,
        f"cache_dir={synthetic_cache}",
        "data.pseudonymise=true",
        "tracking.log_model=false",
        f"tracking.tracking_uri=sqlite:///{tmp_path / 'm.db'}",
    ]
    res = run_cli(args, tmp_path, code=None, timeout=300)
    assert res.returncode == 2 and "HER2STUDY_SALT" in res.stderr + res.stdout
    env = {**os.environ, "HER2STUDY_SALT": "very-secret-salt"}
    run_cli(args, tmp_path, env=env)
    split = pd.read_csv(next((tmp_path / "outputs").glob("*/*/split.csv")))
    assert split["case_id"].str.match(r"^anon-[0-9a-f]{12}$").all()
    # the salt is nowhere in the outputs or the tracking store
    for path in tmp_path.rglob("*"):
        if (
            path.is_file()
            and path.stat().st_size < 5_000_000
            and ".her2study_cache" not in str(path)
        ):
            assert b"very-secret-salt" not in path.read_bytes(), path
