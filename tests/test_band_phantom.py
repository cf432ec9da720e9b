"""The margin answer on a phantom whose class signal sits only in a band 1.5-2.5 mm outside the
lesion (``data=band_phantom``; nothing inside the lesion, no ER signal): the training-side
comparison (the repeated-CV fold AUCs ``task=compare`` reads, paired as it pairs them) and the
per-region nested estimate both rank the regions that reach the band above tumour only and
above the rings that stop short of it, with paired intervals against tumour only above 0 (the
nested one over 3 repeats of the outer 5-fold CV); the
permutation test of the nested procedure rejects on the phantom and not on shuffled labels.

Real files end to end: the phantom written as NIfTI images + masks + manifest, real pyradiomics
(firstorder + GLCM on the original image, 2D), the real pipelines, a real Optuna SQLite storage.
"""

from __future__ import annotations

import copy
import dataclasses
import os
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from hydra import compose, initialize_config_dir

from her2study.cohort.phantom import BAND_PHANTOM, band_phantom_spec
from her2study.cohort.synthetic import synthesize_case
from her2study.config import SyntheticSpec, register_configs
from her2study.errors import ConfigError
from her2study.results import _cv_interval
from her2study.search import REGION_COLUMNS, nested_search, open_storage, parse_space
from her2study.search.candidate import (
    REGION_KINDS,
    Design,
    candidate_from_params,
    region_choice,
    search_defaults,
    space_regions,
)
from her2study.search.estimates import region_of_params
from her2study.study import fit_signatures
from her2study.tasks.common import cohort_and_features, load_design
from her2study.tasks.compare import paired_differences, region_of

REPO = Path(__file__).resolve().parents[1]
register_configs()

N_CASES = 120
WIDTHS = [0.5, 1.0, 2.5]
BAND = [1.5, 2.5]
REACH = ["intra+ring2.5mm", "ring2.5mm", "intra+band1.5-2.5mm", "band1.5-2.5mm"]  # cover it
SHORT = ["intra", "intra+ring0.5mm", "ring0.5mm", "intra+ring1mm", "ring1mm"]  # miss it
KINDS = "[tumour,tumour+ring,ring,tumour+band,band]"
PARAMS = {  # firstorder + GLCM on the original 2D image: fast, and enough for the band
    "setting": {"binWidth": 10, "force2D": False, "label": 1, "minimumROISize": 4},
    "imageType": {"Original": {}},
    "featureClass": {"firstorder": None, "glcm": None},
}
SPACE = {  # the region choice only: tumour, rings of 1 / 2.5 mm alone, the band alone
    "region_kind": {"type": "categorical", "choices": ["tumour", "ring", "band"]},
    "ring_width_mm": {
        "type": "categorical",
        "choices": [1.0, 2.5],
        "when": {"region_kind": "ring"},
    },
}
NESTED_REGIONS = ["intra", "ring1mm", "ring2.5mm", "band1.5-2.5mm"]


def _cfg(tmp: Path, *overrides):
    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        cfg = compose(
            "config",
            overrides=[
                "task=search",
                "tracking=off",
                "data=band_phantom",
                f"data.synthetic.n_cases={N_CASES}",
                "data.clinical_columns=[]",
                "extractor=fast",
                f"extractor.params_file={tmp / 'params.yaml'}",
                f"region.ring_widths_mm=[{','.join(map(str, WIDTHS))}]",
                f"region.bands_mm=[[{BAND[0]},{BAND[1]}]]",
                f"region.signature_kinds={KINDS}",
                f"cache_dir={tmp / 'cache'}",
                "execution.n_jobs=2",
                "execution.progress=false",
                "selection.lasso_cv=3",
                "selection.lasso_n_lambdas=8",
                "evaluation.cv_repeats=5",
                "evaluation.bootstrap_reps=0",
                "search.inner_folds=3",
                "search.outer_folds=5",  # 3 folds: t on 2 df, intervals too wide to say much
                "search.sampler=random",
                "search.n_trials=48",  # 4 region choices, one with 1/6 of the random draws:
                # missed by a study with p = (5/6)^48 = 0.02 % (at 24: 1.3 %, seen with optuna 5)
                "search.permutation_trials=8",  # cheaper permuted runs (approximate p, warned)
                "search.final=false",
                *overrides,
            ],
        )
    cfg.search.space = SPACE
    return cfg


