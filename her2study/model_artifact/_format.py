"""The format's names: files, metadata marker, trusted packages, the pyfunc entry point."""

from __future__ import annotations

from her2study.errors import ConfigError

FORMAT_VERSION = 1
MARKER = "her2study_model"  # key of the MLmodel's metadata
MODEL_CLASS = "her2study.model_artifact.Her2StudyModel"
PIPELINE = "pipeline"  # artifact names -> files under artifacts/
CARD = "card"
CODE_FILE = "her2study_pyfunc.py"
CODE_TEXT = '''"""her2study model entry point (MLflow "models from code"): nothing here is pickled.

The pipeline is read from artifacts/pipeline.skops by Her2StudyModel.load_context, trusting only
scikit-learn, NumPy, SciPy and her2study estimator classes.
"""

import mlflow

from her2study.model_artifact import Her2StudyModel

mlflow.models.set_model(Her2StudyModel())
'''
REQUIRED_CARD_KEYS = ("columns", "extraction")
OUTPUT_COLUMNS = ("probability", "predicted_class")


class ModelArtifactError(ConfigError):
    """The model URI names no her2study model, or one that cannot be read (exit code 2)."""
