"""Contour perturbations (seeded, in mm) and the robustness filter (ICC across perturbations,
fitted on the rows it is given)."""

from __future__ import annotations

import dataclasses

import numpy as np
import pandas as pd
import pytest
from scipy import ndimage
from sklearn.metrics import roc_auc_score

from her2study.cohort.perturb import PerturbSpec, perturbed_masks
from her2study.selection.robustness import RobustnessFilter, perturbed_column


def ellipse(shape=(160, 200), spacing=(0.2, 0.2), axes_mm=(8.0, 5.0)):
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    y = (yy + 0.5) * spacing[0] - shape[0] * spacing[0] / 2
    x = (xx + 0.5) * spacing[1] - shape[1] * spacing[1] / 2
    return ((x / axes_mm[0]) ** 2 + (y / axes_mm[1]) ** 2 <= 1).astype(np.uint8)


def _boundary_shift_mm(a, b, spacing):
    """Mean distance (mm) from b's boundary pixels to a's boundary."""
    edge_a = a.astype(bool) ^ ndimage.binary_erosion(a.astype(bool))
    edge_b = b.astype(bool) ^ ndimage.binary_erosion(b.astype(bool))
    d = ndimage.distance_transform_edt(~edge_a, sampling=spacing)
    return float(d[edge_b].mean())


@pytest.mark.parametrize("spacing", [(0.2, 0.2), (0.15, 0.25)])
def test_perturbed_masks_move_the_contour_by_fractions_of_a_mm_seeded_by_case(spacing):
    mask = ellipse(spacing=spacing)
    spec = PerturbSpec(n=6, seed=3)
    masks = perturbed_masks(mask, spacing, spec, "SYN0001")
    assert len(masks) == 6 and all(m.dtype == np.uint8 and m.shape == mask.shape for m in masks)
    again = perturbed_masks(mask, spacing, spec, "SYN0001")
    assert all(np.array_equal(a, b) for a, b in zip(masks, again, strict=True))
    other = perturbed_masks(mask, spacing, spec, "SYN0002")
    assert not all(np.array_equal(a, b) for a, b in zip(masks, other, strict=True))
    assert not np.array_equal(masks[0], masks[1])
    for m in masks:
        assert ndimage.label(m)[1] == 1  # one lesion, no holes
        shift = _boundary_shift_mm(mask, m, spacing)
        assert 0.02 < shift < 0.6  # fractions of a millimetre
        area = m.sum() / mask.sum()
        assert 0.85 < area < 1.15
    # no perturbation at all gives the original contour back
    still = dataclasses.replace(spec, grow_mm=0, displace_mm=0, rotate_deg=0, translate_mm=0)
    for m in perturbed_masks(mask, spacing, still, "SYN0001"):
        assert (m != mask).sum() <= 0.01 * mask.sum()
    with pytest.raises(ValueError, match="at least 1"):
        perturbed_masks(mask, spacing, dataclasses.replace(spec, n=0), "SYN0001")


