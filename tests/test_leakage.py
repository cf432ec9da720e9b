"""Selection outside cross-validation leaks; inside the Pipeline it does not.

The radiomics version of scikit-learn's "Data leakage during feature selection" pitfall: on
pure noise with random labels, choosing features (Mann-Whitney + LASSO) on all cases and then
cross-validating only the classifier reports a high AUC, while cross-validating the whole
pipeline, so that every fold selects its own features, reports chance.
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from sklearn.exceptions import ConvergenceWarning
from sklearn.model_selection import RepeatedStratifiedKFold, StratifiedKFold, cross_val_score
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from her2study.models import make_radiomics_pipeline
from her2study.selection import LassoCVSelector, MannWhitneyFilter, make_logistic_regression


@pytest.fixture(scope="module")
def noise():
    rng = np.random.default_rng(0)
    X = rng.standard_normal((100, 2000))
    y = rng.permutation(np.repeat([0, 1], 50))
    return X, y


@pytest.fixture(autouse=True)
def quiet():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # "no feature passes" in null folds
        warnings.simplefilter("ignore", ConvergenceWarning)
        yield


def test_selection_outside_cv_inflates_auc(noise):
    X, y = noise
    X_mw = MannWhitneyFilter().fit_transform(X, y)
    X_sel = LassoCVSelector().fit_transform(X_mw, y)
    assert 0 < X_sel.shape[1] < X_mw.shape[1] < X.shape[1]
    classifier = make_pipeline(StandardScaler(), make_logistic_regression(None, max_iter=5000))
    cv = StratifiedKFold(n_splits=5, shuffle=True, random_state=0)
    auc = cross_val_score(classifier, X_sel, y, cv=cv, scoring="roc_auc").mean()
    assert auc > 0.7


def test_selection_inside_the_pipeline_gives_chance(noise):
    X, y = noise
    cv = RepeatedStratifiedKFold(n_splits=5, n_repeats=2, random_state=0)
    auc = cross_val_score(make_radiomics_pipeline(), X, y, cv=cv, scoring="roc_auc").mean()
    assert abs(auc - 0.5) < 0.12
