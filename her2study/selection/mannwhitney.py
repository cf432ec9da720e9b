"""Mann-Whitney filter: keep features whose distributions differ between the two classes."""

from __future__ import annotations

import hashlib
import warnings
from numbers import Integral, Real

import numpy as np
from scipy import stats
from sklearn.base import BaseEstimator
from sklearn.feature_selection import SelectorMixin
from sklearn.utils._param_validation import Interval, StrOptions
from sklearn.utils.validation import check_is_fitted, validate_data

from ._common import _binary_target, _binary_target_tags
from ._memo import ArrayMemo, array_digest

__all__ = ["MannWhitneyFilter", "MannWhitneyMemo"]


def _mann_whitney(X, y01):
    """(U statistic of class 0, two-sided p) of every column; p = 1 for constant columns."""
    with np.errstate(invalid="ignore", divide="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        res = stats.mannwhitneyu(X[y01 == 0], X[y01 == 1], alternative="two-sided", axis=0)
    statistic = np.asarray(res.statistic, dtype=np.float64)
    p = np.asarray(res.pvalue, dtype=np.float64).copy()
    p[~np.isfinite(p)] = 1.0  # constant columns: all ties, no evidence of a difference
    return statistic, p


class MannWhitneyMemo(ArrayMemo):
    """Per-column U statistic and p-value of :class:`MannWhitneyFilter`, keyed by the bytes of
    ``y`` and of the column: fits on other column subsets of the same fold (another correlation
    threshold upstream, another alpha) test only the columns not seen yet. Used only where
    scipy's method cannot depend on the other columns (more than 8 cases per class); tested
    equal to a fresh fit. Activate with :meth:`active`.
    """

    def test(self, X: np.ndarray, y01: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        ykey = array_digest(y01)
        cols = np.ascontiguousarray(X.T)
        keys = [(ykey, hashlib.blake2b(c.view(np.uint8), digest_size=16).digest()) for c in cols]
        out = np.empty((X.shape[1], 2))
        missing = []
        with self._lock:
            for j, key in enumerate(keys):
                value = self._entries.get(key)
                if value is None:
                    missing.append(j)
                else:
                    out[j] = value
            self.hits += X.shape[1] - len(missing)
            self.misses += len(missing)
        if missing:
            statistic, p = _mann_whitney(X[:, missing], y01)
            out[missing, 0], out[missing, 1] = statistic, p
            for j in missing:
                self.put(keys[j], out[j].copy())
        return out[:, 0].copy(), out[:, 1].copy()


class MannWhitneyFilter(SelectorMixin, BaseEstimator):
    """Keep features whose distributions differ between the two classes.

    A two-sided Mann-Whitney U test (``scipy.stats.mannwhitneyu``, vectorised over columns)
    is run per feature and features with ``p < alpha`` (after the optional multiplicity
    correction) are kept. scipy gives the exact p when a class has at most 8 cases and there
    are no ties, else the normal approximation with tie and continuity corrections, which is
    also what R's ``wilcox.test`` uses at the paper's size (R goes exact below 50 per class
    without ties, so tiny tie-free samples can differ slightly).

    Parameters
    ----------
    alpha : float, default=0.05
        Significance level.
    correction : {None, "fdr_bh", "bonferroni"}, default=None
        Multiplicity correction applied to the p-values before comparing with ``alpha``.
    min_features : int, default=1
        If no feature passes, the ``min_features`` smallest p-values are kept and a warning
        is issued, so the step never returns zero features silently.

    Attributes
    ----------
    statistic_ : ndarray of shape (n_features_in_,)
        U statistic of the first class (``classes_[0]``).
    pvalues_ : ndarray of shape (n_features_in_,)
        Raw two-sided p-values (1.0 for constant columns).
    pvalues_adjusted_ : ndarray of shape (n_features_in_,)
        p-values after ``correction`` (equal to ``pvalues_`` when it is None).
    classes_ : ndarray of shape (2,)
    """

    _parameter_constraints: dict = {
        "alpha": [Interval(Real, 0, 1, closed="right")],
        "correction": [None, StrOptions({"fdr_bh", "bonferroni"})],
        "min_features": [Interval(Integral, 1, None, closed="left")],
    }

    def __init__(self, alpha=0.05, correction=None, min_features=1):
        self.alpha = alpha
        self.correction = correction
        self.min_features = min_features

    def fit(self, X, y):
        """Test every column of ``X`` against the binary target ``y``."""
        self._validate_params()
        X, y = validate_data(self, X, y, dtype=np.float64, ensure_min_samples=2)
        self.classes_, y01 = _binary_target(self, y)
        memo = MannWhitneyMemo.current()
        n_first = int((y01 == 0).sum())
        # above 8 cases per class scipy always takes the normal approximation, so a column's p
        # does not depend on the other columns (below, exact vs asymptotic depends on any tie)
        if memo is not None and min(n_first, y01.size - n_first) > 8:
            self.statistic_, p = memo.test(X, y01)
        else:
            self.statistic_, p = _mann_whitney(X, y01)
        self.pvalues_ = p
        if self.correction == "fdr_bh":
            self.pvalues_adjusted_ = stats.false_discovery_control(p, method="bh")
        elif self.correction == "bonferroni":
            self.pvalues_adjusted_ = np.minimum(p * p.size, 1.0)
        else:
            self.pvalues_adjusted_ = p.copy()

        support = self.pvalues_adjusted_ < self.alpha
        if not support.any():
            k = min(self.min_features, p.size)
            best = np.argsort(self.pvalues_adjusted_, kind="stable")[:k]
            support[best] = True
            warnings.warn(
                f"MannWhitneyFilter: no feature has p < {self.alpha} "
                f"(smallest p = {self.pvalues_adjusted_.min():.3g}); keeping the {k} "
                "feature(s) with the smallest p-values.",
                UserWarning,
                stacklevel=2,
            )
        self.support_ = support
        return self

    def _get_support_mask(self):
        check_is_fitted(self)
        return self.support_

    def __sklearn_tags__(self):
        return _binary_target_tags(super().__sklearn_tags__())
