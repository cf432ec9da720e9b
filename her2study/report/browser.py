"""Render a report in headless Chromium: a screenshot, the DOM, and the console errors.

Used by the tests and ``experiments/report/render_report.py`` to check that a report displays
in a real browser without errors. Chromium is optional: :func:`find_chromium` returns ``None``
when it is not installed (Debian: ``apt-get install chromium``).
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

__all__ = ["BrowserRun", "CANDIDATES", "dump_dom", "find_chromium", "screenshot"]

CANDIDATES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")

# headless, offline, no first-run work, no sandbox (containers run as root)
FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--disable-dev-shm-usage",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--hide-scrollbars",
]
# Chromium logs every page console message (console.error included) as "<LEVEL>:CONSOLE..."
# and script errors as "Uncaught ..."; a report has no scripts, so any such line is a fault.
CONSOLE_MARKERS = ("Uncaught", ":CONSOLE")


@dataclass
class BrowserRun:
    returncode: int
    stdout: str
    stderr: str

    @property
    def console_errors(self) -> list[str]:
        """Lines of Chromium's log with a page console message or an uncaught script error."""
        return [ln for ln in self.stderr.splitlines() if any(m in ln for m in CONSOLE_MARKERS)]


def find_chromium() -> str | None:
    """The path of a Chromium / Chrome executable on PATH, or None."""
    for name in CANDIDATES:
        path = shutil.which(name)
        if path:
            return path
    return None


def _run(args: list[str], timeout: float) -> BrowserRun:
    exe = find_chromium()
    if exe is None:
        raise FileNotFoundError(
            "no Chromium on PATH (tried " + ", ".join(CANDIDATES) + "); on Debian: "
            "apt-get install chromium"
        )
    with tempfile.TemporaryDirectory(prefix="her2study-chromium-") as profile:
        cmd = [exe, *FLAGS, f"--user-data-dir={profile}", *args]
        res = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    return BrowserRun(res.returncode, res.stdout, res.stderr)


def _url(page: str | Path) -> str:
    """An ``http(s)://`` address as it is; a file path as a ``file://`` URI."""
    if isinstance(page, str) and page.startswith(("http://", "https://")):
        return page
    return Path(page).resolve().as_uri()


def _wait(wait_ms: int | None) -> list[str]:
    # a page that builds itself with scripts (a web app) gets this much virtual time first
    return [f"--virtual-time-budget={int(wait_ms)}"] if wait_ms else []


def screenshot(
    report: str | Path,
    png: str | Path,
    window: tuple[int, int] = (1280, 2400),
    timeout: float = 90,
    wait_ms: int | None = None,
) -> BrowserRun:
    """Render ``report`` (a file, or an ``http://`` page) and save a ``window``-sized
    screenshot of its top to ``png``; ``wait_ms`` lets a scripted page run first.

    Chromium's log goes to stderr (``--enable-logging=stderr --v=0``) so that page errors can
    be checked with :attr:`BrowserRun.console_errors`.
    """
    return _run(
        [
            "--enable-logging=stderr",
            "--v=0",
            *_wait(wait_ms),
            f"--screenshot={Path(png).resolve()}",
            f"--window-size={window[0]},{window[1]}",
            _url(report),
        ],
        timeout,
    )


def dump_dom(
    report: str | Path,
    timeout: float = 90,
    wait_ms: int | None = None,
    window: tuple[int, int] | None = None,
) -> BrowserRun:
    """The DOM after loading ``report`` (a file or an ``http://`` page; in ``stdout``), with the
    log in ``stderr``; ``wait_ms`` lets a scripted page run first."""
    size = [f"--window-size={window[0]},{window[1]}"] if window else []
    args = ["--enable-logging=stderr", "--v=0", *_wait(wait_ms), *size, "--dump-dom"]
    return _run([*args, _url(report)], timeout)
