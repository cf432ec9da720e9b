"""The pipeline inside a model folder: skops, restricted to trusted types."""

from __future__ import annotations

import importlib
from pathlib import Path

from her2study.model_artifact._format import (
    TRUSTED_PACKAGES,
    ModelArtifactError,
)


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


def _refused_types(types: list[str]) -> list[str]:
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


def _untrusted(path: Path) -> tuple[list[str], list[str]]:
    import skops.io as sio

    try:
        types = sio.get_untrusted_types(file=path)
    except Exception as exc:  # not a zip / no schema: not a skops file
        raise ModelArtifactError(f"{str(path)!r} is not a readable skops file ({exc})") from None
    return types, _refused_types(types)


def load_pipeline(path: str | Path):
    """The fitted pipeline stored at ``path`` (skops), trusting only classes of scikit-learn,
    NumPy, SciPy and her2study's estimators; any other type is refused before loading."""
    import skops.io as sio

    path = Path(path)
    types, bad = _untrusted(path)
    if bad:
        raise ModelArtifactError(
            f"model pipeline {str(path)!r} refused: it names types outside scikit-learn, NumPy, "
            f"SciPy and her2study's estimators ({', '.join(bad[:5])}); load models only from "
            "trusted sources"
        )
    return sio.load(path, trusted=types)


def _dump_pipeline(pipeline, path: Path) -> None:
    import skops.io as sio

    sio.dump(pipeline, path)
    _, bad = _untrusted(path)
    if bad:  # never write a model that load_model would refuse
        raise ValueError(f"the pipeline holds types load_pipeline will not trust: {bad}")
