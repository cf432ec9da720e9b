"""Manifest validation (every problem at once), image formats, DICOM ultrasound spacing."""

import hashlib
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import SimpleITK as sitk
from conftest import ellipse_case, write_nifti

from her2study.cohort import CohortError, load_cohort, read_image
from her2study.cohort.io import ImageReadError
from her2study.cohort.table import load_features_table


def test_valid_manifest_loads(make_cohort):
    manifest = make_cohort(n=4, reader2=True)
    cohort = load_cohort(manifest, clinical_columns=["age", "er_pct"])
    assert cohort.ids == ["C000", "C001", "C002", "C003"]
    assert list(cohort.labels) == [0, 1, 0, 1]
    assert cohort.cases[0].mask_reader2.name == "C000_mask2.nii.gz"
    assert cohort.cases[0].image.is_absolute()
    assert list(cohort.table.columns) == ["label", "age", "er_pct"]


def _break(kind):
    """Manifest editors, each producing one kind of bad input."""

    def edit(df, root):
        if kind == "missing_file":
            df.loc[0, "image"] = "img/nope.nii.gz"
        elif kind == "duplicate":
            df.loc[1, "case_id"] = df.loc[0, "case_id"]
        elif kind == "bad_label":
            df["label"] = df["label"].astype(object)
            df.loc[2, "label"] = "HER2+"
        elif kind == "empty_mask":
            write_nifti(np.zeros((120, 140), np.uint8), root / "img/C003_mask.nii.gz")
        elif kind == "size_mismatch":
            write_nifti(np.zeros((60, 70), np.uint8), root / "img/C001_mask.nii.gz")
        elif kind == "spacing_mismatch":
            _, m = ellipse_case(seed=1)
            write_nifti(m, root / "img/C001_mask.nii.gz", spacing=(0.3, 0.3))
        elif kind == "origin_mismatch":
            _, m = ellipse_case(seed=1)
            write_nifti(m, root / "img/C001_mask.nii.gz", origin=(5.0, 0.0))
        elif kind == "multi_label":
            _, m = ellipse_case(seed=2)
            m = m.astype(np.uint8)
            m[:5, :5] = 2
            write_nifti(m, root / "img/C002_mask.nii.gz")
        elif kind == "multiframe":
            vol = sitk.GetImageFromArray(np.ones((3, 120, 140), np.float32))
            sitk.WriteImage(vol, str(root / "img/C000.nii.gz"))
        elif kind == "corrupt":
            (root / "img/C000.nii.gz").write_bytes(b"not an image at all")
        elif kind == "one_class":
            df["label"] = 1
        elif kind == "clinical_nan":
            df.loc[1, "age"] = np.nan
        elif kind == "clinical_text":
            df["age"] = df["age"].astype(object)
            df.loc[1, "age"] = "fifty"
        elif kind == "bad_split":
            df["split"] = ["train", "test", "validation", "train", "test", "train"]
        elif kind == "no_rows":
            df = df.iloc[0:0]
        elif kind in ("decimal_comma", "zero_spacing", "negative_spacing"):
            value = {"decimal_comma": "0,2", "zero_spacing": "0", "negative_spacing": "-0.2"}
            df["spacing_x_mm"] = ["0.2"] * len(df)
            df["spacing_y_mm"] = ["0.2"] * len(df)
            df.loc[1, "spacing_x_mm"] = value[kind]
        elif kind == "semicolons":
            df.to_csv(root / "semicolons.csv", sep=";", index=False)
        return df

    return edit


BAD_INPUTS = [
    ("missing_file", "C000", "file not found"),
    ("duplicate", "C000", "duplicate case id"),
    ("bad_label", "C002", "is not 0 or 1"),
    ("empty_mask", "C003", "mask is empty"),
    ("size_mismatch", "C001", "differs from image size"),
    ("spacing_mismatch", "C001", "mask spacing"),
    ("origin_mismatch", "C001", "mask origin"),
    ("multi_label", "C002", "several labels"),
    ("multiframe", "C000", "multi-frame"),
    ("corrupt", "C000", "unreadable image"),
    ("one_class", "", "only one class"),
    ("clinical_nan", "C001", "'age' is missing"),
    ("clinical_text", "C001", "not numeric"),
    ("bad_split", "C002", "not train/test"),
    ("no_rows", "", "has no cases"),
    ("decimal_comma", "C001", "use a dot as the decimal separator (0.2)"),
    ("zero_spacing", "C001", "spacing must be > 0 mm"),
    ("negative_spacing", "C001", "spacing must be > 0 mm"),
]


