"""Logging set-up shared by every task: results are log records, so they reach both the terminal
and the job log that Hydra writes into the run folder (and that tracking uploads).

``conf/config.yaml`` installs :class:`ConsoleFormatter` on Hydra's console handler: INFO records
print as plain text (tables stay readable), warnings and errors keep their level and origin.
"""

from __future__ import annotations

import logging


class ConsoleFormatter(logging.Formatter):
    """Plain message for INFO and below; ``LEVEL [logger] message`` above."""

    def __init__(self) -> None:
        super().__init__("%(levelname)s [%(name)s] %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        if record.levelno <= logging.INFO:
            return record.getMessage()
        return super().format(record)
