"""Real ultrasound inputs: huge images (header-only check, size limit), image/mask geometry from
the headers, NaN/inf pixels, burned-in annotations, and grey-level bins of derived images.

Everything runs on real files (NIfTI, NRRD, MHA, PNG written to a temporary folder), the real
manifest check and real pyradiomics."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import SimpleITK as sitk
import yaml
from conftest import REPO, ellipse_case, write_nifti
from PIL import Image, ImageDraw, ImageFont

from her2study.cohort import CohortError, load_cohort
from her2study.cohort.io import read_header
from her2study.config import SyntheticSpec
from her2study.features.qa import (
    QA_COLUMNS,
    annotation_qa,
    annotation_summary,
    check_derived_bins,
)
from her2study.regions import region_specs

# ------------------------------------------------------------------------------------------
# header-only reads and the size limit


def _manifest(root, rows, spacing=None):
    df = pd.DataFrame(rows)
    if spacing is not None:
        df["spacing_x_mm"], df["spacing_y_mm"] = spacing
    df.to_csv(root / "manifest.csv", index=False)
    return root / "manifest.csv"


def _pair(root, n=2, fmt="nii.gz"):
    rows = []
    for i in range(n):
        img, mask = ellipse_case(seed=i)
        write_nifti(img, root / f"C{i}.{fmt}")
        write_nifti(mask, root / f"C{i}_mask.{fmt}")
        rows.append({"case_id": f"C{i}", "image": f"C{i}.{fmt}", "mask": f"C{i}_mask.{fmt}"})
        rows[-1]["label"] = i % 2
    return rows


def test_huge_image_is_refused_from_its_header_alone(tmp_path):
    """An MHA header that promises 10,000 x 10,000 pixels but holds none: reading its pixels
    would fail ('unreadable'), so the size message proves the check read the header only."""
    rows = _pair(tmp_path)
    (tmp_path / "huge.mha").write_text(
        "ObjectType = Image\nNDims = 2\nDimSize = 10000 10000\nElementSpacing = 0.1 0.1\n"
        "ElementType = MET_UCHAR\nElementDataFile = LOCAL\n"
    )
    rows[0]["image"] = "huge.mha"
    header = read_header(tmp_path / "huge.mha")
    assert header.size == (10000, 10000) and header.spacing == (0.1, 0.1)
    with pytest.raises(CohortError) as info:
        load_cohort(_manifest(tmp_path, rows), max_image_pixels=25_000_000)
    text = str(info.value)
    assert "case C0 [huge.mha]" in text
    assert "10000 x 10000 = 100.0 million pixels" in text
    assert "data.max_image_pixels=25_000_000" in text and "fix:" in text
    assert "unreadable" not in text


def test_image_within_the_limit_passes_and_plain_formats_use_their_header(tmp_path):
    img, mask = ellipse_case()
    Image.fromarray(img.astype(np.uint8)).save(tmp_path / "C0.png")
    Image.fromarray(mask * 255).save(tmp_path / "C0_mask.png")
    Image.fromarray(np.dstack([img.astype(np.uint8)] * 3)).save(tmp_path / "C1.jpg")
    Image.fromarray(mask * 255).save(tmp_path / "C1_mask.png")
    rows = [
        {"case_id": "C0", "image": "C0.png", "mask": "C0_mask.png", "label": 0},
        {"case_id": "C1", "image": "C1.jpg", "mask": "C1_mask.png", "label": 1},
    ]
    header = read_header(tmp_path / "C1.jpg")
    assert header.size == (140, 120) and header.channels == 3 and header.spacing is None
    cohort = load_cohort(_manifest(tmp_path, rows, spacing=(0.2, 0.2)))
    assert cohort.ids == ["C0", "C1"]
    with pytest.raises(CohortError, match=r"case C0 \[C0.png\]: image is 140 x 120"):
        load_cohort(tmp_path / "manifest.csv", max_image_pixels=10_000)


def test_compressed_dicom_without_a_decoder_is_named_from_its_header(tmp_path):
    """Header-only reading no longer decodes the pixels: a transfer syntax that no installed
    decoder reads (MPEG-2 video here) is still reported by the manifest check."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.encaps import encapsulate
    from pydicom.uid import MPEG2MPML, UltrasoundImageStorage, generate_uid

    rows = _pair(tmp_path)
    meta = FileMetaDataset()
    meta.TransferSyntaxUID = MPEG2MPML
    meta.MediaStorageSOPClassUID = UltrasoundImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = UltrasoundImageStorage, meta.MediaStorageSOPInstanceUID
    ds.Rows, ds.Columns, ds.SamplesPerPixel = 120, 140, 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 8, 8, 7, 0
    ds.PixelData = encapsulate([b"\x00" * 100])
    ds.save_as(str(tmp_path / "cine.dcm"), enforce_file_format=True)
    rows[1]["image"] = "cine.dcm"
    with pytest.raises(CohortError) as info:
        load_cohort(_manifest(tmp_path, rows, spacing=(0.2, 0.2)))
    assert "case C1 [cine.dcm]: DICOM pixel data compressed as MPEG2" in str(info.value)
    assert "fix: install a pydicom decoder plugin" in str(info.value)


