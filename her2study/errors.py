"""Errors that mean "the input or config is wrong": shown as a message, exit code 2."""

from __future__ import annotations

from her2study.cohort.io import ImageReadError
from her2study.cohort.manifest import CohortError
from her2study.features.extraction import ExtractionError

USER_ERRORS = (CohortError, ImageReadError, ExtractionError, ValueError, FileNotFoundError)
