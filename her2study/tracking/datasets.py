"""A features table as an MLflow dataset input: name, digest, schema and profile, never rows."""

from __future__ import annotations

import logging

log = logging.getLogger(__name__)


def dataset_input(df, name_prefix: str, targets: str | None, context: str):
    """(MLflow ``DatasetInput`` named ``<name_prefix>-<digest>``, the digest) for ``df``. A schema
    larger than MLflow accepts (very wide tables) is left out: name and digest remain."""
    import mlflow.data
    from mlflow.entities import DatasetInput, InputTag
    from mlflow.utils.mlflow_tags import MLFLOW_DATASET_CONTEXT
    from mlflow.utils.validation import MAX_DATASET_SCHEMA_SIZE

    digest = mlflow.data.from_pandas(df, targets=targets).digest
    ds = mlflow.data.from_pandas(  # the digest passed on: not computed twice
        df, targets=targets, name=f"{name_prefix}-{digest}", digest=digest
    )
    entity = ds._to_mlflow_entity()
    if entity.schema is not None and len(entity.schema) > MAX_DATASET_SCHEMA_SIZE:
        log.info("dataset schema of %d columns too large for MLflow: not logged", df.shape[1])
        entity = type(entity)(
            entity.name, entity.digest, entity.source_type, entity.source, None, entity.profile
        )
    return DatasetInput(entity, tags=[InputTag(MLFLOW_DATASET_CONTEXT, context)]), digest
