"""Calibration: Hosmer-Lemeshow against R blorr, recalibration, Brier, curves."""

from decimal import Decimal
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import statsmodels.formula.api as smf
import yaml

from her2study.evaluation import (
    brier_score,
    calibration_curve_binned,
    calibration_slope_intercept,
    calibration_smoothed,
    hosmer_lemeshow,
)

GOLDEN = Path(__file__).parent / "data" / "golden"


def _tol(x) -> float:
    """Half a unit of the last decimal given in the YAML (integers: exact)."""
    decimals = -Decimal(repr(x)).as_tuple().exponent if isinstance(x, float) else 0
    return 0.5 * 10.0 ** -min(decimals, 10) if decimals else 0.0


@pytest.fixture(scope="module")
def expected():
    return yaml.safe_load((GOLDEN / "expected.yaml").read_text())["hosmer_lemeshow"]


@pytest.fixture(scope="module")
def hsb2_fit():
    df = pd.read_csv(GOLDEN / "hsb2.csv")
    fit = smf.logit("honcomp ~ C(race) + read + science", data=df).fit(disp=0)
    return df["honcomp"].to_numpy(), np.asarray(fit.predict(df))


def test_hosmer_lemeshow_matches_blorr(expected, hsb2_fit):
    y, p = hsb2_fit
    res = hosmer_lemeshow(y, p, groups=expected["groups"])
    tab = res.table
    assert tab["n"].tolist() == expected["group_n"]
    assert tab["observed1"].tolist() == expected["observed1"]
    for got, want in zip(tab["expected1"], expected["expected1"], strict=True):
        assert got == pytest.approx(want, abs=_tol(want))
    assert res.chi2 == pytest.approx(expected["chi2"], abs=_tol(expected["chi2"]))
    assert res.df == expected["df"]
    assert res.p == pytest.approx(expected["p"], abs=_tol(expected["p"]))
    assert tab["n"].sum() == y.size
    np.testing.assert_allclose(tab["expected0"] + tab["expected1"], tab["n"])


def test_hosmer_lemeshow_drops_empty_groups_keeps_df():
    y = np.array([0, 1] * 20)
    p = np.repeat([0.2, 0.8], 20)  # heavy ties: most decile intervals are empty
    res = hosmer_lemeshow(y, p)
    assert res.table["n"].sum() == 40 and len(res.table) < 10
    assert res.df == 8 and np.isfinite(res.chi2)


def test_in_sample_logistic_recalibration_is_identity(hsb2_fit):
    # maximum-likelihood logistic fit with an intercept is perfectly
    # calibrated in-sample: slope 1, calibration-in-the-large 0
    y, p = hsb2_fit
    cal = calibration_slope_intercept(y, p)
    assert cal["slope"] == pytest.approx(1.0, abs=1e-6)
    assert cal["intercept"] == pytest.approx(0.0, abs=1e-6)
    assert cal["slope_ci_low"] < 1 < cal["slope_ci_high"]
    assert cal["intercept_ci_low"] < 0 < cal["intercept_ci_high"]


def test_recalibration_detects_overfitting_and_shift():
    rng = np.random.default_rng(3)
    lp = rng.normal(0, 1.5, 20000)
    y = rng.binomial(1, 1 / (1 + np.exp(-lp)))
    over = 1 / (1 + np.exp(-2 * lp))  # too extreme -> slope 0.5
    shifted = 1 / (1 + np.exp(-(lp - 1)))  # underestimates risk -> intercept +1
    assert calibration_slope_intercept(y, over)["slope"] == pytest.approx(0.5, abs=0.05)
    assert calibration_slope_intercept(y, shifted)["intercept"] == pytest.approx(1.0, abs=0.08)
    smooth = calibration_smoothed(y[:4000], 1 / (1 + np.exp(-lp[:4000])))
    assert np.all(np.diff(smooth["predicted"]) >= 0)
    mid = smooth["predicted"].between(0.2, 0.8)
    assert np.abs(smooth.loc[mid, "observed"] - smooth.loc[mid, "predicted"]).max() < 0.05


def test_brier_score_by_hand():
    assert brier_score([0, 1, 1, 0], [0.1, 0.9, 0.6, 0.5]) == pytest.approx(
        (0.01 + 0.01 + 0.16 + 0.25) / 4
    )


def test_binned_curve_quantile_matches_hl_groups(hsb2_fit):
    y, p = hsb2_fit
    hl = hosmer_lemeshow(y, p).table
    cc = calibration_curve_binned(y, p, n_bins=10, strategy="quantile")
    assert cc["n"].tolist() == hl["n"].tolist()
    np.testing.assert_allclose(cc["observed"] * cc["n"], hl["observed1"])
    np.testing.assert_allclose(cc["mean_predicted"], hl["avg_prob"])
    assert (cc["ci_low"] <= cc["observed"]).all() and (cc["observed"] <= cc["ci_high"]).all()
    uni = calibration_curve_binned(y, p, n_bins=5, strategy="uniform")
    edges = np.linspace(0, 1, 6)
    for _, row in uni.iterrows():
        b = int(row["bin"])
        assert edges[b - 1] <= row["mean_predicted"] <= edges[b]
    assert uni["n"].sum() == y.size


@pytest.mark.parametrize(
    "fn", [hosmer_lemeshow, calibration_curve_binned, calibration_smoothed, brier_score]
)
def test_calibration_input_errors(fn):
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        fn([0, 1, 0], [0.1, 1.2, 0.3])
    with pytest.raises(ValueError, match="single class"):
        fn([0, 0, 0], [0.1, 0.2, 0.3])
    with pytest.raises(ValueError, match="NaN"):
        fn([0, 1, 0], [0.1, np.nan, 0.3])


def test_unknown_bin_strategy():
    with pytest.raises(ValueError, match="strategy"):
        calibration_curve_binned([0, 1], [0.2, 0.7], strategy="kmeans")
