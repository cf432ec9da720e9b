"""Selectors: each rule on tiny literal arrays, API conformance, and edge cases."""

from __future__ import annotations

import pickle
import warnings

import numpy as np
import pandas as pd
import pytest
import statsmodels.formula.api as smf
from scipy import stats
from sklearn.base import clone
from sklearn.exceptions import ConvergenceWarning
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.svm import l1_min_c
from sklearn.utils.estimator_checks import parametrize_with_checks
from statsmodels.stats.multitest import multipletests

from her2study.selection import (
    CorrelationFilter,
    ICCFilter,
    LassoCVSelector,
    MannWhitneyFilter,
    icc,
    icc_from_ratings,
    make_logistic_regression,
)

# Four columns whose Spearman correlations (checked against scipy below) are
#   a-b .976, a-c .964, b-d .939, b-c .915, a-d .903, c-d .806
# with mean |rho| a .947 > b .943 > c .895 > d .883.
COL_A = [1, 2, 3, 4, 5, 6, 7, 8, 9, 10]
COL_B = [2, 1, 3, 4, 5, 6, 7, 8, 10, 9]
COL_C = [1, 3, 2, 4, 6, 5, 7, 9, 8, 10]
COL_D = [3, 1, 2, 5, 4, 8, 6, 7, 10, 9]
ABCD = np.array([COL_A, COL_B, COL_C, COL_D], dtype=float).T


@parametrize_with_checks(
    [
        CorrelationFilter(),
        CorrelationFilter(threshold=0.5, method="pearson", rule="later"),
        MannWhitneyFilter(),
        MannWhitneyFilter(correction="fdr_bh", min_features=2),
        LassoCVSelector(),
        LassoCVSelector(cv=3, n_lambdas=6, rule="1se", scoring="roc_auc"),
    ]
)
def test_sklearn_compatible(estimator, check):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        warnings.simplefilter("ignore", ConvergenceWarning)
        check(estimator)


# ------------------------------------------------------------------ CorrelationFilter


def test_correlation_literal_example_matches_scipy():
    rho = stats.spearmanr(ABCD).statistic
    np.testing.assert_allclose(
        rho[np.triu_indices(4, 1)], [0.976, 0.964, 0.903, 0.915, 0.939, 0.806], atol=1e-3
    )
    cf = CorrelationFilter(threshold=0.9).fit(ABCD)
    off = np.abs(rho) - np.eye(4)
    np.testing.assert_allclose(cf.mean_abs_corr_, off.sum(axis=1) / 3)


def test_mean_abs_corr_rule_drops_the_more_connected_member():
    cf = CorrelationFilter(threshold=0.9).fit(ABCD)
    # (a, b): a has the higher mean |rho| -> a goes; (b, d): b goes; c-d = .806 stays.
    assert cf.get_support().tolist() == [False, False, True, True]
    assert [d for d, _, _ in cf.drop_log_] == [0, 1]


def test_later_rule_drops_the_later_column():
    cf = CorrelationFilter(threshold=0.9, rule="later").fit(ABCD)
    assert cf.get_support().tolist() == [True, False, False, False]


def test_target_rule_keeps_the_member_closer_to_y():
    y = np.array([0, 0, 0, 0, 1, 0, 1, 1, 1, 1])
    cf = CorrelationFilter(threshold=0.9, rule="target").fit(ABCD, y)
    target = np.abs([stats.spearmanr(ABCD[:, j], y).statistic for j in range(4)])
    np.testing.assert_allclose(cf.target_corr_, target)
    X = ABCD[:, cf.get_support()]
    rho = np.atleast_2d(stats.spearmanr(X).statistic) if X.shape[1] > 1 else np.eye(1)
    assert np.all(np.abs(rho - np.eye(len(rho))) <= 0.9)
    with pytest.raises(ValueError, match="requires y"):
        CorrelationFilter(rule="target").fit(ABCD)


def test_perfect_rank_correlation_tie_drops_later_column():
    a = np.array([1.0, 2, 3, 4, 5, 6])
    other = np.array([2.0, 1, 4, 3, 6, 5])
    X = np.column_stack([a, other, a**3])  # a and a**3 share their ranks exactly
    cf = CorrelationFilter(threshold=0.9).fit(X)
    assert cf.get_support().tolist() == [True, True, False]


