"""Correlation filter: drop one member of every highly rank-correlated pair of features."""

from __future__ import annotations

import warnings
from numbers import Real

import numpy as np
from sklearn.base import BaseEstimator
from sklearn.feature_selection import SelectorMixin
from sklearn.utils._param_validation import Interval, StrOptions
from sklearn.utils.validation import check_is_fitted, validate_data

from ._common import _binary_target, _rank, _standardise

__all__ = ["CorrelationFilter"]


class CorrelationFilter(SelectorMixin, BaseEstimator):
    """Drop one member of every pair of features with ``|rho| > threshold``.

    Pairs are visited from the strongest correlation down; when both members of a pair are
    still kept, one is dropped according to ``rule``. Every pair above the threshold is
    visited, so no kept pair exceeds it at the end.

    Parameters
    ----------
    threshold : float, default=0.9
        Absolute correlation above which a pair counts as redundant. ``1.0`` disables the
        filter (apart from dropping constant columns).
    method : {"spearman", "pearson"}, default="spearman"
        Spearman correlation is the Pearson correlation of the column ranks (average ranks
        for ties); both are computed as one matrix product.
    rule : {"mean_abs_corr", "later", "target"}, default="mean_abs_corr"
        Which member of a pair is dropped:

        - ``"mean_abs_corr"``: the one with the higher mean absolute correlation with all
          other (non-constant) features, computed once on the full matrix (as caret's
          ``findCorrelation``); ties drop the later column.
        - ``"later"``: the later column (the common upper-triangle recipe).
        - ``"target"``: the one less correlated (same ``method``) with the binary target;
          needs ``y``; ties drop the later column.

    Attributes
    ----------
    mean_abs_corr_ : ndarray of shape (n_features_in_,)
        Mean absolute correlation of each feature with the others (NaN for constants).
    constant_ : ndarray of bool, shape (n_features_in_,)
        Columns dropped because they are constant.
    drop_log_ : list of (int, int, float)
        ``(dropped column, kept partner, rho)`` in the order pairs were resolved.
    n_features_in_, feature_names_in_ : see scikit-learn.

    Notes
    -----
    Constant columns are dropped with a warning; an all-constant ``X`` is an error. ``X``
    must not contain NaN. Memory is ``8 * n_features**2`` bytes (128 MB for 4,000).
    """

    _parameter_constraints: dict = {
        "threshold": [Interval(Real, 0, 1, closed="both")],
        "method": [StrOptions({"spearman", "pearson"})],
        "rule": [StrOptions({"mean_abs_corr", "later", "target"})],
    }

    def __init__(self, threshold=0.9, method="spearman", rule="mean_abs_corr"):
        self.threshold = threshold
        self.method = method
        self.rule = rule

    def fit(self, X, y=None):
        """Learn which columns to keep from ``X`` (and ``y`` for ``rule="target"``)."""
        self._validate_params()
        if self.rule == "target":
            if y is None:
                raise ValueError('CorrelationFilter(rule="target") requires y to be passed.')
            X, y = validate_data(self, X, y, dtype=np.float64, ensure_min_samples=2)
            _, y01 = _binary_target(self, y)
        else:
            X = validate_data(self, X, dtype=np.float64, ensure_min_samples=2)
        n_samples, n_features = X.shape

        self.constant_ = np.ptp(X, axis=0) == 0
        if self.constant_.all():
            raise ValueError("CorrelationFilter: every feature in X is constant.")
        if self.constant_.any():
            warnings.warn(
                f"CorrelationFilter dropped {int(self.constant_.sum())} constant feature(s).",
                UserWarning,
                stacklevel=2,
            )
        cols = np.flatnonzero(~self.constant_)
        Z = _standardise(_rank(X[:, cols]) if self.method == "spearman" else X[:, cols])
        corr = Z.T @ Z / n_samples
        abs_corr = np.abs(corr)
        np.fill_diagonal(abs_corr, 0.0)
        m = cols.size
        mean_abs = abs_corr.sum(axis=1) / max(m - 1, 1)
        self.mean_abs_corr_ = np.full(n_features, np.nan)
        self.mean_abs_corr_[cols] = mean_abs

        if self.rule == "target":
            zy = _standardise(_rank(y01[:, None]) if self.method == "spearman" else y01[:, None])
            score = np.abs(Z.T @ zy[:, 0] / n_samples)
            self.target_corr_ = np.full(n_features, np.nan)
            self.target_corr_[cols] = score

        # i < j always, so "ties drop the later column" means "drop j on ties".
        i, j = np.nonzero(np.triu(abs_corr > self.threshold, k=1))
        strength = abs_corr[i, j]
        order = np.lexsort((j, i, -strength))
        keep = np.ones(m, dtype=bool)
        log = []
        for a, b in zip(i[order].tolist(), j[order].tolist(), strict=True):
            if not (keep[a] and keep[b]):
                continue
            if self.rule == "mean_abs_corr":
                drop = b if mean_abs[b] >= mean_abs[a] else a
            elif self.rule == "later":
                drop = b
            else:
                drop = b if score[b] <= score[a] else a
            keep[drop] = False
            other = a if drop == b else b
            log.append((int(cols[drop]), int(cols[other]), float(corr[a, b])))
        self.drop_log_ = log
        self.support_ = np.zeros(n_features, dtype=bool)
        self.support_[cols[keep]] = True
        return self

    def _get_support_mask(self):
        check_is_fitted(self)
        return self.support_
