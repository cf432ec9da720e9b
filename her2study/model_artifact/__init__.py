"""The one her2study model format: an MLflow pyfunc model folder, and its one loader.

Written by ``task=export`` (:func:`save_model` into ``<run folder>/model``, :func:`log_model` into
the MLflow store) and read by ``task=predict`` (:func:`load_model`). The folder::

    model/
      MLmodel                    flavour python_function, metadata ``her2study_model`` (marker)
      her2study_pyfunc.py        the entry point ("models from code": no pickled Python object)
      artifacts/pipeline.skops   the fitted scikit-learn pipeline (skops format, not pickle)
      artifacts/card.json        the model card: feature columns, regions, extraction settings,
                                 threshold, what the performance estimate is, her2study version
      code/her2study/            the her2study code the pipeline's own estimators need
      input_example.json, serving_input_example.json   one row of zeros (never a patient)
      requirements.txt, python_env.yaml, conda.yaml

A study's signature is stored as :func:`portable_pipeline` makes it: a fitted contour-robustness
filter becomes the column mask it is (the card's ``columns`` are the original features it kept;
no perturbed masks at prediction time), and a ComBat step its portable copy holding per-device
statistics only (no case id, no row, no covariate value) that reads each case's device from the
card's ``site_column`` (and the protected covariates from ``covariate_columns``); the card says
which devices it was fitted on and what it does with another (``harmonise``). Saving refuses a
pipeline that still holds a study's case-id lookups.

Its :class:`Her2StudyModel` (an :class:`mlflow.pyfunc.PythonModel`) returns, for a DataFrame of
the card's columns (and its device and covariate columns, :func:`model_inputs`), a DataFrame
with ``probability`` (P(label = 1)) and ``predicted_class``
(probability >= the exported threshold; a ``threshold`` param overrides it), whether it is called
in Python, through ``mlflow.pyfunc.load_model`` or by ``mlflow models serve -m model
--env-manager local``.

Security. Loading a model must not run code from the file. :func:`load_model` accepts only this
format and refuses anything else (a bare ``.joblib`` / ``.pkl`` file, a foreign MLflow model, an
``MLmodel`` without the her2study marker) *before reading anything but the MLmodel text file*. It
never executes the folder's entry point nor unpickles anything: it reads the card (JSON) and the
pipeline with ``skops.io.load`` trusting only classes of scikit-learn, NumPy, SciPy and her2study's
own estimators (:func:`load_pipeline`). MLflow's own loaders (``mlflow.pyfunc.load_model``,
``mlflow models serve``) do execute the folder's entry point and its bundled code: load and serve
models only from trusted sources, as with any MLflow model.
"""

from her2study.model_artifact._format import FORMAT_VERSION, ModelArtifactError
from her2study.model_artifact.portable import model_inputs, portable_pipeline
from her2study.model_artifact.pyfunc import Her2StudyModel
from her2study.model_artifact.reading import check_model_folder, describe, load_model
from her2study.model_artifact.trusted import load_pipeline
from her2study.model_artifact.writing import log_model, requirements, save_model

__all__ = [
    "FORMAT_VERSION",
    "Her2StudyModel",
    "ModelArtifactError",
    "check_model_folder",
    "describe",
    "load_model",
    "load_pipeline",
    "log_model",
    "model_inputs",
    "portable_pipeline",
    "requirements",
    "save_model",
]
