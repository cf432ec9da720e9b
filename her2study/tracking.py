"""All MLflow access of her2study goes through this module.

Estimators never log; tasks open one :class:`Tracker` per Hydra job and call its methods::

    with Tracker(cfg.tracking.tracking_uri, cfg.tracking.experiment,
                 enabled=cfg.tracking.enabled, run_name="paper") as tr:
        tr.log_params(flatten_config(cfg))
        with tr.child("fold-0"):
            tr.log_metrics({"auc": 0.81, "IntraPeri 1 mm auc": 0.79})
        tr.log_sklearn_model(model, "model", X_train)

* The store is checked before any work (:func:`check_tracking_uri`), so a missing
  ``mlflow server`` fails in seconds with a :class:`TrackingError` that says how to fix it,
  instead of MLflow's own minutes of HTTP retries at the end of a long run.
* ``enabled=False`` (``tracking=off``) turns every method into a no-op, so tasks need no ``if``.
* Runs are nested: one parent run per job, :meth:`Tracker.child` for folds / trials / regions.
  Every ``log_*`` goes to the innermost run of the calling thread (a child, else the parent), and
  children may be opened from worker threads (Optuna ``n_jobs>1``): they still hang under the
  parent.
* Keys and values are made acceptable to MLflow here (sanitised metric names, truncated params,
  batched calls, NaN/inf metrics skipped and named in the ``skipped_metrics`` tag), so a long
  study never dies on a logging detail.

Local SQLite stores (``sqlite:///mlflow.db``, MLflow 3's default) keep artifacts in a
``mlartifacts/`` folder next to the database file (MLflow itself would use ``./mlruns`` of the
current directory). Browse them with
``mlflow server --backend-store-uri sqlite:///mlflow.db --host 127.0.0.1 --port 5000``.

Privacy: case IDs logged anywhere (tables, tags, figures) are the manifest's own IDs.
:func:`looks_identifying` flags IDs that look like patient names or DICOM PatientIDs / MRNs,
and :func:`pseudonymise` is the offered remedy (salted SHA-256 codes) before a study is shared.
"""

from __future__ import annotations

import base64
import contextlib
import enum
import hashlib
import json
import logging
import math
import numbers
import os
import re
import ssl
import threading
import time
import unicodedata
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

from her2study.errors import Her2StudyError

log = logging.getLogger(__name__)

__all__ = [
    "Tracker",
    "TrackingError",
    "check_tracking_uri",
    "child_runs",
    "flatten_config",
    "load_sklearn_model",
    "looks_identifying",
    "pseudonymise",
    "runs_table",
    "sanitize_key",
]

SKIPPED_METRICS_TAG = "skipped_metrics"
DEFAULT_TIMEOUT_S = 5.0


class TrackingError(Her2StudyError, ValueError):
    """The MLflow store is unreachable or unusable (a configuration problem: exit code 2)."""


def _mlflow():
    import mlflow  # imported lazily: `tracking=off` runs and `--help` stay fast

    return mlflow


def _limits() -> dict[str, int]:
    from mlflow.utils import validation as v

    return {
        "param_val": v.MAX_PARAM_VAL_LENGTH,  # 6000 in MLflow 3 (was 500 in MLflow 1)
        "tag_val": v.MAX_TAG_VAL_LENGTH,  # 8000
        "key": v.MAX_ENTITY_KEY_LENGTH,  # 250
        "params_per_batch": v.MAX_PARAMS_TAGS_PER_BATCH,  # 100
        "metrics_per_batch": v.MAX_METRICS_PER_BATCH,  # 1000
    }


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


# --------------------------------------------------------------------------------------------
# Keys and values
# --------------------------------------------------------------------------------------------

_BAD_KEY_CHARS = re.compile(r"[^A-Za-z0-9_\-./:]" if os.name != "nt" else r"[^A-Za-z0-9_\-./]")


