"""The pyfunc model: a fitted pipeline and its card -> probability and class."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
from mlflow.pyfunc import PythonModel

from her2study.model_artifact._format import (
    CARD,
    PIPELINE,
    ModelArtifactError,
)
from her2study.model_artifact.portable import model_inputs
from her2study.model_artifact.trusted import load_pipeline


class Her2StudyModel(PythonModel):
    """A fitted pipeline and its card: ``predict(df)`` -> ``probability``, ``predicted_class``.

    Made by :func:`load_model` (pipeline and card given), or by MLflow from the folder's entry
    point (empty; :meth:`load_context` reads the artifacts).
    """

    # the signature given at save time validates inputs; no type-hint inference (and its warning)
    _skip_type_hint_validation = True

    def __init__(self, pipeline=None, card: dict | None = None):
        self.pipeline = pipeline
        self.card = card

    def load_context(self, context) -> None:
        self.card = json.loads(Path(context.artifacts[CARD]).read_text(encoding="utf-8"))
        self.pipeline = load_pipeline(context.artifacts[PIPELINE])

    @property
    def columns(self) -> list[str]:
        return list(self.card["columns"])

    @property
    def threshold(self) -> float:
        return float(self.card["threshold"])

    def predict_proba(self, X) -> np.ndarray:
        """P(label = 1) of each row of ``X`` (a DataFrame with the card's columns)."""
        return self._proba(self._design(X))

    def _proba(self, X: pd.DataFrame) -> np.ndarray:
        classes = list(getattr(self.pipeline, "classes_", [0, 1]))
        return self.pipeline.predict_proba(X)[:, classes.index(1)]

    def predict(self, model_input, params: dict | None = None) -> pd.DataFrame:
        """``probability`` = P(label = 1) and ``predicted_class`` = probability >= threshold
        (the exported one, or ``params={"threshold": t}``), one row per input row."""
        threshold = self.threshold
        if params and params.get("threshold") is not None:
            threshold = float(params["threshold"])
        X = self._design(model_input)
        prob = self._proba(X)
        return pd.DataFrame(
            {"probability": prob, "predicted_class": (prob >= threshold).astype(np.int64)},
            index=X.index,
        )

    def _design(self, model_input) -> pd.DataFrame:
        """The model's input columns: features and covariates as floats, the device (when the
        model harmonises) as text."""
        X = model_input if isinstance(model_input, pd.DataFrame) else pd.DataFrame(model_input)
        inputs = model_inputs(self.card)
        missing = [c for c in inputs if c not in X.columns]
        site = self.card.get("site_column")
        if site in missing:
            raise ModelArtifactError(
                f"the model harmonises features across devices and needs each case's device "
                f"in a column '{site}' (training devices: "
                f"{', '.join(self.card['harmonise']['devices'])})"
            )
        if missing:
            raise ModelArtifactError(
                f"{len(missing)} of the model's {len(inputs)} input column(s) missing, e.g. "
                f"{missing[:3]}"
            )
        numeric = [c for c in inputs if c != site]
        out = X[numeric].astype(np.float64)
        if site:
            out[site] = X[site].astype(str).str.strip()
        return out[inputs]
