"""The entry point as a user runs it: real subprocesses, real files."""

import subprocess
import sys

import pandas as pd
import pytest


def run_cli(args, cwd, timeout=300):
    return subprocess.run(
        [sys.executable, "-m", "her2study", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def test_extract_on_small_synthetic_cohort(tmp_path):
    args = [
        "task=extract",
        "extractor=fast",
        "data.synthetic.n_cases=10",
        "region.overlays=2",
        "execution.progress=false",
    ]
    first = run_cli(args, tmp_path)
    assert first.returncode == 0, first.stderr[-3000:]
    assert "SYNTHETIC" in first.stdout
    assert "0 region entries from cache, 30 extracted" in first.stdout
    outputs = sorted((tmp_path / "outputs").glob("*/*/features.parquet"))
    table = pd.read_parquet(outputs[0])
    assert table.shape[0] == 10
    assert {"label", "age", "er_pct"} <= set(table.columns)
    assert any(c.startswith("peri1mm_original_") for c in table.columns)
    assert len(list((tmp_path / "outputs").glob("*/*/overlays/*.png"))) == 2
    second = run_cli(args, tmp_path)
    assert "30 region entries from cache, 0 extracted" in second.stdout


def test_config_typo_fails_at_compose_time(tmp_path):
    res = run_cli(["region.ring_widht_mm=1"], tmp_path, timeout=60)
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
        ["task=extract", "data=manifest", f"data.manifest={tmp_path / 'm.csv'}"], tmp_path, 60
    )
    assert res.returncode == 2
    err = res.stderr + res.stdout
    assert "duplicate case id" in err and "is not 0 or 1" in err and "file not found" in err
    assert "Traceback" not in err


@pytest.mark.parametrize("task", ["nonsense"])
def test_unknown_task(tmp_path, task):
    res = run_cli([f"task={task}"], tmp_path, 60)
    assert res.returncode == 2
    assert "unknown task 'nonsense'" in res.stderr + res.stdout
