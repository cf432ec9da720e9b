"""One module per task; each exposes ``run(cfg) -> int | float | None``."""

from __future__ import annotations

import importlib

TASKS = {
    "synth": "her2study.tasks.synth",
    "extract": "her2study.tasks.extract",
}


def get_task(name: str):
    """The ``run`` function of a task, or a clear error listing the tasks."""
    if name not in TASKS:
        raise ValueError(f"unknown task {name!r}; choose one of: {', '.join(sorted(TASKS))}")
    return importlib.import_module(TASKS[name]).run
