"""Robustness to the contour: ICC of every feature across perturbed masks, as a pipeline step.

Each feature ``<feat>`` has perturbed partners ``perturb<k>__<feat>`` (k = 1..K): the same
feature extracted from the case's K perturbed masks (:mod:`her2study.cohort.perturb`), rings
rebuilt from each perturbed tumour mask. The ICC across the K + 1 "readings" (the original and
the perturbations) is computed on the rows ``fit`` sees -- the training rows of each fit, never
the test set -- and features below ``threshold`` are dropped; the perturbed columns are always
dropped, so downstream steps see the original features only. The ICC uses no label.
"""

from __future__ import annotations

import re
from numbers import Real

import numpy as np
import pandas as pd
from sklearn.utils._param_validation import Interval, StrOptions
from sklearn.utils.validation import check_is_fitted

from her2study.selection.icc import _ICC_KINDS, PairedColumnsSelector, icc_from_ratings

__all__ = ["RobustnessFilter", "column_region", "perturbed_column", "robustness_by_region"]

_PREFIX = re.compile(r"^perturb(\d+)__(.+)$")
_PREFIX_ANY = re.compile(r"^perturb\d+__")


def perturbed_column(k: int, feature: str) -> str:
    """The column name of ``feature`` extracted from perturbed mask ``k`` (1-based)."""
    return f"perturb{int(k)}__{feature}"


class RobustnessFilter(PairedColumnsSelector):
    """Keep features whose ICC across contour perturbations reaches ``threshold``.

    Parameters
    ----------
    threshold : float, default=0.75
        Minimum ICC (Koo & Li 2016: > 0.75 good reliability; Zwanenburg et al. 2019 used 0.9).
    kind : {"ICC(2,1)", "ICC(3,1)", "ICC(1,1)"}, default="ICC(2,1)"
        ICC(2,1) absolute agreement (a perturbation that shifts a feature counts against it);
        ICC(3,1) consistency.
    unpaired : {"keep", "drop"}, default="keep"
        Features without perturbed partners (e.g. clinical or shape columns not re-extracted).

    Attributes
    ----------
    icc_ : pandas.Series
        ICC of every original feature with partners (index: feature name).
    n_perturbations_ : int
    """

    _parameter_constraints: dict = {
        "threshold": [Interval(Real, None, 1, closed="right")],
        "kind": [StrOptions(set(_ICC_KINDS))],
        "unpaired": [StrOptions({"keep", "drop"})],
    }

    def __init__(self, threshold=0.75, kind="ICC(2,1)", unpaired="keep"):
        self.threshold = threshold
        self.kind = kind
        self.unpaired = unpaired

    def fit(self, X, y=None):
        """ICC of every feature across its perturbations on these rows (``y`` is ignored)."""
        self._validate_params()
        if not isinstance(X, pd.DataFrame):
            raise TypeError(
                "RobustnessFilter needs a DataFrame whose columns pair '<feat>' with "
                "'perturb<k>__<feat>'; got an array without column names"
            )
        names = [str(c) for c in X.columns]
        partners: dict[str, dict[int, int]] = {}
        for i, name in enumerate(names):
            m = _PREFIX.match(name)
            if m:
                partners.setdefault(m.group(2), {})[int(m.group(1))] = i
        position = {n: i for i, n in enumerate(names) if not _PREFIX.match(n)}
        orphans = [f for f in partners if f not in position]
        if orphans:
            raise ValueError(
                f"RobustnessFilter: perturbed columns without an original: {orphans[:5]}"
            )
        ks = sorted({k for p in partners.values() for k in p})
        incomplete = [f for f, p in partners.items() if sorted(p) != ks]
        if incomplete:
            raise ValueError(
                f"RobustnessFilter: features missing some of perturbations {ks}: {incomplete[:5]}"
            )
        values = X.to_numpy(dtype=np.float64)
        feats = list(partners)
        cols = [[position[f]] + [partners[f][k] for k in ks] for f in feats]
        support = np.zeros(len(names), dtype=bool)
        if feats:
            ratings = values[:, np.array(cols)]  # (n, p, K + 1)
            rows = np.isfinite(ratings).all(axis=(1, 2))
            if rows.sum() < 2:
                raise ValueError("RobustnessFilter needs at least 2 rows with every perturbation")
            icc = icc_from_ratings(np.transpose(ratings[rows], (0, 2, 1)), self.kind)
            self.icc_ = pd.Series(icc, index=pd.Index(feats, name="feature"), name="icc")
            for f, v in zip(feats, icc, strict=True):
                support[position[f]] = bool(v >= self.threshold)  # NaN (no variance) fails
        else:
            self.icc_ = pd.Series(dtype=float, name="icc")
        if self.unpaired == "keep":
            for name, i in position.items():
                if name not in partners:
                    support[i] = True
        self.n_perturbations_ = len(ks)
        self.feature_names_in_ = np.asarray(names, dtype=object)
        self.n_features_in_ = len(names)
        self.support_ = support
        return self

    def transform(self, X):
        """The kept columns; a DataFrame stays a DataFrame (its index is the case ids)."""
        check_is_fitted(self)
        if isinstance(X, pd.DataFrame):
            return X.loc[:, self.support_]
        return super().transform(X)


def column_region(column: str) -> str:
    """The region of a feature column (``intra``, ``peri1mm``, ...), perturbed copies included."""
    return _PREFIX_ANY.sub("", column).split("_", 1)[0]


def robustness_by_region(step) -> pd.DataFrame:
    """Features kept by the contour-robustness step, per region (on the fit's training rows)."""
    icc = step.icc_
    kept = icc >= step.threshold
    regions = [column_region(c) for c in icc.index]
    df = pd.DataFrame({"region": regions, "kept": kept.to_numpy()})
    out = df.groupby("region", sort=False)["kept"].agg(n_features="size", n_kept="sum")
    out["threshold"] = float(step.threshold)
    out["icc_kind"] = str(step.kind)
    out["n_perturbations"] = int(step.n_perturbations_)
    return out.reset_index()
