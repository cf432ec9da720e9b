"""Real pyradiomics extraction on real files: naming, cache hit/miss, resume after kill -9."""

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pandas as pd
import pytest
from conftest import FAST_PARAMS, REPO

from her2study.cohort import load_cohort
from her2study.features import FeatureCache, extract_features
from her2study.regions import region_specs


@pytest.fixture
def cohort(make_cohort):
    return load_cohort(make_cohort(n=6))


def test_extraction_names_and_values(cohort, tmp_path):
    specs = region_specs(True, [1.0, 0.5], [[1.0, 2.0]])
    fs = extract_features(cohort, specs, FAST_PARAMS, tmp_path / "cache")
    assert fs.table.shape[0] == 6
    cols = fs.table.columns
    for prefix in ("intra_", "peri1mm_", "peri0p5mm_", "band1to2mm_"):
        assert any(c.startswith(prefix + "original_firstorder_") for c in cols)
    assert "intra_original_shape2D_PixelSurface" in cols
    # the lesion is darker than its surroundings (the fixture scales it by 0.4)
    assert (
        fs.table["intra_original_firstorder_Mean"] < fs.table["peri1mm_original_firstorder_Mean"]
    ).all()
    # ring areas agree with pyradiomics' own pixel surface
    stats = fs.region_stats.set_index(["case_id", "region"])
    for cid in cohort.ids:
        assert stats.loc[(cid, "peri1mm"), "area_mm2"] == pytest.approx(
            fs.table.loc[cid, "peri1mm_original_shape2D_PixelSurface"], rel=1e-6
        )
    assert fs.n_extracted == 6 * 4 and fs.n_cached == 0


def test_cache_hit_miss_and_ring_change(cohort, tmp_path):
    cache = tmp_path / "cache"
    first = extract_features(cohort, region_specs(True, [1.0, 2.0]), FAST_PARAMS, cache, n_jobs=2)
    assert (first.n_cached, first.n_extracted) == (0, 18)
    again = extract_features(cohort, region_specs(True, [1.0, 2.0]), FAST_PARAMS, cache)
    assert (again.n_cached, again.n_extracted) == (18, 0)
    pd.testing.assert_frame_equal(first.table, again.table)
    # changing only one ring width re-extracts only that ring
    changed = extract_features(cohort, region_specs(True, [1.0, 1.5]), FAST_PARAMS, cache)
    assert (changed.n_cached, changed.n_extracted) == (12, 6)
    # changing extractor settings misses everything
    other = {**FAST_PARAMS, "setting": {**FAST_PARAMS["setting"], "binWidth": 5}}
    assert extract_features(cohort, region_specs(True, []), other, cache).n_extracted == 6


def test_changed_image_bytes_miss(cohort, tmp_path, make_cohort):
    cache = tmp_path / "cache"
    extract_features(cohort, region_specs(True, []), FAST_PARAMS, cache)
    case = cohort.cases[0]
    import SimpleITK as sitk

    img = sitk.ReadImage(str(case.image))
    sitk.WriteImage(img * 2, str(case.image))
    again = extract_features(cohort, region_specs(True, []), FAST_PARAMS, cache)
    assert (again.n_cached, again.n_extracted) == (5, 1)


def test_corrupt_entry_is_recomputed(cohort, tmp_path):
    cache = tmp_path / "cache"
    extract_features(cohort, region_specs(True, []), FAST_PARAMS, cache)
    entries = sorted((cache / "features").glob("*/*.json"))
    entries[0].write_text('{"features": {"a": 1')  # a torn write by some other tool
    again = extract_features(cohort, region_specs(True, []), FAST_PARAMS, cache)
    assert again.n_extracted == 1
    json.loads(entries[0].read_text())


