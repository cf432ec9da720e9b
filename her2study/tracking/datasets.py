"""A features table as an MLflow dataset input: name, digest, schema and profile, never rows."""

from __future__ import annotations

import logging

log = logging.getLogger(__name__)


def dataset_input(df, name_prefix: str, targets: str | None, context: str):
    """(MLflow ``DatasetInput`` named ``<name_prefix>-<digest>``, the digest) for ``df``. A schema
    larger than MLflow accepts (very wide tables) is left out: name and digest remain.

    MLflow's digest and schema of a wide table cost about a second (the schema of 3,900 columns
    is inferred column by column); with a fit cache active (task=paper) they are kept there,
    keyed by the frame's values, columns, dtypes and index, ``targets`` and MLflow's version,
    and a re-run with the same table reuses them. The source (where the run's code is) is
    resolved afresh every time."""
    import mlflow
    import mlflow.data
    from mlflow.data.code_dataset_source import CodeDatasetSource
    from mlflow.entities import Dataset, DatasetInput, InputTag
    from mlflow.tracking.context import registry
    from mlflow.utils.mlflow_tags import MLFLOW_DATASET_CONTEXT
    from mlflow.utils.validation import MAX_DATASET_SCHEMA_SIZE

    from her2study.fitcache import active_fit_cache, content_key

    cache = active_fit_cache()
    key = None
    if cache is not None:
        key = content_key("mlflow_dataset", frame=df, targets=targets, mlflow=mlflow.__version__)
    stored = cache.get(key) if key is not None else None
    if stored is not None:
        digest, schema, profile = (stored[1][k] for k in ("digest", "schema", "profile"))
        source = CodeDatasetSource(tags=registry.resolve_tags())
        source_type, source = source._get_source_type(), source.to_json()
    else:
        digest = mlflow.data.from_pandas(df, targets=targets).digest
        ds = mlflow.data.from_pandas(  # the digest passed on: not computed twice
            df, targets=targets, name=f"{name_prefix}-{digest}", digest=digest
        )
        computed = ds._to_mlflow_entity()
        schema, profile = computed.schema, computed.profile
        source_type, source = computed.source_type, computed.source
        if schema is not None and len(schema) > MAX_DATASET_SCHEMA_SIZE:
            log.info("dataset schema of %d columns too large for MLflow: not logged", df.shape[1])
            schema = None
        if key is not None:
            cache.put(key, {}, {"digest": digest, "schema": schema, "profile": profile})
    entity = Dataset(f"{name_prefix}-{digest}", digest, source_type, source, schema, profile)
    return DatasetInput(entity, tags=[InputTag(MLFLOW_DATASET_CONTEXT, context)]), digest
