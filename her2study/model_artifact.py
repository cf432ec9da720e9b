"""The one her2study model format: an MLflow pyfunc model folder, and its one loader.

Written by ``task=export`` (:func:`save_model` into ``<run folder>/model``, :func:`log_model` into
the MLflow store) and read by ``task=predict`` (:func:`load_model`). The folder::

    model/
      MLmodel                    flavour python_function, metadata ``her2study_model`` (marker)
      her2study_pyfunc.py        the entry point ("models from code": no pickled Python object)
      artifacts/pipeline.skops   the fitted scikit-learn pipeline (skops format, not pickle)
      artifacts/card.json        the model card: feature columns, regions, extraction settings,
                                 threshold, what the performance estimate is, her2study version
      code/her2study/            the her2study code the pipeline's own estimators need
      input_example.json, serving_input_example.json   one row of zeros (never a patient)
      requirements.txt, python_env.yaml, conda.yaml

Its :class:`Her2StudyModel` (an :class:`mlflow.pyfunc.PythonModel`) returns, for a DataFrame of
the card's columns, a DataFrame with ``probability`` (P(label = 1)) and ``predicted_class``
(probability >= the exported threshold; a ``threshold`` param overrides it), whether it is called
in Python, through ``mlflow.pyfunc.load_model`` or by ``mlflow models serve -m model
--env-manager local``.

Security. Loading a model must not run code from the file. :func:`load_model` accepts only this
format and refuses anything else (a bare ``.joblib`` / ``.pkl`` file, a foreign MLflow model, an
``MLmodel`` without the her2study marker) *before reading anything but the MLmodel text file*. It
never executes the folder's entry point nor unpickles anything: it reads the card (JSON) and the
pipeline with ``skops.io.load`` trusting only classes of scikit-learn, NumPy, SciPy and her2study's
own estimators (:func:`load_pipeline`). MLflow's own loaders (``mlflow.pyfunc.load_model``,
``mlflow models serve``) do execute the folder's entry point and its bundled code: load and serve
models only from trusted sources, as with any MLflow model.
"""

from __future__ import annotations

import contextlib
import importlib
import json
import logging
import os
import shutil
import tempfile
import urllib.parse
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import mlflow
import numpy as np
import pandas as pd
from mlflow.pyfunc import PythonModel

from her2study import __version__
from her2study.errors import ConfigError

log = logging.getLogger(__name__)

__all__ = [
    "FORMAT_VERSION",
    "Her2StudyModel",
    "ModelArtifactError",
    "check_model_folder",
    "load_model",
    "load_pipeline",
    "log_model",
    "save_model",
]

FORMAT_VERSION = 1
MARKER = "her2study_model"  # key of the MLmodel's metadata
MODEL_CLASS = "her2study.model_artifact.Her2StudyModel"
PIPELINE = "pipeline"  # artifact names -> files under artifacts/
CARD = "card"
CODE_FILE = "her2study_pyfunc.py"
CODE_TEXT = '''"""her2study model entry point (MLflow "models from code"): nothing here is pickled.

The pipeline is read from artifacts/pipeline.skops by Her2StudyModel.load_context, trusting only
scikit-learn, NumPy, SciPy and her2study estimator classes.
"""

import mlflow

from her2study.model_artifact import Her2StudyModel

mlflow.models.set_model(Her2StudyModel())
'''
# A skops file may name these modules' classes (and nothing else: no functions, no other package).
TRUSTED_PACKAGES = ("sklearn", "numpy", "scipy", "her2study")
REQUIRED_CARD_KEYS = ("columns", "extraction")
OUTPUT_COLUMNS = ("probability", "predicted_class")


class ModelArtifactError(ConfigError):
    """The model URI names no her2study model, or one that cannot be read (exit code 2)."""


# --------------------------------------------------------------------------------------------
# The pipeline inside: skops, restricted types
# --------------------------------------------------------------------------------------------


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


# --------------------------------------------------------------------------------------------
# The pyfunc model
# --------------------------------------------------------------------------------------------


