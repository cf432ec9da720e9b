"""One module per task; each exposes ``run(cfg) -> int | float | None``."""

from __future__ import annotations

import importlib

from her2study.errors import ConfigError

TASKS = {
    "synth": "her2study.tasks.synth",
    "extract": "her2study.tasks.extract",
    "paper": "her2study.tasks.paper",
    "compare": "her2study.tasks.compare",
    "search": "her2study.tasks.search",
    "export": "her2study.tasks.export",
    "predict": "her2study.tasks.predict",
}


def get_task(name: str):
    """The ``run`` function of a task, or a clear error listing the tasks."""
    if name not in TASKS:
        raise ConfigError(f"unknown task {name!r}; choose one of: {', '.join(sorted(TASKS))}")
    return importlib.import_module(TASKS[name]).run
