"""Errors that mean "the input or the config is wrong": shown as a message, exit code 2.

Anything else is a bug and keeps its traceback.
"""

from __future__ import annotations


class ConfigError(ValueError):
    """A configuration value cannot be used; the message names the key and the fix."""


def user_errors() -> tuple[type[BaseException], ...]:
    from her2study.cohort.io import ImageReadError
    from her2study.cohort.manifest import CohortError
    from her2study.features.extraction import ExtractionError
    from her2study.tracking import TrackingError

    return (ConfigError, CohortError, ImageReadError, ExtractionError, TrackingError)