class Her2StudyModel(PythonModel):
    """A fitted pipeline and its card: ``predict(df)`` -> ``probability``, ``predicted_class``.

    Made by :func:`load_model` (pipeline and card given), or by MLflow from the folder's entry
    point (empty; :meth:`load_context` reads the artifacts).
    """

    # the signature given at save time validates inputs; no type-hint inference (and its warning)
    _skip_type_hint_validation = True

    def __init__(self, pipeline=None, card: dict | None = None):
        self.pipeline = pipeline
        self.card = card

    def load_context(self, context) -> None:
        self.card = json.loads(Path(context.artifacts[CARD]).read_text(encoding="utf-8"))
        self.pipeline = load_pipeline(context.artifacts[PIPELINE])

    @property
    def columns(self) -> list[str]:
        return list(self.card["columns"])

    @property
    def threshold(self) -> float:
        return float(self.card["threshold"])

    def predict_proba(self, X) -> np.ndarray:
        """P(label = 1) of each row of ``X`` (a DataFrame with the card's columns)."""
        return self._proba(self._design(X))

    def _proba(self, X: pd.DataFrame) -> np.ndarray:
        classes = list(getattr(self.pipeline, "classes_", [0, 1]))
        return self.pipeline.predict_proba(X)[:, classes.index(1)]

    def predict(self, model_input, params: dict | None = None) -> pd.DataFrame:
        """``probability`` = P(label = 1) and ``predicted_class`` = probability >= threshold
        (the exported one, or ``params={"threshold": t}``), one row per input row."""
        threshold = self.threshold
        if params and params.get("threshold") is not None:
            threshold = float(params["threshold"])
        X = self._design(model_input)
        prob = self._proba(X)
        return pd.DataFrame(
            {"probability": prob, "predicted_class": (prob >= threshold).astype(np.int64)},
            index=X.index,
        )

    def _design(self, model_input) -> pd.DataFrame:
        X = model_input if isinstance(model_input, pd.DataFrame) else pd.DataFrame(model_input)
        columns = self.columns
        missing = [c for c in columns if c not in X.columns]
        if missing:
            raise ModelArtifactError(
                f"{len(missing)} of the model's {len(columns)} input column(s) missing, e.g. "
                f"{missing[:3]}"
            )
        return X[columns].astype(np.float64)


# --------------------------------------------------------------------------------------------
# Writing
# --------------------------------------------------------------------------------------------


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


def _schema(columns: list[str], threshold: float):
    from mlflow.models import ModelSignature
    from mlflow.types import ColSpec, ParamSchema, ParamSpec, Schema

    return ModelSignature(
        inputs=Schema([ColSpec("double", c) for c in columns]),
        outputs=Schema([ColSpec("double", "probability"), ColSpec("long", "predicted_class")]),
        params=ParamSchema([ParamSpec("threshold", "double", float(threshold))]),
    )


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """No MLflow download progress bars on the terminal (they are noise for a local copy)."""
    key = "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR"
    before = os.environ.get(key)
    os.environ[key] = "false"
    try:
        yield
    finally:
        if before is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = before


