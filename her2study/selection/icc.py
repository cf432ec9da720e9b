"""Inter-reader reliability: intraclass correlation and the ICC filter."""

from __future__ import annotations

from numbers import Real

import numpy as np
from sklearn.base import BaseEstimator
from sklearn.feature_selection import SelectorMixin
from sklearn.utils._param_validation import Interval, StrOptions
from sklearn.utils.validation import check_is_fitted, validate_data

__all__ = ["ICCFilter", "icc", "icc_from_ratings"]

_ICC_KINDS = ("ICC(1,1)", "ICC(2,1)", "ICC(3,1)")


def icc_from_ratings(ratings, kind="ICC(3,1)"):
    """Single-rater intraclass correlation (Shrout & Fleiss 1979), vectorised over features.

    With ``n`` targets, ``k`` judges and the two-way ANOVA mean squares BMS (between
    targets), JMS (between judges), EMS (residual) and WMS (within targets):

    - ICC(1,1) = (BMS - WMS) / (BMS + (k-1) WMS)  (one-way random)
    - ICC(2,1) = (BMS - EMS) / (BMS + (k-1) EMS + k (JMS - EMS) / n)  (two-way random,
      absolute agreement; McGraw & Wong's ICC(A,1))
    - ICC(3,1) = (BMS - EMS) / (BMS + (k-1) EMS)  (two-way mixed, consistency; ICC(C,1))

    Parameters
    ----------
    ratings : array-like of shape (n_targets, n_judges) or (n_targets, n_judges, n_features)
    kind : {"ICC(1,1)", "ICC(2,1)", "ICC(3,1)"}

    Returns
    -------
    float or ndarray of shape (n_features,)
        NaN where the ratings have no variance at all.
    """
    if kind not in _ICC_KINDS:
        raise ValueError(f"kind must be one of {_ICC_KINDS}, got {kind!r}")
    r = np.asarray(ratings, dtype=np.float64)
    scalar = r.ndim == 2
    if scalar:
        r = r[:, :, None]
    if r.ndim != 3:
        raise ValueError("ratings must have shape (n_targets, n_judges[, n_features])")
    n, k = r.shape[:2]
    if n < 2 or k < 2:
        raise ValueError(f"ICC needs at least 2 targets and 2 judges, got {n} and {k}")
    grand = r.mean(axis=(0, 1))
    ss_total = ((r - grand) ** 2).sum(axis=(0, 1))
    ss_between = k * ((r.mean(axis=1) - grand) ** 2).sum(axis=0)
    ss_judges = n * ((r.mean(axis=0) - grand) ** 2).sum(axis=0)
    ss_error = ss_total - ss_between - ss_judges
    bms = ss_between / (n - 1)
    jms = ss_judges / (k - 1)
    ems = ss_error / ((n - 1) * (k - 1))
    wms = (ss_total - ss_between) / (n * (k - 1))
    with np.errstate(invalid="ignore", divide="ignore"):
        if kind == "ICC(1,1)":
            out = (bms - wms) / (bms + (k - 1) * wms)
        elif kind == "ICC(2,1)":
            out = (bms - ems) / (bms + (k - 1) * ems + k * (jms - ems) / n)
        else:
            out = (bms - ems) / (bms + (k - 1) * ems)
    out[~np.isfinite(out)] = np.nan
    return float(out[0]) if scalar else out


def icc(a, b, kind="ICC(3,1)"):
    """ICC between two readers' measurements, column by column.

    Parameters
    ----------
    a, b : array-like of shape (n_cases,) or (n_cases, n_features)
        Reader 1 and reader 2, rows aligned by case.
    kind : {"ICC(1,1)", "ICC(2,1)", "ICC(3,1)"}, default="ICC(3,1)"
        See :func:`icc_from_ratings` for the Shrout & Fleiss formulas.
    """
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    if a.shape != b.shape:
        raise ValueError(f"readers' arrays differ in shape: {a.shape} vs {b.shape}")
    return icc_from_ratings(np.stack([a, b], axis=1), kind)


class PairedColumnsSelector(SelectorMixin, BaseEstimator):
    """Base of the filters that score each feature against its partner columns (a second
    reader's, or perturbed masks'): ``fit`` sets ``support_``; NaN is allowed in the input."""

    def _get_support_mask(self):
        check_is_fitted(self)
        return self.support_

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.input_tags.allow_nan = True
        return tags


