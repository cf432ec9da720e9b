"""``python -m her2study [task=...] [+exp=...]``: compose the config, run the task, exit code."""

from __future__ import annotations

import errno
import logging
import sys

import hydra
from omegaconf import DictConfig

from her2study.config import register_configs
from her2study.errors import user_errors

register_configs()
log = logging.getLogger("her2study")
WRITE_ERRNOS = {
    errno.EACCES,
    errno.EROFS,
    errno.ENOSPC,
    errno.EDQUOT,
    errno.EPERM,
    errno.ENOTDIR,
    errno.EEXIST,
}


def run(cfg: DictConfig) -> int:
    """Run ``cfg.task``; a user error is one clear message and exit code 2 (3: cannot write)."""
    from her2study.tasks import get_task

    logging.captureWarnings(True)  # library warnings go to the run's log, not the terminal
    try:
        get_task(cfg.task)(cfg)
    except user_errors() as err:
        log.error("%s", err)
        return 2
    except OSError as err:
        if err.errno not in WRITE_ERRNOS:
            raise
        log.error(
            "cannot write %s: %s. Free disk space or choose a writable folder "
            "(cache_dir=..., hydra.run.dir=..., tracking.tracking_uri=...); inputs were not "
            "modified.",
            err.filename or "",
            err.strerror,
        )
        return 3
    return 0


@hydra.main(version_base="1.3", config_path="../conf", config_name="config")
def _app(cfg: DictConfig) -> None:
    code = run(cfg)
    if code:
        sys.exit(code)


def main() -> None:
    _app()


if __name__ == "__main__":
    main()