def test_max_image_pixels_is_a_documented_config_key(compose):
    cfg = compose("data=manifest", "data.manifest=x.csv")
    assert cfg.data.max_image_pixels == 25_000_000
    assert "max_image_pixels" in (REPO / "README.md").read_text()


# ------------------------------------------------------------------------------------------
# mask geometry from the headers, whatever the manifest's spacing


@pytest.mark.parametrize(
    "spacing,origin,fragment",
    [((0.3, 0.3), (5.0, 2.0), "mask spacing"), ((0.2, 0.2), (5.0, 2.0), "mask origin")],
)
def test_mask_geometry_is_compared_even_with_manifest_spacing(tmp_path, spacing, origin, fragment):
    rows = _pair(tmp_path)
    _, mask = ellipse_case(seed=1)
    write_nifti(mask, tmp_path / "C1_mask.nii.gz", spacing=spacing, origin=origin)
    for with_columns in (None, (0.2, 0.2)):  # the manifest's spacing used to skip the check
        with pytest.raises(CohortError) as info:
            load_cohort(_manifest(tmp_path, rows, spacing=with_columns))
        assert f"case C1 [C1_mask.nii.gz]: mask: {fragment}" in str(info.value)


def test_matching_headers_with_manifest_spacing_still_load(tmp_path):
    cohort = load_cohort(_manifest(tmp_path, _pair(tmp_path), spacing=(0.25, 0.25)))
    assert [c.spacing_mm for c in cohort.cases] == [(0.25, 0.25)] * 2


# ------------------------------------------------------------------------------------------
# NaN / inf pixels


@pytest.mark.parametrize(
    "fmt,value,fragment",
    [
        ("mha", np.nan, "1 NaN pixel value(s)"),
        ("nrrd", np.inf, "1 infinite pixel value(s)"),
        ("nii", np.nan, "1 NaN"),  # ITK's NIfTI reader would turn these into 0
        ("nii.gz", -np.inf, "1 infinite"),
    ],
)
def test_non_finite_pixels_are_named(tmp_path, fmt, value, fragment):
    rows = _pair(tmp_path, fmt=fmt)
    img, _ = ellipse_case(seed=1)
    img[10, 12] = value
    write_nifti(img, tmp_path / f"C1.{fmt}")
    assert np.isfinite(
        sitk.GetArrayFromImage(sitk.ReadImage(str(tmp_path / f"C1.{fmt}")))
    ).all() == fmt.startswith("nii")
    with pytest.raises(CohortError) as info:
        load_cohort(_manifest(tmp_path, rows))
    text = str(info.value)
    assert f"case C1 [C1.{fmt}]: {fragment}" in text and "fix: re-export" in text
    assert "C0" not in text  # the finite float image passes


# ------------------------------------------------------------------------------------------
# burned-in annotations on real synthetic frames


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory):
    from her2study.cohort.synthetic import write_synthetic_cohort

    out = tmp_path_factory.mktemp("syn")
    spec = SyntheticSpec(n_cases=10, seed=7, calcification_prob=0.6)
    return load_cohort(write_synthetic_cohort(spec, out / "cohort"))