def sanitize_key(key: Any, max_len: int | None = None) -> str:
    """A metric / param / tag name MLflow accepts.

    MLflow allows alphanumerics and ``_ - . space / :`` (no colon on Windows); here spaces and
    anything else become ``_`` (``"IntraPeri 1 mm"`` -> ``"IntraPeri_1_mm"``, ``"µm"`` -> ``"um"``),
    ``/``-segments that MLflow rejects as paths (empty, ``.``, ``..``) are dropped, and the result
    is cut to MLflow's key length limit.
    """
    s = str(key).replace("µ", "u").replace("μ", "u")
    s = unicodedata.normalize("NFKD", s).encode("ascii", "ignore").decode("ascii")
    s = _BAD_KEY_CHARS.sub("_", s)
    s = "/".join(seg for seg in s.split("/") if seg not in ("", ".", ".."))
    s = s or "_"
    return s[: max_len or _limits()["key"]]


def _unique_keys(keys: Iterable[Any]) -> list[str]:
    """Sanitised keys; names that collide after sanitising get ``_2``, ``_3`` ... suffixes."""
    seen: set[str] = set()
    out = []
    for k in keys:
        s = base = sanitize_key(k)
        i = 2
        while s in seen:
            s = f"{base}_{i}"
            i += 1
        seen.add(s)
        out.append(s)
    return out


def _truncate(s: str, limit: int) -> str:
    if len(s) <= limit:
        return s
    marker = "...[truncated]"
    return s[: limit - len(marker)] + marker


def _to_plain(x: Any) -> Any:
    """OmegaConf / numpy / pandas / Path values as plain Python (for JSON, YAML and params)."""
    try:
        from omegaconf import OmegaConf

        if OmegaConf.is_config(x):
            x = OmegaConf.to_container(x, resolve=True, throw_on_missing=False)
    except ImportError:  # pragma: no cover - omegaconf is a dependency
        pass
    if isinstance(x, Mapping):
        return {str(k): _to_plain(v) for k, v in x.items()}
    if isinstance(x, (list, tuple, set, frozenset)):
        return [_to_plain(v) for v in x]
    if hasattr(x, "tolist") and not isinstance(x, (str, bytes)):  # numpy arrays and scalars
        return _to_plain(x.tolist())
    if isinstance(x, Path):
        return str(x)
    if hasattr(x, "isoformat"):  # datetime, pandas Timestamp
        return x.isoformat()
    if isinstance(x, enum.Enum):
        return x.name
    return x


def _param_str(v: Any) -> str:
    v = _to_plain(v)
    if isinstance(v, str):
        return v
    return str(v)


def _tag_values(tags: Mapping[str, Any] | None) -> dict[str, str]:
    lim = _limits()["tag_val"]
    return {sanitize_key(k): _truncate(_param_str(v), lim) for k, v in (tags or {}).items()}


def _finite_float(v: Any) -> float | None:
    """``v`` as a finite float; None for None, NaN, inf and anything that is not a number."""
    if isinstance(v, (str, bytes)) or not (
        isinstance(v, numbers.Number) or (hasattr(v, "dtype") and getattr(v, "ndim", 1) == 0)
    ):
        return None
    try:
        val = float(v)
    except (TypeError, ValueError):
        return None
    return val if math.isfinite(val) else None


def flatten_config(cfg: Any, exclude: tuple[str, ...] = ("hydra",), sep: str = ".") -> dict:
    """Flatten a nested mapping or (resolved) OmegaConf config into dotted keys.

    Lists become their string form (``region.ring_widths_mm`` -> ``"[1.0, 2.0]"``), empty
    mappings ``"{}"``; scalars are kept as they are. ``exclude`` holds top-level keys or dotted
    prefixes (``"hydra"``, ``"data.manifest"``) to leave out. Missing values (``???``) stay
    ``"???"``.
    """
    plain = _to_plain(cfg)
    if not isinstance(plain, Mapping):
        raise TypeError(f"flatten_config needs a mapping or DictConfig, got {type(cfg).__name__}")
    excl = tuple(exclude or ())

    def skip(key: str) -> bool:
        return any(key == e or key.startswith(e + sep) for e in excl)

    out: dict[str, Any] = {}

    def walk(node: Mapping, prefix: str) -> None:
        for k, v in node.items():
            key = f"{prefix}{sep}{k}" if prefix else str(k)
            if skip(key):
                continue
            if isinstance(v, Mapping) and v:
                walk(v, key)
            elif isinstance(v, Mapping):
                out[key] = "{}"
            elif isinstance(v, list):
                out[key] = str(v)
            else:
                out[key] = v

    walk(plain, "")
    return out


