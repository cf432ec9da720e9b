"""All MLflow access of her2study goes through this module.

Estimators never log; tasks open one :class:`Tracker` per Hydra job and call its methods::

    with Tracker(cfg.tracking.tracking_uri, cfg.tracking.experiment,
                 enabled=cfg.tracking.enabled, run_name="paper") as tr:
        tr.log_params(flatten_config(cfg))
        with tr.child("fold-0"):
            tr.log_metrics({"auc": 0.81, "IntraPeri 1 mm auc": 0.79})
        log_model(tr, "model", pipeline, card, threshold)  # her2study.model_artifact

* The store is checked before any work (:func:`check_tracking_uri`), so a missing
  ``mlflow server`` fails in seconds with a :class:`TrackingError` that says how to fix it,
  instead of MLflow's own minutes of HTTP retries at the end of a long run.
* ``enabled=False`` (``tracking=off``) turns every method into a no-op, so tasks need no ``if``.
* Runs are nested: one parent run per job, opened when the task starts (its Duration is the
  study's), :meth:`Tracker.child` for folds / trials / regions. Every ``log_*`` goes to MLflow's
  active run of the calling thread (a child, else the parent), and children may be opened from
  worker threads (Optuna ``n_jobs>1``): they still hang under the parent.
* Runs end FINISHED, FAILED on an error (class and one line of message as tags, no traceback),
  KILLED on SIGTERM / Ctrl-C; each names its owner process, and a later run of the same study
  marks runs left RUNNING by a dead process FAILED (:mod:`~her2study.tracking.lifecycle`).
  A new SQLite store is created by one process at a time (a file lock).
* Keys are sanitised and NaN/inf metrics skipped (named in the ``skipped_metrics`` tag) here;
  batching and truncating long values are left to MLflow's client.

Local SQLite stores (``sqlite:///mlflow.db``, MLflow 3's default) keep artifacts in a
``mlartifacts/`` folder next to the database file (MLflow itself would use ``./mlruns`` of the
current directory). Browse them with
``mlflow server --backend-store-uri sqlite:///mlflow.db --host 127.0.0.1 --port 5000``.

Privacy: case IDs logged anywhere (tables, tags, figures) are the manifest's own IDs.
:func:`~her2study.privacy.looks_identifying` flags IDs that look like patient names or DICOM
PatientIDs / MRNs, and :func:`~her2study.privacy.pseudonymise` is the offered remedy (salted
SHA-256 codes) before a study is shared (both live in :mod:`her2study.privacy`, re-exported here).

Modules: :mod:`~her2study.tracking.probe` (is the store usable? :class:`TrackingError`),
:mod:`~her2study.tracking.keys` (keys and values as MLflow takes them),
:mod:`~her2study.tracking.lifecycle` (run owners, dead runs, error tags, the store lock),
:mod:`~her2study.tracking.tracker` (:class:`Tracker`, artifacts, model logging) and
:mod:`~her2study.tracking.runs` (reading models and runs back). Their names are re-exported here.
"""

from __future__ import annotations

from her2study.privacy import looks_identifying, pseudonymise
from her2study.tracking.keys import flatten_config, sanitize_key
from her2study.tracking.lifecycle import EXPERIMENT_KIND, EXPERIMENT_KIND_TAG
from her2study.tracking.probe import (
    DEFAULT_TIMEOUT_S,
    TrackingError,
    check_tracking_uri,
)
from her2study.tracking.probe import _using_tracking_uri as _using_tracking_uri
from her2study.tracking.runs import child_runs, runs_table
from her2study.tracking.tracker import SKIPPED_METRICS_TAG, Tracker

__all__ = [
    "DEFAULT_TIMEOUT_S",
    "EXPERIMENT_KIND",
    "EXPERIMENT_KIND_TAG",
    "SKIPPED_METRICS_TAG",
    "Tracker",
    "TrackingError",
    "check_tracking_uri",
    "child_runs",
    "flatten_config",
    "looks_identifying",
    "pseudonymise",
    "runs_table",
    "sanitize_key",
]
