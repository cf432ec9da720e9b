"""Clinical and combined (nomogram) logistic models on statsmodels, the penalised alternative,
and variance inflation factors. Estimators here never log or write files."""

from __future__ import annotations

import warnings
from numbers import Number

import numpy as np
import pandas as pd
import statsmodels.api as sm
from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.preprocessing import StandardScaler
from sklearn.utils import ClassifierTags
from sklearn.utils.validation import check_is_fitted, column_or_1d
from statsmodels.stats.outliers_influence import variance_inflation_factor

from her2study.models._base import _expit, _LogOddsClassifierMixin  # noqa: F401
from her2study.selection import (
    _binary_target,
    make_logistic_regression,
)

# --------------------------------------------------------------------------------------
# statsmodels logistic models
# --------------------------------------------------------------------------------------

_TABLE_COLUMNS = ["variable", "coef", "OR", "ci_low", "ci_high", "p"]


def _as_frame(X, names=None, n_features=None, who="X"):
    """``X`` as a DataFrame; arrays get ``names`` (or ``x0, x1, ...``) as column names."""
    if isinstance(X, pd.DataFrame):
        return X
    if hasattr(X, "toarray"):
        raise TypeError(f"{who}: sparse input is not supported; pass a dense array.")
    arr = np.asarray(X)
    if arr.ndim != 2:
        raise ValueError(
            f"{who}: expected a 2D array, got shape {arr.shape}. Reshape your data with "
            "array.reshape(-1, 1) for a single feature or array.reshape(1, -1) for one sample."
        )
    if n_features is not None and arr.shape[1] != n_features:
        raise ValueError(
            f"X has {arr.shape[1]} features, but {who} is expecting {n_features} features as input."
        )
    if names is None or len(names) != arr.shape[1]:
        names = [f"x{i}" for i in range(arr.shape[1])]
    return pd.DataFrame(arr, columns=list(names))


def _numeric_block(df, columns, who):
    missing = [c for c in columns if c not in df.columns]
    if missing:
        raise ValueError(f"{who}: columns not found in X: {missing}")
    if "const" in columns:
        raise ValueError(f"{who}: 'const' names the intercept; rename that column.")
    block = df[list(columns)]
    bad = [c for c in columns if not _is_numeric(block[c])]
    if bad:
        raise ValueError(
            f"{who} accepts numeric columns only; encode these upstream (e.g. 0/1 "
            f"indicators): {bad}"
        )
    block = block.astype(np.float64)
    if not np.isfinite(block.to_numpy()).all():
        raise ValueError(f"{who}: X contains NaN or infinite values; impute or drop them first.")
    return block


def _is_numeric(column):
    """Numeric or boolean dtype, or an object column holding numbers only (not strings)."""
    if pd.api.types.is_numeric_dtype(column) or pd.api.types.is_bool_dtype(column):
        return True
    return column.dtype == object and all(isinstance(v, Number) for v in column)


def _fit_logit(y01, block):
    """statsmodels Logit with an intercept; ``None`` when the fit is impossible."""
    exog = sm.add_constant(block, has_constant="add")
    error = None
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            result = sm.Logit(y01, exog).fit(disp=0, maxiter=200)
        except (np.linalg.LinAlgError, ValueError) as exc:
            error = exc
    if error is not None:
        warnings.warn(
            f"Logistic fit on {list(block.columns)} failed ({error}); treated as not significant.",
            UserWarning,
            stacklevel=3,
        )
        return None
    trouble = [
        str(w.message)
        for w in caught
        if "separation" in str(w.message).lower() or "converge" in str(w.message).lower()
    ]
    if trouble or not np.all(np.isfinite(result.params)):
        warnings.warn(
            f"Logistic fit on {list(block.columns)}: {trouble[0] if trouble else 'non-finite'}"
            " (quasi-complete separation?); odds ratios and p-values are unreliable.",
            UserWarning,
            stacklevel=3,
        )
    return result


def _or_table(result, names):
    if result is None:
        table = pd.DataFrame(np.nan, index=range(len(names)), columns=_TABLE_COLUMNS)
        table["variable"] = list(names)
        return table
    ci = result.conf_int()
    with np.errstate(over="ignore"):
        table = pd.DataFrame(
            {
                "variable": list(names),
                "coef": result.params[names].to_numpy(),
                "OR": np.exp(result.params[names].to_numpy()),
                "ci_low": np.exp(ci.loc[names, 0].to_numpy()),
                "ci_high": np.exp(ci.loc[names, 1].to_numpy()),
                "p": result.pvalues[names].to_numpy(),
            }
        )
    return table


