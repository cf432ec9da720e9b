"""Radiomics pipeline, clinical model, nomogram model, VIF and the nomogram figure."""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
import pytest
import statsmodels.api as sm
from matplotlib.figure import Figure
from sklearn.base import clone
from sklearn.exceptions import ConvergenceWarning
from sklearn.model_selection import KFold, cross_val_score
from sklearn.utils.estimator_checks import parametrize_with_checks

from her2study.evaluation import plot_nomogram
from her2study.models import (
    MODELS,
    ClinicalModel,
    CombinedModel,
    LassoCVClassifier,
    make_radiomics_pipeline,
    rad_score,
    signature_coefficients,
    variance_inflation_factors,
)

NUMERIC_ONLY = {"check_dtype_object": "non-numeric columns raise a ValueError that names them"}


@parametrize_with_checks(
    [LassoCVClassifier(cv=3, n_lambdas=8), ClinicalModel(), CombinedModel()],
    expected_failed_checks=lambda est: {} if isinstance(est, LassoCVClassifier) else NUMERIC_ONLY,
)
def test_sklearn_compatible(estimator, check):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        check(estimator)


# ------------------------------------------------------------------ radiomics pipeline


@pytest.fixture(scope="module")
def radiomics_data():
    rng = np.random.default_rng(0)
    n, p = 120, 80
    latent = rng.standard_normal((n, 3))
    X = np.column_stack([latent, rng.standard_normal((n, p - 3))])
    X[:, 3] = X[:, 0] + 0.05 * rng.standard_normal(n)  # a near-duplicate of feature 0
    y = (latent @ [1.2, -1.0, 0.8] + rng.logistic(size=n) > 0).astype(int)
    return pd.DataFrame(X * 10 + 50, columns=[f"feat_{i}" for i in range(p)]), y


def test_pipeline_steps_are_the_search_space_prefixes():
    pipe = make_radiomics_pipeline()
    assert [name for name, _ in pipe.steps] == ["scale", "corr", "mw", "lasso", "clf"]
    pipe.set_params(corr__threshold=0.8, mw__alpha=0.1, lasso__rule="1se", clf__C=2.0)
    assert pipe.get_params()["lasso__rule"] == "1se"
    lasso_only = make_radiomics_pipeline(model="lasso_logistic", lasso_cv=5)
    assert [name for name, _ in lasso_only.steps] == ["scale", "corr", "mw", "lasso"]
    lasso_only.set_params(lasso__rule="1se")
    svm = make_radiomics_pipeline(model="svm", model_params={"C": 3.0})
    assert svm.get_params()["clf__estimator__C"] == 3.0
    with pytest.raises(ValueError, match="model must be one of"):
        make_radiomics_pipeline(model="xgboost")


@pytest.mark.parametrize("model", MODELS)
def test_every_model_fits_and_scores(model, radiomics_data):
    X, y = radiomics_data
    pipe = make_radiomics_pipeline(model=model, lasso_cv=5).fit(X, y)
    proba = pipe.predict_proba(X)[:, 1]
    score = rad_score(pipe, X)
    assert score.shape == (len(y),) and np.all(np.isfinite(score))
    clipped = np.clip(proba, 1e-6, 1 - 1e-6)
    np.testing.assert_allclose(score, np.log(clipped / (1 - clipped)), rtol=1e-6, atol=1e-6)
    assert np.mean((proba > 0.5) == y) > 0.75
    kept = pipe["mw"].get_feature_names_out()
    assert not {"feat_0", "feat_3"} <= set(pipe["corr"].get_feature_names_out())
    assert len(kept) >= 1


def test_rad_score_is_the_linear_predictor(radiomics_data):
    X, y = radiomics_data
    pipe = make_radiomics_pipeline(lasso_cv=5).fit(X, y)
    clf = pipe["clf"]
    Z = pipe[:-1].transform(X)
    np.testing.assert_allclose(rad_score(pipe, X), Z @ clf.coef_[0] + clf.intercept_[0])
    coefs = signature_coefficients(pipe)
    assert list(coefs.index) == list(pipe[:-1].get_feature_names_out())
    lasso = make_radiomics_pipeline(model="lasso_logistic", lasso_cv=5).fit(X, y)
    lasso_coefs = signature_coefficients(lasso)
    assert (lasso_coefs != 0).all() and set(lasso_coefs.index) <= set(X.columns)
    with pytest.raises(TypeError, match="no linear coefficients"):
        signature_coefficients(make_radiomics_pipeline(model="random_forest", lasso_cv=5).fit(X, y))


def test_lasso_logistic_uses_the_lasso_coefficients(radiomics_data):
    X, y = radiomics_data
    pipe = make_radiomics_pipeline(model="lasso_logistic", lasso_cv=5).fit(X, y)
    lasso = pipe["lasso"]
    Z = pipe[:-1].transform(X)
    np.testing.assert_allclose(rad_score(pipe, X), Z @ lasso.coef_ + lasso.intercept_)


