"""Which classes a skops file may name: those of scikit-learn, NumPy, SciPy and her2study's own
estimators, nothing else (no functions, no other package).

Shared by the model format (:mod:`her2study.model_artifact`) and the fit cache
(:mod:`her2study.fitcache`), which both read skops files and must never run code from one.
"""

from __future__ import annotations

import importlib

TRUSTED_PACKAGES = ("sklearn", "numpy", "scipy", "her2study")


def _resolve(name: str):
    """The object a dotted name refers to, importing only modules of TRUSTED_PACKAGES."""
    parts = name.split(".")
    if parts[0] not in TRUSTED_PACKAGES:
        return None
    for i in range(len(parts) - 1, 0, -1):
        try:
            obj = importlib.import_module(".".join(parts[:i]))
        except ImportError:
            continue
        for attr in parts[i:]:
            obj = getattr(obj, attr, None)
            if obj is None:
                return None
        return obj
    return None


def refused_types(types: list[str]) -> list[str]:
    """Those of ``types`` we do not trust: anything not a class of TRUSTED_PACKAGES, and her2study
    classes that are not scikit-learn estimators."""
    from sklearn.base import BaseEstimator

    bad = []
    for name in types:
        obj = _resolve(name)
        if not isinstance(obj, type):
            bad.append(name)
        elif name.startswith("her2study.") and not issubclass(obj, BaseEstimator):
            bad.append(name)
    return bad