def test_no_kept_pair_exceeds_threshold_on_clustered_data():
    rng = np.random.default_rng(0)
    latent = rng.standard_normal((60, 8))
    X = np.exp(np.repeat(latent, 6, axis=1) + 0.25 * rng.standard_normal((60, 48)))
    cf = CorrelationFilter(threshold=0.8).fit(X)
    kept = X[:, cf.get_support()]
    rho = stats.spearmanr(kept).statistic
    assert np.all(np.abs(rho[np.triu_indices(len(rho), 1)]) <= 0.8)
    assert 8 <= kept.shape[1] < 48


def test_threshold_one_keeps_everything():
    assert CorrelationFilter(threshold=1.0).fit(ABCD).get_support().all()


def test_constant_column_dropped_with_warning():
    X = np.column_stack([ABCD[:, 2], np.ones(10), ABCD[:, 3]])  # c-d: .806
    with pytest.warns(UserWarning, match="1 constant"):
        cf = CorrelationFilter().fit(X)
    assert cf.get_support().tolist() == [True, False, True]
    with pytest.raises(ValueError, match="every feature in X is constant"):
        CorrelationFilter().fit(np.ones((5, 3)))


def test_dataframe_names_flow_through():
    df = pd.DataFrame(ABCD, columns=["a", "b", "c", "d"])
    cf = CorrelationFilter().fit(df)
    assert cf.feature_names_in_.tolist() == ["a", "b", "c", "d"]
    assert cf.get_feature_names_out().tolist() == ["c", "d"]
    assert cf.transform(df).shape == (10, 2)


def test_correlation_filter_is_fast_on_3000_columns():
    rng = np.random.default_rng(1)
    latent = rng.standard_normal((155, 400))
    X = np.repeat(latent, 8, axis=1)[:, :3200] + 0.2 * rng.standard_normal((155, 3200))
    cf = CorrelationFilter().fit(X)  # speed: experiments/benchmarks (no timed assertions)
    assert 350 <= cf.get_support().sum() <= 1000


# ------------------------------------------------------------------ MannWhitneyFilter

Y10 = np.array([0, 0, 0, 0, 0, 1, 1, 1, 1, 1])
# column 0 is planted (classes separated), columns 1-2 are interleaved noise
MW_X = np.array(
    [
        [1.0, 5, 3],
        [2, 1, 9],
        [3, 8, 1],
        [4, 2, 7],
        [5, 9, 5],
        [11, 4, 2],
        [12, 10, 8],
        [13, 3, 4],
        [14, 7, 10],
        [15, 6, 6],
    ]
)


def test_mann_whitney_keeps_the_planted_column_and_matches_scipy():
    mw = MannWhitneyFilter().fit(MW_X, Y10)
    assert mw.get_support().tolist() == [True, False, False]
    for j in range(3):
        ref = stats.mannwhitneyu(MW_X[Y10 == 0, j], MW_X[Y10 == 1, j])
        assert mw.pvalues_[j] == pytest.approx(ref.pvalue)
        assert mw.statistic_[j] == pytest.approx(ref.statistic)


def test_mann_whitney_corrections():
    rng = np.random.default_rng(3)
    y = np.repeat([0, 1], 30)
    X = rng.standard_normal((60, 40))
    X[:, :4] += y[:, None] * np.array([0.5, 0.8, 1.0, 1.5])
    raw = MannWhitneyFilter().fit(X, y)
    bonf = MannWhitneyFilter(correction="bonferroni").fit(X, y)
    fdr = MannWhitneyFilter(correction="fdr_bh").fit(X, y)
    np.testing.assert_allclose(bonf.pvalues_adjusted_, np.minimum(raw.pvalues_ * 40, 1))
    np.testing.assert_allclose(
        fdr.pvalues_adjusted_, multipletests(raw.pvalues_, method="fdr_bh")[1]
    )
    assert bonf.get_support().sum() <= fdr.get_support().sum() <= raw.get_support().sum()
    assert bonf.get_support()[3]


