"""Fail fast: can the MLflow store at a tracking URI be used? Checked before any work.

Also the lazy ``mlflow`` import and the process-wide tracking URI switch every MLflow call of
her2study goes through.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import urllib.parse
from collections.abc import Iterator
from pathlib import Path

from her2study.errors import Her2StudyError

log = logging.getLogger(__name__)

DEFAULT_TIMEOUT_S = 5.0


class TrackingError(Her2StudyError, ValueError):
    """The MLflow store is unreachable or unusable (a configuration problem: exit code 2)."""


def _mlflow():
    import mlflow  # imported lazily: `tracking=off` runs and `--help` stay fast

    return mlflow


# --------------------------------------------------------------------------------------------
# Fail fast: is the store reachable?
# --------------------------------------------------------------------------------------------


def _fix_hint(uri: str) -> str:
    return (
        f"Fix: start a server for it (e.g. `mlflow server --host 127.0.0.1 --port 5000 "
        f"--backend-store-uri sqlite:///mlflow.db`), or set tracking.tracking_uri=<a reachable "
        f"URI> (e.g. tracking.tracking_uri=sqlite:///mlflow.db), or set tracking=off "
        f"to run without MLflow. (tracking URI: {uri})"
    )


def _sqlite_path(uri: str) -> str | None:
    """The file of a ``sqlite:///rel.db`` / ``sqlite:////abs.db`` URI; None for in-memory."""
    rest = uri[len("sqlite://") :]
    rest = rest.split("?", 1)[0]
    if rest in ("", "/", "/:memory:"):
        return None
    if not rest.startswith("/"):
        raise TrackingError(
            f"Malformed SQLite tracking URI {uri!r}: use sqlite:///relative/path.db or "
            f"sqlite:////absolute/path.db. " + _fix_hint(uri)
        )
    return urllib.parse.unquote(rest[1:])


def _check_writable_file(path: Path, uri: str, what: str) -> None:
    parent = path.parent if str(path.parent) else Path(".")
    if not parent.is_dir():
        raise TrackingError(
            f"The folder {str(parent.resolve())!r} of the {what} in tracking URI {uri!r} does "
            f"not exist. Create it, or " + _fix_hint(uri).replace("Fix: ", "")
        )
    if not os.access(parent, os.W_OK | os.X_OK) or (path.exists() and not os.access(path, os.W_OK)):
        raise TrackingError(
            f"The {what} {str(path.resolve())!r} of tracking URI {uri!r} is not writable. "
            + _fix_hint(uri)
        )


@contextlib.contextmanager
def _fail_fast(timeout: float) -> Iterator[None]:
    """MLflow's own HTTP client with one try of at most ``timeout`` seconds (its defaults are
    minutes of retries), unless the user set ``MLFLOW_HTTP_REQUEST_TIMEOUT`` /
    ``MLFLOW_HTTP_REQUEST_MAX_RETRIES`` themselves."""
    from mlflow.environment_variables import (
        MLFLOW_HTTP_REQUEST_MAX_RETRIES,
        MLFLOW_HTTP_REQUEST_TIMEOUT,
    )

    fast = {
        MLFLOW_HTTP_REQUEST_TIMEOUT.name: str(max(1, int(math.ceil(timeout)))),
        MLFLOW_HTTP_REQUEST_MAX_RETRIES.name: "0",
    }
    saved = {k: os.environ.get(k) for k in fast}
    os.environ.update({k: v for k, v in fast.items() if saved[k] is None})
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)


def _check_http(uri: str, timeout: float) -> None:
    """One ``experiments/search`` call through MLflow's client (its auth: ``MLFLOW_TRACKING_*``
    credentials, TLS settings, request headers), failing fast with a one-line message."""
    mlflow = _mlflow()
    from mlflow.exceptions import MlflowException

    try:
        with _fail_fast(timeout):
            mlflow.MlflowClient(uri).search_experiments(max_results=1)
    except MlflowException as e:
        status = e.get_http_status_code()
        if status in (401, 403):
            raise TrackingError(
                f"MLflow tracking server {uri} refused access (HTTP {status}). Set "
                f"MLFLOW_TRACKING_USERNAME/MLFLOW_TRACKING_PASSWORD or MLFLOW_TRACKING_TOKEN, "
                f"or set tracking=off."
            ) from None
        text = str(e.message)
        if "failed with exception" in text or "timeout" in text.lower():
            reason = _reason(text)
            raise TrackingError(
                f"MLflow tracking server {uri} is not reachable ({reason}). " + _fix_hint(uri)
            ) from None
        raise TrackingError(
            f"{uri} answered HTTP {status} to MLflow's REST API (experiments/search): is it an "
            f"MLflow tracking server? " + _fix_hint(uri)
        ) from None


def _reason(text: str) -> str:
    """The gist of an MLflow/requests error in one short line (no URL dumps, no tracebacks)."""
    line = " ".join(str(text).split())
    for marker in ("Connection refused", "timed out", "Name or service not known", "Max retries"):
        if marker.lower() in line.lower():
            return marker.lower() if marker != "Max retries" else "no answer"
    return line[:160]


def check_tracking_uri(uri: str, timeout: float = DEFAULT_TIMEOUT_S) -> None:
    """Raise :class:`TrackingError` unless the MLflow store at ``uri`` can be used.

    * ``http(s)://``: MLflow's client lists one experiment within ``timeout`` seconds, without
      retries (``MLFLOW_HTTP_REQUEST_TIMEOUT`` / ``_MAX_RETRIES`` win when set); 401/403 name
      the credential variables.
    * ``sqlite:///``: the database's folder exists and is writable (the file is created by MLflow).
    * ``file:`` or a plain path (MLflow's deprecated file store): its nearest existing folder is
      writable.
    * Other schemes (postgresql, mysql, databricks, ...) are not probed here: MLflow reports them.
    """
    if not isinstance(uri, str) or not uri.strip():
        raise TrackingError("Empty tracking URI. " + _fix_hint(repr(uri)))
    uri = uri.strip()
    scheme = urllib.parse.urlparse(uri).scheme.lower()
    if scheme in ("http", "https"):
        _check_http(uri, timeout)
        return
    if scheme == "sqlite":
        path = _sqlite_path(uri)
        if path is not None:
            _check_writable_file(Path(path), uri, "SQLite database")
        return
    if scheme in ("", "file") or (len(scheme) == 1 and os.name == "nt"):  # C:\ paths on Windows
        p = Path(urllib.parse.urlparse(uri).path if scheme == "file" else uri)
        while not p.exists() and p != p.parent:
            p = p.parent
        if not os.access(p, os.W_OK):
            raise TrackingError(f"The MLflow file store {uri!r} is not writable. " + _fix_hint(uri))
        return
    log.debug("tracking URI scheme %r is not probed before use", scheme)


@contextlib.contextmanager
def _using_tracking_uri(uri: str) -> Iterator[None]:
    """Point MLflow's process-wide tracking URI at ``uri`` and restore the previous one after."""
    mlflow = _mlflow()
    from mlflow.tracking import is_tracking_uri_set

    previous = mlflow.get_tracking_uri() if is_tracking_uri_set() else None
    mlflow.set_tracking_uri(uri)
    try:
        yield
    finally:
        mlflow.set_tracking_uri(previous)  # None unsets it again