class ICCFilter(PairedColumnsSelector):
    """Keep features whose inter-reader ICC reaches ``threshold``.

    Column convention: ``X`` is a DataFrame in which each reader-1 feature ``<feat>`` has a
    reader-2 partner named ``reader2__<feat>`` (prefix set by ``reader2_prefix``). The
    filter keeps the reader-1 features with ``ICC >= threshold`` and always drops every
    reader-2 column, so downstream steps see reader 1 only. Cases read once carry NaN in
    the reader-2 columns: the ICC uses the cases whose reader-2 columns are all present,
    and NaN is allowed in reader-2 columns only.

    Parameters
    ----------
    threshold : float, default=0.75
        Minimum ICC (Koo & Li 2016: > 0.75 good reliability).
    kind : {"ICC(3,1)", "ICC(2,1)", "ICC(1,1)"}, default="ICC(3,1)"
        See :func:`icc_from_ratings`.
    reader2_prefix : str, default="reader2__"
    unpaired : {"error", "drop", "keep"}, default="error"
        What to do with a reader-1 feature that has no reader-2 partner.

    Attributes
    ----------
    icc_ : ndarray of shape (n_features_in_,)
        ICC per column (NaN for reader-2 and unpaired columns).
    n_cases_used_ : int
        Cases with a complete second reading.
    """

    _parameter_constraints: dict = {
        "threshold": [Interval(Real, None, 1, closed="right")],
        "kind": [StrOptions(set(_ICC_KINDS))],
        "reader2_prefix": [str],
        "unpaired": [StrOptions({"error", "drop", "keep"})],
    }

    def __init__(
        self, threshold=0.75, kind="ICC(3,1)", reader2_prefix="reader2__", unpaired="error"
    ):
        self.threshold = threshold
        self.kind = kind
        self.reader2_prefix = reader2_prefix
        self.unpaired = unpaired

    def fit(self, X, y=None):
        """Compute the ICC of every paired feature (``y`` is ignored)."""
        self._validate_params()
        X = validate_data(self, X, dtype=np.float64, ensure_all_finite="allow-nan")
        names = getattr(self, "feature_names_in_", None)
        if names is None:
            raise ValueError(
                "ICCFilter needs a DataFrame whose columns pair '<feat>' with "
                f"'{self.reader2_prefix}<feat>'; got an array without column names."
            )
        names = [str(c) for c in names]
        position = {name: i for i, name in enumerate(names)}
        prefix = self.reader2_prefix
        is_r2 = np.array([c.startswith(prefix) for c in names])
        orphans = [c for c in np.array(names)[is_r2] if c[len(prefix) :] not in position]
        if orphans:
            raise ValueError(
                f"ICCFilter: reader-2 columns without a reader-1 partner: {orphans[:5]}"
            )
        r1_idx = np.flatnonzero(~is_r2)
        partner = np.array([position.get(prefix + names[i], -1) for i in r1_idx])
        unpaired = r1_idx[partner < 0]
        if unpaired.size and self.unpaired == "error":
            raise ValueError(
                f"ICCFilter: {unpaired.size} feature(s) lack a '{prefix}' partner, e.g. "
                f"{[names[i] for i in unpaired[:5]]}; set unpaired='drop' or 'keep'."
            )
        if not np.isfinite(X[:, ~is_r2]).all():
            raise ValueError("ICCFilter: reader-1 columns contain NaN or infinite values.")
        paired_r1 = r1_idx[partner >= 0]
        paired_r2 = partner[partner >= 0]
        if np.isinf(X[:, paired_r2]).any():
            raise ValueError("ICCFilter: reader-2 columns contain infinite values.")
        rows = np.isfinite(X[:, paired_r2]).all(axis=1)
        self.n_cases_used_ = int(rows.sum())
        if self.n_cases_used_ < 2:
            raise ValueError(
                f"ICCFilter needs at least 2 cases read by both readers, got {self.n_cases_used_}."
            )
        values = icc(X[rows][:, paired_r1], X[rows][:, paired_r2], kind=self.kind)
        self.icc_ = np.full(X.shape[1], np.nan)
        self.icc_[paired_r1] = values
        support = np.zeros(X.shape[1], dtype=bool)
        support[paired_r1] = values >= self.threshold  # NaN (no variance) fails
        if self.unpaired == "keep":
            support[unpaired] = True
        self.support_ = support
        return self
