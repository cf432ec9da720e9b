"""Who owns a run, how it ended, and the store made once: the run lifecycle around MLflow.

* Every run of a :class:`~her2study.tracking.Tracker` carries its owner as tags
  (``her2study.owner.pid`` / ``.host`` / ``.started``, and on Linux the process start time in
  clock ticks, ``.proc_start``, which tells a reused PID from the original process) and its
  study (``her2study.study``).
* A run that ends says how in ``her2study.ended_by``: ``finished``, ``error``, ``SIGTERM``,
  ``SIGINT``, or ``dead owner ...`` when a later run of the same study found it left RUNNING by
  a process that no longer exists on this host (:func:`reap_dead_runs`, which marks it FAILED).
* A failed run names the error in ``her2study.error_class`` and one line of its message in
  ``error`` (never a traceback: tracebacks can hold file names and values of patient data).
* A SQLite store is created (tables, migrations) once, under an exclusive ``fcntl`` lock on
  ``<database>.lock`` (:func:`prepared_store`): two studies started at once on a fresh folder
  would otherwise both run MLflow's migration on the same file and one would die inside it.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import logging
import os
import socket
from collections.abc import Iterator
from pathlib import Path

from her2study.folders import pid_alive
from her2study.tracking.probe import TrackingError, _mlflow, _sqlite_path

log = logging.getLogger(__name__)

OWNER_PID = "her2study.owner.pid"
OWNER_HOST = "her2study.owner.host"
OWNER_STARTED = "her2study.owner.started"
OWNER_PROC_START = "her2study.owner.proc_start"
STUDY_TAG = "her2study.study"
ENDED_BY = "her2study.ended_by"
ERROR_CLASS = "her2study.error_class"
ERROR_TAG = "error"
MAX_ERROR_CHARS = 300
# MLflow 3's UI opens an experiment of this kind on its training runs (not the GenAI view).
EXPERIMENT_KIND_TAG = "mlflow.experimentKind"
EXPERIMENT_KIND = "custom_model_development"


class RunTerminated(KeyboardInterrupt):
    """SIGTERM while a :class:`~her2study.tracking.Tracker` is open (``kill``, a scheduler's
    time limit): raised in the main thread so the runs end KILLED, like Ctrl-C, instead of
    staying RUNNING forever."""


def _ended_by(exc_type) -> tuple[str, str]:
    """(MLflow status, ``her2study.ended_by``) for a run left with ``exc_type`` (None: normally)."""
    if exc_type is None:
        return "FINISHED", "finished"
    if issubclass(exc_type, RunTerminated):
        return "KILLED", "SIGTERM"
    if issubclass(exc_type, KeyboardInterrupt):
        return "KILLED", "SIGINT"  # Ctrl-C shows as killed, not as a failure of the study
    return "FAILED", "error"


def _proc_start(pid: int) -> str | None:
    """Start time of process ``pid`` in clock ticks since boot (Linux ``/proc``), else None."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # the command name (field 2) is in parentheses and may hold spaces: split after it
    fields = stat.rsplit(")", 1)[-1].split()
    return fields[19] if len(fields) > 19 else None  # field 22 overall: starttime


def owner_tags() -> dict[str, str]:
    """The tags naming the process that owns a run opened now."""
    tags = {
        OWNER_PID: str(os.getpid()),
        OWNER_HOST: socket.gethostname(),
        OWNER_STARTED: dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
    }
    start = _proc_start(os.getpid())
    if start is not None:
        tags[OWNER_PROC_START] = start
    return tags


def owner_alive(tags: dict) -> bool:
    """Is the process named by a run's owner tags still running (on this host)? A PID that now
    belongs to another process (its start time differs) counts as dead."""
    try:
        pid = int(tags[OWNER_PID])
    except (KeyError, ValueError):
        return True  # not ours to judge
    if not pid_alive(pid):
        return False
    recorded, now = tags.get(OWNER_PROC_START), _proc_start(pid)
    return not (recorded and now and recorded != now)


def one_line(exc: BaseException) -> str:
    """``<Class>: <first line of the message>``, at most :data:`MAX_ERROR_CHARS` characters."""
    lines = str(exc).strip().splitlines()
    text = f"{type(exc).__name__}: {lines[0] if lines else ''}".rstrip(": ")
    return text if len(text) <= MAX_ERROR_CHARS else text[: MAX_ERROR_CHARS - 3] + "..."


