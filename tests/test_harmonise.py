"""ComBat inside the fold (combatlearn's ComBat; our step only looks up each row's device):
what it removes, unseen devices, clone/bootstrap safety, and the leak it avoids."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from sklearn.base import clone
from sklearn.metrics import roc_auc_score
from sklearn.model_selection import StratifiedKFold, cross_val_predict
from sklearn.pipeline import Pipeline

from her2study.models import make_pipeline
from her2study.models.harmonise import ComBatHarmoniser

pytest.importorskip("combatlearn")
from combatlearn.core import ComBatModel  # noqa: E402

FAST = {"lasso_cv": 3, "lasso_n_lambdas": 10}


def device_cohort(seed=0, n=60, p=300, prevalence=(0.9, 0.5, 0.1), scale_sd=0.8, effect=0.0):
    """Features = device shift and scale + noise (+ ``effect`` x label on the first 5 features);
    labels drawn with a different prevalence per device (device-confounded)."""
    rng = np.random.default_rng(seed)
    devices = np.repeat(["A", "B", "C"], n // 3)
    prev = dict(zip("ABC", prevalence, strict=True))
    y = (rng.random(n) < np.array([prev[d] for d in devices])).astype(int)
    shift = {d: rng.normal(0, 1.5, p) for d in "ABC"}
    scale = {d: np.exp(rng.normal(0, scale_sd, p)) for d in "ABC"}
    X = np.array([shift[d] + scale[d] * rng.normal(size=p) for d in devices])
    X[:, :5] += effect * y[:, None] * np.array([scale[d][:5] for d in devices])
    ids = [f"case{i:03d}" for i in range(n)]
    cols = [f"intra_original_f{j}" for j in range(p)]
    return (
        pd.DataFrame(X, index=ids, columns=cols),
        pd.Series(y, index=ids),
        pd.Series(devices, index=ids, name="device"),
    )


def test_removes_device_location_and_scale_fitted_on_the_given_rows_only():
    X, y, dev = device_cohort(n=90, p=20, scale_sd=0.5)
    train = X.index[::2]
    step = ComBatHarmoniser(batch=dev).fit(X.loc[train])
    out = step.transform(X)
    assert list(out.index) == list(X.index) and list(out.columns) == list(X.columns)
    before = X.groupby(dev).mean().std().mean()
    after = out.groupby(dev).mean().std().mean()
    assert after < 0.2 * before  # device means brought together, held-out rows included
    sd = out.groupby(dev).std()
    assert (
        (sd.max() / sd.min()).median()
        < 1.5
        < (X.groupby(dev).std().max() / X.groupby(dev).std().min()).median()
    )
    # fitted on the training rows only: refitting with other test rows changes nothing
    other = ComBatHarmoniser(batch=dev).fit(X.loc[train]).transform(X.loc[X.index[1::2]])
    pd.testing.assert_frame_equal(other, out.loc[X.index[1::2]])
    with pytest.raises(TypeError, match="DataFrame"):
        ComBatHarmoniser(batch=dev).fit(X.to_numpy())


def test_an_unseen_device_is_harmonised_to_the_training_reference_or_refused():
    X, y, dev = device_cohort(n=90, p=20, scale_sd=0.5)
    seen = dev != "C"
    step = ComBatHarmoniser(batch=dev).fit(X[seen])
    out = step.transform(X)
    gap_before = (X[~seen].mean() - out[seen].mean()).abs().mean()
    gap_after = (out[~seen].mean() - out[seen].mean()).abs().mean()
    assert gap_after < 0.2 * gap_before
    pd.testing.assert_frame_equal(out[seen], step.transform(X[seen]))  # seen rows unaffected
    with pytest.raises(ValueError, match=r"\['C'\]"):
        ComBatHarmoniser(batch=dev, unseen="error").fit(X[seen]).transform(X)


def test_with_covariates_the_protected_effect_survives():
    X, y, dev = device_cohort(n=90, p=10, prevalence=(0.5, 0.5, 0.5), scale_sd=0.3, effect=2.0)
    cov = pd.DataFrame({"age": np.random.default_rng(1).normal(50, 10, len(X))}, index=X.index)
    X["intra_original_f9"] += 0.2 * (cov["age"] - 50)
    plain = ComBatHarmoniser(batch=dev).fit(X).transform(X)
    kept = ComBatHarmoniser(batch=dev, covariates=cov).fit(X).transform(X)
    r_plain = np.corrcoef(plain["intra_original_f9"], cov["age"])[0, 1]
    r_kept = np.corrcoef(kept["intra_original_f9"], cov["age"])[0, 1]
    assert r_kept >= r_plain - 1e-9 and r_kept > 0.5
    assert kept.groupby(dev).mean().std().mean() < X.groupby(dev).mean().std().mean()


def test_clone_pipeline_and_bootstrap_samples_with_repeated_case_ids():
    X, y, dev = device_cohort(n=60, p=30)
    pipe = Pipeline(
        [("harmonise", ComBatHarmoniser(batch=dev))] + make_pipeline(FAST, "logistic").steps
    )
    rows = np.random.default_rng(0).integers(0, len(X), len(X))  # a bootstrap sample
    fitted = clone(pipe).fit(X.iloc[rows], y.iloc[rows])
    assert fitted.predict_proba(X).shape == (len(X), 2)
    assert list(fitted[:-1].get_feature_names_out())  # names flow through the step


def _cv_auc(pipe, X, y, seed):
    folds = StratifiedKFold(5, shuffle=True, random_state=seed)
    prob = cross_val_predict(pipe, X, y, cv=folds, method="predict_proba")[:, 1]
    return roc_auc_score(y, prob)


def _all_cases(X, dev, y=None):
    """ComBat on every case before the CV (the leak), protecting the label when given."""
    frame = X.reset_index(drop=True)
    cov = None if y is None else pd.DataFrame({"label": y.astype(str).to_numpy()})
    model = ComBatModel(method="johnson" if y is None else "fortin")
    batch = pd.Series(dev.to_numpy())
    model.fit(frame, batch=batch, discrete_covariates=cov)
    out = model.transform(frame, batch=batch, discrete_covariates=cov)
    return pd.DataFrame(np.asarray(out), index=X.index, columns=X.columns)


@pytest.mark.filterwarnings("ignore")
def test_combat_on_all_cases_biases_cv_auc_on_device_confounded_noise_the_fold_step_does_not():
    """Labels follow the device (prevalence 0.9 / 0.5 / 0.1), features are device shift and
    scale plus noise: within a device nothing predicts the label. Harmonised inside each fold,
    the cross-validated AUC is at chance; harmonised on all cases first, it is not: protecting the
    label as ComBat's covariate (the usual recipe) writes it into the features through the
    per-device scale correction (inflated AUC), and without covariates the held-out cases' part in
    the device means pushes the AUC below chance."""
    infold, leak_label, leak_plain = [], [], []
    for seed in (0, 1, 2):
        X, y, dev = device_cohort(seed=seed, p=150)
        pipe = Pipeline(
            [("harmonise", ComBatHarmoniser(batch=dev))] + make_pipeline(FAST, "logistic").steps
        )
        infold.append(_cv_auc(pipe, X, y, seed))
        leak_label.append(_cv_auc(make_pipeline(FAST, "logistic"), _all_cases(X, dev, y), y, seed))
        leak_plain.append(_cv_auc(make_pipeline(FAST, "logistic"), _all_cases(X, dev), y, seed))
    infold_auc, label_auc, plain_auc = map(np.mean, (infold, leak_label, leak_plain))
    assert abs(infold_auc - 0.5) < 0.12, infold
    assert label_auc > infold_auc + 0.1, (leak_label, infold)
    assert plain_auc < infold_auc - 0.1, (leak_plain, infold)


def test_selection_harmonise_puts_combat_first_in_every_radiomics_pipeline(compose):
    from her2study.errors import ConfigError
    from her2study.study import fit_signatures, signature_pipeline

    X, y, dev = device_cohort(n=60, p=8, prevalence=(0.5, 0.5, 0.5), effect=1.5)
    X.columns = [c.replace("intra_original", "intra_original_firstorder") for c in X.columns]
    clinical = pd.DataFrame({"age": np.linspace(30, 80, len(X))}, index=X.index)
    split = pd.Series(np.where(np.arange(len(X)) % 4 == 0, "test", "train"), index=X.index)
    cfg = compose(
        "+exp=paper",
        "selection.harmonise=combat",
        "selection.harmonise_covariates=[age]",
        "evaluation.cv_folds=3",
        "selection.lasso_cv=3",
        "evaluation.bootstrap_reps=0",
        "region.ring_widths_mm=[]",
        "execution.n_jobs=1",
    )
    fits = fit_signatures(X, clinical, y, split, [], cfg, sites=dev, covariates=clinical)
    intra = next(f for f in fits if f.name == "Intra")
    step = intra.model.named_steps["harmonise"]
    assert intra.model.steps[0][0] == "harmonise" and list(step.covariates.columns) == ["age"]
    assert set(step.batches_) == {"A", "B", "C"}
    assert step.reference_n_ == (split == "train").sum()  # fitted on training rows only
    with pytest.raises(ConfigError, match="data.site_column"):
        signature_pipeline(cfg, None, clinical)
    bad = compose(
        "+exp=paper", "selection.harmonise=combat", "selection.harmonise_covariates=[label]"
    )
    with pytest.raises(ConfigError, match="must not hold the label"):
        signature_pipeline(bad, dev, clinical.assign(label=y))
    missing = compose(
        "+exp=paper", "selection.harmonise=combat", "selection.harmonise_covariates=[bmi]"
    )
    with pytest.raises(ConfigError, match="data.clinical_columns"):
        signature_pipeline(missing, dev, clinical)
    plain = compose("+exp=paper")
    assert "harmonise" not in signature_pipeline(plain, dev, clinical).named_steps
