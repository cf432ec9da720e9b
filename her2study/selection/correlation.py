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
from ._memo import ArrayMemo, array_digest

__all__ = ["CorrelationFilter", "CorrelationMemo"]

# Pairs weaker than this are not kept by the memo (a threshold below it is computed directly).
_MEMO_FLOOR = 0.75


class CorrelationMemo(ArrayMemo):
    """The threshold-free part of :meth:`CorrelationFilter.fit`, shared by every threshold.

    Keyed by the method and the bytes of ``X``: the constant columns, each feature's mean
    absolute correlation and the pairs with ``|rho| > min(floor, threshold)`` in the order
    ``fit`` visits them (strongest first, then by column). A fit with another threshold on the
    same data takes the prefix of that list, so its selection is the one it computes alone
    (tested), at the cost of an O(pairs) scan instead of the O(n p^2) matrix. Least recently
    used entries go first beyond ``max_mb``; thread-safe. Activate with :meth:`active`.
    """

    @staticmethod
    def key(X: np.ndarray, method: str) -> tuple:
        return (method, array_digest(X))

    def get(self, key, threshold: float):
        return self._lookup(key, lambda entry: entry["floor"] <= threshold)


def _correlation_pairs(X: np.ndarray, method: str, floor: float) -> dict:
    """Constant columns, mean |rho| per feature and the pairs above ``floor``, sorted."""
    n_samples = X.shape[0]
    constant = np.ptp(X, axis=0) == 0
    cols = np.flatnonzero(~constant)
    entry = {"constant": constant, "cols": cols, "floor": floor}
    if cols.size == 0:
        return entry
    Z = _standardise(_rank(X[:, cols]) if method == "spearman" else X[:, cols])
    corr = Z.T @ Z / n_samples
    abs_corr = np.abs(corr)
    np.fill_diagonal(abs_corr, 0.0)
    m = cols.size
    entry["mean_abs"] = abs_corr.sum(axis=1) / max(m - 1, 1)
    # i < j always, so "ties drop the later column" means "drop j on ties". (The upper
    # triangle taken from the pairs rather than by np.triu: no second n x n mask.)
    i, j = np.nonzero(abs_corr > floor)
    upper = i < j
    i, j = i[upper], j[upper]
    strength = abs_corr[i, j]
    order = np.lexsort((j, i, -strength))
    entry["i"], entry["j"] = i[order].astype(np.intp), j[order].astype(np.intp)
    entry["strength"], entry["rho"] = strength[order], corr[i[order], j[order]]
    return entry


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

        memo = CorrelationMemo.current()
        key = CorrelationMemo.key(X, self.method) if memo is not None else None
        entry = memo.get(key, self.threshold) if memo is not None else None
        if entry is None:
            floor = min(_MEMO_FLOOR, self.threshold) if memo is not None else self.threshold
            entry = _correlation_pairs(X, self.method, floor)
            if memo is not None:
                memo.put(key, entry)
        self.constant_ = entry["constant"].copy()
        if self.constant_.all():
            raise ValueError("CorrelationFilter: every feature in X is constant.")
        if self.constant_.any():
            warnings.warn(
                f"CorrelationFilter dropped {int(self.constant_.sum())} constant feature(s).",
                UserWarning,
                stacklevel=2,
            )
        cols = entry["cols"]
        mean_abs = entry["mean_abs"]
        self.mean_abs_corr_ = np.full(n_features, np.nan)
        self.mean_abs_corr_[cols] = mean_abs
        m = cols.size

        if self.rule == "target":
            Z = _standardise(_rank(X[:, cols]) if self.method == "spearman" else X[:, cols])
            zy = _standardise(_rank(y01[:, None]) if self.method == "spearman" else y01[:, None])
            score = np.abs(Z.T @ zy[:, 0] / n_samples)
            self.target_corr_ = np.full(n_features, np.nan)
            self.target_corr_[cols] = score

        above = entry["strength"] > self.threshold  # a prefix: sorted strongest first
        n_above = int(above.sum())
        pairs_i, pairs_j = entry["i"][:n_above], entry["j"][:n_above]
        rho = entry["rho"][:n_above]
        # Python lists in the loop over (up to ~10^5) pairs: a list index is a few times
        # cheaper than a NumPy scalar's
        keep = [True] * m
        order = mean_abs.tolist() if self.rule == "mean_abs_corr" else None
        if self.rule == "target":
            order = (-score).tolist()  # drop the one less correlated with y: b on ties
        cols_l, rho_l = cols.tolist(), rho.tolist()
        log = []
        for k, (a, b) in enumerate(zip(pairs_i.tolist(), pairs_j.tolist(), strict=True)):
            if not (keep[a] and keep[b]):
                continue
            drop = b if order is None or order[b] >= order[a] else a
            keep[drop] = False
            other = a if drop == b else b
            log.append((cols_l[drop], cols_l[other], rho_l[k]))
        self.drop_log_ = log
        self.support_ = np.zeros(n_features, dtype=bool)
        self.support_[cols[np.asarray(keep, dtype=bool)]] = True
        return self

    def _get_support_mask(self):
        check_is_fitted(self)
        return self.support_
