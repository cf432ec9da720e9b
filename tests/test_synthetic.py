"""The synthetic cohort: determinism, files, geometry and the planted class signal."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import SimpleITK as sitk
from scipy import ndimage
from scipy.stats import mannwhitneyu
from sklearn.metrics import roc_auc_score

from her2study.cohort.synthetic import (
    CLINICAL_COLUMNS,
    SyntheticSpec,
    case_labels,
    case_rng,
    clinical_table,
    synthesize_case,
    write_synthetic_cohort,
)

FRONT = ["case_id", "image", "mask", "mask_reader2", "label"]


def _read(path: Path) -> tuple[np.ndarray, sitk.Image]:
    img = sitk.ReadImage(str(path))
    return sitk.GetArrayFromImage(img), img


def _band_means(case: dict, spec: SyntheticSpec, bands) -> list[float]:
    """Mean grey level of the image in bands (inner, outer] mm outside the reader-1 mask."""
    sampling = (spec.spacing_y_mm, spec.spacing_x_mm)
    d = ndimage.distance_transform_edt(case["mask"] == 0, sampling=sampling)
    img = case["image"].astype(float)
    return [img[(d > lo) & (d <= hi)].mean() for lo, hi in bands]


def _intra_heterogeneity(case: dict, spec: SyntheticSpec) -> float:
    """SD of the lightly smoothed image in the lesion core (> 1.5 mm inside the mask)."""
    sampling = (spec.spacing_y_mm, spec.spacing_x_mm)
    din = ndimage.distance_transform_edt(case["mask"] == 1, sampling=sampling)
    smooth = ndimage.gaussian_filter(
        case["image"].astype(float), (0.6 / sampling[0], 0.6 / sampling[1])
    )
    return float(smooth[din > 1.5].std())


def test_labels_follow_the_paper():
    labels = case_labels(SyntheticSpec())
    assert len(labels) == 209 and labels.sum() == 129 and (labels == 0).sum() == 80
    assert case_labels(SyntheticSpec(n_cases=40)).sum() == 25  # round(40 * 129 / 209)
    assert case_labels(SyntheticSpec(n_cases=12, n_positive=5)).sum() == 5
    assert not np.array_equal(labels, case_labels(SyntheticSpec(seed=7)))
    with pytest.raises(ValueError):
        case_labels(SyntheticSpec(n_cases=10, n_positive=11))


def test_same_spec_same_arrays_different_seed_different_images():
    spec = SyntheticSpec(n_cases=12)
    a, b = synthesize_case(spec, 3), synthesize_case(spec, 3, case_rng(spec, 3))
    for key in ("image", "mask", "mask_reader2", "lesion"):
        assert a[key].dtype == np.uint8
        np.testing.assert_array_equal(a[key], b[key])
    assert a["clinical"] == b["clinical"]
    other = synthesize_case(dataclasses.replace(spec, seed=spec.seed + 1), 3)
    assert not np.array_equal(a["image"], other["image"])
    assert not np.array_equal(a["image"], synthesize_case(spec, 4)["image"])


def test_write_is_deterministic_and_independent_of_n_jobs(tmp_path):
    spec = SyntheticSpec(n_cases=12)
    m1 = write_synthetic_cohort(spec, tmp_path / "a")
    m2 = write_synthetic_cohort(spec, tmp_path / "b", n_jobs=2)
    assert m1.read_bytes() == m2.read_bytes()
    df = pd.read_csv(m1)
    for rel in df["image"].tolist() + df["mask_reader2"].tolist():
        np.testing.assert_array_equal(_read(m1.parent / rel)[0], _read(m2.parent / rel)[0])
    # the files hold exactly what synthesize_case returns
    case = synthesize_case(spec, 5)
    np.testing.assert_array_equal(_read(m1.parent / df["image"][5])[0], case["image"])
    np.testing.assert_array_equal(_read(m1.parent / df["mask"][5])[0], case["mask"])
    # the clinical table (no images) matches the manifest
    table = clinical_table(spec)
    pd.testing.assert_frame_equal(
        table.reset_index(drop=True),
        df[table.columns].reset_index(drop=True),
        check_dtype=False,
    )


@pytest.mark.parametrize("spacing", [(0.2, 0.2), (0.25, 0.15)])
def test_nifti_files_geometry_and_manifest(tmp_path, spacing):
    sx, sy = spacing
    spec = SyntheticSpec(n_cases=12, spacing_x_mm=sx, spacing_y_mm=sy)
    manifest = write_synthetic_cohort(spec, tmp_path / "syn")
    df = pd.read_csv(manifest)
    assert list(df.columns) == FRONT + list(CLINICAL_COLUMNS)
    assert df["case_id"].tolist() == [f"SYN{i:04d}" for i in range(1, 13)]
    assert df["label"].tolist() == case_labels(spec).tolist()
    assert not df[list(CLINICAL_COLUMNS)].isna().any().any()
    assert json.loads((manifest.parent / "spec.json").read_text())["spec"]["spacing_y_mm"] == sy
    for _, row in df.iterrows():
        arrays = {}
        for col in ("image", "mask", "mask_reader2"):
            assert not Path(row[col]).is_absolute()
            assert (manifest.parent / row[col]).is_file()
            arr, img = _read(manifest.parent / row[col])
            assert img.GetDimension() == 2
            assert img.GetSpacing() == pytest.approx((sx, sy))
            assert img.GetOrigin() == pytest.approx((0.0, 0.0))
            arrays[col] = arr
        image = arrays["image"]
        assert image.dtype == np.uint8 and image.shape == (round(40 / sy), round(48 / sx))
        assert image.min() >= 1  # 0 is reserved for "outside the field of view"
        for col in ("mask", "mask_reader2"):
            m = arrays[col]
            assert m.shape == image.shape and set(np.unique(m)) == {0, 1}
            ys, xs = np.nonzero(m)  # at least 4 mm of tissue on every side
            assert ys.min() * sy >= 4.0 and (m.shape[0] - 1 - ys.max()) * sy >= 4.0
            assert xs.min() * sx >= 4.0 and (m.shape[1] - 1 - xs.max()) * sx >= 4.0
        # the lesion's physical size is the manifest's size_long_mm / size_short_mm
        ys, xs = np.nonzero(arrays["mask"])
        pts = np.c_[xs * sx, ys * sy]
        ang = np.linspace(0, np.pi, 180, endpoint=False)
        proj = pts @ np.c_[np.cos(ang), np.sin(ang)].T
        extent = proj.max(axis=0) - proj.min(axis=0) + max(sx, sy)
        assert extent.max() == pytest.approx(row["size_long_mm"], rel=0.12)
        assert extent.min() == pytest.approx(row["size_short_mm"], rel=0.12)


def test_png_format_writes_spacing_columns(tmp_path):
    spec = SyntheticSpec(n_cases=12, image_format="png", spacing_x_mm=0.18, spacing_y_mm=0.22)
    manifest = write_synthetic_cohort(spec, tmp_path / "png")
    df = pd.read_csv(manifest)
    assert list(df.columns[:7]) == FRONT + ["spacing_x_mm", "spacing_y_mm"]
    assert (df["spacing_x_mm"] == 0.18).all() and (df["spacing_y_mm"] == 0.22).all()
    image, _ = _read(manifest.parent / df["image"][0])
    mask, _ = _read(manifest.parent / df["mask"][0])
    assert df["image"][0].endswith(".png") and image.dtype == np.uint8
    assert mask.shape == image.shape and set(np.unique(mask)) == {0, 1}
    np.testing.assert_array_equal(image, synthesize_case(spec, 0)["image"])


def test_loader_reads_the_synthetic_cohort(tmp_path):
    from her2study.cohort import load_cohort

    manifest = write_synthetic_cohort(SyntheticSpec(n_cases=12), tmp_path / "syn")
    cohort = load_cohort(manifest, clinical_columns=list(CLINICAL_COLUMNS), synthetic=True)
    assert (
        len(cohort.cases) == 12
        and cohort.labels.sum() == case_labels(SyntheticSpec(n_cases=12)).sum()
    )


STRONG = {"band_strength": 7.0, "intra_strength": 2.0}  # the generator's physics, clearly


@pytest.fixture(scope="module")
def features60():
    """Label, band means (0-1 mm, 2-4 mm) and intratumoral heterogeneity of 60 cases, at a strong
    planted signal (the default's 3 / 0.3 dB is too weak to test the physics on 60 cases)."""
    spec = SyntheticSpec(n_cases=60, **STRONG)
    rows = []
    for i in range(spec.n_cases):
        case = synthesize_case(spec, i)
        near, far = _band_means(case, spec, [(0.0, 1.0), (2.0, 4.0)])
        rows.append([case["label"], near, far, _intra_heterogeneity(case, spec)])
    return np.array(rows).T


def test_planted_signal_near_band_not_far_band(features60):
    y, near, far, _ = features60
    assert mannwhitneyu(near[y == 1], near[y == 0]).pvalue < 0.01
    assert roc_auc_score(y, near) > 0.7
    assert abs(roc_auc_score(y, far) - 0.5) < 0.15


def test_label_changes_only_band_and_lesion():
    """Counterfactual: the same case rendered with the other label differs only in the band
    (plus the point-spread function's reach) and inside the lesion."""
    spec = SyntheticSpec(n_cases=12, **STRONG)
    for i in (0, 1, 2):
        a = synthesize_case(spec, i, label=0)
        b = synthesize_case(spec, i, label=1)
        np.testing.assert_array_equal(a["lesion"], b["lesion"])
        np.testing.assert_array_equal(a["mask_reader2"], b["mask_reader2"])
        assert b["truth"]["band_db"] > 0 and a["truth"]["band_db"] == 0
        assert a["truth"]["intra_db"] > 0 and b["truth"]["intra_db"] == 0
        d = ndimage.distance_transform_edt(
            a["lesion"] == 0, sampling=(spec.spacing_y_mm, spec.spacing_x_mm)
        )
        reach = spec.band_outer_mm + 3 * spec.psf_lateral_mm + 0.3
        far = d > reach
        np.testing.assert_array_equal(a["image"][far], b["image"][far])
        band = (d > 0) & (d <= spec.band_outer_mm)
        assert b["image"][band].mean() > a["image"][band].mean() + 5


def test_intratumoral_signal_is_weaker_and_in_label_0(features60):
    y, near, _, het = features60
    auc = roc_auc_score(y == 0, het)  # HER2-zero: more heterogeneous inside (paper, Fig. 4)
    assert 0.55 < auc < roc_auc_score(y, near)


def test_no_signal_when_strengths_are_zero():
    spec = SyntheticSpec(n_cases=12, band_strength=0.0, intra_strength=0.0)
    a = synthesize_case(spec, 0, label=0)
    b = synthesize_case(spec, 0, label=1)
    np.testing.assert_array_equal(a["image"], b["image"])


def test_reader2_dice():
    spec = SyntheticSpec(n_cases=20)
    dice = []
    for i in range(spec.n_cases):
        c = synthesize_case(spec, i)
        m1, m2 = c["mask"].astype(bool), c["mask_reader2"].astype(bool)
        dice.append(2 * (m1 & m2).sum() / (m1.sum() + m2.sum()))
        t = c["lesion"].astype(bool)
        assert 2 * (m1 & t).sum() / (m1.sum() + t.sum()) > 0.95  # reader 1 is close to truth
    assert 0.85 <= min(dice) and max(dice) <= 0.995
    assert 0.9 <= np.median(dice) <= 0.99


def test_clinical_marginals_and_er_signal():
    table = clinical_table(SyntheticSpec())
    assert table["label"].sum() == 129 and len(table) == 209
    med = table.groupby("label").median(numeric_only=True)
    assert med.loc[0, "er_pct"] == 90 and med.loc[1, "er_pct"] == 90
    assert table["size_long_mm"].median() == pytest.approx(18, abs=2.5)
    assert table["size_short_mm"].median() == pytest.approx(14, abs=2.5)
    assert (table["size_short_mm"] <= table["size_long_mm"]).all()
    assert table["age"].median() == pytest.approx(50, abs=3)
    for col in ("postmenopausal", "node_positive", "left_side", "posterior_shadowing"):
        assert set(table[col]) <= {0, 1}
    assert 0.35 < table["posterior_shadowing"].mean() < 0.65
    assert 0.2 < table["calcification"].mean() < 0.45

    def er_log_or(t: pd.DataFrame) -> float:
        import statsmodels.api as sm

        fit = sm.Logit(t["label"], sm.add_constant(t[["er_pct"]].astype(float))).fit(disp=0)
        return float(fit.params["er_pct"])

    assert np.exp(er_log_or(table)) == pytest.approx(1.016, abs=0.006)
    assert np.exp(er_log_or(clinical_table(SyntheticSpec(er_signal=False)))) == pytest.approx(
        1.0, abs=0.006
    )


def test_rerun_does_not_rewrite_and_stale_partials_are_harmless(tmp_path):
    spec = SyntheticSpec(n_cases=12)
    out = tmp_path / "syn"
    # a killed earlier run left a temporary sibling (its process is gone) ...
    dead = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"],
        capture_output=True,
        text=True,
        check=True,
    )
    stale = tmp_path / f".syn.partial-{int(dead.stdout)}-abc"
    (stale / "images").mkdir(parents=True)
    (stale / "manifest.csv").write_text("case_id,image\n")
    # ... and a half cohort without a manifest in place
    (out / "images").mkdir(parents=True)
    (out / "images" / "SYN0001.nii.gz").write_bytes(b"broken")
    manifest = write_synthetic_cohort(spec, out)
    assert manifest == out.resolve() / "manifest.csv"
    assert not stale.exists()
    assert _read(out / "images" / "SYN0001.nii.gz")[0].shape == (200, 240)
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".syn.")]

    stamps = {p: p.stat().st_mtime_ns for p in out.rglob("*")}
    time.sleep(0.05)
    assert write_synthetic_cohort(spec, out) == manifest
    assert {p: p.stat().st_mtime_ns for p in out.rglob("*")} == stamps

    # another spec replaces the cohort, atomically
    write_synthetic_cohort(dataclasses.replace(spec, seed=5), out)
    assert json.loads((out / "spec.json").read_text())["spec"]["seed"] == 5
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".syn.")]


