"""Reading back from MLflow: logged models, parent runs of an experiment, child runs."""

from __future__ import annotations

from pathlib import Path

from her2study.tracking.probe import (
    TrackingError,
    _mlflow,
    _sqlite_path,
    _using_tracking_uri,
    check_tracking_uri,
)


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
