"""``python -m her2study [task=...] [+exp=...]``: compose the config, run the task, exit code."""

from __future__ import annotations

import errno
import logging
import sys
import warnings

import hydra
from hydra.core.config_store import ConfigStore
from hydra.utils import get_method
from omegaconf import DictConfig

from her2study.config import register_configs
from her2study.errors import Her2StudyError

# Hydra deep-copies its config repository, and with it the ConfigStore singleton holding our
# schemas, once per config group it lists (114 times for --help: 1.9 s of 2.5 s). The store is
# never mutated there and hands out deep copies of its nodes on load, so sharing it is safe (the
# workaround hydra-zen used for the same cost; Hydra PR 2928 stopped relying on the copy).
ConfigStore.__deepcopy__ = lambda self, memo: self
register_configs()
log = logging.getLogger("her2study")
_STARTED = False  # set once the config composed and the task began
_RESULT: dict = {}  # the task's return value (paper: a training-side AUC), handed to Hydra
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
    logging.raiseExceptions = False  # a log file on a full disk: no traceback per record
    try:
        _refuse_plain_salt(cfg)
        _RESULT["value"] = get_method(cfg.task._target_)(cfg)
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
            err.filename2 or err.filename or "",  # a failed copy names (source, target)
            err.strerror,
        )
        return 3
    return 0


def _refuse_plain_salt(cfg: DictConfig) -> None:
    """A salt that is not from ``HER2STUDY_SALT`` stops the run before any work; when Hydra
    already wrote it to ``.hydra/*.yaml`` (an override that did not go through :func:`main`),
    those copies are redacted first."""
    from her2study.errors import ConfigError
    from her2study.privacy import salt_problem

    salt = cfg.data.get("pseudonym_salt") if cfg.get("data") is not None else None
    overrides: list[str] = []
    hydra_dir = None
    try:
        from hydra.core.hydra_config import HydraConfig

        hc = HydraConfig.get()
        overrides = list(hc.overrides.task)
        if hc.output_subdir is not None:
            from pathlib import Path

            hydra_dir = Path(hc.runtime.output_dir) / hc.output_subdir
    except ValueError:  # not inside a Hydra job (tests compose the config themselves)
        pass
    problem = salt_problem(salt, overrides)
    if problem is None:
        return
    if salt and hydra_dir is not None and hydra_dir.is_dir():
        for path in hydra_dir.glob("*.yaml"):
            text = path.read_text(encoding="utf-8")
            if str(salt) in text:
                path.write_text(text.replace(str(salt), "***"), encoding="utf-8")
    raise ConfigError(problem)


def _salt_on_command_line(argv: list[str]) -> str | None:
    """The salt as an override: refused before Hydra writes ``.hydra/overrides.yaml``."""
    from her2study.privacy import SALT_FIX, SALT_KEY, salt_override

    if salt_override(a for a in argv if not a.startswith("-")):
        return f"refusing {SALT_KEY} on the command line: {SALT_FIX}"
    return None


@hydra.main(version_base="1.3", config_path="pkg://her2study.conf", config_name="config")
def _app(cfg: DictConfig):
    code = run(cfg)
    if code:
        sys.exit(code)
    return _RESULT.pop("value", None)  # for Hydra (a sweeper): the task's own return value


def _compose(overrides: list[str], hydra_config: bool = False) -> DictConfig | None:
    """The config Hydra will compose from ``overrides`` (Hydra's compose API: YAML only, no
    task run, no folder made), or None when it does not compose (Hydra then says why)."""
    from hydra import compose, initialize_config_module

    try:
        with initialize_config_module("her2study.conf", version_base="1.3"):
            return compose("config", overrides=overrides, return_hydra_config=hydra_config)
    except Exception:  # noqa: BLE001 - Hydra reports its own errors when it composes for real
        return None


def _task_settings_problem(argv: list[str]) -> str | None:
    """``search.*`` / ``predict.*`` overrides on a task that has no such settings, said plainly
    (Hydra would fail inside OmegaConf with a traceback). Composes once, only when needed."""

    def key(arg: str) -> str:
        return arg.split("=", 1)[0].lstrip("+~")

    args = [
        a for a in argv if "=" in a and not a.startswith("-") and not key(a).startswith("hydra")
    ]
    sections = {key(a).split(".", 1)[0] for a in args} & {"search", "predict"}
    sections = {s for s in sections if any(key(a).startswith(s + ".") for a in args)}
    if not sections:
        return None
    others = [a for a in args if key(a).split(".", 1)[0] not in sections]
    cfg = _compose(others)
    if cfg is None:
        return None
    missing = sorted(s for s in sections if cfg.get(s) is None)
    if not missing:
        return None
    return (
        f"{', '.join(m + '.*' for m in missing)} settings do not apply to task={cfg.task.name}: "
        "search.* belongs to task=search / task=export (+exp=search), predict.* to "
        "task=predict; drop those overrides or choose that task"
    )


