"""The radiomics signature: one pipeline factory (contour-robustness filter and ComBat across
sites when configured, scaling, correlation and Mann-Whitney filters, LASSO, a classifier) from
the typed selection and model config; rad-scores and coefficients."""

from __future__ import annotations

from enum import Enum

import numpy as np
import pandas as pd
from sklearn.base import ClassifierMixin
from sklearn.calibration import CalibratedClassifierCV
from sklearn.ensemble import RandomForestClassifier
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.svm import SVC
from sklearn.utils import ClassifierTags
from sklearn.utils.validation import check_is_fitted, validate_data

from her2study.choices import ICCKind
from her2study.errors import ConfigError
from her2study.models._base import _expit, _LogOddsClassifierMixin  # noqa: F401
from her2study.selection import (
    CorrelationFilter,
    LassoCVSelector,
    MannWhitneyFilter,
    make_logistic_regression,
)

# --------------------------------------------------------------------------------------
# Radiomics signature
# --------------------------------------------------------------------------------------


class LassoCVClassifier(_LogOddsClassifierMixin, ClassifierMixin, LassoCVSelector):
    """:class:`~her2study.selection.LassoCVSelector` that also predicts with its own fit.

    The rad-score is the L1-logistic linear predictor at the CV-chosen penalty, i.e. glmnet's
    ``predict(cv.fit, s = "lambda.min")``; there is no unpenalised refit.
    """

    def decision_function(self, X):
        """Log-odds of ``classes_[1]``."""
        check_is_fitted(self)
        X = validate_data(self, X, dtype=np.float64, reset=False)
        return X @ self.coef_ + self.intercept_

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.classifier_tags = ClassifierTags(multi_class=False)
        return tags


def logistic(random_state=0, lasso_kwargs=None, **params):
    """Unpenalised logistic regression on the LASSO-selected features (the paper)."""
    return make_logistic_regression(None, **{"max_iter": 5000, **params})


def ridge(random_state=0, lasso_kwargs=None, **params):
    """L2-penalised logistic regression, ``C=1`` unless given."""
    return make_logistic_regression("l2", **{"C": 1.0, "max_iter": 5000, **params})


def svm(random_state=0, lasso_kwargs=None, **params):
    """RBF ``SVC`` in ``CalibratedClassifierCV(method="sigmoid", cv=5)`` for probabilities."""
    svc = SVC(**{"kernel": "rbf", "C": 1.0, "gamma": "scale", **params})
    return CalibratedClassifierCV(svc, method="sigmoid", cv=5)


def random_forest(random_state=0, lasso_kwargs=None, **params):
    """``RandomForestClassifier(n_estimators=500)`` seeded by ``random_state``."""
    return RandomForestClassifier(**{"n_estimators": 500, "random_state": random_state, **params})


def lasso_logistic(random_state=0, lasso_kwargs=None, **params):
    """The LASSO-CV fit itself as the model (replaces the ``lasso`` step; no ``clf`` step)."""
    return LassoCVClassifier(**{**(lasso_kwargs or {}), **params})


# The estimator factories by model name: conf/model/<name>.yaml names the same function as its
# ``_target_`` (a test checks that they agree).
MODEL_FACTORIES = {
    "logistic": logistic,
    "lasso_logistic": lasso_logistic,
    "ridge": ridge,
    "svm": svm,
    "random_forest": random_forest,
}
MODELS = tuple(MODEL_FACTORIES)

# Selection settings that are set on the pipeline's steps (beyond make_radiomics_pipeline's own
# arguments), by their key in ``selection`` config -> step parameter.
_STEP_PARAMS = {
    "corr_method": "corr__method",
    "corr_rule": "corr__rule",
    "lasso_scoring": "lasso__scoring",
    "lasso_n_lambdas": "lasso__n_lambdas",
    "max_features": "lasso__max_features",
}


def _value(v):
    """A config value as a plain Python value (enum members become their string value)."""
    return v.value if isinstance(v, Enum) else v