def _to_markdown(df) -> str:
    import pandas as pd

    if not isinstance(df.index, pd.RangeIndex) or df.index.name is not None:
        df = df.reset_index()

    def cell(x: Any) -> str:
        if isinstance(x, float) and math.isnan(x):
            return ""
        return str(x).replace("|", r"\|").replace("\n", " ")

    cols = [cell(c) for c in df.columns]
    lines = ["| " + " | ".join(cols) + " |", "|" + "|".join("---" for _ in cols) + "|"]
    for row in df.itertuples(index=False):
        lines.append("| " + " | ".join(cell(x) for x in row) + " |")
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------------------------
# The tracker
# --------------------------------------------------------------------------------------------


class Tracker:
    """One MLflow parent run per job, with nested child runs; a no-op when ``enabled=False``.

    Args:
        tracking_uri: ``sqlite:///mlflow.db``, ``http://127.0.0.1:5000``, ...
        experiment: experiment name (created when missing).
        enabled: False makes every method a no-op (``run_id`` stays None, nothing is written).
        run_name: name of the parent run.
        tags: tags of the parent run.
        artifact_location: artifact root for a *new* experiment. Default: ``mlartifacts/`` beside
            a SQLite database; the server's choice for http(s) stores.
        timeout: seconds for the reachability check of http(s) stores.
    """

    def __init__(
        self,
        tracking_uri: str,
        experiment: str,
        enabled: bool = True,
        run_name: str | None = None,
        tags: dict | None = None,
        artifact_location: str | None = None,
        timeout: float = DEFAULT_TIMEOUT_S,
    ):
        self.tracking_uri = tracking_uri
        self.experiment = experiment
        self.enabled = bool(enabled)
        self.run_name = run_name
        self.tags = dict(tags or {})
        self.artifact_location = artifact_location
        self.timeout = timeout
        self._run_id: str | None = None
        self._experiment_id: str | None = None
        self._last_child_run_id: str | None = None
        self._client = None
        self._uri_ctx: contextlib.AbstractContextManager | None = None
        self._local = threading.local()
        self._lock = threading.Lock()
        self._skipped: dict[str, set[str]] = {}
        self._state = "new"

    # -- properties ----------------------------------------------------------------------------
    @property
    def run_id(self) -> str | None:
        """ID of the parent run (None when disabled or not started)."""
        return self._run_id

    @property
    def experiment_id(self) -> str | None:
        return self._experiment_id

    @property
    def last_child_run_id(self) -> str | None:
        """ID of the most recently started child run (any thread)."""
        return self._last_child_run_id

    @property
    def current_run_id(self) -> str | None:
        """The run this thread's ``log_*`` calls go to: the innermost child, else the parent."""
        stack = self._stack()
        return stack[-1] if stack else self._run_id

    def _stack(self) -> list[str]:
        if not hasattr(self._local, "stack"):
            self._local.stack = []
        return self._local.stack

    def _target(self) -> str | None:
        if not self.enabled:
            return None
        if self._state != "active":
            raise RuntimeError("Tracker is not active: log inside `with Tracker(...) as tracker:`")
        return self.current_run_id

    # -- lifecycle -----------------------------------------------------------------------------
    def _default_artifact_location(self) -> str | None:
        if self.artifact_location:
            return self.artifact_location
        if self.tracking_uri.strip().lower().startswith("sqlite:"):
            path = _sqlite_path(self.tracking_uri.strip())
            if path is not None:
                return str((Path(path).resolve().parent / "mlartifacts").resolve())
        return None

    def _get_or_create_experiment(self) -> str:
        from mlflow.exceptions import MlflowException

        client = self._client
        exp = client.get_experiment_by_name(self.experiment)
        if exp is None:
            try:
                return client.create_experiment(
                    self.experiment, artifact_location=self._default_artifact_location()
                )
            except MlflowException:  # created meanwhile by a parallel job (Hydra multirun)
                exp = client.get_experiment_by_name(self.experiment)
                if exp is None:
                    raise
        if exp.lifecycle_stage == "deleted":
            raise TrackingError(
                f"MLflow experiment {self.experiment!r} at {self.tracking_uri} is deleted. "
                f"Restore it (`mlflow experiments restore --experiment-id {exp.experiment_id}`), "
                f"or use another study name."
            )
        return exp.experiment_id

    def __enter__(self) -> Tracker:
        if self._state != "new":
            raise RuntimeError("a Tracker can be entered once; make a new one")
        if not self.enabled:
            self._state = "active"
            return self
        self._state = "done"  # until the parent run exists
        check_tracking_uri(self.tracking_uri, timeout=self.timeout)
        mlflow = _mlflow()
        from mlflow.exceptions import MlflowException

        self._uri_ctx = _using_tracking_uri(self.tracking_uri)
        self._uri_ctx.__enter__()
        try:
            self._client = mlflow.MlflowClient(self.tracking_uri)
            self._experiment_id = self._get_or_create_experiment()
            run = mlflow.start_run(
                experiment_id=self._experiment_id,
                run_name=self.run_name,
                tags=_tag_values(self.tags),
            )
        except BaseException as e:
            self._uri_ctx.__exit__(None, None, None)
            if isinstance(e, MlflowException):
                raise TrackingError(
                    f"Could not open MLflow experiment {self.experiment!r} at "
                    f"{self.tracking_uri}: {e.message}"
                ) from e
            raise
        self._run_id = run.info.run_id
        self._state = "active"
        log.info(
            "MLflow run %s (experiment %r, id %s) at %s",
            self._run_id,
            self.experiment,
            self._experiment_id,
            self.tracking_uri,
        )
        return self

    def __exit__(self, exc_type, exc, tb) -> bool:
        if self._state != "active":
            return False
        self._state = "done"
        if not self.enabled:
            return False
        mlflow = _mlflow()
        status = "FINISHED" if exc_type is None else "FAILED"
        if exc_type is not None and issubclass(exc_type, KeyboardInterrupt):
            status = "KILLED"  # Ctrl-C shows as killed, not as a failure of the study
        try:
            if exc_type is not None:
                with contextlib.suppress(Exception):
                    self._client.set_tag(
                        self._run_id, "error", _truncate(f"{exc_type.__name__}: {exc}", 5000)
                    )
            active = mlflow.active_run()
            if active is not None and active.info.run_id == self._run_id:
                mlflow.end_run(status=status)
            else:
                self._client.set_terminated(self._run_id, status=status)
        finally:
            self._uri_ctx.__exit__(None, None, None)
        return False  # never swallow the exception

    @contextlib.contextmanager
    def child(self, name: str, tags: dict | None = None) -> Iterator[str | None]:
        """A nested run under the current run of this thread (the parent, or an open child).

        Yields the child's run ID (None when disabled); ends FINISHED, or FAILED when an
        exception escapes (re-raised). Safe to use from worker threads.
        """
        if not self.enabled:
            yield None
            return
        parent = self._target()
        mlflow = _mlflow()
        stack = self._stack()
        # The fluent API checks parent_run_id against this thread's active run; a worker thread
        # has none, the tracker's thread has the parent or this thread's open child.
        run = mlflow.start_run(
            experiment_id=self._experiment_id,
            run_name=name,
            nested=True,
            parent_run_id=parent,
            tags=_tag_values(tags),
        )
        run_id = run.info.run_id
        with self._lock:
            self._last_child_run_id = run_id
        stack.append(run_id)
        status = "FINISHED"
        try:
            yield run_id
        except KeyboardInterrupt:
            status = "KILLED"
            raise
        except BaseException:
            status = "FAILED"
            raise
        finally:
            stack.pop()
            active = mlflow.active_run()
            if active is not None and active.info.run_id == run_id:
                mlflow.end_run(status=status)
            else:  # pragma: no cover - only if the body ended the run itself
                self._client.set_terminated(run_id, status=status)

    # -- logging -------------------------------------------------------------------------------
    def log_params(self, flat: Mapping[str, Any]) -> None:
        """Log params: values stringified and truncated to MLflow's limit, sent in batches.

        MLflow refuses to change a param already logged on the same run with another value.
        """
        run_id = self._target()
        if run_id is None or not flat:
            return
        from mlflow.entities import Param

        lim = _limits()
        params = [
            Param(k, _truncate(_param_str(v), lim["param_val"]))
            for k, v in zip(_unique_keys(flat.keys()), flat.values(), strict=True)
        ]
        n = lim["params_per_batch"]
        for i in range(0, len(params), n):
            self._client.log_batch(run_id, params=params[i : i + n])

    def log_metrics(self, d: Mapping[str, Any], step: int | None = None) -> None:
        """Log numeric metrics; None/NaN/inf/non-numbers are skipped and named in the run's
        ``skipped_metrics`` tag. Keys are sanitised (:func:`sanitize_key`)."""
        run_id = self._target()
        if run_id is None or not d:
            return
        from mlflow.entities import Metric

        ts = int(time.time() * 1000)
        metrics, skipped = [], []
        for key, v in zip(_unique_keys(d.keys()), d.values(), strict=True):
            val = _finite_float(v)
            if val is None:
                skipped.append(key)
                continue
            metrics.append(Metric(key, val, ts, int(step or 0)))
        n = _limits()["metrics_per_batch"]
        for i in range(0, len(metrics), n):
            self._client.log_batch(run_id, metrics=metrics[i : i + n])
        if skipped:
            with self._lock:
                names = self._skipped.setdefault(run_id, set())
                names.update(skipped)
                value = ",".join(sorted(names))
            log.info("metrics not logged (None/NaN/inf/not a number): %s", ", ".join(skipped))
            value = _truncate(value, _limits()["tag_val"])
            self._client.set_tag(run_id, SKIPPED_METRICS_TAG, value)

    def set_tags(self, tags: Mapping[str, Any]) -> None:
        run_id = self._target()
        if run_id is None or not tags:
            return
        from mlflow.entities import RunTag

        lim = _limits()
        items = [
            RunTag(k, _truncate(_param_str(v), lim["tag_val"]))
            for k, v in zip(_unique_keys(tags.keys()), tags.values(), strict=True)
        ]
        n = lim["params_per_batch"]
        for i in range(0, len(items), n):
            self._client.log_batch(run_id, tags=items[i : i + n])

    def log_figure(self, fig, artifact_file: str) -> None:
        """A matplotlib (or plotly) figure as an image artifact (format from the extension)."""
        run_id = self._target()
        if run_id is None:
            return
        self._client.log_figure(run_id, fig, artifact_file)

    def log_table(self, df, artifact_file: str) -> None:
        """A DataFrame as ``.csv`` or ``.md`` (Markdown) artifact; a named or non-range index is
        written as column(s)."""
        run_id = self._target()
        if run_id is None:
            return
        import pandas as pd

        ext = Path(artifact_file).suffix.lower()
        if ext == ".csv":
            keep_index = not isinstance(df.index, pd.RangeIndex) or df.index.name is not None
            text = df.to_csv(index=keep_index)
        elif ext in (".md", ".markdown"):
            text = _to_markdown(df)
        else:
            raise ValueError(f"log_table writes .csv or .md files, not {artifact_file!r}")
        self._client.log_text(run_id, text, artifact_file)

    def log_text(self, text: str, artifact_file: str) -> None:
        run_id = self._target()
        if run_id is None:
            return
        self._client.log_text(run_id, str(text), artifact_file)

    def log_dict(self, d: Any, artifact_file: str) -> None:
        """A mapping (or OmegaConf config, resolved) as ``.yaml``/``.yml`` or JSON artifact."""
        run_id = self._target()
        if run_id is None:
            return
        plain = _to_plain(d)
        if Path(artifact_file).suffix.lower() in (".yaml", ".yml"):
            import yaml

            text = yaml.safe_dump(plain, sort_keys=False, allow_unicode=True)
        else:
            text = json.dumps(plain, indent=2, default=str, allow_nan=True) + "\n"
        self._client.log_text(run_id, text, artifact_file)

    def log_artifact(self, local_path: str | os.PathLike, artifact_path: str | None = None) -> None:
        run_id = self._target()
        if run_id is None:
            return
        self._client.log_artifact(run_id, str(local_path), artifact_path)

    def log_artifacts(self, local_dir: str | os.PathLike, artifact_path: str | None = None) -> None:
        run_id = self._target()
        if run_id is None:
            return
        self._client.log_artifacts(run_id, str(local_dir), artifact_path)

    def log_sklearn_model(self, model, name: str, X_example, **kwargs) -> str | None:
        """Log a fitted classifier with a signature (inputs -> P(class 1)) and <=5 example rows.

        Returns the model URI (``models:/m-...``; ``runs:/<run_id>/<name>`` resolves too), or
        None when disabled. MLflow 3 stores models as "logged models" of the experiment, linked
        to the run, not inside the run's artifact folder. Extra ``kwargs`` go to
        :func:`mlflow.sklearn.log_model` (e.g. ``pip_requirements`` to skip the slow inference).
        """
        run_id = self._target()
        if run_id is None:
            return None
        import mlflow.sklearn
        from mlflow.models import infer_signature

        signature = infer_signature(X_example, model.predict_proba(X_example)[:, 1])
        kwargs.setdefault("skops_trusted_types", _project_types(model))
        info = mlflow.sklearn.log_model(
            model,
            name=name,
            signature=signature,
            input_example=X_example.head(5) if hasattr(X_example, "head") else X_example[:5],
            run_id=run_id,
            **kwargs,
        )
        return info.model_uri