def test_refuses_a_folder_with_other_files(tmp_path):
    (tmp_path / "mine.txt").write_text("keep me")
    with pytest.raises(FileExistsError):
        write_synthetic_cohort(SyntheticSpec(n_cases=12), tmp_path)
    assert (tmp_path / "mine.txt").read_text() == "keep me"


def test_interrupted_write_leaves_nothing_that_looks_complete(tmp_path, monkeypatch):
    import her2study.cohort.synthetic as syn

    calls = {"n": 0}
    real = syn._write_case

    def flaky(*args):
        calls["n"] += 1
        if calls["n"] == 5:
            raise KeyboardInterrupt
        return real(*args)

    monkeypatch.setattr(syn, "_write_case", flaky)
    with pytest.raises(KeyboardInterrupt):
        write_synthetic_cohort(SyntheticSpec(n_cases=12), tmp_path / "syn")
    assert not (tmp_path / "syn").exists()
    assert os.listdir(tmp_path) == []


def test_spec_is_a_structured_config():
    from omegaconf import OmegaConf

    cfg = OmegaConf.structured(SyntheticSpec)
    assert cfg.n_cases == 209 and cfg.n_positive is None and cfg.band_outer_mm == 1.0
    cfg.n_positive = 100
    with pytest.raises(Exception):  # noqa: B017 - typed: a string is rejected
        cfg.band_strength = "strong"