def _may_set_hydra(names: list[str], argv: list[str]) -> bool:
    """Whether an experiment file of ``names`` (or one it includes) may set Hydra's settings:
    a cheap text look at the files on the search path (package ``conf/exp``, ``outputs/configs``
    or the command line's ``hydra.searchpath``) that spares composing for the shipped ones. A
    file not found there, or a search path other than ``file://``, counts as may."""
    import re
    from importlib import resources
    from pathlib import Path

    given = [a.split("=", 1)[1] for a in argv if a.lstrip("+").startswith("hydra.searchpath=")]
    entries = given[-1].strip("[]").split(",") if given else ["file://outputs/configs"]
    folders = [resources.files("her2study.conf").joinpath("exp")]
    for entry in (e.strip().strip("'\"") for e in entries if e.strip()):
        if not entry.startswith("file://"):
            return True
        folders.append(Path(entry[len("file://") :]) / "exp")
    todo, seen = [n.strip().strip("'\"") for n in names], set()
    while todo:
        name = todo.pop()
        if name in seen or name == "_self_":
            continue
        seen.add(name)
        files = [f for f in (d.joinpath(f"{name}.yaml") for d in folders) if f.is_file()]
        if not files:
            return True
        for f in files:
            text = f.read_text(encoding="utf-8")
            if "hydra" in text:
                return True
            # defaults entries of the exp group: "- other", "- /exp/other", "override /exp: x"
            todo += re.findall(r"^\s*-\s*(?:/exp/)?([\w./-]+)\s*$", text, re.M)
            todo += re.findall(r"^\s*-\s*(?:override\s+)?/?exp\s*:\s*([\w./-]+)", text, re.M)
    return False


def _output_dir_problem(argv: list[str]) -> str | None:
    """The run (or sweep) folder Hydra will create, checked before Hydra creates it (Hydra's own
    failure is a traceback): under /proc or /sys, under a regular file, on a read-only file
    system. Only the literal part before any ``${...}`` is checked, through its nearest existing
    folder (nothing is created). The folder is the command line's ``hydra.run.dir`` (or
    ``hydra.sweep.dir``); with an ``exp`` override and none given, the one the experiment file
    sets, read by composing the config as Hydra will (YAML only; never for ``--help``).
    """
    import os
    import tempfile
    from pathlib import Path

    if any(a in ("--help", "-h", "--cfg", "-c", "--info", "--hydra-help") for a in argv):
        return None
    multirun = any(a in ("-m", "--multirun") for a in argv)
    key = "hydra.sweep.dir=" if multirun else "hydra.run.dir="
    given = [a.split("=", 1)[1] for a in argv if a.lstrip("+").startswith(key)]
    folder = given[-1] if given else ("multirun" if multirun else "outputs")
    source = ""
    exp = [a.split("=", 1)[1] for a in argv if a.lstrip("+~").startswith("exp=")]
    if exp and not given and _may_set_hydra(exp, argv):  # compose as Hydra will
        composed = _compose([a for a in argv if "=" in a and not a.startswith("-")], True)
        if composed is not None:
            from omegaconf import OmegaConf

            node = composed.hydra.sweep if multirun else composed.hydra.run
            folder = str(OmegaConf.to_container(node, resolve=False)["dir"])  # as written
            source = f" (set in the experiment file +exp={exp[-1]})"
    literal = folder.split("${", 1)[0].strip("'\"") or "."
    path = Path(literal).expanduser().absolute()
    if literal.endswith("/") or "${" in folder:
        path = path if literal.endswith("/") else path.parent
    option = key.rstrip("=")
    fix = (
        f"choose a writable folder with {option}=... (or run from a writable folder); inputs "
        "were not modified"
    )
    if path.parts[1:2] in (("proc",), ("sys",)):
        return (
            f"cannot write the output folder {folder}{source}: {path.parts[1]} is not for "
            f"files; {fix}"
        )
    existing = next(p for p in [path, *path.parents] if p.exists())
    if not existing.is_dir():
        return (
            f"cannot write the output folder {folder}{source}: {existing} is a file, not a "
            f"folder; {fix}"
        )
    try:  # a probe file in the nearest existing folder, removed at once: no trace left
        fd, probe = tempfile.mkstemp(dir=existing, prefix=".her2study_probe_")
        os.close(fd)
        os.unlink(probe)
    except OSError as err:
        return (
            f"cannot write the output folder {folder}{source} ({existing}: {err.strerror}); {fix}"
        )
    return None


def main() -> None:
    """Hydra exits 1 on a config it cannot compose; a bad config is a user error: exit 2. An
    output folder that cannot be written: exit 3."""
    warnings.filterwarnings("ignore", message="provider=hydra.searchpath in main")
    problem = _salt_on_command_line(sys.argv[1:]) or _task_settings_problem(sys.argv[1:])
    if problem:
        print(f"error: {problem}", file=sys.stderr)
        sys.exit(2)
    problem = _output_dir_problem(sys.argv[1:])
    if problem:
        print(f"error: {problem}", file=sys.stderr)
        sys.exit(3)
    try:
        _app()
    except SystemExit as stop:
        if stop.code == 1 and not _STARTED:
            sys.exit(2)
        raise


if __name__ == "__main__":
    main()