def test_mann_whitney_never_returns_zero_features_silently():
    X = MW_X[:, 1:]
    with pytest.warns(UserWarning, match="keeping the 1 feature"):
        mw = MannWhitneyFilter().fit(X, Y10)
    assert mw.get_support().sum() == 1
    assert mw.get_support()[np.argmin(mw.pvalues_)]
    with pytest.warns(UserWarning, match="keeping the 2 feature"):
        assert MannWhitneyFilter(min_features=2).fit(X, Y10).get_support().all()


def test_mann_whitney_constant_column_is_not_significant():
    X = np.column_stack([MW_X[:, 0], np.full(10, 3.0)])
    mw = MannWhitneyFilter().fit(X, Y10)
    assert mw.pvalues_[1] == 1.0
    assert mw.get_support().tolist() == [True, False]


@pytest.mark.parametrize("selector", [MannWhitneyFilter(), LassoCVSelector(cv=3)])
def test_supervised_selectors_reject_one_class(selector):
    with pytest.raises(ValueError, match="1 class"):
        selector.fit(MW_X, np.zeros(10))
    with pytest.raises(ValueError, match="3 class"):
        selector.fit(MW_X, np.arange(10) % 3)


@pytest.mark.parametrize(
    "selector", [CorrelationFilter(), MannWhitneyFilter(), LassoCVSelector(cv=3)]
)
def test_selectors_reject_nan(selector):
    X = MW_X.copy()
    X[2, 1] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        selector.fit(X, Y10)


# ------------------------------------------------------------------ LassoCVSelector


def sparse_problem(n=155, p=500, k=5, seed=0, strength=1.0):
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((n, p))
    eta = X[:, :k] @ np.full(k, strength)
    y = (eta + rng.logistic(size=n) > 0).astype(int)
    return StandardScaler().fit_transform(X), y


@pytest.fixture(scope="module")
def lasso_fits():
    X, y = sparse_problem()
    return X, y, LassoCVSelector().fit(X, y), LassoCVSelector(rule="1se").fit(X, y)


def test_lasso_recovers_informative_features(lasso_fits):
    _, _, fit_min, _ = lasso_fits
    assert fit_min.support_[:5].sum() >= 4
    assert fit_min.support_.sum() < 60
    assert fit_min.lambda_ == pytest.approx(1 / fit_min.C_)
    assert fit_min.coef_.shape == (500,)


def test_lasso_one_se_is_sparser(lasso_fits):
    _, _, fit_min, fit_1se = lasso_fits
    assert fit_1se.C_ <= fit_min.C_
    assert fit_1se.support_.sum() <= fit_min.support_.sum()
    res = fit_1se.cv_results_
    best = res["best_index"]
    assert res["mean_score"][res["chosen_index"]] >= res["mean_score"][best] - res["se_score"][best]


def test_lasso_cv_results_and_path(lasso_fits):
    X, y, fit_min, _ = lasso_fits
    res = fit_min.cv_results_
    for key in ("Cs", "lambdas", "mean_score", "se_score", "n_nonzero"):
        assert res[key].shape == (20,)
    assert res["split_scores"].shape == (10, 20)
    np.testing.assert_allclose(res["mean_score"], res["split_scores"].mean(axis=0))
    np.testing.assert_allclose(res["Cs"][-1] / res["Cs"][0], 100)
    assert res["Cs"][0] == pytest.approx(
        l1_min_c(X - X.mean(axis=0), y, loss="log", fit_intercept=False)
    )
    assert res["n_nonzero"][0] == 0 and res["n_nonzero"][-1] > res["n_nonzero"][5]
    assert fit_min.C_ == res["Cs"][res["chosen_index"]]
    assert fit_min.coef_path_.shape == (20, 500)
    np.testing.assert_array_equal(fit_min.coef_path_[res["chosen_index"]], fit_min.coef_)


def test_lasso_is_deterministic(lasso_fits):
    X, y, fit_min, _ = lasso_fits
    again = LassoCVSelector().fit(X, y)
    np.testing.assert_array_equal(again.coef_, fit_min.coef_)
    np.testing.assert_array_equal(
        again.cv_results_["split_scores"], fit_min.cv_results_["split_scores"]
    )


