"""Evaluation of predictions: AUC/DeLong, thresholds, calibration, decision curves, figures.

All functions take predictions (``y_true`` in {0, 1}, ``y_score`` or ``prob``),
never fitted estimators, except :func:`optimism_bootstrap` (``validation``), which
refits an unfitted estimator or pipeline on bootstrap samples, and :func:`plot_nomogram`, which
draws a fitted logistic model's coefficients. Higher scores mean "more likely positive" and a
case is predicted positive when ``score >= threshold``.
"""

from .calibration import (
    HosmerLemeshowResult,
    brier_score,
    calibration_curve_binned,
    calibration_slope_intercept,
    calibration_smoothed,
    clip_probabilities,
    hosmer_lemeshow,
)
from .dca import decision_curve, net_benefit
from .delong import (
    AUCResult,
    DeLongTestResult,
    auc_bootstrap_ci,
    auc_delong,
    delong_covariance,
    delong_test,
)
from .figures import (
    plot_calibration,
    plot_coefficient_paths,
    plot_coefficients,
    plot_dca,
    plot_lasso_path,
    plot_roc,
)
from .metrics import (
    binary_metrics,
    check_binary_inputs,
    choose_threshold,
    holm_adjust,
    wilson_ci,
)
from .nomogram_plot import plot_nomogram
from .validation import INDICES, ValidationResult, optimism_bootstrap, performance_indices

__all__ = [
    "AUCResult",
    "DeLongTestResult",
    "HosmerLemeshowResult",
    "INDICES",
    "ValidationResult",
    "auc_bootstrap_ci",
    "auc_delong",
    "binary_metrics",
    "brier_score",
    "calibration_curve_binned",
    "calibration_slope_intercept",
    "calibration_smoothed",
    "check_binary_inputs",
    "choose_threshold",
    "clip_probabilities",
    "decision_curve",
    "delong_covariance",
    "delong_test",
    "holm_adjust",
    "hosmer_lemeshow",
    "net_benefit",
    "optimism_bootstrap",
    "performance_indices",
    "plot_calibration",
    "plot_coefficient_paths",
    "plot_coefficients",
    "plot_dca",
    "plot_lasso_path",
    "plot_nomogram",
    "plot_roc",
    "wilson_ci",
]