def make_radiomics_pipeline(
    corr_threshold=0.9,
    mw_alpha=0.05,
    mw_correction=None,
    lasso_rule="min",
    lasso_cv=10,
    model="logistic",
    model_params=None,
    random_state=0,
):
    """The paper's radiomics signature as one ``Pipeline``, fitted fold by fold.

    Steps: ``scale`` (z-score), ``corr`` (:class:`CorrelationFilter`), ``mw``
    (:class:`MannWhitneyFilter`), ``lasso`` (:class:`LassoCVSelector`), ``clf``.

    Parameters
    ----------
    corr_threshold, mw_alpha, mw_correction, lasso_rule, lasso_cv
        Parameters of the ``corr``, ``mw`` and ``lasso`` steps.
    model : {"logistic", "lasso_logistic", "ridge", "svm", "random_forest"}
        - ``"logistic"``: unpenalised logistic regression on the LASSO-selected features
          (the paper).
        - ``"lasso_logistic"``: the LASSO fit itself is the model; the ``lasso`` step is then
          a :class:`LassoCVClassifier` and the last step, and there is no ``clf`` step (so
          ``lasso__*`` keys keep working, ``clf__*`` keys do not apply).
        - ``"ridge"``: L2 logistic regression, ``C=1``.
        - ``"svm"``: RBF ``SVC`` wrapped in ``CalibratedClassifierCV(method="sigmoid",
          cv=5)`` for probabilities (Platt scaling on held-out folds; ``SVC(probability=
          True)`` is deprecated from scikit-learn 1.9). Its parameters are
          ``clf__estimator__C`` etc.
        - ``"random_forest"``: ``RandomForestClassifier(n_estimators=500)``.
    model_params : dict, optional
        Keyword arguments of the model (of the inner ``SVC`` for ``"svm"``).
    random_state : int
        Seeds the LASSO folds and solver and the random forest.
    """
    model = _value(model)
    if model not in MODEL_FACTORIES:
        raise ValueError(f"model must be one of {MODELS}, got {model!r}")
    lasso_kwargs = {"cv": lasso_cv, "rule": _value(lasso_rule), "random_state": random_state}
    steps = [
        ("scale", StandardScaler()),
        ("corr", CorrelationFilter(threshold=corr_threshold)),
        ("mw", MannWhitneyFilter(alpha=mw_alpha, correction=_value(mw_correction))),
    ]
    final = MODEL_FACTORIES[model](random_state, lasso_kwargs, **dict(model_params or {}))
    if model == "lasso_logistic":
        steps.append(("lasso", final))
    else:
        steps.append(("lasso", LassoCVSelector(**lasso_kwargs)))
        steps.append(("clf", final))
    return Pipeline(steps)


def make_pipeline(
    selection,
    model,
    model_params=None,
    seed=0,
    *,
    sites=None,
    covariates=None,
    passthrough=(),
    label_column=None,
) -> Pipeline:
    """The one radiomics pipeline factory, used by every task (paper, search, export, predict).

    Parameters
    ----------
    selection : mapping
        The ``selection`` config (or any mapping with its keys): ``corr_threshold``,
        ``corr_method``, ``corr_rule``, ``mw_alpha``, ``mw_correction``, ``lasso_rule``,
        ``lasso_cv``, ``lasso_scoring``, ``lasso_n_lambdas``, ``max_features``; missing keys take
        the steps' defaults. With ``robustness_threshold`` (and ``robustness_kind``) a ``robust``
        step comes first (:class:`~her2study.selection.robustness.RobustnessFilter`: it needs the
        ``perturb<k>__*`` columns, which it drops); with ``harmonise=combat`` (and
        ``harmonise_covariates``, ``harmonise_discrete``, ``harmonise_unseen``) a ``harmonise``
        step (:class:`~her2study.models.harmonise.ComBatHarmoniser`) follows it, before ``scale``.
    model : str
        A name of :data:`MODEL_FACTORIES`.
    model_params : mapping, optional
        Keyword arguments of the model's estimator.
    seed : int
        Seeds the LASSO folds and solver and the random forest.
    sites : pandas.Series, optional
        Device / site of every case that may be seen, indexed by case id: ComBat's batch, looked
        up for the rows each fit sees (a side input, never a column of ``X``); needed with
        ``harmonise``.
    covariates : pandas.DataFrame, optional
        Indexed by case id, holding the ``harmonise_covariates`` columns.
    passthrough : sequence of str
        Columns ComBat leaves unchanged (the clinical columns a search candidate adds).
    label_column : str, optional
        The outcome's column name, refused as a covariate.
    """
    sel = {k: _value(v) for k, v in dict(selection).items()}
    args = {
        k: sel[k]
        for k in ("corr_threshold", "mw_alpha", "mw_correction", "lasso_rule", "lasso_cv")
        if k in sel
    }
    params = {k: _value(v) for k, v in dict(model_params or {}).items()}
    pipe = make_radiomics_pipeline(
        **args, model=_value(model), model_params=params, random_state=int(seed)
    )
    valid = pipe.get_params()
    extra = {step: sel[key] for key, step in _STEP_PARAMS.items() if key in sel}
    pipe.set_params(**{k: v for k, v in extra.items() if k in valid})
    first = _site_steps(sel, sites, covariates, passthrough, label_column)
    return Pipeline([*first, *pipe.steps]) if first else pipe


