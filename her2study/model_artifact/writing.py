"""Writing a model folder (save_model) or logging it to an MLflow run (log_model)."""

from __future__ import annotations

import contextlib
import json
import shutil
import tempfile
import types
from collections.abc import Iterator
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd

from her2study import __version__
from her2study.model_artifact._format import (
    CARD,
    CODE_FILE,
    CODE_TEXT,
    FORMAT_VERSION,
    MARKER,
    MODEL_CLASS,
    PIPELINE,
    REQUIRED_CARD_KEYS,
    ModelArtifactError,
)
from her2study.model_artifact.portable import model_inputs
from her2study.model_artifact.reading import _check_mlmodel, quiet_downloads
from her2study.model_artifact.trusted import _dump_pipeline


def requirements() -> list[str]:
    """Pinned requirements of a model (given, so that MLflow need not infer them by running it);
    her2study itself travels with the model as code."""
    from importlib.metadata import PackageNotFoundError, version

    reqs = []
    for pkg in ("mlflow", "scikit-learn", "skops", "numpy", "pandas", "scipy", "statsmodels"):
        try:
            reqs.append(f"{pkg}=={version(pkg)}")
        except PackageNotFoundError:
            continue
    return reqs


def _input_example(card: dict) -> pd.DataFrame:
    """One row of zeros (never a patient's values); the first training device, if any."""
    inputs = model_inputs(card)
    example = pd.DataFrame(np.zeros((1, len(inputs))), columns=inputs)
    if card.get("site_column"):
        example[card["site_column"]] = str(card["harmonise"]["devices"][0])
    return example


def _check_portable(pipeline) -> None:
    """Refuse a pipeline holding a study's case-id lookups or needing perturbed features."""
    from her2study.models.harmonise import ComBatHarmoniser
    from her2study.selection.robustness import RobustnessFilter

    for _, step in getattr(pipeline, "steps", []):
        lookup = isinstance(step, ComBatHarmoniser) and (
            step.site_column is None or step.batch is not None or step.covariates is not None
        )
        if lookup or isinstance(step, RobustnessFilter):
            raise ValueError(
                f"{type(step).__name__} as fitted in a study cannot be stored (case-id lookups "
                "or perturbed features): pass the pipeline through portable_pipeline first"
            )


def _full_card(card: dict, threshold: float) -> dict:
    missing = [k for k in REQUIRED_CARD_KEYS if k not in card]
    if missing:
        raise ValueError(f"a model card needs {missing}")
    if not card["columns"] or not all(isinstance(c, str) for c in card["columns"]):
        raise ValueError("card['columns'] must be the non-empty list of input column names")
    threshold = float(threshold)
    if not np.isfinite(threshold):
        raise ValueError(f"threshold must be a finite number, not {threshold}")
    full = {
        "her2study_version": __version__,
        "estimate_kind": "none",
        **card,
        "threshold": threshold,
        "format": {"name": MARKER, "version": FORMAT_VERSION},
    }
    return json.loads(json.dumps(full, default=str))  # plain JSON values only


def _schema(card: dict, threshold: float):
    from mlflow.models import ModelSignature
    from mlflow.types import ColSpec, ParamSchema, ParamSpec, Schema

    site = card.get("site_column")
    return ModelSignature(
        inputs=Schema(
            [ColSpec("string" if c == site else "double", c) for c in model_inputs(card)]
        ),
        outputs=Schema([ColSpec("double", "probability"), ColSpec("long", "predicted_class")]),
        params=ParamSchema([ParamSpec("threshold", "double", float(threshold))]),
    )