def planted(n=80, k=4, seed=0):
    """Features with perturbed partners: ``band_*`` move little across perturbations (ICC near
    1), ``edge_*`` move as much as they vary between cases (ICC near 0.5 or less); both carry
    the label; ``other`` has no partner."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, n)
    ids = [f"c{i:03d}" for i in range(n)]
    base = {}
    for j in range(3):
        base[f"peri1mm_band_{j}"] = rng.normal(size=n) + 1.0 * y
        base[f"intra_edge_{j}"] = rng.normal(size=n) + 1.0 * y
    X = pd.DataFrame(base, index=ids)
    X["intra_other"] = rng.normal(size=n)
    for kk in range(1, k + 1):
        for name in base:
            sd = 0.1 if "band" in name else 1.2
            X[perturbed_column(kk, name)] = X[name] + rng.normal(0, sd, n)
    return X, pd.Series(y, index=ids)


def test_the_filter_drops_contour_sensitive_features_and_keeps_the_band():
    X, y = planted()
    f = RobustnessFilter(threshold=0.75).fit(X, y)
    kept = list(f.get_feature_names_out())
    assert kept == ["peri1mm_band_0", "peri1mm_band_1", "peri1mm_band_2", "intra_other"]
    assert (f.icc_[[c for c in f.icc_.index if "band" in c]] > 0.9).all()
    assert (f.icc_[[c for c in f.icc_.index if "edge" in c]] < 0.75).all()
    out = f.transform(X)
    assert isinstance(out, pd.DataFrame) and list(out.columns) == kept
    assert f.n_perturbations_ == 4
    assert list(RobustnessFilter(unpaired="drop").fit(X).get_feature_names_out()) == kept[:3]


def test_the_filter_learns_from_the_rows_it_is_fitted_on_only():
    X, y = planted(n=120)
    train = X.index[:80]
    a = RobustnessFilter().fit(X.loc[train])
    broken = X.copy()
    broken.loc[X.index[80:], perturbed_column(1, "peri1mm_band_0")] += 50.0  # test rows only
    b = RobustnessFilter().fit(broken.loc[train])
    pd.testing.assert_series_equal(a.icc_, b.icc_)
    assert RobustnessFilter().fit(broken).icc_["peri1mm_band_0"] < 0.75


def test_the_filter_refuses_columns_it_cannot_pair():
    X, _ = planted(k=2)
    with pytest.raises(TypeError, match="DataFrame"):
        RobustnessFilter().fit(X.to_numpy())
    with pytest.raises(ValueError, match="without an original"):
        RobustnessFilter().fit(X.drop(columns=["intra_edge_0"]))
    with pytest.raises(ValueError, match="missing some of perturbations"):
        RobustnessFilter().fit(X.drop(columns=[perturbed_column(2, "intra_edge_0")]))


def _planted_cohort(root, n=40, seed=0):
    """Ellipse lesions on speckle (real NIfTI files) with two planted signals: a bright rim on
    the lesion's inner boundary (one pixel, 0.2 mm) whose level follows the label -- a feature
    that lives exactly where the contour is drawn -- and a brighter 0-1 mm band outside the
    lesion in label-1 cases (the paper's kind of peritumoral signal)."""
    from conftest import ellipse_case, write_nifti

    rng = np.random.default_rng(seed)
    (root / "img").mkdir(parents=True)
    rows = []
    for i in range(n):
        label = i % 2
        img, mask = ellipse_case(seed=100 + i, axes_mm=(4.0 + 0.1 * (i % 7), 3.0))
        inside = mask.astype(bool)
        d_in = ndimage.distance_transform_edt(inside, sampling=(0.2, 0.2))
        d_out = ndimage.distance_transform_edt(~inside, sampling=(0.2, 0.2))
        rim = inside & (d_in <= 0.2)
        band = ~inside & (d_out <= 1.0)
        img[rim] = 150 + 60 * label + rng.normal(0, 10, rim.sum())
        img[band] *= 1.0 + label * rng.uniform(0.3, 0.7)
        img = np.clip(img, 1, 255).astype(np.float32)
        write_nifti(img, root / f"img/P{i:03d}.nii.gz")
        write_nifti(mask, root / f"img/P{i:03d}_mask.nii.gz")
        rows.append(
            {
                "case_id": f"P{i:03d}",
                "image": f"img/P{i:03d}.nii.gz",
                "mask": f"img/P{i:03d}_mask.nii.gz",
                "label": label,
            }
        )
    pd.DataFrame(rows).to_csv(root / "manifest.csv", index=False)
    params = root / "params.yaml"
    params.write_text(
        "setting: {binWidth: 10, force2D: false, label: 1, minimumROISize: 4}\n"
        "imageType: {Original: {}}\nfeatureClass: {firstorder: null}\n"
    )
    return root / "manifest.csv", params


@pytest.mark.slow
@pytest.mark.e2e
@pytest.mark.filterwarnings("ignore")
def test_contour_robustness_drops_the_rim_feature_and_keeps_the_band(tmp_path, compose):
    """Proof (c), real images and pyradiomics: perturbed masks written and extracted through the
    cache (rings rebuilt from each perturbed tumour mask), the ICC filter fitted inside the
    signature's pipeline on training cases (ICC(2,1) >= 0.9, Zwanenburg et al.'s threshold)
    drops every tumour feature that carries the planted rim signal and keeps the planted band's
    ring features."""
    from her2study.study import fit_signatures
    from her2study.tasks.common import cohort_and_features

    manifest, params = _planted_cohort(tmp_path / "cohort")
    cfg = compose(
        "+exp=paper",
        "data=manifest",
        f"data.manifest={manifest}",
        f"cache_dir={tmp_path / 'c'}",
        f"extractor.params_file={params}",
        "split.balance_on=null",  # the planted cohort has no clinical table
        "region.ring_widths_mm=[1.0]",
        "region.signature_kinds=[tumour, ring]",
        "selection.robustness_threshold=0.9",
        "region.perturb.n=4",
        "evaluation.cv_folds=3",
        "selection.lasso_cv=3",
        "evaluation.bootstrap_reps=0",
        "execution.n_jobs=1",
        "execution.progress=false",
    )
    cohort, fs = cohort_and_features(cfg)
    perturbed = [c for c in fs.table.columns if c.startswith("perturb")]
    assert {c.split("__")[0] for c in perturbed} == {f"perturb{k}" for k in range(1, 5)}
    masks = sorted((tmp_path / "c" / "perturbed_masks").glob("*.nii.gz"))
    from her2study.digest import file_digest

    # named by the mask's content: cases with the same mask file share their perturbations
    assert len(masks) == 4 * len({file_digest(c.mask) for c in cohort.cases})
    # extracted again from the same files: every entry comes from the cache
    _, again = cohort_and_features(cfg)
    assert again.n_extracted == 0
    split = pd.Series(
        np.where(np.arange(len(cohort.ids)) % 4 == 0, "test", "train"), index=cohort.labels.index
    )
    fits = fit_signatures(fs.table, cohort.table[[]], cohort.labels, split, [1.0], cfg)
    by_name = {f.name: f for f in fits}
    intra = by_name["Intra"].model.named_steps["robust"]
    ring = by_name["Peri 1 mm"].model.named_steps["robust"]
    for step in (intra, ring):  # the figures, for the record (pytest -s)
        print(step.icc_.sort_values().round(3).to_string())
    train = split.index[split == "train"]
    y = cohort.labels.loc[train]

    def separates(column):  # carries a planted signal: |AUC - 0.5| > 0.4 on training cases
        return abs(roc_auc_score(y, fs.table.loc[train, column]) - 0.5) > 0.4

    rim = [c for c in intra.icc_.index if separates(c)]
    band = [c for c in ring.icc_.index if separates(c)]
    assert len(rim) >= 4 and len(band) >= 8  # both signals are there to be picked
    kept_intra, kept_ring = set(intra.get_feature_names_out()), set(ring.get_feature_names_out())
    assert not set(rim) & kept_intra, intra.icc_[rim]  # every rim feature dropped
    assert {"peri1mm_original_firstorder_Mean", "peri1mm_original_firstorder_Median"} <= kept_ring
    assert len(set(band) & kept_ring) >= 0.5 * len(band), ring.icc_[band]
    table = by_name["Intra"].details["robustness"]
    assert (
        table["region"].tolist() == ["intra"]
        and table["n_kept"].iloc[0] < table["n_features"].iloc[0]
    )
    assert intra.n_perturbations_ == 4