@contextlib.contextmanager
def _staged(pipeline, card: dict, threshold: float, pip_requirements) -> Iterator[dict]:
    """The keyword arguments of ``mlflow.pyfunc.save_model`` / ``Model.log``, files in a temp
    folder for the duration."""
    card = _full_card(card, threshold)
    with tempfile.TemporaryDirectory(prefix="her2study-model-") as tmp:
        tmp = Path(tmp)
        _dump_pipeline(pipeline, tmp / "pipeline.skops")
        (tmp / "card.json").write_text(json.dumps(card, indent=2) + "\n", encoding="utf-8")
        (tmp / CODE_FILE).write_text(CODE_TEXT, encoding="utf-8")
        columns = list(card["columns"])
        yield {
            "python_model": str(tmp / CODE_FILE),
            "artifacts": {PIPELINE: str(tmp / "pipeline.skops"), CARD: str(tmp / "card.json")},
            "code_paths": [str(Path(__file__).resolve().parent)],  # the her2study package
            "signature": _schema(columns, card["threshold"]),
            # synthetic: names and dtypes only, never a patient's values
            "input_example": pd.DataFrame(np.zeros((1, len(columns))), columns=columns),
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
        with _quiet(), _staged(pipeline, card, threshold, kwargs.get("pip_requirements")) as kw:
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


def log_model(target, name: str, pipeline, card: dict, threshold: float, **kwargs) -> str | None:
    """Log the model to an MLflow run; returns its URI (``models:/m-...``), None when disabled.

    ``target``: a :class:`her2study.tracking.Tracker` (its current run: the innermost open child,
    else the parent; None when tracking is off), a run id, or None for MLflow's active run. The
    run's tracking URI must be the current one (it is inside ``with Tracker(...)``). ``card`` and
    ``threshold`` as in :func:`save_model`; ``kwargs``: ``pip_requirements``.
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

    with _quiet(), _staged(pipeline, card, threshold, kwargs.get("pip_requirements")) as kw:
        info = Model.log(None, mlflow.pyfunc, name=name, run_id=run_id, **kw)
    return info.model_uri


# --------------------------------------------------------------------------------------------
# Reading
# --------------------------------------------------------------------------------------------


def _check_mlmodel(folder: Path) -> dict:
    """The parsed MLmodel of a her2study model folder; ModelArtifactError naming the file and
    the reason otherwise. Reads only the MLmodel text (YAML, safe loader)."""
    import yaml

    mlmodel = folder / "MLmodel"
    if not mlmodel.is_file():
        old = (folder / "model.joblib").is_file()
        raise ModelArtifactError(
            f"{str(folder)!r} holds no MLmodel file: "
            + (
                "model.joblib is the old export format, which is no longer loaded (reading a "
                "pickle runs code); re-export the model with task=export"
                if old
                else "not a her2study model folder (expected the 'model' folder written by "
                "task=export)"
            )
        )
    try:
        conf = yaml.safe_load(mlmodel.read_text(encoding="utf-8"))
    except (yaml.YAMLError, UnicodeDecodeError) as exc:
        raise ModelArtifactError(
            f"{str(mlmodel)!r} is not a readable MLmodel file ({exc})"
        ) from None
    conf = conf if isinstance(conf, dict) else {}
    marker = (conf.get("metadata") or {}).get(MARKER)
    flavors = conf.get("flavors") or {}
    if not isinstance(marker, dict) or marker.get("class") != MODEL_CLASS:
        raise ModelArtifactError(
            f"{str(mlmodel)!r} is an MLflow model but not a her2study model (flavours: "
            f"{', '.join(flavors) or 'none'}; no '{MARKER}' marker): only models written by "
            "task=export are loaded"
        )
    version = marker.get("format_version")
    if version != FORMAT_VERSION:
        raise ModelArtifactError(
            f"{str(mlmodel)!r}: her2study model format {version!r}, this her2study "
            f"({__version__}) reads format {FORMAT_VERSION}; re-export the model"
        )
    pyfunc = flavors.get("python_function") or {}
    files = {k: (v or {}).get("path") for k, v in (pyfunc.get("artifacts") or {}).items()}
    for key in (PIPELINE, CARD):
        rel = files.get(key)
        if not rel or not (folder / rel).resolve().is_relative_to(folder.resolve()):
            raise ModelArtifactError(
                f"{str(mlmodel)!r} names no '{key}' artifact inside the folder"
            )
        if not (folder / rel).is_file():
            raise ModelArtifactError(f"the model folder {str(folder)!r} lacks {rel}")
    return conf


def check_model_folder(folder: str | Path) -> dict:
    """The model card of a her2study model folder, without loading the pipeline."""
    folder = Path(folder)
    return _read_card(folder, _check_mlmodel(folder))


def _read_card(folder: Path, conf: dict) -> dict:
    rel = conf["flavors"]["python_function"]["artifacts"][CARD]["path"]
    try:
        card = json.loads((folder / rel).read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as exc:
        raise ModelArtifactError(f"model card {str(folder / rel)!r} is not JSON ({exc})") from None
    if not isinstance(card, dict) or any(k not in card for k in (*REQUIRED_CARD_KEYS, "threshold")):
        raise ModelArtifactError(f"model card {str(folder / rel)!r} lacks columns or threshold")
    return card


def _load_folder(folder: Path) -> tuple[Her2StudyModel, dict]:
    conf = _check_mlmodel(folder)
    card = _read_card(folder, conf)
    rel = conf["flavors"]["python_function"]["artifacts"][PIPELINE]["path"]
    pipeline = load_pipeline(folder / rel)
    return Her2StudyModel(pipeline, card), card


def _is_uri(uri: str) -> bool:
    scheme = urllib.parse.urlparse(uri).scheme
    return len(scheme) > 1  # not a Windows drive letter


@contextlib.contextmanager
def _tracking(uri: str | None) -> Iterator[None]:
    """MLflow's process-wide tracking URI set to ``uri`` (models:/ URIs resolve through it),
    the previous one restored after."""
    if not uri:
        yield
        return
    from mlflow.tracking import is_tracking_uri_set

    previous = mlflow.get_tracking_uri() if is_tracking_uri_set() else None
    mlflow.set_tracking_uri(uri)
    try:
        yield
    finally:
        mlflow.set_tracking_uri(previous)


def _check_store(tracking_uri: str | None, uri: str) -> None:
    from her2study.tracking import check_tracking_uri

    if not tracking_uri:
        return
    check_tracking_uri(tracking_uri)
    if tracking_uri.strip().lower().startswith("sqlite:///"):
        db = Path(tracking_uri.strip()[len("sqlite:///") :].split("?", 1)[0])
        if str(db) not in ("", ":memory:") and not db.is_file():
            raise ModelArtifactError(
                f"predict.model_uri={uri}: no MLflow database at {str(db.resolve())!r} "
                f"(tracking.tracking_uri={tracking_uri}); point tracking.tracking_uri at the "
                "store the model was logged to"
            )


def load_model(uri: str | Path, tracking_uri: str | None = None) -> tuple[Her2StudyModel, dict]:
    """(model, card) of a her2study model: a local folder written by :func:`save_model`, or an
    MLflow URI (``runs:/<run id>/model``, ``models:/m-...``, ``models:/<name>/<version>``) of one
    logged by :func:`log_model` in the store at ``tracking_uri``.

    Anything else is refused with a :class:`ModelArtifactError` naming the file and the reason,
    before anything but the MLmodel text file is read (no pickle is ever loaded; see the module's
    docstring). ``model.predict(df)`` gives ``probability`` and ``predicted_class``;
    ``model.pipeline`` is the fitted scikit-learn pipeline.
    """
    uri = str(uri)
    if not _is_uri(uri) or uri.startswith("file:"):
        path = Path(urllib.parse.urlparse(uri).path if uri.startswith("file:") else uri)
        if not path.exists():
            raise ModelArtifactError(
                f"predict.model_uri: no model at {str(path)!r} (expected the 'model' folder "
                "written by task=export, or an MLflow runs:/ or models:/ URI)"
            )
        if not path.is_dir():
            raise ModelArtifactError(
                f"predict.model_uri: {str(path)!r} is a file, not a her2study model folder: "
                "single-file models (.joblib, .pkl) are refused because reading them runs code; "
                "give the 'model' folder written by task=export"
            )
        try:
            return _load_folder(path)
        except ModelArtifactError as err:
            raise ModelArtifactError(f"predict.model_uri: {err}") from None
    _check_store(tracking_uri, uri)
    from mlflow.exceptions import MlflowException

    with (
        tempfile.TemporaryDirectory(prefix="her2study-model-") as tmp,
        _quiet(),
        _tracking(tracking_uri),
    ):
        try:
            local = mlflow.artifacts.download_artifacts(
                artifact_uri=uri, dst_path=tmp, tracking_uri=tracking_uri
            )
        except MlflowException as exc:
            raise ModelArtifactError(
                f"predict.model_uri: cannot fetch {uri} from {tracking_uri}: {exc.message}"
            ) from None
        except OSError as exc:
            raise ModelArtifactError(f"predict.model_uri: cannot fetch {uri}: {exc}") from None
        folder = Path(local)
        if not folder.is_dir():
            raise ModelArtifactError(
                f"predict.model_uri: {uri} is a single file, not a her2study model folder"
            )
        try:
            return _load_folder(folder)
        except ModelArtifactError as err:
            raise ModelArtifactError(f"predict.model_uri={uri}: {err}") from None


def describe(card: dict[str, Any]) -> str:
    """One line about a model card (for logs)."""
    return (
        f"her2study {card.get('her2study_version')} model: {len(card['columns'])} columns, "
        f"threshold {float(card['threshold']):.4f}, estimate: {card.get('estimate_kind')}"
    )