@pytest.mark.parametrize("kind,case,fragment", BAD_INPUTS, ids=[b[0] for b in BAD_INPUTS])
def test_bad_input_names_case_and_fix(make_cohort, kind, case, fragment):
    manifest = make_cohort(n=6, extra=_break(kind))
    with pytest.raises(CohortError) as info:
        load_cohort(manifest, clinical_columns=["age"])
    text = str(info.value)
    assert fragment in text
    assert "fix:" in text
    if case:
        assert f"case {case}" in text


def test_all_problems_reported_at_once(make_cohort):
    def many(df, root):
        for kind in ("missing_file", "bad_label", "empty_mask", "size_mismatch"):
            df = _break(kind)(df, root)
        return df

    manifest = make_cohort(n=6, extra=many)
    with pytest.raises(CohortError) as info:
        load_cohort(manifest)
    msgs = [str(p) for p in info.value.problems]
    assert len(msgs) == 4, msgs
    assert "4 problem(s)" in str(info.value)


def test_missing_clinical_column_and_required_columns(make_cohort):
    manifest = make_cohort(n=4)
    with pytest.raises(CohortError, match="clinical column 'bmi' named in config is absent"):
        load_cohort(manifest, clinical_columns=["bmi"])
    df = pd.read_csv(manifest).drop(columns=["mask"])
    df.to_csv(manifest, index=False)
    with pytest.raises(CohortError, match=r"missing column\(s\) \['mask'\]"):
        load_cohort(manifest)


def test_edge_touching_mask_is_a_warning(make_cohort, caplog):
    def edge(df, root):
        img, m = ellipse_case(seed=0, center=(12.0, 1.0))
        write_nifti(img, root / "img/C000.nii.gz")
        write_nifti(m, root / "img/C000_mask.nii.gz")
        return df

    cohort = load_cohort(make_cohort(n=4, extra=edge))
    assert any("touches the image edge" in str(w) for w in cohort.warnings)
    assert "C000" in caplog.text


def test_png_needs_spacing(make_cohort):
    manifest = make_cohort(n=4, fmt="png", spacing=(0.15, 0.25))
    cohort = load_cohort(manifest)
    image, info = read_image(cohort.cases[0].image, cohort.cases[0].spacing_mm)
    assert image.GetSpacing() == pytest.approx((0.15, 0.25))
    assert info.spacing_source == "manifest"
    df = pd.read_csv(manifest).drop(columns=["spacing_x_mm", "spacing_y_mm"])
    df.to_csv(manifest, index=False)
    with pytest.raises(CohortError, match="pixel spacing unknown.*spacing_x_mm") as info:
        load_cohort(manifest)
    assert len(info.value.problems) == 4
    # a cohort-wide spacing in config works too
    assert load_cohort(manifest, spacing_mm=0.1).cases[0].spacing_mm == (0.1, 0.1)


def test_rgb_png_converted_to_gray(tmp_path, caplog):
    rgb = np.zeros((20, 30, 3), np.uint8)
    rgb[..., 0], rgb[..., 1], rgb[..., 2] = 100, 150, 200
    sitk.WriteImage(sitk.GetImageFromArray(rgb, isVector=True), str(tmp_path / "c.png"))
    with caplog.at_level("INFO"):
        image, info = read_image(tmp_path / "c.png", (0.1, 0.1))
    arr = sitk.GetArrayFromImage(image)
    assert arr.shape == (20, 30)
    assert arr[0, 0] == pytest.approx(0.299 * 100 + 0.587 * 150 + 0.114 * 200, abs=0.01)
    assert info.converted_from == "RGB"
    assert "converted to grayscale" in caplog.text