def test_lasso_screening_gives_the_unscreened_solution():
    X, y = sparse_problem(n=100, p=200, seed=4)
    fast = LassoCVSelector(cv=5, n_lambdas=10, tol=1e-6).fit(X, y)
    slow = LassoCVSelector(cv=5, n_lambdas=10, tol=1e-6, screen=False).fit(X, y)
    assert fast.C_ == slow.C_
    np.testing.assert_array_equal(fast.support_, slow.support_)
    np.testing.assert_allclose(fast.coef_, slow.coef_, rtol=0, atol=1e-6)


@pytest.mark.parametrize("n, p, seed", [(100, 30, 5), (80, 40, 3)])
def test_lasso_matches_saga_with_an_unpenalised_intercept(n, p, seed):
    """saga's intercept is unpenalised: the selector must reproduce its fit at C_.

    liblinear (the former solver, intercept_scaling=10) penalises the intercept: its
    sum(y - p) is 0.35 and 0.25 here and its coefficients are ~1e-3 away, so the
    tolerances below separate the two solvers.
    """
    X, y = sparse_problem(n=n, p=p, seed=seed)
    sel = LassoCVSelector(cv=5, n_lambdas=10).fit(X, y)
    assert 1 <= sel.support_.sum() < p
    ref = make_logistic_regression("l1", C=sel.C_, solver="saga", tol=1e-10, max_iter=100_000).fit(
        X, y
    )
    np.testing.assert_allclose(sel.coef_, ref.coef_[0], rtol=0, atol=1e-4)
    assert sel.intercept_ == pytest.approx(ref.intercept_[0], abs=1e-4)
    np.testing.assert_array_equal(sel.support_, ref.coef_[0] != 0)
    prob = 1 / (1 + np.exp(-(X @ sel.coef_ + sel.intercept_)))
    assert abs(np.sum(y - prob)) < 1e-6 * n
    old = make_logistic_regression(
        "l1", C=sel.C_, solver="liblinear", intercept_scaling=10.0, tol=1e-6, max_iter=1000
    ).fit(X, y)
    assert abs(np.sum(y - old.predict_proba(X)[:, 1])) > 0.1
    assert np.abs(old.coef_[0] - ref.coef_[0]).max() > 1e-4


def test_lasso_path_satisfies_the_kkt_conditions():
    """Every point of the full-data path is an exact L1 solution (intercept unpenalised)."""
    X, y = sparse_problem(n=120, p=200, seed=7)
    X = X * np.linspace(0.5, 3, 200) + 1.0  # the selector z-scores internally
    sel = LassoCVSelector(cv=5, n_lambdas=12).fit(X, y)
    Z = (X - X.mean(axis=0)) / X.std(axis=0)
    ybar = y.mean()
    assert sel.intercept_path_[0] == pytest.approx(np.log(ybar / (1 - ybar)), abs=1e-12)
    assert sel.cv_results_["n_nonzero"][0] == 0  # C_min admits no feature
    for C, w, b in zip(sel.cv_results_["Cs"], sel.coef_path_, sel.intercept_path_, strict=True):
        lam = 1 / C
        prob = 1 / (1 + np.exp(-(X @ w + b)))
        g = Z.T @ (y - prob)
        ws = w * X.std(axis=0)  # coefficients of the z-scored columns
        nz = ws != 0
        slack = 1e-4 * lam + 1e-9
        assert abs(np.sum(y - prob)) <= slack
        assert np.all(np.abs(g[~nz]) <= lam + slack)
        np.testing.assert_allclose(g[nz], lam * np.sign(ws[nz]), rtol=0, atol=slack)
    assert sel.cv_results_["n_nonzero"][-1] > 5


def test_lasso_moves_off_an_empty_model_with_a_warning():
    rng = np.random.default_rng(8)
    X = rng.standard_normal((60, 30))
    y = rng.permutation(np.repeat([0, 1], 30))  # noise: the CV optimum is the empty model
    with pytest.warns(UserWarning, match="all coefficients are zero"):
        sel = LassoCVSelector(cv=5, rule="1se").fit(X, y)
    assert sel.support_.sum() >= 1
    assert sel.transform(X).shape[1] == sel.support_.sum()


def test_lasso_max_features_caps_the_selection(lasso_fits):
    X, y, fit_min, _ = lasso_fits
    capped = LassoCVSelector(max_features=3).fit(X, y)
    assert 1 <= capped.support_.sum() <= 3
    assert capped.C_ <= fit_min.C_


