"""Feature selectors for radiomics signatures, written as scikit-learn transformers.

Each selector stores only its parameters in ``__init__``, learns attributes ending in ``_``
in ``fit`` and exposes the usual ``SelectorMixin`` interface (``transform``, ``get_support``,
``get_feature_names_out``), so ``clone`` and ``Pipeline`` keep every label-dependent step
inside a cross-validation fold.

- :class:`CorrelationFilter`: drop one member of every highly rank-correlated pair.
- :class:`MannWhitneyFilter`: keep features that differ between the two classes.
- :class:`LassoCVSelector`: L1 logistic regression with the penalty chosen by K-fold CV.
- :class:`ICCFilter` and :func:`icc`: inter-reader reliability of features.

The package is split by selector (``correlation``, ``mannwhitney``, ``lasso``, ``icc``;
shared helpers in ``_common``); every name is re-exported here, so
``from her2study.selection import ...`` works as before.
"""

# Private helpers stay importable from the old module path (models.py uses _binary_target).
from ._common import (  # noqa: F401
    _SKLEARN_GE_1_8,
    _binary_target,
    _binary_target_tags,
    _expit,
    _rank,
    _seed,
    _standardise,
    make_logistic_regression,
)
from ._l1path import _l1_logistic_path, _score_path  # noqa: F401
from .correlation import CorrelationFilter
from .icc import _ICC_KINDS, ICCFilter, icc, icc_from_ratings  # noqa: F401
from .lasso import LassoCVSelector, LassoPathMemo  # noqa: F401
from .mannwhitney import MannWhitneyFilter

__all__ = [
    "CorrelationFilter",
    "ICCFilter",
    "LassoCVSelector",
    "MannWhitneyFilter",
    "icc",
    "icc_from_ratings",
    "make_logistic_regression",
]
