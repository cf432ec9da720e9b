"""ComBat harmonisation across devices (sites) as a pipeline step, fitted on training folds only.

The empirical-Bayes ComBat fit is ``combatlearn``'s (``combatlearn.core.ComBatModel``: Johnson et
al. 2007 without covariates, Fortin et al. 2018 with covariates to protect); this module fits it
inside the fold and keeps only what applying it needs: per device the location and scale
corrections, per feature the grand mean, pooled variance and covariate effects -- statistics,
never a case's row, id or covariate value (so a fitted step can go into a model file).

Each row's device is found in one of two ways. In a study the device of every case and the
protected covariates are given at construction as pandas objects indexed by case id (metadata
known at prediction time, never the outcome) and looked up for the rows that ``fit`` and
``transform`` see, so that ``clone()``, cross-validation and bootstrap samples (repeated case
ids) keep working. In an exported model (:meth:`ComBatHarmoniser.portable`) there is no lookup:
the device is a column of the input (``site_column``), the covariates too, and neither is a
feature.

Harmonising all cases before cross-validation lets the held-out cases shape the correction, and
protecting the label as a covariate writes the label into the features (Nygaard et al. 2016);
:class:`ComBatHarmoniser` does neither.

A device absent from the training rows (leave-one-device-out, a new scanner) has no fitted batch
effect. With ``unseen="reference"`` its cases are harmonised to the harmonised training data as
ComBat's reference batch (M-ComBat, Stein et al. 2015 / Zhang et al. 2018): the new device's
location and scale are estimated from its own cases' features -- no labels, but the prediction of
one such case depends on the other cases of its device passed with it, and it needs at least 2.
The reference enters only through its per-feature mean, variance and size (all ComBat's
reference fit uses), after removing the covariate effects fitted on the training rows.
``unseen="error"`` refuses instead.
"""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
from sklearn.base import BaseEstimator, TransformerMixin
from sklearn.utils.validation import check_is_fitted

__all__ = ["ComBatHarmoniser"]

_TRAIN = "__training__"  # the reference batch name of the unseen-device step
_NEW = "__new__"


def _combat_model(method: str, **kw):
    try:
        from combatlearn.core import ComBatModel
    except ImportError as exc:  # pragma: no cover - depends on the install
        raise ImportError(
            "selection.harmonise=combat needs the combatlearn package: "
            "pip install 'her2study[harmonise]'"
        ) from exc
    return ComBatModel(method=method, **kw)


def _level_names(values: pd.Series) -> pd.Series:
    """A categorical covariate's values as strings: numbers written alike (``1``, ``1.0`` and
    ``"1"`` are one level), whether they come from a cohort table or a model's input."""
    num = pd.to_numeric(values, errors="coerce")
    if num.notna().all():
        return num.map(lambda v: f"{float(v):g}")
    return values.astype(str).str.strip()