class _LogitModel(_LogOddsClassifierMixin, ClassifierMixin, BaseEstimator):
    """Prediction from ``params_`` (a Series with ``const``) on the ``selected_`` columns."""

    def _setup(self, X, y):
        who = type(self).__name__
        if y is None:
            raise ValueError(f"{who} requires y to be passed, but the target y is None.")
        df = _as_frame(X, who=who)
        if df.shape[1] == 0 or df.shape[0] == 0:
            raise ValueError(
                f"Found array with {df.shape[1]} feature(s) (shape={df.shape}) while a "
                f"minimum of 1 is required by {who}."
            )
        if isinstance(X, pd.DataFrame):
            self.feature_names_in_ = np.asarray([str(c) for c in X.columns], dtype=object)
        elif hasattr(self, "feature_names_in_"):
            del self.feature_names_in_
        self.n_features_in_ = df.shape[1]
        self.classes_, y01 = _binary_target(self, column_or_1d(y, warn=True))
        if len(y01) != len(df):
            raise ValueError(f"X has {len(df)} rows but y has {len(y01)}")
        return df, y01

    def decision_function(self, X):
        """Linear predictor (log-odds of ``classes_[1]``)."""
        check_is_fitted(self)
        who = type(self).__name__
        df = _as_frame(X, getattr(self, "feature_names_in_", None), self.n_features_in_, who)
        # arrays are checked whole, as scikit-learn does; DataFrames on the columns used
        block = _numeric_block(df, self.selected_ if X is df else list(df.columns), who)
        block = block[self.selected_]
        return self.params_["const"] + block.to_numpy() @ self.params_[self.selected_].to_numpy()

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.classifier_tags = ClassifierTags(multi_class=False)
        tags.input_tags.string = False
        return tags


class ClinicalModel(_LogitModel):
    """Clinical model: univariable screening, then multivariable logistic regression.

    Each candidate column gets a univariable logistic fit (statsmodels, Wald p); those with
    ``p < univariable_p`` enter a multivariable fit, from which (with ``backward=True``) the
    variable with the largest p is removed while any ``p >= multivariable_p``. If no variable
    passes screening, the one with the smallest p is kept and a warning issued.

    Parameters
    ----------
    univariable_p : float, default=0.05
    multivariable_p : float, default=0.05
    columns : list of str, optional
        Candidate columns of ``X``; all columns by default. Must be numeric (encode
        categories upstream).
    backward : bool, default=True
        Backward elimination in the multivariable step.

    Attributes
    ----------
    univariable_table_, multivariable_table_ : DataFrame
        Columns ``variable, coef, OR, ci_low, ci_high, p`` (95% Wald CIs of the OR).
    selected_ : list of str
        Variables of the final model.
    params_ : Series
        Final coefficients including ``const``.
    result_ : statsmodels results of the final fit.
    """

    def __init__(self, univariable_p=0.05, multivariable_p=0.05, columns=None, backward=True):
        self.univariable_p = univariable_p
        self.multivariable_p = multivariable_p
        self.columns = columns
        self.backward = backward

    def fit(self, X, y):
        """Screen, fit and (optionally) reduce the clinical model."""
        df, y01 = self._setup(X, y)
        columns = list(df.columns) if self.columns is None else list(self.columns)
        block = _numeric_block(df, columns, "ClinicalModel")

        rows = [_or_table(_fit_logit(y01, block[[c]]), [c]) for c in columns]
        self.univariable_table_ = pd.concat(rows, ignore_index=True)
        p = self.univariable_table_["p"].to_numpy()
        keep = [c for c, pc in zip(columns, p, strict=True) if pc < self.univariable_p]
        if not keep:
            if np.all(np.isnan(p)):
                raise ValueError("ClinicalModel: no univariable fit succeeded.")
            best = columns[int(np.nanargmin(p))]
            warnings.warn(
                f"ClinicalModel: no variable has univariable p < {self.univariable_p}; "
                f"keeping the strongest one ({best}, p = {np.nanmin(p):.3g}).",
                UserWarning,
                stacklevel=2,
            )
            keep = [best]

        result = _fit_logit(y01, block[keep])
        while self.backward and len(keep) > 1 and result is not None:
            pv = result.pvalues[keep]
            if pv.max() < self.multivariable_p:
                break
            keep.remove(pv.idxmax())
            result = _fit_logit(y01, block[keep])
        if result is None:
            raise ValueError(f"ClinicalModel: the multivariable fit on {keep} failed.")
        self.selected_ = keep
        self.result_ = result
        self.params_ = result.params.copy()
        self.multivariable_table_ = _or_table(result, keep)
        return self


