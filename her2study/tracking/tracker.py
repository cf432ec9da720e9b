"""The :class:`Tracker`: one MLflow parent run per job, nested child runs, artifacts, models.

Keys and values are made acceptable to MLflow by :mod:`her2study.tracking.keys`.
"""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import os
import signal
import threading
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from her2study.tracking.keys import (
    _finite_float,
    _param_str,
    _tag_values,
    _to_plain,
    _unique_keys,
    params_to_log,
    table_text,
)
from her2study.tracking.lifecycle import (
    ENDED_BY,
    ERROR_CLASS,
    ERROR_TAG,
    STUDY_TAG,
    RunTerminated,
    _ended_by,
    experiment_id,
    one_line,
    owner_tags,
    reap_dead_runs,
    store_lock,
)
from her2study.tracking.probe import (
    DEFAULT_TIMEOUT_S,
    TrackingError,
    _mlflow,
    _using_tracking_uri,
    check_tracking_uri,
)

log = logging.getLogger(__name__)

SKIPPED_METRICS_TAG = "skipped_metrics"


def _guarded(method):
    """Run a Tracker method as one MLflow operation: a SIGTERM arriving meanwhile is held until
    it returns (an exception in the middle of a database write could leave the store locked)."""

    @functools.wraps(method)
    def wrapper(self, *args, **kwargs):
        with self.mlflow_operation():
            return method(self, *args, **kwargs)

    return wrapper


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
        study: the study the runs belong to (default: the experiment name). Runs of the same
            study left RUNNING by a dead process of this host are marked FAILED on entry
            (:func:`~her2study.tracking.lifecycle.reap_dead_runs`).
        params: params of the parent run, logged when it opens (the run's config: a run that
            fails later still says how it was configured).

    Every run (parent and children) carries its owner (pid, host, start time) and study as
    tags, and ``her2study.ended_by`` when it ends; a failed run names the error class and one
    line of its message (no traceback). A param logged again with the value it has is skipped;
    with another value (MLflow refuses to change a param) it is logged as ``resolved.<key>``.
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
        study: str | None = None,
        params: Mapping[str, Any] | None = None,
    ):
        self.tracking_uri = tracking_uri
        self.experiment = experiment
        self.enabled = bool(enabled)
        self.run_name = run_name
        self.tags = dict(tags or {})
        self.artifact_location = artifact_location
        self.timeout = timeout
        self.study = str(study or experiment)
        self.params = dict(params or {})
        self._logged: dict[str, dict[str, str]] = {}  # run id -> params logged on it
        self.reaped: list[str] = []
        self._run_id: str | None = None
        self._experiment_id: str | None = None
        self._last_child_run_id: str | None = None
        self._client = None
        self._uri_ctx: contextlib.AbstractContextManager | None = None
        self._lock = threading.Lock()
        self._skipped: dict[str, set[str]] = {}
        self._state = "new"
        self._prev_sigterm = None
        self._busy = 0  # MLflow operations in progress in the main thread
        self._pending_signal: int | None = None

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
        """The run this thread's ``log_*`` calls go to: the innermost child, else the parent
        (MLflow's own per-thread active run; a worker thread without a child has none)."""
        active = _mlflow().active_run() if self.enabled and self._state == "active" else None
        return active.info.run_id if active is not None else self._run_id

    def _target(self) -> str | None:
        if not self.enabled:
            return None
        if self._state != "active":
            raise RuntimeError("Tracker is not active: log inside `with Tracker(...) as tracker:`")
        return self.current_run_id

    # -- lifecycle -----------------------------------------------------------------------------

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
        self._catch_sigterm()  # before the run exists: a SIGTERM from now on ends it KILLED
        try:
            with self.mlflow_operation():
                with store_lock(self.tracking_uri):  # a new SQLite store: one process makes it
                    self._client = mlflow.MlflowClient(self.tracking_uri)
                    self._experiment_id = experiment_id(
                        self._client, self.experiment, self.tracking_uri, self.artifact_location
                    )
                run = mlflow.start_run(
                    experiment_id=self._experiment_id,
                    run_name=self.run_name,
                    tags={**_tag_values(self.tags), **self._own_tags()},
                )
                self._run_id = run.info.run_id
                self._log_params(self._run_id, self.params)  # before any work: kept on failure
                self.reaped = reap_dead_runs(
                    self._client, self._experiment_id, self.study, self._run_id
                )
        except BaseException as e:
            self._release_sigterm()
            try:
                if self._run_id is not None:
                    self._close(self._run_id, type(e), e)
            finally:
                self._uri_ctx.__exit__(None, None, None)
            if isinstance(e, MlflowException):
                raise TrackingError(
                    f"Could not open MLflow experiment {self.experiment!r} at "
                    f"{self.tracking_uri}: {e.message}"
                ) from e
            raise
        self._state = "active"
        log.info(
            "MLflow run %s (experiment %r, id %s) at %s",
            self._run_id,
            self.experiment,
            self._experiment_id,
            self.tracking_uri,
        )
        return self

    def _own_tags(self) -> dict[str, str]:
        return {**owner_tags(), STUDY_TAG: self.study}

    def _close(self, run_id: str, exc_type, exc) -> None:
        """End ``run_id`` (this thread's active run, else through the client) with the status
        and ``ended_by`` of ``exc_type``; a failure names its class and one line of message."""
        main = threading.current_thread() is threading.main_thread()
        self._busy += main  # a second signal does not interrupt the closing
        try:
            self._end(run_id, exc_type, exc)
        finally:
            self._busy -= main
            if main and not self._busy:
                self._pending_signal = None  # the run ended KILLED or is ending anyway

    def _end(self, run_id: str, exc_type, exc) -> None:
        mlflow = _mlflow()
        status, ended_by = _ended_by(exc_type)
        tags = {ENDED_BY: ended_by}
        if exc_type is not None:
            tags[ERROR_CLASS] = exc_type.__name__
            tags[ERROR_TAG] = one_line(exc) if exc is not None else exc_type.__name__
        with contextlib.suppress(Exception):  # the status matters more than the tags
            self._client.log_batch(
                run_id, tags=[_run_tag(k, v) for k, v in _tag_values(tags).items()]
            )
        active = mlflow.active_run()
        if active is not None and active.info.run_id == run_id:
            mlflow.end_run(status=status)
        else:
            self._client.set_terminated(run_id, status=status)

    @contextlib.contextmanager
    def mlflow_operation(self) -> Iterator[None]:
        """Hold a SIGTERM until the MLflow calls inside are done, then end the runs KILLED.
        Used by every method; wrap other direct MLflow calls (model logging) in it too."""
        main = threading.current_thread() is threading.main_thread()
        if main:
            self._busy += 1
        try:
            yield
        finally:
            if main:
                self._busy -= 1
                if self._busy == 0 and self._pending_signal is not None:
                    signum, self._pending_signal = self._pending_signal, None
                    raise RunTerminated(f"signal {signum} (SIGTERM)")

    def _on_sigterm(self, signum, frame) -> None:
        if self._busy:
            self._pending_signal = signum  # raised when the MLflow operation is done
            return
        raise RunTerminated(f"signal {signum} (SIGTERM)")

    def _catch_sigterm(self) -> None:
        """SIGTERM -> :class:`RunTerminated` while open: only in the main thread, and only when
        nobody else handles SIGTERM (a launcher's own handler is left alone)."""
        if threading.current_thread() is not threading.main_thread():
            return
        with contextlib.suppress(ValueError, OSError):
            if signal.getsignal(signal.SIGTERM) == signal.SIG_DFL:
                self._prev_sigterm = signal.signal(signal.SIGTERM, self._on_sigterm)

    def _release_sigterm(self) -> None:
        if self._prev_sigterm is not None:
            with contextlib.suppress(ValueError, OSError):
                signal.signal(signal.SIGTERM, self._prev_sigterm)
            self._prev_sigterm = None

    def __exit__(self, exc_type, exc, tb) -> bool:
        if self._state != "active":
            return False
        self._state = "done"
        if not self.enabled:
            return False
        self._release_sigterm()
        try:
            self._close(self._run_id, exc_type, exc)
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
        # MLflow's fluent API keeps the active run per thread: in the tracker's thread it is the
        # parent or an open child; a worker thread has none and names the parent explicitly.
        with self.mlflow_operation():
            run = _mlflow().start_run(
                experiment_id=self._experiment_id,
                run_name=name,
                nested=True,
                parent_run_id=parent,
                tags={**_tag_values(tags), **self._own_tags()},
            )
        run_id = run.info.run_id
        with self._lock:
            self._last_child_run_id = run_id
        try:
            yield run_id
        except BaseException as e:
            self._close(run_id, type(e), e)
            raise
        self._close(run_id, None, None)

    # -- logging -------------------------------------------------------------------------------
    @_guarded
    def log_params(self, flat: Mapping[str, Any]) -> None:
        """Log params: keys sanitised, values stringified; MLflow's client splits them into
        batches and truncates values over its limit (``MLFLOW_TRUNCATE_LONG_VALUES``).

        MLflow refuses to change a param already logged on the same run with another value.
        """
        run_id = self._target()
        if run_id is None or not flat:
            return
        self._log_params(run_id, flat)

    def _log_params(self, run_id: str, flat: Mapping[str, Any]) -> None:
        from mlflow.entities import Param

        with self._lock:
            logged = self._logged.setdefault(run_id, {})
            new = params_to_log(logged, flat)
        if new:
            self._client.log_batch(run_id, params=[Param(k, v) for k, v in new.items()])
            with self._lock:
                logged.update(new)

    @_guarded
    def log_metrics(self, d: Mapping[str, Any], step: int | None = None, model_id=None) -> None:
        """Log numeric metrics; None/NaN/inf/non-numbers are skipped and named in the run's
        ``skipped_metrics`` tag. Keys are sanitised (:func:`sanitize_key`). ``model_id``: the
        MLflow logged model (``m-...``) they describe, shown on its page."""
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
            metrics.append(Metric(key, val, ts, int(step or 0), model_id=model_id))
        self._client.log_batch(run_id, metrics=metrics)  # batched by MLflow's client
        if skipped:
            with self._lock:
                names = self._skipped.setdefault(run_id, set())
                names.update(skipped)
                value = ",".join(sorted(names))
            log.info("metrics not logged (None/NaN/inf/not a number): %s", ", ".join(skipped))
            self._client.set_tag(run_id, SKIPPED_METRICS_TAG, value)

    @_guarded
    def set_tags(self, tags: Mapping[str, Any]) -> None:
        run_id = self._target()
        if run_id is None or not tags:
            return
        items = [
            _run_tag(k, _param_str(v))
            for k, v in zip(_unique_keys(tags.keys()), tags.values(), strict=True)
        ]
        self._client.log_batch(run_id, tags=items)  # batched and truncated by MLflow's client

    @_guarded
    def rename(self, name: str) -> None:
        """Rename the parent run (e.g. once the task knows what it is about)."""
        if self.enabled and self._state == "active":
            self._client.update_run(self._run_id, name=name)

    @_guarded
    def log_dataset(
        self,
        df,
        name_prefix: str = "dataset",
        targets: str | None = None,
        context: str = "training",
    ) -> str | None:
        """``df`` as the run's MLflow dataset input, named ``<name_prefix>-<digest>``; returns the
        digest (None when disabled).

        MLflow stores the dataset's name, digest (a hash of the values), schema (column names and
        types), profile (row and element counts) and source (the code location): never its rows.
        The index is not part of the schema; pass a frame without identifying columns. A schema
        larger than MLflow accepts (very wide tables) is left out: name and digest remain.
        """
        run_id = self._target()
        if run_id is None:
            return None
        from her2study.tracking.datasets import dataset_input

        entity, digest = dataset_input(df, name_prefix, targets, context)
        self._client.log_inputs(run_id, datasets=[entity])
        return digest

    @_guarded
    def log_figure(self, fig, artifact_file: str) -> None:
        """A matplotlib (or plotly) figure as an image artifact (format from the extension)."""
        run_id = self._target()
        if run_id is None:
            return
        self._client.log_figure(run_id, fig, artifact_file)

    @_guarded
    def log_table(self, df, artifact_file: str) -> None:
        """A DataFrame as ``.csv`` or ``.md`` (Markdown) artifact; a named or non-range index is
        written as column(s)."""
        run_id = self._target()
        if run_id is None:
            return
        text = table_text(df, artifact_file)
        self._client.log_text(run_id, text, artifact_file)

    @_guarded
    def log_text(self, text: str, artifact_file: str) -> None:
        run_id = self._target()
        if run_id is None:
            return
        self._client.log_text(run_id, str(text), artifact_file)

    @_guarded
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

    @_guarded
    def log_artifact(self, local_path: str | os.PathLike, artifact_path: str | None = None) -> None:
        run_id = self._target()
        if run_id is None:
            return
        self._client.log_artifact(run_id, str(local_path), artifact_path)

    @_guarded
    def log_artifacts(self, local_dir: str | os.PathLike, artifact_path: str | None = None) -> None:
        run_id = self._target()
        if run_id is None:
            return
        self._client.log_artifacts(run_id, str(local_dir), artifact_path)

    def log_artifact_groups(self, groups: Mapping[str, list]) -> None:
        """Files of several artifact folders (``{"tables": [paths], "figures": [...]}``) logged in
        one call: linked (else copied) into one temporary tree, uploaded as a folder."""
        if self._target() is None:
            return
        import shutil
        import tempfile

        with tempfile.TemporaryDirectory(prefix="her2study-artifacts-") as tmp:
            for folder, paths in groups.items():
                dest = Path(tmp, folder)
                dest.mkdir(parents=True, exist_ok=True)
                for path in paths:
                    try:
                        os.link(path, dest / Path(path).name)
                    except OSError:  # another file system, or no hard links
                        shutil.copy2(path, dest / Path(path).name)
            self.log_artifacts(tmp)


def _run_tag(key: str, value: str):
    from mlflow.entities import RunTag

    return RunTag(key, value)