@pytest.fixture(scope="module")
def phantom(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("band_phantom")
    (tmp / "params.yaml").write_text(yaml.safe_dump(PARAMS))  # a user's pyradiomics file
    cfg = _cfg(tmp)
    # the cohort and features cache may be kept between runs (content-addressed, so reuse is
    # exact): HER2STUDY_BAND_PHANTOM_CACHE=/some/dir
    keep = os.environ.get("HER2STUDY_BAND_PHANTOM_CACHE")
    if keep:
        cfg.cache_dir = keep
        cfg.data.synthetic_dir = f"{keep}/synthetic"
    cohort, fs = cohort_and_features(cfg)
    design, _ = load_design(cfg)  # features from the cache just written
    return {"cfg": cfg, "tmp": tmp, "cohort": cohort, "features": fs.table, "design": design}


def test_band_phantom_is_the_spec_it_says():
    """The preset and the config say the same; only the band moves, nothing else is planted."""
    spec = band_phantom_spec()
    assert (spec.band_inner_mm, spec.band_outer_mm) == (1.5, 2.5)
    assert spec.intra_strength == 0 and spec.er_signal is False
    base = dataclasses.asdict(SyntheticSpec())
    changed = {k for k, v in dataclasses.asdict(spec).items() if base[k] != v}
    assert changed == set(BAND_PHANTOM)
    a = synthesize_case(spec, 3, label=0)
    b = synthesize_case(spec, 3, label=1)
    inside = a["mask"].astype(bool)
    # the lesion's own pixels do not depend on the class (the band is beyond the blur's reach)
    assert np.abs(b["image"][inside].astype(int) - a["image"][inside]).mean() < 0.05
    assert b["truth"]["band_db"] > 0 and a["truth"]["intra_db"] == b["truth"]["intra_db"] == 0


def _training_side(ph) -> tuple[pd.DataFrame, pd.DataFrame]:
    """margins.csv's training-side columns and margins_paired.csv, from the same fold AUCs
    (``details['cv_folds']``, the run's ``tables/cv_folds.csv``) and the same functions."""
    cfg, features = ph["cfg"], ph["features"]
    y = ph["cohort"].labels
    split = pd.Series("train", index=features.index)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        fits = fit_signatures(
            features, pd.DataFrame(index=features.index), y, split, WIDTHS, cfg, [BAND]
        )
    rows, folds = [], []
    for fit in fits:
        region, kind, width = region_of(fit.name)
        rows.append({"region": region, "kind": kind, "width_mm": width, **_cv_interval(fit)})
        folds.append(fit.details["cv_folds"].assign(region=region))
    margins = pd.DataFrame(rows).set_index("region")
    paired = paired_differences(pd.concat(folds, ignore_index=True)).set_index("region")
    return margins, paired


@pytest.mark.slow
@pytest.mark.e2e
@pytest.mark.timeout(3600)  # the phantom's extraction: ~2 min idle, ~10 min at load 20
def test_training_side_comparison_finds_the_band(phantom):
    margins, paired = _training_side(phantom)
    print(margins.round(3).to_string(), paired.round(3).to_string(), sep="\n")  # -rP shows it
    assert set(margins.index) == set(REACH + SHORT)
    reach, short = margins.loc[REACH, "cv_auc"], margins.loc[SHORT, "cv_auc"]
    assert reach.min() > short.max(), margins[["cv_auc", "cv_auc_ci_low", "cv_auc_ci_high"]]
    assert margins.loc["intra", "cv_auc_ci_low"] < 0.5 + 0.15 < reach.min()
    # every region reaching the band beats tumour only on the same folds: interval above 0
    assert (paired.loc[REACH, "ci_low"] > 0).all(), paired
    assert (paired.loc[REACH, "cv_auc_diff"] > paired.loc[SHORT[1:], "cv_auc_diff"].max()).all()


def _nested(ph, name: str, design=None, permutations: int = 20, outer_repeats: int = 1, **search):
    cfg = copy.deepcopy(ph["cfg"])
    cfg.search.permutations = permutations
    cfg.search.outer_repeats = outer_repeats
    for key, value in search.items():
        cfg.search[key] = value
    storage = open_storage(f"sqlite:///{ph['tmp'] / 'optuna.db'}")
    return nested_search(
        cfg, design or ph["design"], storage, name, final=False, progress=lambda s: None
    )


def _show(res) -> None:
    keys = ("mean_outer_auc", "ci_low", "ci_high", "ci_method", "naive_t_ci_low", "naive_t_ci_high")
    keys += ("permutations", "permutation_trials", "permutation_p", "region_counts")
    print(res.regions.round(3).to_string(), res.region_differences.round(3).to_string(), sep="\n")
    print({k: res.estimate.get(k) for k in keys}, res.warnings)


@pytest.fixture(scope="module")
def phantom_nested(phantom):
    res = _nested(phantom, "phantom")
    _show(res)
    return res


@pytest.mark.slow
@pytest.mark.e2e
@pytest.mark.timeout(3600)
def test_nested_estimate_and_permutation_test_find_the_band(phantom_nested):
    res = phantom_nested
    regions = res.regions.set_index("region")
    assert list(res.regions.columns[:5]) == REGION_COLUMNS
    assert set(regions.index) == set(NESTED_REGIONS), res.warnings
    assert (regions["n_outer_folds"] == 5).all()  # every region had trials in every outer fold
    reach = regions.loc[["ring2.5mm", "band1.5-2.5mm"], "nested_auc"]
    short = regions.loc[["intra", "ring1mm"], "nested_auc"]
    assert reach.min() > short.max() + 0.15, regions
    assert (regions.loc[["ring2.5mm", "band1.5-2.5mm"], "ci_low"] > 0.55).all(), regions
    assert regions.loc["ring2.5mm", "width_mm"] == 2.5
    assert regions.loc["band1.5-2.5mm", "width_mm"] == 2.5
    diffs = res.region_differences.set_index("region")
    assert (diffs.loc[["ring2.5mm", "band1.5-2.5mm"], "auc_difference"] > 0.25).all(), diffs
    est = res.estimate
    assert est["ci_method"] and est["permutations"] == 20 and est["permutation_trials"] == 8
    assert est["permutation_p"] < 0.05, est["permutation_aucs"]
    assert est["mean_outer_auc"] > max(est["permutation_aucs"])


PAIRED_REPEATS = 3  # J = 5 folds x 3 repeats = 15 paired outer-fold differences
PAIRED_TRIALS = 48  # every region choice gets trials in every outer study (see below)


@pytest.fixture(scope="module")
def phantom_paired(phantom):
    """The same nested search with the outer 5-fold CV repeated 3 times (no permutations).

    One repeat is not enough for the paired interval: its J = 5 differences vs tumour only have
    an SD of about 0.25 (one outer fold where tumour only scored 0.16 on its 24 test cases), and
    the Nadeau-Bengio factor 1/J + n_test/n_train = 0.45 with t on 4 df makes the interval about
    +-0.48 (ring 2.5 mm -0.12..0.84, band -0.06..0.88). With 15 differences the SD is about 0.19,
    the factor 0.32 and t on 14 df: about +-0.23. The trials per region are not the issue: the
    space is the region choice only, so every trial of a region is the same configuration
    (memoised) -- but the random sampler gives a 2.5 mm ring 1/6 of the trials, so at 24 trials
    an outer study misses it with probability (5/6)^24 = 1.3 % (measured: 1 of 15 studies);
    48 trials (repeats are memoised, cheap) make that (5/6)^48 = 0.02 % per study."""
    res = _nested(
        phantom, "paired", permutations=0, outer_repeats=PAIRED_REPEATS, n_trials=PAIRED_TRIALS
    )
    _show(res)
    return res


@pytest.mark.slow
@pytest.mark.e2e
@pytest.mark.timeout(3600)
def test_nested_paired_interval_vs_tumour_only_excludes_0(phantom_paired):
    res = phantom_paired
    est = res.estimate
    assert est["outer_repeats"] == PAIRED_REPEATS and est["n_outer"] == 5 * PAIRED_REPEATS
    assert len(est["mean_outer_auc_per_repeat"]) == PAIRED_REPEATS
    diffs = res.region_differences.set_index("region")
    assert set(diffs.index) == set(NESTED_REGIONS) - {"intra"}
    assert (diffs["n_outer_folds"] == 5 * PAIRED_REPEATS).all(), diffs
    reach = ["ring2.5mm", "band1.5-2.5mm"]
    # paired on the same 15 outer test folds, Nadeau-Bengio: both regions reaching the band beat
    # tumour only, and by more than the ring that stops short of it
    assert (diffs.loc[reach, "ci_low"] > 0).all(), diffs
    assert (diffs.loc[reach, "auc_difference"] > diffs.loc["ring1mm", "auc_difference"]).all()
    regions = res.regions.set_index("region")
    assert (
        regions.loc[reach, "nested_auc"].min() > regions.loc[["intra", "ring1mm"]].nested_auc.max()
    )


@pytest.mark.slow
@pytest.mark.e2e
@pytest.mark.timeout(3600)  # the phantom's extraction: ~2 min idle, ~10 min at load 20
def test_permutation_test_does_not_reject_shuffled_labels(phantom):
    design = phantom["design"]
    rng = np.random.default_rng(20261202)
    y = pd.Series(rng.permutation(design.y.to_numpy()), index=design.y.index, name=design.y.name)
    res = _nested(phantom, "shuffled", dataclasses.replace(design, y=y))
    _show(res)
    est = res.estimate
    assert abs(est["mean_outer_auc"] - 0.5) < 0.15
    assert est["permutation_p"] >= 0.05, (est["mean_outer_auc"], est["permutation_aucs"])


# ------------------------------------------------------------------------------------------
# the region kind dimension of the search space (small literal tables, fast)


def _table_design(outside_exclude=()):
    rng = np.random.default_rng(0)
    regions = ["intra", "peri0p5mm", "peri2p5mm", "band1p5to2p5mm"]
    classes = ("firstorder", "shape2D")
    cols = [f"{r}_original_{c}_f{i}" for r in regions for c in classes for i in (0, 1)]
    idx = pd.Index([f"P{i:02d}" for i in range(20)], name="case_id")
    X = pd.DataFrame(rng.standard_normal((20, len(cols))), columns=cols, index=idx)
    y = pd.Series(np.tile([0, 1], 10), index=idx, name="label")
    return Design.from_tables(X, y, None, outside_exclude=outside_exclude)


def _kind_cfg():
    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        return compose(
            "config",
            overrides=["task=search", "tracking=off", "region.bands_mm=[[1.5,2.5]]"],
        )


def test_region_kinds_name_the_same_regions_as_compare():
    """A search region choice and a paper signature of the same kind get the same name."""
    from her2study.regions import ring_label

    pairs = [
        (("tumour", 0.0, None), "Intra"),
        (("tumour+ring", 1.0, None), ring_label(1.0)),
        (("ring", 2.5, None), "Peri 2.5 mm"),
        (("tumour+band", None, "1.5-2.5"), "IntraBand 1.5-2.5 mm"),
        (("band", None, "1.5-2.5"), "Band 1.5-2.5 mm"),
    ]
    for choice, signature in pairs:
        name, kind, width = region_of(signature)
        assert region_choice(*choice) == (name, width) and choice[0] == kind
    assert set(REGION_KINDS) == {region_of(s)[1] for _, s in pairs}


def test_region_kind_picks_the_columns_and_drops_ring_shape():
    design = _table_design(outside_exclude=("shape2D",))
    assert "intra_original_shape2D_f0" in design.X
    assert "peri0p5mm_original_shape2D_f0" not in design.X
    cfg = _kind_cfg()
    defaults = search_defaults(cfg)
    assert defaults["band_mm"] == "1.5-2.5" and defaults["region_kind"] == "tumour+ring"
    expect = {
        "tumour": ["intra"],
        "tumour+ring": ["intra", "peri2p5mm"],
        "ring": ["peri2p5mm"],
        "tumour+band": ["intra", "band1p5to2p5mm"],
        "band": ["band1p5to2p5mm"],
    }
    for kind, regions in expect.items():
        cand = candidate_from_params({"region_kind": kind, "ring_width_mm": 2.5}, cfg)
        got = {c.split("_", 1)[0] for c in design.columns(cand)}
        assert got == set(regions), kind
        name, width = cand.region()
        assert width == (0.0 if kind == "tumour" else 2.5)
        assert region_of_params({"region_kind": kind, "ring_width_mm": 2.5}, defaults)[0] == name
    # without a region_kind dimension nothing changes: 0 = tumour only, a width = tumour + ring
    assert candidate_from_params({"ring_width_mm": 0}, cfg).region() == ("intra", 0.0)
    assert candidate_from_params({}, cfg).region() == ("all", None)


def test_region_kind_space_is_checked():
    cfg = _kind_cfg()
    defaults = search_defaults(cfg)
    design = _table_design()
    dims = parse_space(
        {
            "region_kind": {"type": "categorical", "choices": list(REGION_KINDS)},
            "ring_width_mm": {"type": "categorical", "choices": [0.5, 2.5]},
        },
        defaults,
    )
    design.check_space(dims, defaults)
    names = [region_choice(*c)[0] for c in space_regions(dims, defaults)]
    assert names == [
        "intra",
        "intra+ring0.5mm",
        "intra+ring2.5mm",
        "ring0.5mm",
        "ring2.5mm",
        "intra+band1.5-2.5mm",
        "band1.5-2.5mm",
    ]
    with pytest.raises(ConfigError, match="region kinds are"):
        parse_space({"region_kind": {"type": "categorical", "choices": ["peri"]}}, defaults)
    with pytest.raises(ConfigError, match="inner-outer"):
        parse_space({"band_mm": {"type": "categorical", "choices": ["wide"]}}, defaults)
    ring0 = parse_space(
        {"region_kind": "ring", "ring_width_mm": {"type": "categorical", "choices": [0, 1]}},
        defaults,
    )
    with pytest.raises(ConfigError, match="0 = tumour only"):
        design.check_space(ring0, defaults)
    no_band = parse_space({"region_kind": "band", "band_mm": "1-2"}, defaults)
    with pytest.raises(ConfigError, match="region.bands_mm"):
        design.check_space(no_band, defaults)
