"""DeLong AUC, CI and paired test against R pROC (golden values in expected.yaml)."""

from decimal import Decimal
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from scipy import stats
from statsmodels.stats.multitest import multipletests

from her2study.evaluation import (
    auc_bootstrap_ci,
    auc_delong,
    delong_covariance,
    delong_test,
    holm_adjust,
)

GOLDEN = Path(__file__).parent / "data" / "golden"


def _tol(x) -> float:
    """Half a unit of the last decimal given in the YAML.

    Values printed to full double precision (R's 15 significant digits) are
    compared to 1e-10: the 15th digit is floating-point noise.
    """
    decimals = -Decimal(repr(float(x))).as_tuple().exponent
    return 0.5 * 10.0 ** -min(decimals, 10)


@pytest.fixture(scope="module")
def expected():
    return yaml.safe_load((GOLDEN / "expected.yaml").read_text())["delong"]


@pytest.fixture(scope="module")
def asah():
    df = pd.read_csv(GOLDEN / "asah.csv")
    return df, (df["outcome"] == "Poor").astype(int).to_numpy()


@pytest.mark.parametrize("marker", ["s100b", "ndka", "wfns"])
def test_auc_matches_proc(expected, asah, marker):
    df, y = asah
    want = expected["auc"][marker]
    assert auc_delong(y, df[marker]).auc == pytest.approx(want, abs=_tol(want))


@pytest.mark.parametrize("marker", ["ndka", "s100b"])
def test_delong_ci_matches_proc(expected, asah, marker):
    df, y = asah
    lo, hi = expected["ci95"][marker]
    res = auc_delong(y, df[marker])
    assert res.ci_low == pytest.approx(lo, abs=_tol(lo))
    assert res.ci_high == pytest.approx(hi, abs=_tol(hi))
    assert res.ci_low < res.auc < res.ci_high
    assert res.se == pytest.approx((res.ci_high - res.ci_low) / (2 * 1.959963984540054))


def test_paired_test_matches_proc(expected, asah):
    df, y = asah
    for row in expected["paired_test"]:
        res = delong_test(y, df[row["a"]], df[row["b"]])
        assert res.z == pytest.approx(row["z"], abs=_tol(row["z"]))
        assert res.p == pytest.approx(row["p"], abs=_tol(row["p"]))
        assert res.auc_a == pytest.approx(expected["auc"][row["a"]], abs=1e-10)
        assert res.auc_b == pytest.approx(expected["auc"][row["b"]], abs=1e-10)


def test_difference_ci_matches_proc_z(expected, asah):
    """pROC's z and AUCs fix se(diff) = diff / z, hence roc.test's Wald conf.int."""
    df, y = asah
    q = stats.norm.ppf(0.975)
    for row in expected["paired_test"]:
        res = delong_test(y, df[row["a"]], df[row["b"]])
        diff = expected["auc"][row["a"]] - expected["auc"][row["b"]]
        se = diff / row["z"]
        assert res.diff == pytest.approx(diff, abs=1e-12)
        assert res.diff == res.auc_a - res.auc_b
        assert res.se_diff == pytest.approx(se, rel=1e-9)
        assert res.diff_ci_low == pytest.approx(diff - q * se, abs=1e-9)
        assert res.diff_ci_high == pytest.approx(diff + q * se, abs=1e-9)
        # the 95% interval excludes 0 exactly when p < 0.05
        assert (res.diff_ci_low > 0 or res.diff_ci_high < 0) == (row["p"] < 0.05)
    ninety_nine = delong_test(y, df["ndka"], df["s100b"], alpha=0.01)
    assert ninety_nine.diff_ci_high - ninety_nine.diff_ci_low == pytest.approx(
        (res.diff_ci_high - res.diff_ci_low) * stats.norm.ppf(0.995) / q
    )
    assert tuple(ninety_nine)[:4] == tuple(res)[:4]  # alpha changes the interval only


def test_difference_ci_against_naive_delong():
    rng = np.random.default_rng(5)
    y = rng.integers(0, 2, 120)
    a = rng.normal(y * 1.0, 1.0)
    b = np.round(rng.normal(y * 0.4, 1.0), 1)
    aucs, cov = _naive_delong(y, np.vstack([a, b]))
    se = np.sqrt(cov[0, 0] + cov[1, 1] - 2 * cov[0, 1])
    res = delong_test(y, a, b, alpha=0.1)
    q = stats.norm.ppf(0.95)
    assert res.diff == pytest.approx(aucs[0] - aucs[1], abs=1e-12)
    assert (res.diff_ci_low, res.diff_ci_high) == pytest.approx(
        (aucs[0] - aucs[1] - q * se, aucs[0] - aucs[1] + q * se), abs=1e-12
    )
    same = delong_test(y, a, a)
    assert (same.diff, same.diff_ci_low, same.diff_ci_high) == (0.0, 0.0, 0.0)
    with pytest.raises(ValueError, match="alpha"):
        delong_test(y, a, b, alpha=1.5)