def test_pipeline_fit_on_one_class_fails_clearly(radiomics_data):
    X, y = radiomics_data
    order = np.argsort(y, kind="stable")
    folds = KFold(n_splits=2).split(X.iloc[order])  # first fold trains on one class only
    with pytest.raises(ValueError, match="1 class"):
        cross_val_score(
            make_radiomics_pipeline(lasso_cv=3),
            X.iloc[order],
            y[order],
            cv=folds,
            error_score="raise",
        )


def test_pipeline_rejects_nan(radiomics_data):
    X, y = radiomics_data
    X = X.copy()
    X.iloc[0, 5] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        make_radiomics_pipeline().fit(X, y)


def test_perfect_separation_gives_finite_coefficients():
    rng = np.random.default_rng(2)
    y = np.repeat([0, 1], 25)
    X = pd.DataFrame(rng.standard_normal((50, 20)), columns=[f"f{i}" for i in range(20)])
    X["f0"] = y * 3.0 + 0.1 * rng.standard_normal(50)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        pipe = make_radiomics_pipeline(lasso_cv=5).fit(X, y)
    assert np.all(np.isfinite(pipe["clf"].coef_))
    assert np.all(np.isfinite(rad_score(pipe, X)))
    assert (pipe.predict(X) == y).all()


# ------------------------------------------------------------------ clinical model


def simulate_clinical(n=400, seed=0):
    """``marker`` has a true log-OR of 0.5 per unit; ``age`` and ``size`` are noise."""
    rng = np.random.default_rng(seed)
    X = pd.DataFrame(
        {
            "marker": rng.normal(0, 1.5, n),
            "age": rng.normal(52, 10, n),
            "size_mm": rng.gamma(4, 5, n),
        }
    )
    eta = -0.3 + 0.5 * X["marker"]
    y = (rng.random(n) < 1 / (1 + np.exp(-eta))).astype(int)
    return X, y


def test_clinical_model_recovers_the_odds_ratio():
    X, y = simulate_clinical()
    model = ClinicalModel().fit(X, y)
    assert model.selected_ == ["marker"]
    row = model.multivariable_table_.set_index("variable").loc["marker"]
    assert row["ci_low"] < np.exp(0.5) < row["ci_high"]
    direct = sm.Logit(y, sm.add_constant(X[["marker"]])).fit(disp=0)
    assert row["OR"] == pytest.approx(np.exp(direct.params["marker"]))
    assert row["p"] == pytest.approx(direct.pvalues["marker"])
    ci = np.exp(direct.conf_int().loc["marker"])
    assert (row["ci_low"], row["ci_high"]) == pytest.approx((ci[0], ci[1]))
    np.testing.assert_allclose(model.predict_proba(X)[:, 1], direct.predict())
    uni = model.univariable_table_
    assert list(uni["variable"]) == ["marker", "age", "size_mm"]
    assert list(uni.columns) == ["variable", "coef", "OR", "ci_low", "ci_high", "p"]


def test_clinical_model_backward_elimination():
    rng = np.random.default_rng(1)
    n = 500
    x1 = rng.standard_normal(n)
    proxy = x1 + 0.5 * rng.standard_normal(n)  # associated with y only through x1
    y = (rng.random(n) < 1 / (1 + np.exp(-1.2 * x1))).astype(int)
    X = pd.DataFrame({"x1": x1, "proxy": proxy})
    full = ClinicalModel(backward=False).fit(X, y)
    assert full.selected_ == ["x1", "proxy"]
    reduced = ClinicalModel().fit(X, y)
    assert reduced.selected_ == ["x1"]
    assert (reduced.univariable_table_["p"] < 0.05).all()


def test_clinical_model_keeps_the_best_variable_when_none_pass():
    rng = np.random.default_rng(3)
    X = pd.DataFrame(rng.standard_normal((80, 3)), columns=["a", "b", "c"])
    y = rng.integers(0, 2, 80)
    with pytest.warns(UserWarning, match="keeping the strongest one"):
        model = ClinicalModel(univariable_p=1e-6).fit(X, y)
    best = model.univariable_table_.sort_values("p")["variable"].iloc[0]
    assert model.selected_ == [best]


def test_clinical_model_input_errors():
    X, y = simulate_clinical(n=60)
    X["subtype"] = ["luminal", "basal"] * 30
    with pytest.raises(ValueError, match="numeric columns only.*subtype"):
        ClinicalModel().fit(X, y)
    ClinicalModel(columns=["marker", "age"]).fit(X, y)  # the text column is not a candidate
    X2 = X.drop(columns="subtype")
    X2.loc[3, "age"] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        ClinicalModel().fit(X2, y)
    with pytest.raises(ValueError, match="1 class"):
        ClinicalModel().fit(X.drop(columns="subtype"), np.ones(60))
    with pytest.raises(ValueError, match="rename"):
        ClinicalModel().fit(X.drop(columns="subtype").rename(columns={"age": "const"}), y)


def test_clinical_model_survives_separation():
    rng = np.random.default_rng(4)
    y = np.repeat([0, 1], 30)
    X = pd.DataFrame({"perfect": y + 0.0, "noise": rng.standard_normal(60)})
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = ClinicalModel().fit(X, y)
    assert len(model.selected_) == 1
    assert np.all(np.isfinite(model.predict_proba(X)))


