"""Decision curves against R dcurves outputs (dca_r_famhistory.csv, expected.yaml)."""

from decimal import Decimal
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from her2study.evaluation import decision_curve, net_benefit

GOLDEN = Path(__file__).parent / "data" / "golden"
NUMERIC = [
    "n",
    "pos_rate",
    "test_pos_rate",
    "tp_rate",
    "fp_rate",
    "harm",
    "net_benefit",
    "net_intervention_avoided",
]


def _tol(x) -> float:
    return 0.5 * 10.0 ** Decimal(repr(float(x))).as_tuple().exponent


@pytest.fixture(scope="module")
def expected():
    return yaml.safe_load((GOLDEN / "expected.yaml").read_text())["decision_curve"]


@pytest.fixture(scope="module")
def cancer():
    return pd.read_csv(GOLDEN / "dca_cancer_dx.csv")


def test_decision_curve_matches_r_dcurves_full_table(expected, cancer):
    ref = pd.read_csv(GOLDEN / expected["full_outputs"]["famhistory"])
    thresholds = np.unique(ref["threshold"])
    got = decision_curve(cancer["cancer"], {"famhistory": cancer["famhistory"]}, thresholds)
    assert list(got.columns[:4]) == ["variable", "label", "n", "threshold"]
    assert got["variable"].unique().tolist() == ["all", "none", "famhistory"]
    merged = ref.merge(
        got, on=["variable", "threshold"], suffixes=("_r", "_py"), validate="one_to_one"
    )
    assert len(merged) == len(ref) == len(got)
    assert (merged["label_r"] == merged["label_py"]).all()
    for col in NUMERIC:
        r = merged[f"{col}_r"].to_numpy(float)
        py = merged[f"{col}_py"].to_numpy(float)
        # NA (0/0 for treat all at threshold 0) and -Inf must sit at the same places
        np.testing.assert_array_equal(np.isnan(r), np.isnan(py), err_msg=col)
        np.testing.assert_array_equal(np.isinf(r), np.isinf(py), err_msg=col)
        fin = np.isfinite(r)
        np.testing.assert_array_equal(r[~fin & ~np.isnan(r)], py[~fin & ~np.isnan(py)])
        np.testing.assert_allclose(py[fin], r[fin], rtol=0, atol=0.5e-6, err_msg=col)


def test_threshold_zero_conventions(cancer):
    got = decision_curve(cancer["cancer"], {"famhistory": cancer["famhistory"]}, [0.0, 0.1])
    at0 = got[got.threshold == 0].set_index("variable")
    prev = cancer["cancer"].mean()
    assert at0.loc["all", "net_benefit"] == pytest.approx(prev)
    assert np.isnan(at0.loc["all", "net_intervention_avoided"])
    assert at0.loc["none", "net_intervention_avoided"] == -np.inf
    # a 0/1 test keeps its own positives at threshold 0 (0 is never "positive")
    assert at0.loc["famhistory", "test_pos_rate"] == pytest.approx(cancer["famhistory"].mean())


@pytest.mark.parametrize("curve", ["treat_all", "famhistory"])
def test_net_benefit_matches_yaml(expected, cancer, curve):
    want = expected["net_benefit"][curve]
    t = np.array(list(want), dtype=float)
    prob = np.ones(len(cancer)) if curve == "treat_all" else cancer["famhistory"]
    got = net_benefit(cancer["cancer"], prob, t)
    # YAML drops trailing zeros (-0.075): use the finest decimals given in the block
    tol = min(_tol(v) for v in want.values())
    for ti, gi in zip(t, got, strict=True):
        assert gi == pytest.approx(want[ti], abs=tol)
    table = decision_curve(cancer["cancer"], {"famhistory": cancer["famhistory"]}, t)
    var = "all" if curve == "treat_all" else "famhistory"
    np.testing.assert_allclose(table.loc[table.variable == var, "net_benefit"], got)


def test_treat_none_is_zero_and_harm_subtracts(cancer):
    y, p = cancer["cancer"], cancer["cancerpredmarker"]
    dc = decision_curve(y, {"model": p}, harm={"model": 0.01}, labels={"model": "Model"})
    assert (dc.loc[dc.variable == "none", "net_benefit"] == 0).all()
    assert dc.loc[dc.variable == "model", "label"].iloc[0] == "Model"
    t = dc.loc[dc.variable == "model", "threshold"].to_numpy()
    np.testing.assert_allclose(
        dc.loc[dc.variable == "model", "net_benefit"], net_benefit(y, p, t) - 0.01
    )
    assert len(dc) == 3 * 100


def test_dca_input_errors(cancer):
    y = cancer["cancer"]
    with pytest.raises(ValueError, match="reserved"):
        decision_curve(y, {"all": cancer["famhistory"]})
    with pytest.raises(ValueError, match=r"\[0, 1\)"):
        net_benefit(y, cancer["famhistory"], [0.5, 1.0])
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        net_benefit(y, cancer["marker"] * 10, [0.5])
    with pytest.raises(ValueError, match="length mismatch"):
        net_benefit(y[:10], cancer["famhistory"], [0.5])
    with pytest.raises(ValueError, match="empty"):
        decision_curve(y, {})
