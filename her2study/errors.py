"""Errors that mean "the input or the config is wrong": shown as one message, exit code 2.

Every such error derives from :class:`Her2StudyError`; ``__main__`` catches that one class.
Anything else is a bug and keeps its traceback.
"""

from __future__ import annotations


class Her2StudyError(Exception):
    """A user error: the message names the case, the file or the key, and the fix."""


class ConfigError(Her2StudyError, ValueError):
    """A configuration value cannot be used; the message names the key and the fix."""
