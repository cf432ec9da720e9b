"""Calibration: Hosmer-Lemeshow against R blorr, recalibration, Brier, curves."""

from decimal import Decimal
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import statsmodels.api as sm
import statsmodels.formula.api as smf
import yaml
from scipy import stats

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


def test_hosmer_lemeshow_golden_extras(expected, hsb2_fit, caplog):
    y, p = hsb2_fit
    res = hosmer_lemeshow(y, p, groups=expected["groups"])
    assert res.fitted and res.n_groups == 10 and res.df == 8
    tab = res.table
    assert res.min_expected == pytest.approx(min(tab.expected1.min(), tab.expected0.min()))
    assert res.min_expected < 5 and "expected count" in res.warning  # 0.29 in group 1
    assert "expected count" in caplog.text
    val = hosmer_lemeshow(y, p, groups=expected["groups"], fitted=False)
    assert val.chi2 == res.chi2 and val.df == 10 and not val.fitted
    assert val.p == pytest.approx(stats.chi2.sf(res.chi2, 10), rel=1e-12)
    assert val.p > res.p  # same statistic, more df


def test_hosmer_lemeshow_empty_groups_reduce_df():
    y = np.array([0, 1] * 20)
    p = np.repeat([0.2, 0.8], 20)  # heavy ties: most decile intervals are empty
    res = hosmer_lemeshow(y, p)
    assert res.table["n"].sum() == 40 and len(res.table) == 2 == res.n_groups
    assert res.df == 0 and np.isnan(res.p) and np.isfinite(res.chi2)
    assert "only 2 of 10" in res.warning and "df = 0" in res.warning
    # three distinct values: three groups, df 1 (fitted) and 3 (validation)
    p3 = np.repeat([0.2, 0.5, 0.8], [14, 13, 13])
    assert hosmer_lemeshow(y, p3).df == 1
    assert hosmer_lemeshow(y, p3, fitted=False).df == 3


def test_hosmer_lemeshow_two_distinct_probabilities_er_only(caplog):
    """A clinical model on one binary predictor (ER) predicts two risks only.

    On validation data the ten requested deciles collapse to two groups, so
    df = 2 and p is referred to chi-square(2); on fitting data df = 0 (no test).
    """
    p = np.repeat([0.15, 0.45], [40, 14])
    y = np.r_[np.ones(6), np.zeros(34), np.ones(7), np.zeros(7)].astype(int)
    res = hosmer_lemeshow(y, p, fitted=False)
    by_hand = (
        (6 - 6.0) ** 2 / 6.0 + (34 - 34.0) ** 2 / 34.0 + (7 - 6.3) ** 2 / 6.3 + (7 - 7.7) ** 2 / 7.7
    )
    assert res.n_groups == 2 and res.df == 2
    assert res.chi2 == pytest.approx(by_hand, rel=1e-12)
    assert res.p == pytest.approx(stats.chi2.sf(by_hand, 2), rel=1e-12)
    assert res.p != pytest.approx(stats.chi2.sf(by_hand, 8))  # not the nominal g - 2
    assert "only 2 of 10" in res.warning and "only 2 of 10" in caplog.text
    fit = hosmer_lemeshow(y, p)
    assert fit.df == 0 and np.isnan(fit.p)


def test_hosmer_lemeshow_validation_type_one_error():
    """Perfectly calibrated validation sets: df = g keeps the 5% level, g - 2 does not.

    4,000 validation sets of n = 54 (the paper's test-set size), logit(p) ~ N(-0.5, 1),
    y ~ Bernoulli(p), ten groups, predictions = the true p (nothing fitted on them).
    Rejection rate at the 5% level measured with this seed: df = g 0.042, df = g - 2 0.093
    (20,000 sets, other seed: 0.044 and 0.102; p ~ Beta(2, 3): 0.043 and 0.102;
    p ~ Beta(1, 1): 0.054 and 0.110; logit(p) ~ N(-0.7, 1.5): 0.057 and 0.114). The
    median smallest expected count is 0.65, far below 5, yet df = g holds the level.
    The first 300 sets are also run through the public function.
    """
    from her2study.evaluation.calibration import _hl_batch

    reps, n = 4000, 54
    rng = np.random.default_rng(20240601)
    p = 1 / (1 + np.exp(-rng.normal(-0.5, 1.0, (reps, n))))
    y = (rng.random((reps, n)) < p).astype(float)
    ok = (y.sum(axis=1) > 0) & (y.sum(axis=1) < n)
    y, p = y[ok], p[ok]
    chi2, df, pval, n_groups, _, _ = _hl_batch(y, p, 10, fitted=False)
    assert (n_groups == 10).all() and (df == 10).all()
    rate_g = float(np.mean(pval < 0.05))
    rate_g2 = float(np.mean(stats.chi2.sf(chi2, n_groups - 2) < 0.05))
    assert abs(rate_g - 0.05) < 0.02, rate_g
    assert rate_g2 > 0.08, rate_g2  # the in-sample df is anti-conservative here
    for i in range(300):
        one = hosmer_lemeshow(y[i].astype(int), p[i], fitted=False)
        assert one.chi2 == pytest.approx(chi2[i], rel=1e-12, abs=1e-12)
        assert one.p == pytest.approx(pval[i], rel=1e-12) and one.df == 10


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


