"""The synthetic generator's planted contour-sensitive rim (cohort/contour.py,
data=contour_phantom): off by default (the default cohort byte-identical), where it is when on,
and proof (c) of issue 15 on the generator itself: the contour-robustness filter drops the
tumour features the rim carries and keeps the peritumoral band's ring features."""

from __future__ import annotations

import dataclasses
import hashlib
import json

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import roc_auc_score

from her2study.cohort.contour import CONTOUR_PHANTOM, contour_phantom_spec, contour_rim
from her2study.cohort.synthetic import spec_fields, synthesize_case, write_synthetic_cohort
from her2study.config import SyntheticSpec

# SHA-256 of cases 0 and 1 of the default spec (image, mask, reader-2 mask bytes), recorded on
# main before the rim existed: the default cohort must not change
DEFAULT_CASES = {
    0: "ae92f66bd951a48d7a2c1e5f512f548f289d9a1e2952714be3cf1b35cdeea674",
    1: "5cb9c53aaa66c753305632f8e7c2e6182d6823e6e41fa8479757adbfd42e18ae",
}


def _digest(case) -> str:
    h = hashlib.sha256()
    for key in ("image", "mask", "mask_reader2"):
        h.update(np.ascontiguousarray(case[key]).tobytes())
    return h.hexdigest()


def test_the_rim_is_off_by_default_and_the_default_cohort_is_byte_identical(tmp_path):
    spec = SyntheticSpec()
    for index, digest in DEFAULT_CASES.items():
        case = synthesize_case(spec, index)
        assert _digest(case) == digest and "rim_db" not in case["truth"]
    assert not [k for k in spec_fields(spec) if k.startswith("rim")]  # the record as before
    manifest = write_synthetic_cohort(SyntheticSpec(n_cases=2), tmp_path / "syn")
    record = json.loads((manifest.parent / "spec.json").read_text())["spec"]
    assert not [k for k in record if k.startswith("rim")]
    assert "rim_strength_db" in spec_fields(contour_phantom_spec())


def test_the_rim_lies_on_the_drawn_contour_of_label_1_cases_and_nowhere_else():
    on = contour_phantom_spec(n_cases=10)
    off = dataclasses.replace(on, rim_strength_db=0.0)
    spacing = (on.spacing_y_mm, on.spacing_x_mm)
    seen = set()
    for index in range(6):
        a, b = synthesize_case(off, index), synthesize_case(on, index)
        for key in ("mask", "mask_reader2", "lesion"):  # geometry and every other draw alike
            assert np.array_equal(a[key], b[key])
        assert a["clinical"] == b["clinical"]
        changed = a["image"] != b["image"]
        rim = contour_rim(b["mask"], spacing, on.rim_width_mm)
        seen.add(b["label"])
        if b["label"] == 0:
            assert not changed.any() and b["truth"]["rim_db"] == 0
            continue
        assert b["truth"]["rim_db"] > 0 and changed.any()
        assert not (changed & ~rim).any()  # only rim pixels change ...
        assert (b["image"][rim].astype(int) >= a["image"][rim]).all()  # ... brighter
        inside = b["mask"].astype(bool)
        assert rim.sum() < 0.15 * inside.sum() and not (rim & ~inside).any()
    assert seen == {0, 1}


def test_contour_phantom_is_the_spec_it_says(compose):
    """The preset and conf/data/contour_phantom.yaml say the same; only the rim is added to the
    band (stronger), the other signals off."""
    from her2study.cohort.source import synthetic_spec

    spec = contour_phantom_spec()
    base = dataclasses.asdict(SyntheticSpec())
    changed = {k for k, v in dataclasses.asdict(spec).items() if base[k] != v}
    assert changed == set(CONTOUR_PHANTOM) - {"rim_width_mm"}  # its default width is the preset's
    assert spec.intra_strength == 0 and spec.er_signal is False and spec.rim_strength_db > 0
    assert synthetic_spec(compose("data=contour_phantom").data) == spec


PROOF = [
    "+exp=paper",
    "data=contour_phantom",
    "data.synthetic.n_cases=40",
    "extractor=fast",
    "region.ring_widths_mm=[1.0]",
    "region.signature_kinds=[tumour,ring]",
    "region.annotation_check=false",  # the bright rim is no burned-in caliper
    "split.balance_on=null",
    "selection.robustness_threshold=0.9",  # Zwanenburg et al.'s threshold
    "region.perturb.n=4",
    "region.perturb.grow_mm=0.4",  # erosion/dilation up to 0.4 mm (2 pixels)
    "evaluation.cv_folds=3",
    "selection.lasso_cv=3",
    "evaluation.bootstrap_reps=0",
    "execution.n_jobs=1",
    "execution.progress=false",
]


@pytest.mark.slow
@pytest.mark.e2e
@pytest.mark.timeout(1800)
@pytest.mark.filterwarnings("ignore")
def test_robustness_filter_drops_the_rim_features_and_keeps_the_band_on_the_generator(
    tmp_path, compose
):
    """Proof (c) on the synthetic generator: the contour phantom's images (a bright rim on the
    drawn contour of label-1 cases, the 0-1 mm band, no other signal) with 4 perturbed masks per
    case extracted through the cache; the ICC(2,1) filter fitted inside each signature's pipeline
    on training cases drops every tumour feature the rim drives (AUC off 0.5 by more than 0.4 on
    the training cases; without the rim only Maximum and Range get there, from the band's blur
    across the lesion edge, and they are contour-sensitive too: experiments/robustness/README.md)
    and keeps the band's ring Mean and Median and most of its other ring features."""
    from her2study.study import fit_signatures
    from her2study.tasks.common import cohort_and_features

    cfg = compose(*PROOF, f"cache_dir={tmp_path}")
    cohort, fs = cohort_and_features(cfg)
    assert {c.split("__")[0] for c in fs.table.columns if c.startswith("perturb")} == {
        f"perturb{k}" for k in range(1, 5)
    }
    split = pd.Series(
        np.where(np.arange(len(cohort.ids)) % 4 == 0, "test", "train"), index=cohort.labels.index
    )
    fits = fit_signatures(fs.table, cohort.table[[]], cohort.labels, split, [1.0], cfg)
    by_name = {f.name: f for f in fits}
    intra = by_name["Intra"].model.named_steps["robust"]
    ring = by_name["Peri 1 mm"].model.named_steps["robust"]
    train = split.index[split == "train"]
    y = cohort.labels.loc[train]

    def off_chance(column):  # |AUC - 0.5| on the training cases
        return abs(roc_auc_score(y, fs.table.loc[train, column]) - 0.5)

    rim = [c for c in intra.icc_.index if off_chance(c) > 0.4]
    band = [c for c in ring.icc_.index if off_chance(c) > 0.25]
    for step, cols in ((intra, rim), (ring, band)):  # the figures, for the record (pytest -s)
        print(step.icc_[cols].sort_values().round(3).to_string())
    assert len(rim) >= 4 and len(band) >= 8  # both signals are there to be picked
    kept_intra, kept_ring = set(intra.get_feature_names_out()), set(ring.get_feature_names_out())
    assert not set(rim) & kept_intra, intra.icc_[rim]  # every rim-driven feature dropped
    assert {"peri1mm_original_firstorder_Mean", "peri1mm_original_firstorder_Median"} <= kept_ring
    assert len(set(band) & kept_ring) >= 0.4 * len(band), ring.icc_[band]
    table = by_name["Intra"].details["robustness"]
    assert table["n_kept"].iloc[0] < table["n_features"].iloc[0]