# the selection keys of the steps before ``scale`` (what a search candidate carries besides its
# searched dimensions)
SITE_STEP_KEYS = (
    "robustness_threshold",
    "robustness_kind",
    "harmonise",
    "harmonise_covariates",
    "harmonise_discrete",
    "harmonise_unseen",
)


def _site_steps(sel: dict, sites, covariates, passthrough, label_column) -> list:
    """``robust`` (raw features' ICC across contour perturbations) then ``harmonise``."""
    from her2study.models.harmonise import ComBatHarmoniser
    from her2study.selection.robustness import RobustnessFilter

    steps = []
    threshold = sel.get("robustness_threshold")
    if threshold is not None:
        kind = str(sel.get("robustness_kind") or "ICC(2,1)")
        kind = ICCKind[kind].value if kind in ICCKind.__members__ else kind  # name or value
        steps.append(("robust", RobustnessFilter(threshold=float(threshold), kind=kind)))
    if sel.get("harmonise") is None:
        return steps
    if sites is None:
        raise ConfigError(
            "selection.harmonise=combat needs each case's device or site -> fix: set "
            "data.site_column (e.g. data.site_column=device)"
        )
    names = [str(c) for c in sel.get("harmonise_covariates") or []]
    if label_column is not None and label_column in names:
        raise ConfigError(
            f"selection.harmonise_covariates must not hold the label ({label_column}): "
            "it is unknown when a new case is predicted, and protecting it on all cases leaks"
        )
    cov = None
    if names:
        missing = [c for c in names if covariates is None or c not in covariates.columns]
        if missing:
            raise ConfigError(
                f"selection.harmonise_covariates {missing} are not clinical columns -> fix: "
                "add them to data.clinical_columns"
            )
        cov = covariates[names]
    discrete = [c for c in (sel.get("harmonise_discrete") or []) if c in names]
    if steps:  # ComBat looks each row's site up by case id: the filter hands on a DataFrame
        steps[0][1].set_output(transform="pandas")
    step = ComBatHarmoniser(
        batch=sites,
        covariates=cov,
        discrete=discrete,
        unseen=str(sel.get("harmonise_unseen") or "reference"),
        passthrough=list(passthrough) or None,
    )
    return [*steps, ("harmonise", step)]


def pipeline_from_config(
    selection_cfg, model_cfg, seed: int, *, sites=None, covariates=None, label_column=None
) -> Pipeline:
    """:func:`make_pipeline` from the typed ``selection`` and ``model`` configs of a run."""
    from omegaconf import OmegaConf

    def plain(node):
        if OmegaConf.is_config(node):
            return OmegaConf.to_container(node, resolve=True)
        return dict(node or {})

    return make_pipeline(
        plain(selection_cfg),
        model_cfg.name,
        plain(model_cfg.params),
        seed,
        sites=sites,
        covariates=covariates,
        label_column=label_column,
    )


