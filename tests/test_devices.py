"""Synthetic devices (scanners): what they change in the image, what they leave alone, and the
manifest's ``device`` column; device/site-aware splits and per-site tables."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pandas as pd
import pytest

from her2study.cohort.phantom import device_assignment, device_profiles
from her2study.cohort.synthetic import (
    case_device,
    case_labels,
    clinical_table,
    synthesize_case,
    write_synthetic_cohort,
)
from her2study.config import SyntheticSpec

SPEC = SyntheticSpec(n_cases=24, devices=3)


def _lateral_corr_length(image: np.ndarray, lesion: np.ndarray) -> float:
    """Lateral distance (pixels) at which the image's autocorrelation falls below 1/2, over
    tissue pixel pairs outside the lesion (skin and muscle rows left out): the speckle cell's
    lateral size."""
    x = image[50:-40].astype(float)
    keep = lesion[50:-40] == 0
    x = np.where(keep, x - x[keep].mean(), 0.0)
    var = (x * x).sum() / keep.sum()
    for lag in range(1, 30):
        pairs = keep[:, lag:] & keep[:, :-lag]
        if (x[:, lag:] * x[:, :-lag])[pairs].mean() / var < 0.5:
            return float(lag)
    return 30.0


def test_devices_are_off_by_default_and_leave_the_spec_record_as_before(tmp_path):
    spec = SyntheticSpec(n_cases=8)
    assert device_profiles(spec) == [] and case_device(spec, 0) is None
    assert "device" not in clinical_table(spec).columns
    manifest = write_synthetic_cohort(spec, tmp_path / "syn")
    assert "device" not in pd.read_csv(manifest).columns
    record = json.loads((manifest.parent / "spec.json").read_text())["spec"]
    assert not [k for k in record if k.startswith("device")]


def test_device_column_is_balanced_within_class_and_seeded(tmp_path):
    manifest = write_synthetic_cohort(SPEC, tmp_path / "syn")
    df = pd.read_csv(manifest)
    assert list(df.columns[:6]) == ["case_id", "image", "mask", "mask_reader2", "label", "device"]
    counts = pd.crosstab(df["label"], df["device"])
    assert list(counts.columns) == ["A", "B", "C"]
    assert (counts.max(axis=1) - counts.min(axis=1) <= 1).all()  # balanced within each class
    assert df["device"].tolist() == clinical_table(SPEC)["device"].tolist()
    assert [case_device(SPEC, i).name for i in range(SPEC.n_cases)] == df["device"].tolist()
    # confounded: device A holds most label-1 cases, device C most label-0 cases
    shifted = dataclasses.replace(SPEC, device_label_shift=0.6)
    dev = device_assignment(shifted, case_labels(shifted))
    labels = case_labels(shifted)
    assert labels[dev == 0].mean() > 0.8 and labels[dev == 2].mean() < 0.3 < 0.6 < labels.mean()
    with pytest.raises(ValueError, match="at most 4"):
        device_profiles(dataclasses.replace(SPEC, devices=5))


def test_a_device_changes_speckle_gain_and_blur_but_not_the_case_or_its_signal():
    off = dataclasses.replace(SPEC, devices=0)
    by_device: dict[str, int] = {}
    for i in range(SPEC.n_cases):
        by_device.setdefault(case_device(SPEC, i).name, i)
    for name, i in by_device.items():
        on, base = synthesize_case(SPEC, i), synthesize_case(off, i)
        for key in ("mask", "mask_reader2", "lesion"):  # same lesion, same readers
            np.testing.assert_array_equal(on[key], base[key])
        assert on["clinical"] == base["clinical"] and on["label"] == base["label"]
        same = {k: v for k, v in on["truth"].items() if k != "device"}
        assert same == base["truth"]  # the class signal is the same on every device
        assert on["device"] == name
        if name == "A":  # the reference device is the device-free rendering, bit for bit
            np.testing.assert_array_equal(on["image"], base["image"])
            continue
        dev = next(d for d in device_profiles(SPEC) if d.name == name)
        tissue = on["lesion"] == 0
        shift = on["image"][tissue].astype(float).mean() - base["image"][tissue].mean()
        assert np.sign(shift) == np.sign(dev.gain_db) and abs(shift) > 10  # gain (grey levels)
        # speckle size: larger PSF (B) -> longer lateral correlation; C: smaller PSF but more blur
        length_on = _lateral_corr_length(on["image"], on["lesion"])
        length_off = _lateral_corr_length(base["image"], base["lesion"])
        assert 1 < length_off < 30
        if name == "B":
            assert length_on >= length_off + 1
        # blur smooths the speckle: less grey-level variance in tissue at equal gain
        if name == "C":
            assert on["image"][tissue].std() < base["image"][tissue].std()


# ----------------------------------------------------------------------------------------------
# site-aware splits and per-site tables


def test_site_split_trains_on_some_sites_and_tests_on_others():
    from her2study.errors import ConfigError
    from her2study.split import site_split, site_splits

    sites = pd.Series(list("AABBCCDD"), index=[f"c{i}" for i in range(8)])
    split = site_split(sites, ["A", "B"], ["C"])
    assert split.tolist() == ["train"] * 4 + ["test"] * 2 + ["unused"] * 2
    assert site_split(sites, None, ["D"]).tolist() == ["train"] * 6 + ["test"] * 2
    loso = site_splits(sites)
    assert list(loso) == ["A", "B", "C", "D"]
    for site, s in loso.items():
        assert (s[sites == site] == "test").all() and (s[sites != site] == "train").all()
    with pytest.raises(ConfigError, match="test_sites"):
        site_split(sites, ["A"], None)
    with pytest.raises(ConfigError, match=r"\['E'\]"):
        site_split(sites, ["A"], ["E"])
    with pytest.raises(ConfigError, match="both"):
        site_split(sites, ["A", "C"], ["C"])
    with pytest.raises(ConfigError, match="at least 2 sites"):
        site_splits(sites[sites == "A"])


def test_split_from_config_needs_the_site_column(compose):
    from her2study.errors import ConfigError
    from her2study.split import split_from_config

    cfg = compose("+exp=paper", "split.method=site", "split.test_sites=[B]")
    table = pd.DataFrame({"label": [0, 1] * 4, "device": list("AABBAABB")})
    split = split_from_config(table, cfg.split, "label", 0, "device")
    assert split.tolist() == ["train", "train", "test", "test"] * 2
    with pytest.raises(ConfigError, match="data.site_column"):
        split_from_config(table, cfg.split, "label", 0, None)
    with pytest.raises(ConfigError, match="not a cohort column"):
        split_from_config(table, cfg.split, "label", 0, "scanner")


def test_the_manifest_must_name_every_case_s_site(make_cohort):
    from her2study.cohort.manifest import CohortError, load_cohort

    manifest = make_cohort(
        n=6, extra=lambda df, root: df.assign(device=list("AAB") + ["B", "", "C"])
    )
    with pytest.raises(CohortError) as err:
        load_cohort(manifest, site_column="device")
    assert "case C004" in str(err.value) and "no device given" in str(err.value)
    with pytest.raises(CohortError, match=r"missing column\(s\) \['scanner'\]"):
        load_cohort(manifest, site_column="scanner")
    good = make_cohort(n=6, extra=lambda df, root: df.assign(device=list("AABBCC")))
    cohort = load_cohort(good, site_column="device")
    assert cohort.table["device"].tolist() == list("AABBCC")


def test_by_site_table_is_the_subgroup_auc_and_calibration_of_each_site():
    from her2study.evaluation import auc_delong
    from her2study.evaluation.calibration import calibration_slope_intercept
    from her2study.results import by_site_table
    from her2study.study import SignatureFit

    rng = np.random.default_rng(0)
    ids = pd.Index([f"c{i:02d}" for i in range(60)])
    y = pd.Series(rng.integers(0, 2, 60), index=ids)
    prob = pd.Series(np.clip(0.3 + 0.4 * y + rng.normal(0, 0.2, 60), 0.01, 0.99), index=ids)
    sites = pd.Series(np.repeat(list("ABC"), 20), index=ids)
    split = pd.Series(np.where(np.arange(60) % 3 == 0, "test", "train"), index=ids)
    fit = SignatureFit("Intra", "radiomics", None, prob, [], oof=prob.where(split == "train"))
    table = by_site_table([fit], y, split, sites)
    assert set(zip(table["set"], table["site"], strict=True)) == {
        (s, d) for s in ("train_oof", "test") for d in "ABC"
    }
    row = table[(table["set"] == "test") & (table["site"] == "B")].iloc[0]
    at = ids[(split == "test") & (sites == "B")]
    ref = auc_delong(y[at].to_numpy(), prob[at].to_numpy())
    assert row["n"] == len(at) and row["n_positive"] == int(y[at].sum())
    assert (row["auc"], row["auc_ci_low"], row["auc_ci_high"]) == pytest.approx(tuple(ref[:3]))
    cal = calibration_slope_intercept(y[at].to_numpy(), prob[at].to_numpy())
    assert row["cal_slope"] == pytest.approx(cal["slope"])
    assert row["cal_intercept"] == pytest.approx(cal["intercept"])
    assert row["kind"] == "test"
    assert (table.loc[table["set"] == "train_oof", "kind"] == "out_of_fold").all()


DEVICE_RUN = [
    "+exp=paper",
    "extractor=fast",
    "data.synthetic.n_cases=60",
    "data.synthetic.devices=3",
    "data.site_column=device",
    "region.ring_widths_mm=[1.0]",
    "evaluation.cv_folds=3",
    "selection.lasso_cv=5",
    "evaluation.bootstrap_reps=0",
    "execution.progress=false",
    "execution.n_jobs=1",
]


def _run_cli(args, cwd):
    import subprocess
    import sys

    res = subprocess.run(
        [sys.executable, "-m", "her2study", *args], cwd=cwd, capture_output=True, text=True
    )
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-4000:]
    return res


@pytest.mark.slow
@pytest.mark.e2e
@pytest.mark.timeout(1800)
def test_paper_task_by_site_and_leave_one_site_out_end_to_end(tmp_path):
    """+exp=paper on a 3-device synthetic cohort: a site split writes by_site.csv and the
    report's transportability section; leave_one_site_out holds out every device in turn and
    logs its per-site AUCs to a real MLflow store (SQLite)."""
    from mlflow.tracking import MlflowClient

    common = [*DEVICE_RUN, f"cache_dir={tmp_path / 'cache'}"]
    _run_cli(
        [
            *common,
            "split.method=site",
            "split.test_sites=[C]",
            "tracking.enabled=false",
            "hydra.run.dir=site",
        ],
        tmp_path,
    )
    by_site = pd.read_csv(tmp_path / "site" / "by_site.csv")
    assert set(by_site.loc[by_site["set"] == "test", "site"]) == {"C"}
    assert set(by_site.loc[by_site["set"] == "train_oof", "site"]) == {"A", "B"}
    split = pd.read_csv(tmp_path / "site" / "split.csv")
    manifest = pd.read_csv(next((tmp_path / "cache" / "synthetic").glob("*/manifest.csv")))
    test_ids = set(manifest.loc[manifest["device"] == "C", "case_id"])
    assert set(split.loc[split["split"] == "test", "case_id"]) == test_ids
    html = (tmp_path / "site" / "report.html").read_text()
    assert "Transportability (per site)" in html and "DeLong 95% CI" in html

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    _run_cli(
        [
            *common,
            "region.signature_kinds=[tumour]",  # one signature: LOSO refits it 4 times
            "data.clinical_columns=[]",
            "split.method=leave_one_site_out",
            "selection.harmonise=combat",
            f"tracking.tracking_uri={uri}",
            "hydra.run.dir=loso",
        ],
        tmp_path,
    )
    loso = pd.read_csv(tmp_path / "loso" / "by_site.csv")
    held = loso[loso["set"] == "held_out_site"]
    assert set(held["site"]) == {"A", "B", "C", "all (pooled)"}
    each = held[held["site"] != "all (pooled)"]
    assert (each["held_out"] == each["site"]).all()
    assert set(loso.loc[loso["set"] == "cv_all_sites", "site"]) == {"A", "B", "C", "all (pooled)"}
    html = (tmp_path / "loso" / "report.html").read_text()
    assert "What an unseen site costs" in html and "combatlearn" in html
    client = MlflowClient(uri)
    runs = client.search_runs([client.get_experiment_by_name("paper").experiment_id])
    metrics = runs[0].data.metrics
    row = held[(held["site"] == "B") & (held["signature"] == "Intra")].iloc[0]
    assert metrics["held_out_site.B.Intra.auc"] == pytest.approx(row["auc"])


PROOF = [
    "+exp=paper",
    "extractor=fast",
    "data.synthetic.n_cases=90",
    "data.synthetic.devices=3",
    "data.synthetic.device_strength=2",
    "data.synthetic.band_strength=6",
    "data.site_column=device",
    "data.clinical_columns=[]",
    "region.ring_widths_mm=[1.0]",
    "region.signature_kinds=[tumour+ring]",
    "evaluation.cv_folds=5",
    "selection.lasso_cv=5",
    "evaluation.bootstrap_reps=0",
    "execution.n_jobs=1",
    "execution.progress=false",
    "tracking.enabled=false",
]


@pytest.mark.slow
@pytest.mark.e2e
@pytest.mark.filterwarnings("ignore")
def test_an_unseen_device_costs_auc_and_calibration_and_in_fold_combat_wins_it_back(
    tmp_path, compose
):
    """Proofs (a) and (b) on a 3-device synthetic cohort (real images, real pyradiomics): the
    whole protocol is refitted with each device held out (leave-one-device-out) and compared with
    a CV over all devices. (a) Without harmonisation the pooled held-out AUC (every case scored by
    the fit that never saw its device) falls below the all-devices CV AUC and the held-out
    devices are badly calibrated (calibration-in-the-large far from 0); (b) with ComBat inside
    the fold the drop shrinks and the held-out AUC rises. (The calibration intercepts of the
    held-out devices shrink with ComBat at 50 cases a device, experiments/devices/README.md, but
    not reliably at 30: not asserted.)"""
    from her2study.results import POOLED, leave_one_site_out
    from her2study.split import site_values
    from her2study.tasks.common import cohort_and_features

    out = {}
    for harmonise in ("null", "combat"):
        cfg = compose(*PROOF, f"cache_dir={tmp_path}", f"selection.harmonise={harmonise}")
        cohort, fs = cohort_and_features(cfg)
        sites = site_values(cohort.table, "device", "leave_one_site_out")
        by_site, _ = leave_one_site_out(
            fs.table, cohort.table[[]], cohort.labels, sites, [1.0], cfg, covariates=cohort.table
        )
        out[harmonise] = by_site[by_site["signature"] == "IntraPeri 1 mm"]

    def pooled(df, set_name):
        return float(df.loc[(df["set"] == set_name) & (df["site"] == POOLED), "auc"].iloc[0])

    def intercepts(df):
        rows = df[(df["set"] == "held_out_site") & (df["site"] != POOLED)]
        assert len(rows) == 3
        return float(rows["cal_intercept"].abs().mean())

    drop = {h: pooled(d, "cv_all_sites") - pooled(d, "held_out_site") for h, d in out.items()}
    for h, d in out.items():  # the figures, for the record (pytest -s)
        print(h, d[["held_out", "set", "site", "n", "auc", "cal_intercept"]].to_string())
    # (a) an unseen device costs discrimination across devices and calibration within each
    assert drop["null"] > 0.05, drop
    assert intercepts(out["null"]) > 1.5
    seen = out["null"][(out["null"]["set"] == "cv_all_sites") & (out["null"]["site"] != POOLED)]
    assert seen["cal_intercept"].abs().mean() < 1.0  # the same devices, seen in training
    # (b) ComBat inside the fold: the drop shrinks, the held-out devices are recalibrated
    assert drop["combat"] < drop["null"] - 0.02, drop
    assert pooled(out["combat"], "held_out_site") > pooled(out["null"], "held_out_site") + 0.05


@pytest.mark.e2e
@pytest.mark.parametrize(
    "args, words",
    [
        (["split.method=site", "data.site_column=device"], "split.test_sites"),
        (["selection.harmonise=combat"], "data.site_column"),
    ],
)
def test_a_site_config_without_its_pieces_is_one_message_and_exit_2(tmp_path, args, words):
    import subprocess
    import sys

    res = subprocess.run(
        [
            sys.executable,
            "-m",
            "her2study",
            "+exp=paper",
            "tracking.enabled=false",
            f"cache_dir={tmp_path / 'cache'}",
            *args,
        ],
        cwd=tmp_path,
        capture_output=True,
        text=True,
    )
    assert res.returncode == 2, res.stderr[-2000:]
    assert words in res.stderr + res.stdout and "Traceback" not in res.stderr
    assert not (tmp_path / "cache").exists()  # refused before any work