def _draw(arr, mask, kind, rgb=False):
    """The frame as 8-bit gray (or RGB) with ``kind`` drawn at the scanner's white (or yellow)
    across the tumour and its ring: a caliper cross, a dotted line, or text."""
    gray = np.clip(arr, 0, 255).astype(np.uint8)
    im = Image.fromarray(np.dstack([gray] * 3) if rgb else gray)
    draw = ImageDraw.Draw(im)
    ink = (255, 255, 0) if rgb else 255
    rows, cols = np.nonzero(mask)
    cy, cx = int(rows.mean()), int(cols.mean())
    if kind == "cross":
        draw.line([(cx - 6, cy), (cx + 6, cy)], fill=ink)
        draw.line([(cx, cy - 6), (cx, cy + 6)], fill=ink)
    elif kind == "dots":
        for x in range(cx, min(cols.max() + 8, gray.shape[1] - 1), 3):
            draw.rectangle([(x, cy), (x + 1, cy + 1)], fill=ink)
    elif kind == "text":
        font = ImageFont.load_default_imagefont()  # a scanner's crisp bitmap font
        draw.text((cx - 12, rows.max() - 4), "R 45y", fill=ink, font=font)
    return np.asarray(im)


def _annotated_cohort(root, synthetic, kinds, rgb=False):
    from her2study.cohort import read_image, read_mask

    rows = []
    for case, kind in zip(synthetic.cases, kinds, strict=False):
        image, _ = read_image(case.image)
        mask = sitk.GetArrayFromImage(read_mask(case.mask, image))
        arr = sitk.GetArrayFromImage(image)
        drawn = _draw(arr, mask, kind, rgb) if kind else np.clip(arr, 0, 255).astype(np.uint8)
        Image.fromarray(drawn).save(root / f"{case.case_id}.png")
        Image.fromarray(mask.astype(np.uint8)).save(root / f"{case.case_id}_mask.png")
        rows.append(
            {
                "case_id": case.case_id,
                "image": f"{case.case_id}.png",
                "mask": f"{case.case_id}_mask.png",
                "label": len(rows) % 2,
            }
        )
    return load_cohort(_manifest(root, rows, spacing=(0.2, 0.2)))


def test_drawn_calipers_dots_and_text_are_flagged_clean_speckle_is_not(tmp_path, synthetic):
    kinds = ["cross", "dots", "text", None, None, None]
    cohort = _annotated_cohort(tmp_path, synthetic, kinds)
    specs = region_specs(True, [1.0, 2.0])
    table, notes = annotation_qa(cohort, specs)
    per_case = table.groupby("case_id", sort=False)["annotation_px"].max()
    flagged = [c for c, k in zip(cohort.ids, kinds, strict=True) if k]
    assert (per_case[flagged] >= 5).all(), per_case
    assert (per_case.drop(flagged) == 0).all(), per_case
    assert len(notes) == 3 and all("burned-in annotation" in n and "fix:" in n for n in notes)
    assert notes[0].startswith(f"case {flagged[0]} [{flagged[0]}.png]")
    assert list(table.columns) == ["case_id", "region", *QA_COLUMNS]
    assert table.groupby("case_id", sort=False)["annotation_flagged"].all()[flagged].all()
    assert annotation_summary(table).startswith("3 of 6 cases carry burned-in annotations")


def test_coloured_marks_in_an_rgb_source_are_flagged(tmp_path, synthetic):
    cohort = _annotated_cohort(tmp_path, synthetic, ["cross", None], rgb=True)
    table, notes = annotation_qa(cohort, region_specs(True, [2.0]))
    assert len(notes) == 1 and notes[0].startswith(f"case {cohort.ids[0]} ")


def test_synthetic_speckle_and_calcifications_raise_no_alarm(synthetic, tmp_path):
    """The synthetic frames as written (float NIfTI, bright calcifications in most of them)."""
    manifest = pd.read_csv(synthetic.source)
    assert manifest["calcification"].sum() >= 3
    table, notes = annotation_qa(synthetic, region_specs(True, [1.0, 2.0]), cache_root=tmp_path)
    assert notes == [] and table["annotation_px"].sum() == 0
    again, _ = annotation_qa(synthetic, region_specs(True, [1.0, 2.0]), cache_root=tmp_path)
    pd.testing.assert_frame_equal(table, again)  # from the cache the second time
    assert len(list((tmp_path / "qa").rglob("*.json"))) == len(synthetic.cases)
    assert "none found" in annotation_summary(table)


# ------------------------------------------------------------------------------------------
# LBP and other derived images: bins per image type


