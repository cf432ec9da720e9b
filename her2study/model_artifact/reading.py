"""Reading a model folder or MLflow model URI: the one loader (load_model)."""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
import urllib.parse
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import mlflow

from her2study import __version__
from her2study.model_artifact._format import (
    CARD,
    FORMAT_VERSION,
    MARKER,
    MODEL_CLASS,
    PIPELINE,
    REQUIRED_CARD_KEYS,
    ModelArtifactError,
)
from her2study.model_artifact.pyfunc import Her2StudyModel
from her2study.model_artifact.trusted import load_pipeline


@contextlib.contextmanager
def quiet_downloads() -> Iterator[None]:
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
        quiet_downloads(),
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
    harmonise = card.get("harmonise") or {}
    return (
        f"her2study {card.get('her2study_version')} model: {len(card['columns'])} columns, "
        f"threshold {float(card['threshold']):.4f}, estimate: {card.get('estimate_kind')}"
        + (
            f"; ComBat across devices {', '.join(map(str, harmonise.get('devices', [])))} "
            f"(column '{card.get('site_column')}', unseen devices: {harmonise.get('unseen')})"
            if harmonise
            else ""
        )
    )
