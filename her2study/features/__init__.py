"""PyRadiomics extraction per region, a content-addressed cache, and features tables."""

from her2study.digest import file_digest
from her2study.features.cache import FeatureCache
from her2study.features.extraction import (
    ExtractionError,
    FeatureSet,
    extract_features,
    load_params,
)

__all__ = [
    "ExtractionError",
    "FeatureCache",
    "FeatureSet",
    "extract_features",
    "file_digest",
    "load_params",
]