def test_invalid_specs_are_refused(tmp_path):
    for bad in (
        {"image_format": "jpeg"},
        {"band_inner_mm": 1.0, "band_outer_mm": 0.5},
        {"spacing_x_mm": 0.0},
    ):
        with pytest.raises(ValueError):
            write_synthetic_cohort(SyntheticSpec(n_cases=12, **bad), tmp_path / "x")


@pytest.mark.slow
def test_full_cohort_separability_and_speed(tmp_path):
    # the generator's physics at a strong planted signal (7 dB band, 2 dB intratumoral); the
    # default cohort's moderate signal (3 / 0.3 dB) is exercised by the end-to-end tests
    spec = SyntheticSpec(band_strength=7.0, intra_strength=2.0)
    manifest = write_synthetic_cohort(spec, tmp_path / "syn")  # speed: experiments/benchmarks
    assert len(pd.read_csv(manifest)) == 209
    rows = []
    for i in range(spec.n_cases):
        c = synthesize_case(spec, i)
        rows.append(
            [c["label"], *_band_means(c, spec, [(0, 1), (2, 4)]), _intra_heterogeneity(c, spec)]
        )
    y, near, far, het = np.array(rows).T
    assert 0.72 < roc_auc_score(y, near) < 0.9
    assert abs(roc_auc_score(y, far) - 0.5) < 0.1
    assert 0.58 < roc_auc_score(y == 0, het) < 0.78