def _write_us_dicom(path, arr, delta_cm=(0.01, 0.02), regions=True, frames=1):
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, UltrasoundImageStorage, generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = UltrasoundImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = UltrasoundImageStorage
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.PatientName = "Doe^Jane"
    ds.PatientID = "PIDX9Q7Z"
    ds.Modality = "US"
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 8, 8, 7, 0
    data = np.stack([arr] * frames) if frames > 1 else arr
    if frames > 1:
        ds.NumberOfFrames = frames
    ds.Rows, ds.Columns = arr.shape
    if regions:
        region = Dataset()
        region.RegionSpatialFormat = 1
        region.PhysicalUnitsXDirection = 3
        region.PhysicalUnitsYDirection = 3
        region.PhysicalDeltaX = delta_cm[0]
        region.PhysicalDeltaY = delta_cm[1]
        ds.SequenceOfUltrasoundRegions = [region]
    ds.PixelData = data.astype(np.uint8).tobytes()
    ds.save_as(str(path), enforce_file_format=True)


def test_dicom_ultrasound_spacing(tmp_path):
    arr = (np.arange(40 * 50) % 251).reshape(40, 50).astype(np.uint8)
    _write_us_dicom(tmp_path / "us.dcm", arr, delta_cm=(0.01, 0.02))
    image, info = read_image(tmp_path / "us.dcm")
    assert image.GetSpacing() == pytest.approx((0.1, 0.2))  # cm -> mm
    assert info.spacing_source == "dicom_us_regions"
    assert np.array_equal(sitk.GetArrayFromImage(image), arr.astype(np.float32))


def test_dicom_without_regions_needs_spacing(tmp_path):
    arr = np.ones((40, 50), np.uint8)
    _write_us_dicom(tmp_path / "us.dcm", arr, regions=False)
    with pytest.raises(ImageReadError, match="DICOM without an ultrasound region calibration"):
        read_image(tmp_path / "us.dcm")
    image, _ = read_image(tmp_path / "us.dcm", (0.07, 0.07))
    assert image.GetSpacing() == pytest.approx((0.07, 0.07))
    _write_us_dicom(tmp_path / "cine.dcm", arr, frames=3)
    with pytest.raises(ImageReadError, match="multi-frame DICOM"):
        read_image(tmp_path / "cine.dcm")


def test_dicom_cohort_end_to_end(tmp_path):
    img, mask = ellipse_case(shape=(100, 120), spacing=(0.1, 0.2), axes_mm=(4, 5), seed=3)
    _write_us_dicom(tmp_path / "a.dcm", img.astype(np.uint8), delta_cm=(0.01, 0.02))
    m = sitk.GetImageFromArray(mask)
    sitk.WriteImage(m, str(tmp_path / "a_mask.png"))  # ITK-SNAP-like mask without spacing
    _write_us_dicom(tmp_path / "b.dcm", img.astype(np.uint8), delta_cm=(0.01, 0.02))
    sitk.WriteImage(m, str(tmp_path / "b_mask.png"))
    pd.DataFrame(
        {
            "case_id": ["A", "B"],
            "image": ["a.dcm", "b.dcm"],
            "mask": ["a_mask.png", "b_mask.png"],
            "label": [0, 1],
        }
    ).to_csv(tmp_path / "m.csv", index=False)
    cohort = load_cohort(tmp_path / "m.csv")
    assert len(cohort.cases) == 2


def test_inputs_untouched(make_cohort):
    manifest = make_cohort(n=4, reader2=True)
    root = manifest.parent
    before = {p: hashlib.sha256(p.read_bytes()).hexdigest() for p in root.rglob("*") if p.is_file()}
    load_cohort(manifest, clinical_columns=["age"])
    after = {p: hashlib.sha256(p.read_bytes()).hexdigest() for p in root.rglob("*") if p.is_file()}
    assert before == after


