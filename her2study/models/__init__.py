"""Models of a radiomics study: the radiomics signature, the clinical model and the nomogram.

- :func:`make_radiomics_pipeline`: scaling, correlation filter, Mann-Whitney filter, LASSO and
  a classifier as one scikit-learn ``Pipeline`` whose step names are the search-space prefixes
  (``corr__threshold``, ``mw__alpha``, ``lasso__rule``, ``clf__C``).
- :func:`rad_score`: the signature's log-odds (the "rad-score").
- :class:`ClinicalModel`: univariable screening then multivariable logistic regression
  (statsmodels, odds ratios with Wald CIs).
- :class:`CombinedModel`: rad-score plus clinical factors (the nomogram's model; its figure is
  :func:`her2study.evaluation.plot_nomogram`).
- :class:`NomogramModel`: the whole nomogram procedure as one estimator (cross-fitted rad-scores).
- :func:`variance_inflation_factors`.

Estimators here never log or write files; callers decide what to record.
"""

from her2study.models._base import _LogOddsClassifierMixin
from her2study.models.clinical import (
    ClinicalModel,
    CombinedModel,
    PenalisedClinicalModel,
    variance_inflation_factors,
)
from her2study.models.nomogram import NomogramModel, out_of_fold, stratified_folds
from her2study.models.pipeline import (
    MODEL_FACTORIES,
    MODELS,
    RAD_SCORE_LIMIT,
    LassoCVClassifier,
    estimator_params,
    lasso_details,
    lasso_logistic,
    logistic,
    make_pipeline,
    make_radiomics_pipeline,
    pipeline_from_config,
    rad_score,
    random_forest,
    ridge,
    selected_coefficients,
    signature_coefficients,
    svm,
)

__all__ = [
    "MODELS",
    "MODEL_FACTORIES",
    "RAD_SCORE_LIMIT",
    "ClinicalModel",
    "CombinedModel",
    "LassoCVClassifier",
    "NomogramModel",
    "PenalisedClinicalModel",
    "estimator_params",
    "lasso_logistic",
    "logistic",
    "make_pipeline",
    "make_radiomics_pipeline",
    "out_of_fold",
    "pipeline_from_config",
    "rad_score",
    "random_forest",
    "ridge",
    "lasso_details",
    "selected_coefficients",
    "signature_coefficients",
    "stratified_folds",
    "svm",
    "variance_inflation_factors",
    "_LogOddsClassifierMixin",
]