def reap_dead_runs(client, experiment_id: str, study: str, by_run: str | None = None) -> list:
    """Mark FAILED the runs of ``study`` left RUNNING by a process of this host that is gone
    (``kill -9``, a crashed node, a power cut), with ``her2study.ended_by`` saying so; returns
    their run IDs. Runs of live processes and of other hosts are left alone."""
    host = socket.gethostname()
    filt = (
        f"attributes.status = 'RUNNING' and tags.`{STUDY_TAG}` = '{_quote(study)}' "
        f"and tags.`{OWNER_HOST}` = '{_quote(host)}'"
    )
    reaped = []
    for run in client.search_runs([experiment_id], filter_string=filt, max_results=1000):
        tags = run.data.tags
        if owner_alive(tags):
            continue
        why = (
            f"dead owner: process {tags.get(OWNER_PID)} on {host} (started "
            f"{tags.get(OWNER_STARTED, '?')}) ended without closing the run; marked FAILED by "
            f"run {by_run or '?'} of the same study"
        )
        client.set_tag(run.info.run_id, ENDED_BY, why)
        client.set_terminated(run.info.run_id, status="FAILED")
        reaped.append(run.info.run_id)
    if reaped:
        log.warning(
            "%d run(s) of study %r left RUNNING by a process that is gone marked FAILED",
            len(reaped),
            study,
        )
    return reaped


def _quote(s: str) -> str:
    return str(s).replace("'", "\\'")


@contextlib.contextmanager
def store_lock(tracking_uri: str) -> Iterator[None]:
    """An exclusive lock on ``<database>.lock`` beside a SQLite store (no-op for other stores,
    in-memory databases, and where ``fcntl`` is missing)."""
    uri = tracking_uri.strip()
    path = _sqlite_path(uri) if uri.lower().startswith("sqlite:") else None
    try:
        import fcntl
    except ImportError:  # pragma: no cover - Windows
        fcntl = None
    if path is None or fcntl is None:
        yield
        return
    lock = Path(path).resolve().with_name(Path(path).name + ".lock")
    try:
        fh = open(lock, "a+b")  # noqa: SIM115 - closed below
    except OSError:  # a read-only folder: nothing will be created there either
        yield
        return
    with fh:
        fcntl.flock(fh.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh.fileno(), fcntl.LOCK_UN)


def prepared_store(tracking_uri: str):
    """An ``MlflowClient`` on ``tracking_uri`` whose store exists: a SQLite database is created
    and migrated by one process at a time (:func:`store_lock`); MLflow caches the store per
    process, so the lock is taken once."""
    with store_lock(tracking_uri):
        return _mlflow().MlflowClient(tracking_uri)


def default_artifact_location(tracking_uri: str, given: str | None = None) -> str | None:
    """``given``, else ``mlartifacts/`` beside a SQLite database, else the server's choice."""
    if given:
        return given
    if tracking_uri.strip().lower().startswith("sqlite:"):
        path = _sqlite_path(tracking_uri.strip())
        if path is not None:
            return str((Path(path).resolve().parent / "mlartifacts").resolve())
    return None


def experiment_id(client, name: str, tracking_uri: str, artifact_location=None) -> str:
    """The ID of experiment ``name``, created (of kind ``custom_model_development``) when
    missing; a deleted experiment is a :class:`TrackingError` saying how to restore it."""
    from mlflow.exceptions import MlflowException

    exp = client.get_experiment_by_name(name)
    if exp is None:
        try:
            return client.create_experiment(
                name,
                artifact_location=default_artifact_location(tracking_uri, artifact_location),
                tags={EXPERIMENT_KIND_TAG: EXPERIMENT_KIND},
            )
        except MlflowException:  # created meanwhile by a parallel job (Hydra multirun)
            exp = client.get_experiment_by_name(name)
            if exp is None:
                raise
    if exp.lifecycle_stage == "deleted":
        raise TrackingError(
            f"MLflow experiment {name!r} at {tracking_uri} is deleted. Restore it "
            f"(`mlflow experiments restore --experiment-id {exp.experiment_id}`), or use another "
            f"study name."
        )
    if EXPERIMENT_KIND_TAG not in (exp.tags or {}):  # made by an older version or by hand
        client.set_experiment_tag(exp.experiment_id, EXPERIMENT_KIND_TAG, EXPERIMENT_KIND)
    return exp.experiment_id
