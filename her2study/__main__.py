"""``python -m her2study [task=...] [+exp=...]``: compose the config, run the task, exit code."""

from __future__ import annotations

import logging
import sys

import hydra
from omegaconf import DictConfig

from her2study.config import register_configs
from her2study.errors import user_errors

register_configs()
log = logging.getLogger("her2study")


@hydra.main(version_base="1.3", config_path="../conf", config_name="config")
def _app(cfg: DictConfig):
    from her2study.tasks import get_task

    logging.captureWarnings(True)  # library warnings go to the run's log, not the terminal
    try:
        return get_task(cfg.task)(cfg)
    except user_errors() as err:
        log.error("%s", err)
        sys.exit(2)


def main() -> None:
    _app()


if __name__ == "__main__":
    main()
