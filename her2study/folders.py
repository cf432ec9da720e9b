"""Folders written whole: a temporary sibling moved into place, and the siblings a killed run
left behind. Used by the synthetic cohort writer; ``pid_alive`` also by the run lifecycle."""

from __future__ import annotations

import logging
import os
import shutil
import uuid
from pathlib import Path

log = logging.getLogger(__name__)


def pid_alive(pid: int) -> bool:
    """Is process ``pid`` running on this host (another user's counts as running)?"""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def remove_stale_siblings(target: Path, markers: tuple[str, ...]) -> None:
    """Remove the temporary siblings ``.<name><marker><pid>-...`` of ``target`` whose process is
    gone (left by killed runs)."""
    for marker in markers:
        prefix = f".{target.name}{marker}"
        for p in target.parent.glob(f"{prefix}*"):
            try:
                pid = int(p.name[len(prefix) :].split("-")[0])
            except ValueError:
                continue
            if pid != os.getpid() and not pid_alive(pid):
                log.info("removing stale temporary folder %s", p)
                shutil.rmtree(p, ignore_errors=True)


def replace_dir(tmp: Path, target: Path, old_marker: str) -> None:
    """Move the finished folder ``tmp`` to ``target``; a folder already there is moved aside
    (``.<name><old_marker><pid>-...``) first and removed after the swap."""
    old = None
    if target.exists():
        old = target.parent / f".{target.name}{old_marker}{os.getpid()}-{uuid.uuid4().hex[:8]}"
        os.replace(target, old)
    os.replace(tmp, target)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