def test_lasso_roc_auc_scoring():
    X, y = sparse_problem(n=100, p=100, seed=2, strength=1.5)
    sel = LassoCVSelector(cv=5, scoring="roc_auc").fit(X, y)
    assert sel.cv_results_["mean_score"].max() > 0.7
    assert np.all(sel.cv_results_["mean_score"] <= 1)


def test_lasso_perfect_separation_is_finite():
    rng = np.random.default_rng(8)
    y = np.repeat([0, 1], 20)
    X = rng.standard_normal((40, 10))
    X[:, 0] = y * 4 - 2 + 0.1 * rng.standard_normal(40)
    sel = LassoCVSelector(cv=5).fit(X, y)
    assert np.all(np.isfinite(sel.coef_)) and sel.support_[0]


def test_lasso_reduces_folds_for_a_small_minority_class():
    X, _ = sparse_problem(n=40, p=20, seed=9)
    y = np.r_[np.ones(4), np.zeros(36)].astype(int)
    with pytest.warns(UserWarning, match="using 4 folds"):
        sel = LassoCVSelector(cv=10).fit(X, y)
    assert sel.cv_results_["split_scores"].shape[0] == 4
    with pytest.raises(ValueError, match="at least 2 samples of each class"):
        LassoCVSelector().fit(X, np.r_[1, np.zeros(39)].astype(int))


@pytest.mark.slow
def test_lasso_benchmark_size_is_fast():
    X, y = sparse_problem(n=155, p=4000, k=10, strength=0.8)
    sel = LassoCVSelector().fit(X, y)  # its speed: experiments/benchmarks/lasso_selector.py
    assert 0 < sel.get_support().sum() < 200


# ------------------------------------------------------------------ ICC

# Shrout & Fleiss (1979), Table 2: 6 targets rated by 4 judges.
SF_RATINGS = np.array(
    [
        [9, 2, 5, 8],
        [6, 1, 3, 2],
        [8, 4, 6, 8],
        [7, 1, 2, 6],
        [10, 5, 6, 9],
        [6, 2, 4, 7],
    ],
    dtype=float,
)


def test_icc_reproduces_shrout_fleiss_table():
    assert icc_from_ratings(SF_RATINGS, "ICC(1,1)") == pytest.approx(0.17, abs=0.005)
    assert icc_from_ratings(SF_RATINGS, "ICC(2,1)") == pytest.approx(0.29, abs=0.005)
    assert icc_from_ratings(SF_RATINGS, "ICC(3,1)") == pytest.approx(0.71, abs=0.005)


def anova_icc(a, b):
    """ICC(2,1) and ICC(3,1) from a two-way ANOVA fitted by statsmodels."""
    n = len(a)
    long = pd.DataFrame(
        {"x": np.r_[a, b], "target": np.tile(np.arange(n), 2), "judge": np.repeat([0, 1], n)}
    )
    table = smf.ols("x ~ C(target) + C(judge)", long).fit()
    from statsmodels.stats.anova import anova_lm

    ms = anova_lm(table)["mean_sq"]
    bms, jms, ems = ms["C(target)"], ms["C(judge)"], ms["Residual"]
    icc2 = (bms - ems) / (bms + ems + 2 * (jms - ems) / n)
    icc3 = (bms - ems) / (bms + ems)
    return icc2, icc3


def test_icc_two_readers_matches_anova_and_is_vectorised():
    a, b = SF_RATINGS[:, 0], SF_RATINGS[:, 3]
    icc2, icc3 = anova_icc(a, b)
    assert icc(a, b, kind="ICC(2,1)") == pytest.approx(icc2)
    assert icc(a, b, kind="ICC(3,1)") == pytest.approx(icc3)
    both = icc(SF_RATINGS[:, :2], SF_RATINGS[:, 2:], kind="ICC(2,1)")
    assert both[0] == pytest.approx(icc(SF_RATINGS[:, 0], SF_RATINGS[:, 2], kind="ICC(2,1)"))
    assert both[1] == pytest.approx(icc(SF_RATINGS[:, 1], SF_RATINGS[:, 3], kind="ICC(2,1)"))
    with pytest.raises(ValueError, match="kind"):
        icc(a, b, kind="ICC(9,9)")