def _project_types(model) -> list[str]:
    """Fully qualified names of her2study's own estimator classes inside ``model``, which skops
    (MLflow 3's default sklearn format) must be told to trust."""
    found, stack = set(), [model]
    while stack:
        obj = stack.pop()
        cls = type(obj)
        if cls.__module__.startswith("her2study."):
            found.add(f"{cls.__module__}.{cls.__qualname__}")
        if hasattr(obj, "get_params"):
            stack.extend(v for v in obj.get_params(deep=False).values() if hasattr(v, "get_params"))
        for attr in ("steps", "estimators_", "calibrated_classifiers_"):
            value = getattr(obj, attr, None)
            if isinstance(value, list):
                stack.extend(v[1] if isinstance(v, tuple) else v for v in value)
    return sorted(found)


def load_sklearn_model(tracking_uri: str, model_uri: str):
    """Load a model logged by :meth:`Tracker.log_sklearn_model` (``models:/...`` or ``runs:/``)."""
    check_tracking_uri(tracking_uri)
    import mlflow.sklearn

    with _using_tracking_uri(tracking_uri):
        return mlflow.sklearn.load_model(model_uri)


# --------------------------------------------------------------------------------------------
# Reading runs back (compare task)
# --------------------------------------------------------------------------------------------


def _check_readable(tracking_uri: str) -> None:
    check_tracking_uri(tracking_uri)
    if tracking_uri.strip().lower().startswith("sqlite:"):
        path = _sqlite_path(tracking_uri.strip())
        if path is not None and not Path(path).is_file():
            raise TrackingError(
                f"No MLflow database at {str(Path(path).resolve())!r} (tracking URI "
                f"{tracking_uri}): run a tracked task first, or point tracking.tracking_uri at "
                f"the study's store."
            )


