"""Where the running code comes from: the git commit of the checkout her2study runs from."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]  # the checkout holding the her2study package


def git_head(short: bool = False) -> tuple[str, bool] | None:
    """(HEAD commit, whether tracked files differ from it) of the package's checkout; None when
    it does not run from a git checkout or git cannot tell. ``short``: git's abbreviated hash.

    Read-only: ``rev-parse`` and ``diff --quiet`` with optional locks off (no index refresh).
    """
    if not (ROOT / ".git").exists():
        return None
    env = {**os.environ, "GIT_OPTIONAL_LOCKS": "0"}
    try:
        head = subprocess.run(
            ["git", "-C", str(ROOT), "rev-parse", *(["--short"] if short else []), "HEAD"],
            capture_output=True,
            text=True,
            timeout=5,
            env=env,
            check=True,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", str(ROOT), "diff", "--quiet", "HEAD", "--"],
            capture_output=True,
            timeout=5,
            env=env,
        ).returncode
    except (OSError, subprocess.SubprocessError):
        return None
    return head, bool(dirty)