class ComBatHarmoniser(TransformerMixin, BaseEstimator):
    """ComBat on the training rows only (batch = device); a no-label transformer step.

    Parameters
    ----------
    batch : pandas.Series, optional
        Device (site) of every case that may be seen, indexed by case id.
    covariates : pandas.DataFrame, optional
        Covariates whose effects ComBat protects (e.g. age), indexed by case id; None = Johnson's
        ComBat without covariates.
    discrete : list of str, optional
        Covariates that are categorical (the others are continuous).
    parametric : bool, default=True
        Parametric empirical-Bayes priors.
    unseen : {"reference", "error"}, default="reference"
        What to do with a device absent from the training rows (see the module docstring).
    passthrough : list of str, optional
        Columns left unchanged (e.g. clinical columns beside the features of a search candidate).
    site_column : str, optional
        Read each row's device from this input column instead of ``batch`` (an exported model);
        the column is not a feature.
    covariate_columns : list of str, optional
        With ``site_column``: the input columns holding the covariates (not features).

    Attributes
    ----------
    feature_names_in_ : ndarray of str
        The feature columns (harmonised, in this order; the output's columns).
    batches_ : ndarray of str
        Devices seen in ``fit``.
    passthrough_ : ndarray of bool
        Features left unchanged (no variance in the training rows, or named in ``passthrough``).
    grand_mean_, pooled_var_ : ndarray
        Per harmonised feature: ComBat's grand mean and pooled variance.
    gamma_star_, delta_star_ : ndarray of shape (n_devices, n_harmonised)
        Per device: the empirical-Bayes location and scale corrections.
    beta_ : ndarray of shape (n_design_columns, n_harmonised)
        Covariate effects (none without covariates).
    reference_mean_, reference_var_, reference_n_
        The harmonised training rows' per-feature mean and variance (covariate effects removed)
        and their number: the reference of a device never seen in ``fit``.
    """

    def __init__(
        self,
        batch=None,
        covariates=None,
        discrete=None,
        parametric=True,
        unseen="reference",
        passthrough=None,
        site_column=None,
        covariate_columns=None,
    ):
        self.batch = batch
        self.covariates = covariates
        self.discrete = discrete
        self.parametric = parametric
        self.unseen = unseen
        self.passthrough = passthrough
        self.site_column = site_column
        self.covariate_columns = covariate_columns

    # ---- each row's features, device and covariates
    def _rows(self, X, fit: bool):
        if not isinstance(X, pd.DataFrame):
            raise TypeError(
                "ComBatHarmoniser needs a DataFrame indexed by case id (to look up each row's "
                "device); got an array. Put the step first in the pipeline."
            )
        if self.site_column is not None:
            extra = [self.site_column, *(self.covariate_columns or [])]
            absent = [c for c in extra if c not in X.columns]
            if absent:
                raise ValueError(
                    f"ComBatHarmoniser: the input lacks column(s) {absent} (each case's device "
                    f"'{self.site_column}' and the protected covariates)"
                )
            batch = X[self.site_column].astype(str).str.strip().to_numpy()
            cov = X[list(self.covariate_columns)] if self.covariate_columns else None
            names = [c for c in X.columns if c not in extra] if fit else None
        else:
            if not isinstance(self.batch, pd.Series):
                raise TypeError(
                    "ComBatHarmoniser: batch must be a pandas Series indexed by case id"
                )
            missing = X.index.difference(self.batch.index)
            if len(missing):
                raise ValueError(f"ComBatHarmoniser: no device for cases {list(missing[:5])}")
            batch = self.batch.loc[X.index].astype(str).str.strip().to_numpy()
            cov = None if self.covariates is None else self.covariates.loc[X.index]
            names = list(X.columns) if fit else None
        names = names if fit else list(self.feature_names_in_)
        return X[names].to_numpy(dtype=np.float64), batch, cov, names

    def _design(self, cov, fit: bool):
        """The covariates' design columns (one indicator per categorical level but the first,
        levels fixed in fit; continuous columns as they are), or None without covariates."""
        if cov is None:
            if fit:
                self.covariate_names_, self.discrete_levels_ = [], {}
            return None
        if fit:
            self.covariate_names_ = [str(c) for c in cov.columns]
            self.discrete_levels_ = {
                c: sorted(_level_names(cov[c]).unique()) for c in (self.discrete or []) if c in cov
            }
        parts = []
        for c in self.covariate_names_:
            if c in self.discrete_levels_:
                level = _level_names(cov[c]).to_numpy()
                parts += [(level == lv).astype(np.float64) for lv in self.discrete_levels_[c][1:]]
            else:
                parts.append(pd.to_numeric(cov[c], errors="coerce").to_numpy(np.float64))
        if not parts:
            return np.zeros((len(cov), 0))
        return np.column_stack(parts)

    def fit(self, X, y=None):
        """Fit ComBat on these rows (``y`` is ignored: ComBat never sees the outcome)."""
        if self.unseen not in ("reference", "error"):
            raise ValueError(f"unseen must be 'reference' or 'error', got {self.unseen!r}")
        values, batch, cov, names = self._rows(X, fit=True)
        design = self._design(cov, fit=True)
        self.feature_names_in_ = np.asarray(names, dtype=object)
        self.n_features_in_ = values.shape[1]
        self.passthrough_ = ~(np.nanstd(values, axis=0) > 1e-12) | np.isin(
            self.feature_names_in_, list(self.passthrough or [])
        )
        active = values[:, ~self.passthrough_]
        with_cov = design is not None and design.shape[1] > 0
        model = _combat_model("fortin" if with_cov else "johnson", parametric=self.parametric)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            model.fit(
                pd.DataFrame(active),
                batch=pd.Series(batch),
                continuous_covariates=pd.DataFrame(design) if with_cov else None,
            )
        # what applying the fit needs, as plain arrays (no pandas, no combatlearn object)
        self.batches_ = np.asarray([str(b) for b in model._batch_levels], dtype=object)
        self.grand_mean_ = np.asarray(model._grand_mean, dtype=np.float64)
        self.pooled_var_ = np.asarray(model._pooled_var, dtype=np.float64)
        self.gamma_star_ = np.asarray(model._gamma_star, dtype=np.float64)
        self.delta_star_ = np.asarray(model._delta_star, dtype=np.float64)
        self.beta_ = (
            np.asarray(model._beta_hat_nonbatch, dtype=np.float64)
            if with_cov
            else np.zeros((0, active.shape[1]))
        )
        resid = self._apply(active, batch, design) - self._covariate_part(design, len(active))
        self.reference_mean_ = resid.mean(axis=0)
        self.reference_var_ = resid.var(axis=0, ddof=1)
        self.reference_n_ = int(len(resid))
        return self

    def _covariate_part(self, design, n: int) -> np.ndarray:
        if design is None or not len(self.beta_):
            return np.zeros((n, len(self.grand_mean_)))
        return design @ self.beta_

    def _apply(self, values, batch, design) -> np.ndarray:
        """ComBat's adjustment of rows of seen devices (combatlearn's transform, in arrays)."""
        stand = self.grand_mean_ + self._covariate_part(design, len(values))
        scale = np.sqrt(self.pooled_var_)
        k = pd.Index(self.batches_).get_indexer(batch)
        z = (values - stand) / scale
        return (z - self.gamma_star_[k]) / np.sqrt(self.delta_star_[k]) * scale + stand

    def transform(self, X):
        """The harmonised features, as a DataFrame with the same index (and feature columns)."""
        check_is_fitted(self, "gamma_star_")
        values, batch, cov, names = self._rows(X, fit=False)
        design = self._design(cov, fit=False)
        out = values.copy()
        active = ~self.passthrough_
        seen = np.isin(batch, self.batches_)
        if (~seen).any() and self.unseen == "error":
            raise ValueError(
                f"ComBatHarmoniser: devices {sorted(set(batch[~seen]))} were not in the training "
                "rows; use unseen='reference' to harmonise them to the training data"
            )

        def rows_of(d, rows):
            return None if d is None else d[rows]

        if seen.any():
            out[np.ix_(seen, active)] = self._apply(
                values[seen][:, active], batch[seen], rows_of(design, seen)
            )
        for device in sorted(set(batch[~seen])):
            rows = batch == device
            out[np.ix_(rows, active)] = self._to_reference(
                values[rows][:, active], device, rows_of(design, rows)
            )
        return pd.DataFrame(out, index=X.index, columns=names)

    def _to_reference(self, values, device, design) -> np.ndarray:
        """Harmonise one unseen device's rows to the harmonised training rows (reference).

        ComBat's reference-batch fit uses the reference only through its per-feature mean,
        variance and size, so rows with exactly those statistics stand in for it.
        """
        if len(values) < 2:
            raise ValueError(
                f"ComBatHarmoniser: device {device!r} was not in the training rows and has "
                f"{len(values)} case here; harmonising a new device to the training data needs "
                "at least 2 of its cases together"
            )
        cov_part = self._covariate_part(design, len(values))
        n = self.reference_n_
        z = np.arange(n, dtype=np.float64) - (n - 1) / 2.0
        z /= z.std(ddof=1)
        stand_in = self.reference_mean_ + np.sqrt(self.reference_var_) * z[:, None]
        frame = pd.DataFrame(np.vstack([stand_in, values - cov_part]))
        batch = pd.Series([_TRAIN] * n + [_NEW] * len(values))
        model = _combat_model("johnson", parametric=self.parametric, reference_batch=_TRAIN)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            model.fit(frame, batch=batch)
            out = np.asarray(model.transform(frame, batch=batch), dtype=np.float64)
        return out[n:] + cov_part

    def portable(self, site_column: str) -> ComBatHarmoniser:
        """This fitted step for a model file: no case-id lookups (``batch``, ``covariates``
        dropped), the device read from the input column ``site_column`` and the covariates from
        their own columns; the same numbers for the same rows."""
        check_is_fitted(self, "gamma_star_")
        step = ComBatHarmoniser(
            discrete=list(self.discrete or []),
            parametric=bool(self.parametric),
            unseen=str(self.unseen),
            passthrough=list(self.passthrough) if self.passthrough else None,
            site_column=str(site_column),
            covariate_columns=list(self.covariate_names_) or None,
        )
        for key, value in vars(self).items():
            if key.endswith("_") and not key.startswith("_"):
                setattr(step, key, value)
        return step

    def get_feature_names_out(self, input_features=None):
        check_is_fitted(self, "feature_names_in_")
        return np.asarray(self.feature_names_in_, dtype=object)
