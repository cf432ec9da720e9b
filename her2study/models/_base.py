"""Shared pieces of the estimators: log-odds prediction from a decision function."""

from __future__ import annotations

import numpy as np


def _expit(eta):
    return 0.5 * (1.0 + np.tanh(0.5 * np.asarray(eta, dtype=np.float64)))


class _LogOddsClassifierMixin:
    """``predict_proba`` and ``predict`` from a binary ``decision_function`` (log-odds)."""

    def predict_proba(self, X):
        """Probabilities of ``classes_[0]`` and ``classes_[1]``."""
        p = _expit(self.decision_function(X))
        return np.column_stack([1.0 - p, p])

    def predict(self, X):
        """Class with the larger probability."""
        eta = self.decision_function(X)
        return self.classes_[(eta > 0).astype(int)]
