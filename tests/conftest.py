"""Shared fixtures: small real cohorts written as image files in a temporary folder."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import SimpleITK as sitk

os.environ.setdefault("MPLBACKEND", "Agg")
REPO = Path(__file__).resolve().parents[1]


def ellipse_case(shape=(120, 140), spacing=(0.2, 0.2), center=None, axes_mm=(5.0, 3.5), seed=0):
    """A speckle-like image (Rayleigh) with a darker elliptical lesion, and its mask."""
    rng = np.random.default_rng(seed)
    h, w = shape
    sx, sy = spacing
    cy, cx = center if center is not None else (h * sy / 2, w * sx / 2)
    yy, xx = np.mgrid[:h, :w]
    y, x = (yy + 0.5) * sy - cy, (xx + 0.5) * sx - cx
    mask = (x / axes_mm[0]) ** 2 + (y / axes_mm[1]) ** 2 <= 1
    img = rng.rayleigh(60.0, shape)
    img[mask] *= 0.4
    img = np.clip(img + 5, 1, 255).astype(np.float32)
    return img, mask.astype(np.uint8)


def write_nifti(arr, path, spacing=(0.2, 0.2), origin=(0.0, 0.0)):
    im = sitk.GetImageFromArray(arr)
    im.SetSpacing(spacing)
    im.SetOrigin(origin)
    sitk.WriteImage(im, str(path))
    return path


@pytest.fixture
def make_cohort(tmp_path):
    """Factory: write ``n`` ellipse cases as NIfTI (or PNG) plus a manifest; return its path."""

    def _make(n=6, fmt="nifti", spacing=(0.2, 0.2), reader2=False, extra=None):
        root = tmp_path / "cohort"
        (root / "img").mkdir(parents=True, exist_ok=True)
        rows = []
        for i in range(n):
            img, mask = ellipse_case(spacing=spacing, seed=i, axes_mm=(4.0 + 0.3 * i, 3.0))
            cid = f"C{i:03d}"
            row = {"case_id": cid, "label": i % 2, "age": 40 + i, "er_pct": 10 * i}
            if fmt == "png":
                sitk.WriteImage(
                    sitk.GetImageFromArray(img.astype(np.uint8)), str(root / f"img/{cid}.png")
                )
                sitk.WriteImage(sitk.GetImageFromArray(mask), str(root / f"img/{cid}_mask.png"))
                row.update(image=f"img/{cid}.png", mask=f"img/{cid}_mask.png")
                row.update(spacing_x_mm=spacing[0], spacing_y_mm=spacing[1])
            else:
                write_nifti(img, root / f"img/{cid}.nii.gz", spacing)
                write_nifti(mask, root / f"img/{cid}_mask.nii.gz", spacing)
                row.update(image=f"img/{cid}.nii.gz", mask=f"img/{cid}_mask.nii.gz")
            if reader2:
                _, m2 = ellipse_case(spacing=spacing, seed=i, axes_mm=(4.1 + 0.3 * i, 3.1))
                write_nifti(m2, root / f"img/{cid}_mask2.nii.gz", spacing)
                row["mask_reader2"] = f"img/{cid}_mask2.nii.gz"
            rows.append(row)
        df = pd.DataFrame(rows)
        if extra is not None:
            df = extra(df, root)
        df.to_csv(root / "manifest.csv", index=False)
        return root / "manifest.csv"

    return _make


FAST_PARAMS = {
    "setting": {"binWidth": 10, "force2D": False, "label": 1, "minimumROISize": 4},
    "imageType": {"Original": {}},
    "featureClass": {"firstorder": None, "shape2D": None, "glcm": None},
}


@pytest.fixture
def compose():
    """Compose the project's Hydra config with overrides (no run, no output folder)."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    from her2study.config import register_configs

    register_configs()

    def _compose(*overrides):
        with initialize_config_dir(str(REPO / "conf"), version_base="1.3"):
            return hydra_compose("config", overrides=list(overrides))

    return _compose


def noise_features(n=120, p=40, seed=0, signal=("intra_f0", "peri1mm_f0")):
    """A features table with named region columns; the ``signal`` columns carry the label."""
    rng = np.random.default_rng(seed)
    y = np.r_[np.ones(n * 6 // 10, int), np.zeros(n - n * 6 // 10, int)]
    rng.shuffle(y)
    cols = [f"{r}_f{i}" for r in ("intra", "peri1mm", "peri2mm") for i in range(p)]
    X = pd.DataFrame(rng.normal(size=(n, len(cols))), columns=cols)
    for c in signal:
        X[c] += 1.2 * y
    X.index = pd.Index([f"P{i:03d}" for i in range(n)], name="case_id")
    clinical = pd.DataFrame(
        {
            "age": rng.normal(52, 12, n).round(),
            "er_pct": np.clip(rng.normal(70 + 8 * y, 25), 0, 100),
        },
        index=X.index,
    )
    return X, clinical, pd.Series(y, index=X.index, name="label")