class PenalisedClinicalModel(_LogOddsClassifierMixin, ClassifierMixin, BaseEstimator):
    """Pre-specified, penalised clinical model: ridge logistic regression on every column.

    The columns are z-scored and ``C`` is chosen from ``Cs`` by stratified ``cv``-fold log loss;
    no variable is dropped, so there is no post-selection inference to caveat (the odds ratios
    are shrunk, per standard deviation of each column).

    Attributes
    ----------
    selected_ : list of str
        Every column (what the nomogram takes as clinical factors).
    multivariable_table_ : DataFrame
        ``variable, coef, OR`` per standard deviation (no p-values: penalised fit).
    C_ : float
    """

    def __init__(self, Cs=(0.01, 0.03, 0.1, 0.3, 1.0, 3.0, 10.0), cv=5, random_state=0):
        self.Cs = Cs
        self.cv = cv
        self.random_state = random_state

    def fit(self, X, y):
        """Choose ``C`` by inner CV, then fit on all rows."""
        from sklearn.metrics import log_loss
        from sklearn.model_selection import StratifiedKFold

        df = _as_frame(X, who="PenalisedClinicalModel")
        block = _numeric_block(df, list(df.columns), "PenalisedClinicalModel")
        self.classes_, y01 = _binary_target(self, column_or_1d(y, warn=True))
        self.feature_names_in_ = np.asarray([str(c) for c in block.columns], dtype=object)
        self.n_features_in_ = block.shape[1]
        self.scaler_ = StandardScaler().fit(block.to_numpy(float))
        Z = self.scaler_.transform(block.to_numpy(float))
        cv = StratifiedKFold(n_splits=self.cv, shuffle=True, random_state=self.random_state)
        loss = []
        for C in self.Cs:
            fold = []
            for tr, te in cv.split(Z, y01):
                m = make_logistic_regression("l2", C=C, max_iter=5000).fit(Z[tr], y01[tr])
                fold.append(log_loss(y01[te], m.predict_proba(Z[te])[:, 1], labels=[0, 1]))
            loss.append(np.mean(fold))
        self.C_ = float(self.Cs[int(np.argmin(loss))])
        self.model_ = make_logistic_regression("l2", C=self.C_, max_iter=5000).fit(Z, y01)
        self.selected_ = [str(c) for c in block.columns]
        coef = self.model_.coef_[0]
        self.multivariable_table_ = pd.DataFrame(
            {"variable": self.selected_, "coef": coef, "OR": np.exp(coef)}
        )
        return self

    def decision_function(self, X):
        """Log-odds of ``classes_[1]``."""
        check_is_fitted(self, "model_")
        df = _as_frame(X, who="PenalisedClinicalModel")
        block = _numeric_block(df, self.selected_, "PenalisedClinicalModel")
        return self.model_.decision_function(self.scaler_.transform(block.to_numpy(float)))


class CombinedModel(_LogitModel):
    """Nomogram model: logistic regression on rad-score column(s) plus clinical factors.

    Parameters
    ----------
    columns : list of str, optional
        Predictors (e.g. ``["rad_score", "ER"]``); all columns of ``X`` by default.
    vif_limit : float, default=5.0
        A ``UserWarning`` is issued for any predictor with a larger VIF (the paper reports
        1.04-1.18).

    Attributes
    ----------
    table_ : DataFrame
        ``variable, coef, OR, ci_low, ci_high, p`` of the fit.
    vif_ : Series
        Variance inflation factor of each predictor.
    params_ : Series
        Coefficients including ``const``.
    coef_, intercept_ : ndarray, float
        The same numbers in scikit-learn form.
    selected_ : list of str
    result_ : statsmodels results.
    """

    def __init__(self, columns=None, vif_limit=5.0):
        self.columns = columns
        self.vif_limit = vif_limit

    def fit(self, X, y):
        """Fit the logistic model and compute VIFs."""
        df, y01 = self._setup(X, y)
        columns = list(df.columns) if self.columns is None else list(self.columns)
        block = _numeric_block(df, columns, "CombinedModel")
        self.vif_ = variance_inflation_factors(block)
        high = self.vif_[self.vif_ > self.vif_limit]
        if len(high):
            warnings.warn(
                f"CombinedModel: VIF above {self.vif_limit} for {high.round(2).to_dict()}; "
                "the predictors are collinear.",
                UserWarning,
                stacklevel=2,
            )
        result = _fit_logit(y01, block)
        if result is None:
            raise ValueError(f"CombinedModel: the logistic fit on {columns} failed.")
        self.selected_ = columns
        self.result_ = result
        self.params_ = result.params.copy()
        self.table_ = _or_table(result, columns)
        self.coef_ = self.params_[columns].to_numpy()
        self.intercept_ = float(self.params_["const"])
        return self


def variance_inflation_factors(X):
    """VIF of each column: ``1 / (1 - R^2)`` of its regression on the others plus a constant.

    Uses ``statsmodels.stats.outliers_influence.variance_inflation_factor`` on ``X`` with a
    constant column added (without it the VIFs are uncentred and meaningless).
    """
    df = _as_frame(X)
    exog = sm.add_constant(df.astype(np.float64), has_constant="add").to_numpy()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        values = [variance_inflation_factor(exog, i + 1) for i in range(df.shape[1])]
    return pd.Series(values, index=list(df.columns), name="VIF", dtype=np.float64)