def test_features_table(tmp_path):
    rng = np.random.default_rng(0)
    df = pd.DataFrame(rng.normal(size=(10, 3)), columns=["f1", "f2", "f3"])
    df.insert(0, "case_id", [f"P{i}" for i in range(10)])
    df["label"] = [0, 1] * 5
    df["age"] = rng.integers(30, 70, 10)
    path = tmp_path / "feat.parquet"
    df.to_parquet(path)
    cohort, feats = load_features_table(path, clinical_columns=["age"])
    assert list(feats.columns) == ["intra_f1", "intra_f2", "intra_f3"]  # no prefix: the tumour
    assert list(cohort.table.columns) == ["label", "age"]
    assert cohort.ids[0] == "P0"
    df["f2"] = "x"
    df.to_csv(tmp_path / "bad.csv", index=False)
    with pytest.raises(CohortError, match="feature column 'f2' is not numeric"):
        load_features_table(tmp_path / "bad.csv", clinical_columns=["age"])
    with pytest.raises(CohortError, match="features table not found"):
        load_features_table(Path(tmp_path / "none.csv"))


def test_new_cases_need_no_labels_and_bad_cases_are_set_aside(make_cohort):
    """Predict-time cohorts: no label column; a case's own problems are collected, not raised."""

    def unlabeled(df, root):
        df = _break("empty_mask")(df, root)
        df = _break("missing_file")(df, root)
        df.loc[4, "age"] = np.nan
        return df.drop(columns=["label"])

    manifest = make_cohort(n=6, extra=unlabeled)
    with pytest.raises(CohortError, match="missing column"):
        load_cohort(manifest)  # a study needs labels
    with pytest.raises(CohortError) as info:
        load_cohort(manifest, require_labels=False, clinical_columns=["age"])
    assert len(info.value.problems) == 3
    cohort = load_cohort(
        manifest, require_labels=False, clinical_columns=["age"], on_error="collect"
    )
    assert cohort.ids == ["C001", "C002", "C005"] == [c.case_id for c in cohort.cases]
    assert list(cohort.failed) == ["C000", "C003", "C004"]
    assert "file not found" in cohort.failed["C000"] and "nope.nii.gz" in cohort.failed["C000"]
    assert "empty" in cohort.failed["C003"] and "age" in cohort.failed["C004"]
    assert "label" not in cohort.table.columns and not cohort.has_labels
    assert all(c.label is None for c in cohort.cases)
    with pytest.raises(ValueError, match="no label column"):
        cohort.labels  # noqa: B018
    # labels, when present, are kept as they are (one class, or none at all, is fine here)
    df = pd.read_csv(manifest).assign(label=1)
    df.to_csv(manifest, index=False)
    cohort = load_cohort(manifest, require_labels=False, on_error="collect")
    assert list(cohort.table["label"]) == [1, 1, 1, 1]


def test_collect_still_raises_for_problems_of_the_whole_manifest(make_cohort):
    manifest = make_cohort(n=4, extra=_break("duplicate"))
    with pytest.raises(CohortError, match="duplicate case id"):
        load_cohort(manifest, require_labels=False, on_error="collect")


def test_ignored_columns_are_not_read(make_cohort):
    def extra(df, root):
        df["mask_reader2"] = "img/absent.nii.gz"
        df["split"] = "later"
        return df

    manifest = make_cohort(n=4, extra=extra)
    with pytest.raises(CohortError, match="second reader's mask: file not found"):
        load_cohort(manifest)
    cohort = load_cohort(manifest, ignore_columns=("mask_reader2", "split"))
    assert cohort.ids == ["C000", "C001", "C002", "C003"]
    assert all(c.mask_reader2 is None and c.split is None for c in cohort.cases)


def test_semicolon_manifest_names_the_delimiter(make_cohort):
    manifest = make_cohort(n=6, extra=_break("semicolons")).parent / "semicolons.csv"
    with pytest.raises(CohortError) as info:
        load_cohort(manifest, clinical_columns=["age"])
    text = str(info.value)
    assert "delimited by semicolons (';')" in text and "comma-separated" in text
    assert len(info.value.problems) == 1