def test_user_params_file_and_rejected_settings(cohort, tmp_path):
    from her2study.features import load_params

    params_file = tmp_path / "params.yaml"
    params_file.write_text(
        "setting:\n  binWidth: 10\n  label: 1\nimageType:\n  Original: {}\n"
        "featureClass:\n  firstorder: [Mean, Median]\n"
    )
    params = load_params(str(params_file), {"ignored": True})
    fs = extract_features(cohort, region_specs(True, []), params, tmp_path / "c")
    assert sorted(fs.table.columns) == [
        "intra_original_firstorder_Mean",
        "intra_original_firstorder_Median",
    ]
    with pytest.raises(ValueError, match="pyradiomics rejected"):
        extract_features(
            cohort, region_specs(True, []), {"setting": {"binWdth": 3}}, tmp_path / "c"
        )


DRIVER = """
import sys, time
from her2study.cohort import load_cohort
from her2study.features import extract_features
from her2study.regions import region_specs
from conftest import FAST_PARAMS
cohort = load_cohort(sys.argv[1])
fs = extract_features(cohort, region_specs(True, [1.0, 2.0]), FAST_PARAMS, sys.argv[2], n_jobs=1)
print("DONE", fs.n_cached, fs.n_extracted)
"""


def test_resume_after_kill(make_cohort, tmp_path):
    cohort = load_cohort(make_cohort(n=30))
    cache = tmp_path / "cache"
    env = {**os.environ, "PYTHONPATH": f"{REPO / 'tests'}{os.pathsep}{REPO}"}
    proc = subprocess.Popen(
        [
            sys.executable,
            "-c",
            DRIVER,
            str(cohort.cases[0].image.parents[1] / "manifest.csv"),
            str(cache),
        ],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    store = FeatureCache(cache)
    deadline = time.time() + 120
    while len(store) < 12 and time.time() < deadline and proc.poll() is None:
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    done = len(store)
    assert 0 < done < 90, "the run should be killed part-way"
    # no partial entry: every stored entry parses
    for path in (cache / "features").glob("*/*.json"):
        json.loads(path.read_text())
    resumed = extract_features(cohort, region_specs(True, [1.0, 2.0]), FAST_PARAMS, cache)
    assert resumed.n_cached == done
    assert resumed.n_cached + resumed.n_extracted == 90
    fresh = extract_features(
        cohort, region_specs(True, [1.0, 2.0]), FAST_PARAMS, tmp_path / "fresh"
    )
    pd.testing.assert_frame_equal(resumed.table, fresh.table)
    assert np.isfinite(fresh.table.to_numpy()).mean() > 0.95


def test_dask_backend_matches_local(cohort, tmp_path):
    """Optional extra: the same jobs on a local Dask cluster through joblib give the same table."""
    pytest.importorskip("distributed")
    specs = region_specs(True, [1.0])
    local = extract_features(cohort, specs, FAST_PARAMS, tmp_path / "a", n_jobs=1)
    dask = extract_features(cohort, specs, FAST_PARAMS, tmp_path / "b", n_jobs=2, backend="dask")
    assert dask.n_extracted == 12
    pd.testing.assert_frame_equal(local.table, dask.table)


def test_collect_lists_failed_cases_with_reasons(make_cohort, tmp_path):
    """on_error="collect": a case whose tumour is too small for pyradiomics is left out and
    named with the reason; the others are extracted as usual. "raise" stops with all of them."""
    from conftest import write_nifti

    from her2study.features.extraction import ExtractionError

    def tiny(df, root):
        mask = np.zeros((120, 140), np.uint8)
        mask[60, 70] = mask[60, 71] = 1  # 2 pixels < minimumROISize 4
        write_nifti(mask, root / "img/C002_mask.nii.gz")
        return df

    cohort = load_cohort(make_cohort(n=4, extra=tiny))
    specs = region_specs(True, [1.0])
    with pytest.raises(ExtractionError, match="case C002"):
        extract_features(cohort, specs, FAST_PARAMS, tmp_path / "cache")
    fs = extract_features(cohort, specs, FAST_PARAMS, tmp_path / "cache", on_error="collect")
    assert list(fs.table.index) == ["C000", "C001", "C003"]
    assert list(fs.failed) == ["C002"] and "only 2 pixels" in fs.failed["C002"]
    assert np.isfinite(fs.table.to_numpy()).all()
    assert set(fs.region_stats["case_id"]) == {"C000", "C001", "C003"}
