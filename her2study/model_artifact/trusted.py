"""The pipeline inside a model folder: skops, restricted to trusted types."""

from __future__ import annotations

from pathlib import Path

from her2study.model_artifact._format import ModelArtifactError
from her2study.trusted_types import refused_types


def _untrusted(path: Path) -> tuple[list[str], list[str]]:
    import skops.io as sio

    try:
        types = sio.get_untrusted_types(file=path)
    except Exception as exc:  # not a zip / no schema: not a skops file
        raise ModelArtifactError(f"{str(path)!r} is not a readable skops file ({exc})") from None
    return types, refused_types(types)


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