def test_holm_matches_statsmodels_and_proc_tests(expected):
    ps = np.array([row["p"] for row in expected["paired_test"]])
    want = multipletests(ps, method="holm")[1]
    np.testing.assert_allclose(holm_adjust(ps), want, rtol=0, atol=1e-15)
    # by hand: 0.00515 * 3, max(0.0272 * 2, previous), max(0.164, previous)
    np.testing.assert_allclose(holm_adjust(ps), [0.0543515645, 0.0154367391, 0.1642951752])
    rng = np.random.default_rng(0)
    for size in (1, 2, 7, 50):
        p = rng.beta(0.5, 2, size)
        p[: size // 3] = p[0]  # ties
        np.testing.assert_allclose(holm_adjust(p), multipletests(p, method="holm")[1])


def test_holm_is_monotone_nan_safe_and_checks_range():
    p = np.array([0.04, np.nan, 0.01, 0.03, np.nan, 0.5])
    adj = holm_adjust(p)
    assert np.isnan(adj[[1, 4]]).all()
    finite = ~np.isnan(p)
    np.testing.assert_allclose(adj[finite], multipletests(p[finite], method="holm")[1])
    order = np.argsort(p[finite])
    assert np.all(np.diff(adj[finite][order]) >= 0) and np.all(adj[finite] >= p[finite])
    assert holm_adjust(np.full(3, np.nan)).shape == (3,)
    assert holm_adjust([]).size == 0
    assert holm_adjust(np.array([[0.01, 0.02], [0.03, 0.9]])).shape == (2, 2)
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        holm_adjust([0.2, 1.2])


def test_paired_test_is_antisymmetric_and_self_test_is_null(asah):
    df, y = asah
    ab = delong_test(y, df["wfns"], df["s100b"])
    ba = delong_test(y, df["s100b"], df["wfns"])
    assert ba.z == pytest.approx(-ab.z)
    assert ba.p == pytest.approx(ab.p)
    same = delong_test(y, df["ndka"], df["ndka"])
    assert (same.z, same.p) == (0.0, 1.0)


def _naive_delong(y, scores):
    """O(m*n) structural components (DeLong 1988), for cross-checking."""
    scores = np.atleast_2d(scores)
    aucs, v10s, v01s = [], [], []
    for s in scores:
        x, z = s[y == 1], s[y == 0]
        psi = (x[:, None] > z[None, :]) + 0.5 * (x[:, None] == z[None, :])
        v10s.append(psi.mean(axis=1))
        v01s.append(psi.mean(axis=0))
        aucs.append(psi.mean())
    m, n = int(y.sum()), int((1 - y).sum())
    cov = np.atleast_2d(np.cov(np.array(v10s))) / m + np.atleast_2d(np.cov(np.array(v01s))) / n
    return np.array(aucs), cov


def test_fast_algorithm_equals_naive_with_ties():
    rng = np.random.default_rng(1)
    y = rng.integers(0, 2, 300)
    a = np.round(rng.normal(y * 0.8, 1.0), 1)  # rounding creates many ties
    b = rng.integers(0, 5, 300) + y  # ordinal score
    auc_fast, cov_fast = delong_covariance(y, np.vstack([a, b]))
    auc_naive, cov_naive = _naive_delong(y, np.vstack([a, b]))
    np.testing.assert_allclose(auc_fast, auc_naive, atol=1e-12)
    np.testing.assert_allclose(cov_fast, cov_naive, atol=1e-12)


def test_auc_invariant_to_monotone_transform(asah):
    df, y = asah
    s = df["s100b"].to_numpy()
    assert auc_delong(y, np.log(s + 1)) == pytest.approx(auc_delong(y, s))
    flipped = auc_delong(y, -s)
    assert flipped.auc == pytest.approx(1 - auc_delong(y, s).auc)


def test_bootstrap_ci_is_close_to_delong_and_reproducible(asah):
    df, y = asah
    dl = auc_delong(y, df["s100b"])
    bs = auc_bootstrap_ci(y, df["s100b"], n_boot=1000, seed=7)
    assert bs.auc == pytest.approx(dl.auc)
    assert bs.ci_low < bs.auc < bs.ci_high
    assert bs.ci_low == pytest.approx(dl.ci_low, abs=0.03)
    assert bs.ci_high == pytest.approx(dl.ci_high, abs=0.03)
    assert bs.se == pytest.approx(dl.se, rel=0.2)
    assert auc_bootstrap_ci(y, df["s100b"], n_boot=1000, seed=7) == bs
    ns = auc_bootstrap_ci(y, df["s100b"], n_boot=500, stratified=False, seed=7)
    assert ns.ci_low < dl.auc < ns.ci_high


@pytest.mark.parametrize(
    "y, s, msg",
    [
        ([1, 1, 1], [0.1, 0.2, 0.3], "single class"),
        ([0, 1, 0], [0.1, np.nan, 0.3], "NaN"),
        ([0, 1, 0], [0.1, 0.2], "length mismatch"),
        ([0, 2, 1], [0.1, 0.2, 0.3], "only 0 and 1"),
    ],
)
def test_invalid_input_raises(y, s, msg):
    with pytest.raises(ValueError, match=msg):
        auc_delong(y, s)
    with pytest.raises(ValueError, match=msg):
        auc_bootstrap_ci(y, s, n_boot=10)


def test_delong_test_shape_mismatch_raises():
    with pytest.raises(ValueError, match="shape"):
        delong_test([0, 1, 0], [0.1, 0.2, 0.3], [0.1, 0.2])
