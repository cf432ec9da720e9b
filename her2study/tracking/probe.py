"""Fail fast: can the MLflow store at a tracking URI be used? Checked before any work.

Also the lazy ``mlflow`` import and the process-wide tracking URI switch every MLflow call of
her2study goes through.
"""

from __future__ import annotations

import base64
import contextlib
import logging
import os
import ssl
import urllib.error
import urllib.parse
import urllib.request
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


def _http_auth_headers() -> dict[str, str]:
    token = os.environ.get("MLFLOW_TRACKING_TOKEN")
    if token:
        return {"Authorization": f"Bearer {token}"}
    user = os.environ.get("MLFLOW_TRACKING_USERNAME")
    pw = os.environ.get("MLFLOW_TRACKING_PASSWORD")
    if user and pw:
        b = base64.b64encode(f"{user}:{pw}".encode()).decode()
        return {"Authorization": f"Basic {b}"}
    return {}


def _ssl_context() -> ssl.SSLContext | None:
    if os.environ.get("MLFLOW_TRACKING_INSECURE_TLS", "").lower() in ("1", "true"):
        ctx = ssl.create_default_context()
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
        return ctx
    cert = os.environ.get("MLFLOW_TRACKING_SERVER_CERT_PATH")
    return ssl.create_default_context(cafile=cert) if cert else None


def _http_get(url: str, timeout: float) -> int:
    """HTTP status of a GET (an HTTP error status is returned, not raised)."""
    req = urllib.request.Request(url, headers=_http_auth_headers(), method="GET")
    try:
        with urllib.request.urlopen(req, timeout=timeout, context=_ssl_context()) as resp:
            return resp.status
    except urllib.error.HTTPError as e:
        return e.code


def check_tracking_uri(uri: str, timeout: float = DEFAULT_TIMEOUT_S) -> None:
    """Raise :class:`TrackingError` unless the MLflow store at ``uri`` can be used.

    * ``http(s)://``: a GET to ``<uri>/health`` (then the REST ``experiments/search`` endpoint)
      answers within ``timeout`` seconds; 401/403 name the credential variables.
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
        base = uri.rstrip("/")
        try:
            status = _http_get(f"{base}/health", timeout)
            if status == 200:
                return
            status = _http_get(f"{base}/api/2.0/mlflow/experiments/search?max_results=1", timeout)
        except (urllib.error.URLError, OSError, ValueError) as e:
            reason = getattr(e, "reason", e)
            raise TrackingError(
                f"MLflow tracking server {uri} is not reachable ({reason}). " + _fix_hint(uri)
            ) from e
        if status == 200:
            return
        if status in (401, 403):
            raise TrackingError(
                f"MLflow tracking server {uri} refused access (HTTP {status}). Set "
                f"MLFLOW_TRACKING_USERNAME/MLFLOW_TRACKING_PASSWORD or MLFLOW_TRACKING_TOKEN, "
                f"or set tracking=off."
            )
        raise TrackingError(
            f"{uri} answered HTTP {status} to /health and to the MLflow REST API: is it an "
            f"MLflow tracking server? " + _fix_hint(uri)
        )
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
