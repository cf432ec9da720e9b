"""Helpers shared by the selectors: binary targets, ranks, scaling, seeds, sklearn dialects."""

from __future__ import annotations

from numbers import Integral

import numpy as np
import sklearn
from scipy import stats
from sklearn.linear_model import LogisticRegression
from sklearn.utils import ClassifierTags
from sklearn.utils.fixes import parse_version
from sklearn.utils.multiclass import check_classification_targets

__all__ = ["make_logistic_regression"]

_SKLEARN_GE_1_8 = parse_version(parse_version(sklearn.__version__).base_version) >= parse_version(
    "1.8"
)


def make_logistic_regression(penalty="l2", *, C=1.0, **kwargs):
    """Build a ``LogisticRegression`` for a penalty name on any supported scikit-learn.

    scikit-learn 1.8 deprecated ``penalty`` in favour of ``l1_ratio`` (and ``C=np.inf`` for
    no penalty); this helper speaks both dialects.

    Parameters
    ----------
    penalty : {"l1", "l2", None}
        ``None`` fits an unpenalised model.
    C : float
        Inverse regularisation strength (ignored when ``penalty`` is None).
    **kwargs
        Passed to ``LogisticRegression``.
    """
    if penalty not in ("l1", "l2", None):
        raise ValueError(f"penalty must be 'l1', 'l2' or None, got {penalty!r}")
    if _SKLEARN_GE_1_8:
        if penalty is None:
            return LogisticRegression(C=np.inf, **kwargs)
        return LogisticRegression(C=C, l1_ratio=1.0 if penalty == "l1" else 0.0, **kwargs)
    return LogisticRegression(penalty=penalty, C=C, **kwargs)


def _binary_target(estimator, y):
    """Check that ``y`` holds exactly two classes; return (classes, y as 0/1)."""
    check_classification_targets(y)
    classes = np.unique(y)
    if classes.size != 2:
        raise ValueError(
            f"Only binary classification is supported: {type(estimator).__name__} needs a "
            f"target with both classes present, got {classes.size} class(es): "
            f"{classes.tolist()!r}. A cross-validation fold holding one class only cannot "
            "be used for supervised selection or modelling."
        )
    return classes, (y == classes[1]).astype(np.float64)


def _binary_target_tags(tags):
    """Tags of a selector that needs a binary ``y``.

    ``classifier_tags.multi_class=False`` is how scikit-learn's estimator checks learn that
    only two classes are supported (they then binarise their test targets); it does not
    make the selector a classifier (``estimator_type`` is unchanged).
    """
    tags.target_tags.required = True
    tags.classifier_tags = ClassifierTags(multi_class=False)
    return tags


def _rank(X):
    return stats.rankdata(X, axis=0)


def _standardise(X):
    Z = X - X.mean(axis=0)
    sd = np.sqrt((Z**2).mean(axis=0))
    sd[sd == 0] = 1.0
    return Z / sd


def _seed(random_state):
    """An int seed from ``random_state`` so folds and solver agree across calls."""
    if random_state is None or isinstance(random_state, Integral):
        return random_state
    return int(np.random.RandomState(random_state).randint(np.iinfo(np.int32).max))


def _expit(eta):
    return 0.5 * (1.0 + np.tanh(0.5 * eta))
