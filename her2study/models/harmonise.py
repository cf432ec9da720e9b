"""ComBat harmonisation across devices (sites) as a pipeline step, fitted on training folds only.

The empirical-Bayes ComBat itself is ``combatlearn``'s (``combatlearn.core.ComBatModel``: Johnson
et al. 2007 without covariates, Fortin et al. 2018 with covariates to protect); this module only
fits it inside the fold. The device of every case and the protected covariates are given at
construction as pandas objects indexed by case id (they are metadata known at prediction time,
never the outcome), and looked up for the rows that ``fit`` and ``transform`` see, so that
``clone()``, cross-validation and bootstrap samples (repeated case ids) keep working.

Harmonising all cases before cross-validation lets the held-out cases shape the correction, and
protecting the label as a covariate writes the label into the features (Nygaard et al. 2016);
:class:`ComBatHarmoniser` does neither.

A device absent from the training rows (leave-one-device-out) has no fitted batch effect. With
``unseen="reference"`` its cases are harmonised to the harmonised training data with the
training data as ComBat's reference batch (M-ComBat, Stein et al. 2015 / Zhang et al. 2018): the
new device's location and scale are estimated from its own cases' features -- no labels, but the
prediction of one such case depends on the other cases of its device passed with it.
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


def _combat_model(method: str, **kw):
    try:
        from combatlearn.core import ComBatModel
    except ImportError as exc:  # pragma: no cover - depends on the install
        raise ImportError(
            "selection.harmonise=combat needs the combatlearn package: "
            "pip install 'her2study[harmonise]'"
        ) from exc
    return ComBatModel(method=method, **kw)


class ComBatHarmoniser(TransformerMixin, BaseEstimator):
    """ComBat on the training rows only (batch = device); a no-label transformer step.

    Parameters
    ----------
    batch : pandas.Series
        Device (site) of every case that may be seen, indexed by case id.
    covariates : pandas.DataFrame, optional
        Covariates whose effects ComBat protects (e.g. age), indexed by case id; None = Johnson's
        ComBat without covariates.
    discrete : list of str, optional
        Columns of ``covariates`` that are categorical (the others are continuous).
    parametric : bool, default=True
        Parametric empirical-Bayes priors.
    unseen : {"reference", "error"}, default="reference"
        What to do with a device absent from the training rows (see the module docstring).
    passthrough : list of str, optional
        Columns left unchanged (e.g. clinical columns beside the features of a search candidate).

    Attributes
    ----------
    batches_ : ndarray
        Devices seen in ``fit``.
    passthrough_ : ndarray of bool
        Features left unchanged (no variance in the training rows, or named in ``passthrough``).
    """

    def __init__(
        self,
        batch=None,
        covariates=None,
        discrete=None,
        parametric=True,
        unseen="reference",
        passthrough=None,
    ):
        self.batch = batch
        self.covariates = covariates
        self.discrete = discrete
        self.parametric = parametric
        self.unseen = unseen
        self.passthrough = passthrough

    # ---- lookups by case id
    def _rows(self, X):
        if not isinstance(X, pd.DataFrame):
            raise TypeError(
                "ComBatHarmoniser needs a DataFrame indexed by case id (to look up each row's "
                "device); got an array. Put the step first in the pipeline."
            )
        if not isinstance(self.batch, pd.Series):
            raise TypeError("ComBatHarmoniser: batch must be a pandas Series indexed by case id")
        missing = X.index.difference(self.batch.index)
        if len(missing):
            raise ValueError(f"ComBatHarmoniser: no device for cases {list(missing[:5])}")
        batch = self.batch.loc[X.index].astype(str).to_numpy()
        disc = cont = None
        if self.covariates is not None:
            cov = self.covariates.loc[X.index].reset_index(drop=True)
            names = list(self.discrete or [])
            if names:
                disc = cov[names].astype(str)
            rest = [c for c in cov.columns if c not in names]
            if rest:
                cont = cov[rest].astype(float)
        return batch, disc, cont

    def _method(self) -> str:
        return "johnson" if self.covariates is None else "fortin"

    def fit(self, X, y=None):
        """Fit ComBat on these rows (``y`` is ignored: ComBat never sees the outcome)."""
        if self.unseen not in ("reference", "error"):
            raise ValueError(f"unseen must be 'reference' or 'error', got {self.unseen!r}")
        batch, disc, cont = self._rows(X)
        values = X.to_numpy(dtype=np.float64)
        self.feature_names_in_ = np.asarray(X.columns, dtype=object)
        self.n_features_in_ = values.shape[1]
        self.batches_ = np.unique(batch)
        self.passthrough_ = ~(np.nanstd(values, axis=0) > 1e-12) | np.isin(
            self.feature_names_in_, list(self.passthrough or [])
        )
        frame = pd.DataFrame(values[:, ~self.passthrough_])
        self.model_ = _combat_model(self._method(), parametric=self.parametric)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            self.model_.fit(
                frame,
                batch=pd.Series(batch),
                discrete_covariates=disc,
                continuous_covariates=cont,
            )
            # the harmonised training rows: the reference of a device never seen in fit
            self.reference_ = self._harmonise_seen(frame, batch, disc, cont)
        self.reference_batch_ = batch
        self.reference_covariates_ = (disc, cont)
        return self

    def _harmonise_seen(self, frame, batch, disc, cont) -> np.ndarray:
        out = self.model_.transform(
            frame, batch=pd.Series(batch), discrete_covariates=disc, continuous_covariates=cont
        )
        return np.asarray(out, dtype=np.float64)

    def transform(self, X):
        """The harmonised features, as a DataFrame with the same index and columns."""
        check_is_fitted(self, "model_")
        batch, disc, cont = self._rows(X)
        values = X.to_numpy(dtype=np.float64)
        out = values.copy()
        active = ~self.passthrough_
        seen = np.isin(batch, self.batches_)
        if (~seen).any() and self.unseen == "error":
            raise ValueError(
                f"ComBatHarmoniser: devices {sorted(set(batch[~seen]))} were not in the training "
                "rows; use unseen='reference' to harmonise them to the training data"
            )

        def part(df, rows):
            return None if df is None else df.iloc[np.flatnonzero(rows)].reset_index(drop=True)

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            if seen.any():
                frame = pd.DataFrame(values[seen][:, active])
                out[np.ix_(seen, active)] = self._harmonise_seen(
                    frame, batch[seen], part(disc, seen), part(cont, seen)
                )
            for device in sorted(set(batch[~seen])):
                rows = batch == device
                out[np.ix_(rows, active)] = self._to_reference(
                    values[rows][:, active], device, part(disc, rows), part(cont, rows)
                )
        return pd.DataFrame(out, index=X.index, columns=X.columns)

    def _to_reference(self, values, device, disc, cont) -> np.ndarray:
        """Harmonise one unseen device's rows to the harmonised training rows (reference)."""
        n_ref = len(self.reference_)
        frame = pd.DataFrame(np.vstack([self.reference_, values]))
        batch = pd.Series([_TRAIN] * n_ref + [str(device)] * len(values))
        ref_disc, ref_cont = self.reference_covariates_

        def stack(a, b):
            return None if a is None else pd.concat([a, b], ignore_index=True)

        model = _combat_model(self._method(), parametric=self.parametric, reference_batch=_TRAIN)
        kw = {
            "discrete_covariates": stack(ref_disc, disc),
            "continuous_covariates": stack(ref_cont, cont),
        }
        model.fit(frame, batch=batch, **kw)
        out = np.asarray(model.transform(frame, batch=batch, **kw), dtype=np.float64)
        return out[n_ref:]

    def get_feature_names_out(self, input_features=None):
        check_is_fitted(self, "feature_names_in_")
        return np.asarray(self.feature_names_in_, dtype=object)