# ------------------------------------------------------------------ combined model, VIF


def test_variance_inflation_factors_match_ols():
    rng = np.random.default_rng(5)
    a = rng.standard_normal(50)
    b = 0.8 * a + 0.6 * rng.standard_normal(50)
    c = rng.standard_normal(50)
    X = pd.DataFrame({"a": a, "b": b, "c": c})
    vif = variance_inflation_factors(X)
    for name in X:
        others = np.column_stack([np.ones(50), X.drop(columns=name)])
        fitted = others @ np.linalg.lstsq(others, X[name], rcond=None)[0]
        r2 = 1 - ((X[name] - fitted) ** 2).sum() / ((X[name] - X[name].mean()) ** 2).sum()
        assert vif[name] == pytest.approx(1 / (1 - r2))
    assert vif.name == "VIF" and vif["b"] > 1.5 and vif["c"] < 1.2


def test_combined_model_table_vif_and_predictions():
    X, y = simulate_clinical()
    X["rad_score"] = np.random.default_rng(6).standard_normal(len(X))
    model = CombinedModel(columns=["rad_score", "marker"]).fit(X, y)
    direct = sm.Logit(y, sm.add_constant(X[["rad_score", "marker"]])).fit(disp=0)
    np.testing.assert_allclose(model.coef_, direct.params[["rad_score", "marker"]])
    assert model.intercept_ == pytest.approx(direct.params["const"])
    np.testing.assert_allclose(model.table_["p"], direct.pvalues[["rad_score", "marker"]])
    np.testing.assert_allclose(model.predict_proba(X)[:, 1], direct.predict())
    assert list(model.vif_.index) == ["rad_score", "marker"] and (model.vif_ < 1.2).all()


def test_combined_model_warns_on_collinearity():
    X, y = simulate_clinical()
    X["copy"] = X["marker"] + 0.01 * np.random.default_rng(7).standard_normal(len(X))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        warnings.simplefilter("always", UserWarning)
        with pytest.warns(UserWarning, match="VIF above 5"):
            CombinedModel(columns=["marker", "copy"]).fit(X, y)


def test_models_clone_cleanly():
    for model in (ClinicalModel(univariable_p=0.1, columns=["a"]), CombinedModel(vif_limit=2)):
        twin = clone(model)
        assert twin.get_params() == model.get_params()


# ------------------------------------------------------------------ nomogram


def test_nomogram_points_scale(tmp_path):
    X, y = simulate_clinical()
    X["er_pos"] = (X["age"] > 52).astype(int)
    model = CombinedModel(columns=["marker", "er_pos", "size_mm"]).fit(X, y)
    ranges = {"marker": (-4, 4), "er_pos": {0: "ER-", 1: "ER+"}, "size_mm": (0, 60)}
    fig = plot_nomogram(model, ranges, title="Nomogram", note="training cohort")
    assert isinstance(fig, Figure)
    ax = fig.axes[0]
    texts = {t.get_text(): t for t in ax.texts}
    for label in ("Points", "marker", "er_pos", "size_mm", "Total points", "Probability"):
        assert label in texts
    # marker has the largest |coef| x range, so its axis spans the full 0-100 points
    effects = {
        "marker": abs(model.params_["marker"]) * 8,
        "er_pos": abs(model.params_["er_pos"]),
        "size_mm": abs(model.params_["size_mm"]) * 60,
    }
    assert max(effects, key=effects.get) == "marker"
    spans = {  # row -> (left, right) of its horizontal axis line; rows sit at y = -row
        -ln.get_ydata()[0]: tuple(ln.get_xdata())
        for ln in ax.lines
        if np.ptp(ln.get_ydata()) == 0 and np.ptp(ln.get_xdata()) > 0
    }
    assert spans[1] == pytest.approx((0, 100))  # marker
    assert spans[2] == pytest.approx((0, 100 * effects["er_pos"] / effects["marker"]))
    assert spans[3] == pytest.approx((0, 100 * effects["size_mm"] / effects["marker"]))
    path = tmp_path / "nomogram.png"
    fig.savefig(path)
    assert path.stat().st_size > 10_000


def test_nomogram_negative_coefficient_reverses_the_axis():
    params = pd.Series({"const": 0.0, "good": 1.0, "bad": -0.5})
    fig = plot_nomogram(params, {"good": (0, 10), "bad": (0, 10)})
    ax = fig.axes[0]
    label_y = -2 + 0.17  # tick labels of row 2 ("bad") sit just above its line
    ticks = {t.get_text(): t.get_position()[0] for t in ax.texts if t.get_position()[1] == label_y}
    assert ticks["0"] == pytest.approx(50) and ticks["10"] == pytest.approx(0)


def test_nomogram_needs_every_range():
    params = pd.Series({"const": 0.0, "a": 1.0, "b": 2.0})
    with pytest.raises(ValueError, match="lacks"):
        plot_nomogram(params, {"a": (0, 1)})