def runs_table(tracking_uri: str, experiment: str, filter_string: str = ""):
    """The parent (top-level) runs of ``experiment`` as a DataFrame from
    :func:`mlflow.search_runs`: ``run_id``, ``status``, ``start_time``, ..., ``params.*``,
    ``metrics.*``, ``tags.*`` columns, newest first."""
    import pandas as pd

    _check_readable(tracking_uri)
    mlflow = _mlflow()
    with _using_tracking_uri(tracking_uri):
        exp = mlflow.MlflowClient(tracking_uri).get_experiment_by_name(experiment)
        if exp is None:
            raise TrackingError(f"No MLflow experiment named {experiment!r} at {tracking_uri}.")
        df = mlflow.search_runs(
            experiment_ids=[exp.experiment_id],
            filter_string=filter_string,
            order_by=["attributes.start_time DESC"],
        )
    if not isinstance(df, pd.DataFrame) or df.empty:
        return pd.DataFrame(columns=["run_id", "experiment_id", "status"])
    col = "tags.mlflow.parentRunId"
    if col in df.columns:
        df = df[df[col].isna()]
    return df.reset_index(drop=True)


def child_runs(tracking_uri: str, parent_run_id: str):
    """The runs nested directly under ``parent_run_id`` as a DataFrame (oldest first)."""
    import pandas as pd

    _check_readable(tracking_uri)
    mlflow = _mlflow()
    with _using_tracking_uri(tracking_uri):
        parent = mlflow.MlflowClient(tracking_uri).get_run(parent_run_id)
        df = mlflow.search_runs(
            experiment_ids=[parent.info.experiment_id],
            filter_string=f"tags.mlflow.parentRunId = '{parent_run_id}'",
            order_by=["attributes.start_time ASC"],
        )
    if not isinstance(df, pd.DataFrame) or df.empty:
        return pd.DataFrame(columns=["run_id", "experiment_id", "status"])
    return df.reset_index(drop=True)


