"""DICOM header data never reaches outputs, logs, MLflow or the cache; identifying ids warn."""

import logging

import numpy as np
import pandas as pd
from conftest import ellipse_case
from test_cohort import _write_us_dicom

from her2study.__main__ import run


def test_dicom_headers_stay_in_the_reader(tmp_path, monkeypatch, compose):
    root = tmp_path / "pacs"
    root.mkdir()
    rows = []
    for i in range(30):
        img, mask = ellipse_case(shape=(100, 120), spacing=(0.2, 0.2), seed=i, axes_mm=(4, 3))
        img[mask.astype(bool)] *= 1.0 + 0.5 * (i % 2)  # a class signal
        _write_us_dicom(root / f"{i}.dcm", np.clip(img, 0, 255).astype(np.uint8), (0.02, 0.02))
        import SimpleITK as sitk

        sitk.WriteImage(sitk.GetImageFromArray(mask), str(root / f"{i}_mask.png"))
        rows.append(
            {
                "case_id": f"K{i:03d}",
                "image": f"{i}.dcm",
                "mask": f"{i}_mask.png",
                "label": i % 2,
                "age": 40 + i,
            }
        )
    pd.DataFrame(rows).to_csv(root / "manifest.csv", index=False)
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    cfg = compose(
        "+exp=paper",
        "evaluation.bootstrap_reps=0",
        "data=manifest",
        f"data.manifest={root / 'manifest.csv'}",
        "data.clinical_columns=[age]",
        "extractor=fast",
        "execution.progress=false",
        "selection.lasso_cv=3",
        "evaluation.cv_folds=3",
        "tracking.log_model=false",
        f"tracking.tracking_uri=sqlite:///{work / 'mlflow.db'}",
        "split.test_size=0.3",
        "selection.mw_alpha=1.0",
    )
    assert run(cfg) == 0
    written = [p for p in work.rglob("*") if p.is_file()]
    assert any(p.name == "table3.csv" for p in written) and any(
        p.suffix == ".json" for p in written
    )
    for path in written:
        data = path.read_bytes()
        for secret in (b"Doe^Jane", b"PIDX9Q7Z"):  # distinctive: no base64 false hits
            assert secret not in data, (secret, path)


def test_identifying_ids_warn_without_printing_them(
    make_cohort, tmp_path, monkeypatch, compose, caplog
):
    def names(df, root):
        df["case_id"] = ["Doe^Jane", "MRN1234567", "C002", "C003", "Smith John", "C005"]
        return df

    m = make_cohort(n=6, extra=names)
    monkeypatch.chdir(tmp_path)
    cfg = compose(
        "task=extract",
        "data=manifest",
        f"data.manifest={m}",
        "extractor=fast",
        "execution.progress=false",
    )
    with caplog.at_level(logging.WARNING):
        assert run(cfg) == 0
    assert "3 case id(s) look like patient names" in caplog.text
    assert "Doe" not in caplog.text and "1234567" not in caplog.text


IDENTIFYING = [
    "DOE_JANE",
    "doe.jane",
    "jane doe",
    "Jane Doe",
    "Smith_1970-01-01",
    "smith 01.01.1970",
    "12345",
    "MRN12345",
    "MRN 12345",
    "Müller Anna",
    "MÜLLER_ANNA",
    "müller-anna",
    "Øyvind Ås",
    "José García",
    "O'Brien, Mary",
    "Doe^Jane",
]
PSEUDONYMOUS = [
    "C001",
    "P0123",
    "case_17",
    "HER2-045",
    "HER2_POS_03",
    "SYN0001",
    "B12345",
    "00017",
    "lesion-7",
    "anon-3f2a9c1b0d4e",
    "anon-abcdefabcdef",
    "P17",
    "ab12",
    "A",
    "case 2",
]


def test_looks_identifying_flags_names_dates_and_mrns_but_not_codes():
    from her2study.privacy import looks_identifying

    assert looks_identifying(IDENTIFYING) == IDENTIFYING
    assert looks_identifying(PSEUDONYMOUS) == []