def two_reader_frame(n=30, seed=0):
    rng = np.random.default_rng(seed)
    good = rng.normal(10, 3, n)
    bad = rng.normal(0, 1, n)
    shifted = rng.normal(5, 2, n)
    return pd.DataFrame(
        {
            "good": good,
            "bad": bad,
            "shifted": shifted,
            "reader2__good": good + rng.normal(0, 0.3, n),
            "reader2__bad": rng.normal(0, 1, n),
            "reader2__shifted": shifted + 3 + rng.normal(0, 0.1, n),
        }
    )


def test_icc_filter_keeps_reliable_reader1_features():
    df = two_reader_frame()
    f = ICCFilter().fit(df)
    assert f.get_feature_names_out().tolist() == ["good", "shifted"]
    assert f.icc_[0] == pytest.approx(icc(df["good"], df["reader2__good"]))
    assert np.isnan(f.icc_[3:]).all()
    # absolute agreement penalises the systematic +3 shift of reader 2
    assert ICCFilter(kind="ICC(2,1)").fit(df).get_feature_names_out().tolist() == ["good"]
    assert f.transform(df).shape == (30, 2)


def test_icc_filter_uses_double_read_cases_only():
    df = two_reader_frame()
    df.loc[20:, [c for c in df if c.startswith("reader2__")]] = np.nan
    f = ICCFilter().fit(df)
    assert f.n_cases_used_ == 20
    assert f.icc_[0] == pytest.approx(icc(df["good"][:20], df["reader2__good"][:20]))
    out = Pipeline([("icc", f), ("scale", StandardScaler())]).fit_transform(df)
    assert out.shape == (30, 2) and np.isfinite(out).all()


def test_icc_filter_errors_are_clear():
    df = two_reader_frame()
    with pytest.raises(ValueError, match="without column names"):
        ICCFilter().fit(df.to_numpy())
    with pytest.raises(ValueError, match="lack a 'reader2__' partner"):
        ICCFilter().fit(df.drop(columns="reader2__bad"))
    assert ICCFilter(unpaired="keep").fit(df.drop(columns="reader2__bad")).get_support()[1]
    assert not ICCFilter(unpaired="drop").fit(df.drop(columns="reader2__bad")).get_support()[1]
    with pytest.raises(ValueError, match="without a reader-1 partner"):
        ICCFilter().fit(df.drop(columns="bad"))
    bad = df.copy()
    bad.loc[0, "good"] = np.nan
    with pytest.raises(ValueError, match="reader-1 columns contain NaN"):
        ICCFilter().fit(bad)


# ------------------------------------------------------------------ all selectors


@pytest.mark.filterwarnings("ignore::UserWarning")
@pytest.mark.parametrize(
    "selector",
    [
        CorrelationFilter(threshold=0.8, rule="later"),
        MannWhitneyFilter(alpha=0.01, correction="bonferroni"),
        LassoCVSelector(cv=5, rule="1se"),
        ICCFilter(threshold=0.6, kind="ICC(2,1)"),
    ],
)
def test_clone_and_pickle(selector):
    twin = clone(selector)
    assert twin.get_params() == selector.get_params()
    if isinstance(selector, ICCFilter):
        X, y = two_reader_frame(), None
    else:
        X, y = sparse_problem(n=60, p=30, seed=1)
    fitted = twin.fit(X, y)
    restored = pickle.loads(pickle.dumps(fitted))
    np.testing.assert_array_equal(restored.get_support(), fitted.get_support())
    assert not hasattr(selector, "support_")


def test_lasso_standardises_internally():
    X, y = sparse_problem(n=100, p=50, seed=6)
    ref = LassoCVSelector(cv=5).fit(X, y)
    scales = np.linspace(0.01, 1000, 50)
    raw = LassoCVSelector(cv=5).fit(X * scales + 7, y)
    np.testing.assert_array_equal(raw.support_, ref.support_)
    np.testing.assert_allclose(raw.coef_ * scales, ref.coef_, rtol=1e-4, atol=1e-8)
    eta_raw = (X * scales + 7) @ raw.coef_ + raw.intercept_
    np.testing.assert_allclose(eta_raw, X @ ref.coef_ + ref.intercept_, atol=1e-6)