# --------------------------------------------------------------------------------------------
# Privacy guard
# --------------------------------------------------------------------------------------------

_MRN = re.compile(r"^[A-Za-z]{0,4}[-_ ]?\d{6,}$")
_SSN = re.compile(r"^\d{3}-\d{2}-\d{4}$")
_NAME_WORD = re.compile(r"^[A-Z][A-Za-z'’]+$")  # "Jane", "DOE", "O'Brien"
_TITLE_WORD = re.compile(r"^[A-Z][a-z'’]+(?:[A-Z][a-z]+)?$")  # "Jane", "McDonald"; not "SYN"


def _looks_identifying(case_id: str) -> bool:
    s = str(case_id).strip()
    if not s:
        return False
    if _MRN.match(s) or _SSN.match(s):  # DICOM PatientID / MRN / national number
        return True
    if "^" in s:  # DICOM PN: Family^Given^Middle^Prefix^Suffix
        return any(part.isalpha() for part in re.split(r"[\^\s]+", s))
    # "Jane Doe", "DOE, JANE", "Jane Doe 2": two+ capitalised words split by spaces/commas
    words = [w for w in re.split(r"[\s,]+", s) if w]
    if len(words) >= 2 and sum(bool(_NAME_WORD.match(w)) and len(w) >= 2 for w in words) >= 2:
        return True
    # "Jane_Doe", "Jane-Doe", "Jane.Doe": Title-case words (all-caps codes like "HER2_POS" pass)
    words = [w for w in re.split(r"[_.\-]+", s) if w]
    return len(words) >= 2 and sum(bool(_TITLE_WORD.match(w)) for w in words) >= 2