def _paper_params(image_types):
    params = yaml.safe_load((REPO / "conf/extractor/paper.yaml").read_text())["params"]
    params["imageType"] = {k: v for k, v in params["imageType"].items() if k in image_types}
    params["featureClass"] = {"firstorder": None, "glcm": None, "glrlm": None}
    return params


def test_lbp_has_its_own_bin_width_and_is_no_longer_near_constant(synthetic, tmp_path):
    from her2study.features import extract_features

    new = _paper_params({"Original", "LBP2D"})
    assert new["imageType"]["LBP2D"] == {"binWidth": 1}
    old = {**new, "imageType": {**new["imageType"], "LBP2D": {}}}  # the global binWidth 10
    specs = region_specs(True, [2.0])
    tables = {
        name: extract_features(synthetic, specs, params, tmp_path / name).table
        for name, params in (("old", old), ("new", new))
    }

    def constant_share(table, image_type):
        cols = [c for c in table.columns if f"_{image_type}_" in c and "shape" not in c]
        spread = table[cols].std() / table[cols].abs().mean().replace(0, 1)
        return float((spread < 1e-6).mean()), len(cols)

    old_share, n_lbp = constant_share(tables["old"], "lbp-2D")
    new_share, _ = constant_share(tables["new"], "lbp-2D")
    assert n_lbp > 50 and old_share > 0.5, old_share  # one bin: constant across cases
    assert new_share < 0.2, new_share
    original = [c for c in tables["old"].columns if "_original_" in c]
    pd.testing.assert_frame_equal(tables["old"][original], tables["new"][original])

    warned = check_derived_bins(synthetic, specs, old)
    assert len(warned) == 1 and warned[0].startswith("image type LBP2D (lbp-2D): 1 grey-level")
    assert "binWidth=10" in warned[0] and "imageType: {LBP2D: {binWidth: 1}}" in warned[0]
    assert check_derived_bins(synthetic, specs, new) == []


# ------------------------------------------------------------------------------------------
# end to end: the QA table and the warnings of a run


def test_extract_task_reports_annotations_in_region_stats(
    tmp_path, synthetic, compose, caplog, monkeypatch
):
    """task=extract as the entry point runs it (in this process): the warnings name the
    annotated cases, and region_stats.csv carries the QA columns beside the coverage."""
    from her2study.tasks import extract

    (tmp_path / "data").mkdir()
    cohort = _annotated_cohort(tmp_path / "data", synthetic, ["cross", None, None, "text"])
    monkeypatch.chdir(tmp_path)
    cfg = compose(
        "task=extract",
        "extractor=fast",
        "data=manifest",
        f"data.manifest={cohort.source}",
        "region.ring_widths_mm=[2.0]",
        "execution.progress=false",
    )
    with caplog.at_level("WARNING"):
        assert extract.run(cfg) == 0
    notes = [r.getMessage() for r in caplog.records if "burned-in annotation" in r.getMessage()]
    flagged = [cohort.ids[0], cohort.ids[3]]
    assert [n.split(" [")[0] for n in notes] == [f"case {cid}" for cid in flagged]
    (stats,) = (tmp_path / "outputs").glob("*/region_stats.csv")
    table = pd.read_csv(stats, dtype={"case_id": str})
    assert {"coverage", *QA_COLUMNS} <= set(table.columns)
    per_case = table.groupby("case_id")["annotation_px"].max()
    assert (per_case[flagged] >= 5).all() and (per_case.drop(flagged) == 0).all()
    assert table.groupby("case_id")["annotation_flagged"].all()[flagged].all()


@pytest.mark.slow
def test_default_synthetic_cohort_has_no_annotation_alarms(tmp_path):
    """All 209 cases of the default synthetic cohort (speckle, calcifications in about a third,
    echogenic spikes): no case is flagged (measured: no overlay pixel at all)."""
    from her2study.cohort.source import ensure_synthetic

    class Data:
        synthetic = SyntheticSpec()
        synthetic_dir = str(tmp_path / "synthetic")

    cohort = load_cohort(ensure_synthetic(Data(), n_jobs=2))
    table, notes = annotation_qa(cohort, region_specs(True, [1.0, 2.0]), n_jobs=2)
    assert len(cohort.cases) == 209 and notes == []
    assert table["annotation_px"].sum() == 0