@contextlib.contextmanager
def _staged(
    pipeline, card: dict, threshold: float, pip_requirements, pipeline_bytes=None
) -> Iterator[dict]:
    """The keyword arguments of ``mlflow.pyfunc.save_model`` / ``Model.log``, files in a temp
    folder for the duration. ``pipeline_bytes``: the pipeline's skops file already written (and
    its types checked), e.g. by :func:`her2study.fitcache.cached_fit`."""
    card = _full_card(card, threshold)
    _check_portable(pipeline)
    with tempfile.TemporaryDirectory(prefix="her2study-model-") as tmp:
        tmp = Path(tmp)
        if pipeline_bytes is not None:
            (tmp / "pipeline.skops").write_bytes(pipeline_bytes)
        else:
            _dump_pipeline(pipeline, tmp / "pipeline.skops")
        (tmp / "card.json").write_text(json.dumps(card, indent=2) + "\n", encoding="utf-8")
        (tmp / CODE_FILE).write_text(CODE_TEXT, encoding="utf-8")
        yield {
            "python_model": str(tmp / CODE_FILE),
            "artifacts": {PIPELINE: str(tmp / "pipeline.skops"), CARD: str(tmp / "card.json")},
            "code_paths": [str(Path(__file__).resolve().parents[1])],  # the her2study package
            "signature": _schema(card, card["threshold"]),
            # synthetic: names and dtypes only, never a patient's values
            "input_example": _input_example(card),
            "pip_requirements": list(pip_requirements or requirements()),
            "metadata": {
                MARKER: {
                    "format_version": FORMAT_VERSION,
                    "class": MODEL_CLASS,
                    "her2study_version": card["her2study_version"],
                }
            },
        }


def save_model(path: str | Path, pipeline, card: dict, threshold: float, **kwargs) -> Path:
    """Write the model folder at ``path`` (replacing an earlier her2study model there).

    ``card`` must hold ``columns`` (the pipeline's input columns, in order) and ``extraction``
    (``params``, ``regions``, ``fov``, ``mask_label``, ``ring_widths_mm``: how the features of new
    cases are made); ``threshold`` is stored in it. ``kwargs``: ``pip_requirements``.
    """
    path = Path(path)
    if path.exists() and not _replaceable(path):
        raise ModelArtifactError(
            f"{str(path)!r} exists and is not a her2study model folder: choose another place"
        )
    path.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{path.name}-", dir=path.parent))
    try:
        with (
            quiet_downloads(),
            _staged(pipeline, card, threshold, kwargs.get("pip_requirements")) as kw,
        ):
            mlflow.pyfunc.save_model(path=str(staging / "model"), **kw)
        if path.exists():
            shutil.rmtree(path)
        (staging / "model").rename(path)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return path


def _replaceable(path: Path) -> bool:
    """An earlier her2study model folder (this format, or the old model.joblib + card.json)."""
    if not path.is_dir():
        return False
    if not any(path.iterdir()):
        return True
    try:
        _check_mlmodel(path)
        return True
    except ModelArtifactError:
        return {p.name for p in path.iterdir()} <= {"model.joblib", "card.json"}


def log_model(
    target,
    name: str,
    pipeline,
    card: dict,
    threshold: float,
    *,
    pipeline_bytes: bytes | None = None,
    validate: bool = True,
    **kwargs,
) -> str | None:
    """Log the model to an MLflow run; returns its URI (``models:/m-...``), None when disabled.

    ``target``: a :class:`her2study.tracking.Tracker` (its current run: the innermost open child,
    else the parent; None when tracking is off), a run id, or None for MLflow's active run. The
    run's tracking URI must be the current one (it is inside ``with Tracker(...)``). ``card`` and
    ``threshold`` as in :func:`save_model`; ``kwargs``: ``pip_requirements``.
    ``pipeline_bytes``: the pipeline's skops file, when already written (see :func:`_staged`).
    ``validate=False`` skips MLflow's check of the input example through its own loader (which
    only warns when it fails): for a model whose identical files were checked before.
    """
    if target is None:
        run_id = None
    elif isinstance(target, str):
        run_id = target
    else:
        if not getattr(target, "enabled", True):
            return None
        run_id = target.current_run_id
        if run_id is None:
            return None
    from mlflow.models import Model

    with (
        quiet_downloads(),
        _staged(pipeline, card, threshold, kwargs.get("pip_requirements"), pipeline_bytes) as kw,
    ):
        if validate:
            info = Model.log(None, mlflow.pyfunc, name=name, run_id=run_id, **kw)
        else:
            info = Model.log(
                None, _UNVALIDATED, name=name, run_id=run_id, validate_serving_input=False, **kw
            )
    return info.model_uri


def _save_unvalidated(*args, validate_serving_input=False, **kwargs):
    return mlflow.pyfunc.save_model(*args, **kwargs)


# mlflow.pyfunc as Model.log's flavor with validate_serving_input=False: Model.log hands that
# keyword on to the flavor's save_model, which mlflow.pyfunc.save_model refuses
_UNVALIDATED = types.SimpleNamespace(__name__="mlflow.pyfunc", save_model=_save_unvalidated)