def estimator_params(model: str) -> set[str]:
    """The parameter names a model's estimator takes (what ``<model>.<param>`` may set)."""
    model = _value(model)
    params = make_radiomics_pipeline(model=model).get_params()
    pre = {"svm": "clf__estimator__", "lasso_logistic": "lasso__"}.get(model, "clf__")
    return {k[len(pre) :] for k in params if k.startswith(pre) and "__" not in k[len(pre) :]}


RAD_SCORE_LIMIT = float(np.log((1 - 1e-6) / 1e-6))  # |log-odds| of p in [1e-6, 1 - 1e-6]


def rad_score(pipeline, X):
    """Rad-score of each case: the signature's log-odds of the positive class.

    For the logistic models (``logistic``, ``lasso_logistic``, ``ridge``) this is the linear
    predictor ``decision_function``; for the others it is ``logit(predict_proba)``; both are
    bounded to ``|13.8|`` (probabilities in ``[1e-6, 1 - 1e-6]``), so that a signature that
    separates its fitting cases (out-of-fold scores of +-40 were seen) does not hand the nomogram
    a few extreme scores that dominate its fit.
    """
    final = pipeline[-1] if isinstance(pipeline, Pipeline) else pipeline
    if isinstance(final, (LogisticRegression, LassoCVClassifier)):
        eta = np.asarray(pipeline.decision_function(X), dtype=np.float64)
        return np.clip(eta, -RAD_SCORE_LIMIT, RAD_SCORE_LIMIT)
    p = np.clip(pipeline.predict_proba(X)[:, 1], 1e-6, 1 - 1e-6)
    return np.log(p / (1 - p))


def signature_coefficients(pipeline):
    """Non-zero coefficients of a fitted logistic signature, indexed by feature name.

    Coefficients are on the z-scored scale of the ``scale`` step (as in the paper's LASSO
    coefficient plots). Not defined for ``svm`` and ``random_forest``.
    """
    final = pipeline[-1]
    if isinstance(final, LassoCVClassifier):
        names = pipeline[:-1].get_feature_names_out()
        coef = pd.Series(final.coef_, index=names)
        return coef[coef != 0]
    if isinstance(final, LogisticRegression):
        names = pipeline[:-1].get_feature_names_out()
        return pd.Series(final.coef_[0], index=names)
    raise TypeError(f"{type(final).__name__} has no linear coefficients")


def selected_coefficients(pipe) -> pd.Series:
    """Features surviving every selection step, with the final model's coefficients (NaN for
    models without linear coefficients)."""
    try:
        return signature_coefficients(pipe).rename("coefficient")
    except TypeError:
        names = pipe[:-1].get_feature_names_out()
        return pd.Series(np.nan, index=names, name="coefficient")


def lasso_details(pipe) -> dict:
    """The LASSO CV curve in glmnet's terms (binomial deviance, or AUC) for plotting/logging."""
    lasso = pipe.named_steps.get("lasso")
    if lasso is None or not hasattr(lasso, "cv_results_"):
        return {}
    r = lasso.cv_results_
    auc = getattr(lasso, "scoring", "neg_log_loss") == "roc_auc"
    scale = 1.0 if auc else -2.0  # neg_log_loss -> deviance = 2 x log loss
    curve = pd.DataFrame(
        {
            "lambda": np.asarray(r["lambdas"], dtype=float),
            "mean": scale * np.asarray(r["mean_score"], dtype=float),
            "se": abs(scale) * np.asarray(r["se_score"], dtype=float),
            "n_nonzero": np.asarray(r["n_nonzero"]),
        }
    )
    return {
        "lasso_cv": curve,
        "lasso_metric": "AUC" if auc else "Binomial deviance",
        "lasso_lambda_min": float(curve["lambda"].iloc[int(r["best_index"])]),
        "lasso_lambda": float(curve["lambda"].iloc[int(r["chosen_index"])]),
    }
