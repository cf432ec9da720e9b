"""Wilson intervals, Youden threshold and confusion-matrix metrics."""

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import roc_curve
from statsmodels.stats.proportion import proportion_confint

from her2study.evaluation import binary_metrics, choose_threshold, wilson_ci

GOLDEN = Path(__file__).parent / "data" / "golden"


@pytest.mark.parametrize("k, n", [(0, 10), (3, 10), (10, 10), (47, 113), (1, 1)])
def test_wilson_matches_statsmodels(k, n):
    lo, hi = wilson_ci(k, n)
    ref = proportion_confint(k, n, alpha=0.05, method="wilson")
    assert (lo, hi) == pytest.approx(ref, abs=1e-12)


def test_wilson_vectorised_and_empty():
    lo, hi = wilson_ci([0, 5], [0, 10])
    assert np.isnan(lo[0]) and np.isnan(hi[0])
    assert lo[1] < 0.5 < hi[1]
    with pytest.raises(ValueError):
        wilson_ci(5, 3)


def test_binary_metrics_counts_and_ge_convention():
    y = np.array([1, 1, 1, 0, 0, 0, 0])
    s = np.array([0.9, 0.5, 0.2, 0.5, 0.4, 0.1, 0.0])
    m = binary_metrics(y, s, threshold=0.5)  # 0.5 counts as positive
    assert (m["tp"], m["fp"], m["tn"], m["fn"]) == (2, 1, 3, 1)
    assert m["sensitivity"] == pytest.approx(2 / 3)
    assert m["specificity"] == pytest.approx(3 / 4)
    assert m["ppv"] == pytest.approx(2 / 3)
    assert m["npv"] == pytest.approx(3 / 4)
    assert m["accuracy"] == pytest.approx(5 / 7)
    lo, hi = wilson_ci(2, 3)
    assert (m["sensitivity_ci_low"], m["sensitivity_ci_high"]) == pytest.approx((lo, hi))
    assert m["n"] == 7 and m["threshold"] == 0.5


@pytest.mark.parametrize("alpha", [0.05, 0.1])
def test_binary_metrics_wilson_keys_match_statsmodels(alpha):
    rng = np.random.default_rng(4)
    y = rng.integers(0, 2, 54)
    s = rng.normal(y * 1.2, 1.0)
    m = binary_metrics(y, s, threshold=0.4, alpha=alpha)
    tp, fp, tn, fn = m["tp"], m["fp"], m["tn"], m["fn"]
    counts = {
        "sensitivity": (tp, tp + fn),
        "specificity": (tn, tn + fp),
        "ppv": (tp, tp + fp),
        "npv": (tn, tn + fn),
        "accuracy": (tp + tn, tp + fp + tn + fn),
    }
    for name, (k, n) in counts.items():
        ref = proportion_confint(k, n, alpha=alpha, method="wilson")
        assert m[name] == pytest.approx(k / n)
        assert (m[f"{name}_ci_low"], m[f"{name}_ci_high"]) == pytest.approx(ref, abs=1e-12)
        assert m[f"{name}_ci_low"] < m[name] < m[f"{name}_ci_high"]
    expected = {"threshold", "n", "tp", "fp", "tn", "fn"} | {
        f"{name}{suffix}" for name in counts for suffix in ("", "_ci_low", "_ci_high")
    }
    assert set(m) == expected
    # a perfect split: k = n and k = 0 cells still match statsmodels
    perfect = binary_metrics([0, 0, 1, 1, 1], [0.1, 0.2, 0.7, 0.8, 0.9], 0.5, alpha=alpha)
    ref = proportion_confint(3, 3, alpha=alpha, method="wilson")
    assert (perfect["sensitivity_ci_low"], perfect["sensitivity_ci_high"]) == pytest.approx(
        ref, abs=1e-12
    )


def test_binary_metrics_undefined_ratios_are_nan():
    y = np.array([0, 1, 0, 1])
    m = binary_metrics(y, [0.1, 0.2, 0.3, 0.4], threshold=0.9)  # nobody positive
    assert np.isnan(m["ppv"]) and np.isnan(m["ppv_ci_low"]) and np.isnan(m["ppv_ci_high"])
    assert m["sensitivity"] == 0.0 and m["specificity"] == 1.0
    single = binary_metrics([0, 0, 0], [0.1, 0.6, 0.3], threshold=0.5)  # one class allowed
    assert np.isnan(single["sensitivity"]) and single["specificity"] == pytest.approx(2 / 3)


def test_binary_metrics_invalid_input():
    with pytest.raises(ValueError, match="NaN"):
        binary_metrics([0, 1], [np.nan, 0.2], 0.5)
    with pytest.raises(ValueError, match="length mismatch"):
        binary_metrics([0, 1, 1], [0.1, 0.2], 0.5)


def test_youden_matches_bruteforce_on_asah():
    df = pd.read_csv(GOLDEN / "asah.csv")
    y = (df["outcome"] == "Poor").astype(int).to_numpy()
    for marker in ["s100b", "ndka", "wfns"]:
        s = df[marker].to_numpy()
        t = choose_threshold(y, s)
        fpr, tpr, _ = roc_curve(y, s)
        m = binary_metrics(y, s, t)
        assert m["sensitivity"] + m["specificity"] - 1 == pytest.approx(np.max(tpr - fpr))
        assert t not in set(s)  # a midpoint between observed scores
    # WFNS 1..5: J = .465 (1.5), .450 (2.5), .467 (3.5), .383 (4.5)
    assert choose_threshold(y, df["wfns"]) == 3.5


def test_youden_ties_take_lowest_threshold():
    # candidates 1.5 (J=.5), 2.5 (J=0), 3.5 (J=.5): the lowest optimum wins
    assert choose_threshold([0, 1, 0, 1], [1, 2, 3, 4]) == 1.5


def test_choose_threshold_fixed_and_errors():
    assert choose_threshold([0, 1], [0.2, 0.8], method="fixed", value=0.3) == 0.3
    with pytest.raises(ValueError, match="unknown method"):
        choose_threshold([0, 1], [0.2, 0.8], method="f1")
    with pytest.raises(ValueError, match="single class"):
        choose_threshold([1, 1], [0.2, 0.8])
    with pytest.raises(ValueError, match="constant"):
        choose_threshold([0, 1], [0.5, 0.5])
