"""``python -m her2study [task=...] [+exp=...]``: compose the config, run the task, exit code."""

from __future__ import annotations

import errno
import logging
import sys

import hydra
from hydra.utils import get_method
from omegaconf import DictConfig

from her2study.config import register_configs
from her2study.errors import Her2StudyError

register_configs()
log = logging.getLogger("her2study")
_STARTED = False  # set once the config composed and the task began
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
    """Run the task's ``_target_``; a user error is one message and exit 2 (3: cannot write)."""
    global _STARTED
    _STARTED = True
    logging.captureWarnings(True)  # library warnings go to the run's log, not the terminal
    try:
        get_method(cfg.task._target_)(cfg)
    except Her2StudyError as err:
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


@hydra.main(version_base="1.3", config_path="pkg://her2study.conf", config_name="config")
def _app(cfg: DictConfig) -> None:
    code = run(cfg)
    if code:
        sys.exit(code)


def main() -> None:
    """Hydra exits 1 on a config it cannot compose; a bad config is a user error: exit 2."""
    try:
        _app()
    except SystemExit as stop:
        if stop.code == 1 and not _STARTED:
            sys.exit(2)
        raise


if __name__ == "__main__":
    main()