def looks_identifying(ids: Iterable[Any]) -> list[str]:
    """Case IDs that look like patient names or DICOM PatientIDs / MRNs.

    Case IDs are the cohort manifest's own: her2study logs them (per-case tables, figures) as
    given. Flagged are: DICOM person names (``Doe^Jane``), two or more capitalised words
    (``Jane Doe``, ``DOE, JANE``, ``Jane_Doe``), long digit strings (6+ digits, optionally after a
    short letter prefix: ``12345678``, ``MRN1234567``) and SSN-like numbers. Coded IDs such as
    ``SYN0001``, ``C001``, ``case_12`` pass. The remedy is :func:`pseudonymise` (keep the key
    table off the tracking server). A heuristic: it cannot prove an ID is anonymous.
    """
    return [str(i) for i in ids if _looks_identifying(str(i))]


def pseudonymise(ids: Iterable[Any], salt: str) -> dict[str, str]:
    """Map case IDs to ``anon-<12 hex>`` codes: the first 12 hex characters of
    SHA-256(``salt + "\\0" + id``).

    The same salt gives the same codes (re-runs stay joinable); keep the salt secret, since
    without one an MRN's hash can be found by trying every number.
    """
    if not isinstance(salt, str) or not salt:
        raise ValueError("pseudonymise needs a non-empty secret salt")
    out: dict[str, str] = {}
    codes: dict[str, str] = {}
    for i in ids:
        key = str(i)
        code = "anon-" + hashlib.sha256(f"{salt}\0{key}".encode()).hexdigest()[:12]
        if codes.get(code, key) != key:  # pragma: no cover - 48-bit collision
            raise ValueError(f"pseudonym collision for {key!r}; use another salt")
        codes[code] = key
        out[key] = code
    return out