def test_recalibration_cis_match_statsmodels_formula_fit():
    rng = np.random.default_rng(11)
    lp = rng.normal(-0.4, 1.2, 300)
    y = rng.binomial(1, 1 / (1 + np.exp(-(0.3 + 0.7 * lp))))
    prob = 1 / (1 + np.exp(-lp))
    df = pd.DataFrame({"y": y, "lp": np.log(prob / (1 - prob))})
    slope = smf.glm("y ~ lp", data=df, family=sm.families.Binomial()).fit()
    citl = smf.glm("y ~ 1", data=df, family=sm.families.Binomial(), offset=df["lp"]).fit()
    for alpha in (0.05, 0.1):
        cal = calibration_slope_intercept(y, prob, alpha=alpha)
        s_ci, i_ci = slope.conf_int(alpha).loc["lp"], citl.conf_int(alpha).loc["Intercept"]
        assert cal["slope"] == pytest.approx(slope.params["lp"], rel=1e-8)
        assert cal["intercept"] == pytest.approx(citl.params["Intercept"], abs=1e-8)
        assert (cal["slope_ci_low"], cal["slope_ci_high"]) == pytest.approx(tuple(s_ci), rel=1e-7)
        assert (cal["intercept_ci_low"], cal["intercept_ci_high"]) == pytest.approx(
            tuple(i_ci), rel=1e-7
        )
    assert cal["slope_ci_low"] < 0.7 < cal["slope_ci_high"]  # the true slope
    assert cal["intercept_ci_low"] > 0  # 0.3 shift plus slope < 1 at mean lp < 0


def test_recalibration_closed_form_cases():
    """Cases with a closed-form answer.

    Constant prediction p0: calibration-in-the-large = logit(ybar) - logit(p0), Wald
    se = 1 / sqrt(n ybar (1 - ybar)). Two predicted risks: the slope model is
    saturated, slope = (logit r2 - logit r1) / (logit p2 - logit p1) with
    se = sqrt(sum 1 / (n_k r_k (1 - r_k))) / (logit p2 - logit p1).
    """
    z = 1.959963984540054
    logit = lambda v: np.log(v / (1 - v))  # noqa: E731
    y = np.r_[np.ones(13), np.zeros(29)].astype(int)
    citl = calibration_slope_intercept(y, np.full(42, 0.2))
    ybar = 13 / 42
    se = 1 / np.sqrt(42 * ybar * (1 - ybar))
    assert citl["intercept"] == pytest.approx(logit(ybar) - logit(0.2), abs=1e-7)
    assert citl["intercept_ci_low"] == pytest.approx(citl["intercept"] - z * se, abs=1e-6)
    assert citl["intercept_ci_high"] == pytest.approx(citl["intercept"] + z * se, abs=1e-6)
    assert np.isnan(citl["slope"]) and np.isnan(citl["slope_ci_low"])

    p = np.repeat([0.2, 0.6], [50, 30])
    y2 = np.r_[np.ones(15), np.zeros(35), np.ones(21), np.zeros(9)].astype(int)
    r1, r2 = 15 / 50, 21 / 30
    width = logit(0.6) - logit(0.2)
    slope = (logit(r2) - logit(r1)) / width
    se = np.sqrt(1 / (50 * r1 * (1 - r1)) + 1 / (30 * r2 * (1 - r2))) / width
    res = calibration_slope_intercept(y2, p)
    # IRLS stops at a relative deviance change of 1e-8: agreement to ~1e-6
    assert res["slope"] == pytest.approx(slope, abs=1e-6)
    assert res["slope_ci_low"] == pytest.approx(slope - z * se, abs=1e-6)
    assert res["slope_ci_high"] == pytest.approx(slope + z * se, abs=1e-6)


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
