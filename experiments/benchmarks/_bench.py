"""Helpers shared by the extraction, paper-run and scale benchmarks (not part of the package).

* ``machine()``: what a table was measured on (nproc, CPU, Python, pyradiomics, load average).
* ``run_measured(cmd)``: a subprocess with wall time, the wait4() peak RSS (largest single
  process of the tree that was reaped) and a sampled peak of the summed RSS of the whole process
  tree (main process + joblib/loky or multiprocessing workers), every output line time-stamped.
* ``md_table`` / ``write_result``: Markdown + CSV next to the scripts, under ``results/``.
"""

from __future__ import annotations

import csv
import datetime as dt
import os
import platform
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
RESULTS = HERE / "results"
PYTHON = sys.executable


# ---------------------------------------------------------------------------------------------
# machine


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def loadavg() -> str:
    try:
        return " ".join(Path("/proc/loadavg").read_text().split()[:3])
    except OSError:
        return "n/a"


def _git_commit() -> str:
    try:  # read-only
        out = subprocess.run(
            ["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            timeout=10,
        )
        return out.stdout.strip() or "n/a"
    except (OSError, subprocess.SubprocessError):
        return "n/a"


def machine() -> dict:
    try:
        import radiomics

        rad = str(radiomics.__version__)
    except Exception:  # pragma: no cover - reported, not fatal
        rad = "not importable"
    mem = "n/a"
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal"):
                mem = f"{int(line.split()[1]) / 2**20:.1f} GiB"
    except OSError:
        pass
    return {
        "date": dt.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z"),
        "nproc": os.cpu_count(),
        "cpu": _cpu_model(),
        "memory": mem,
        "python": platform.python_version(),
        "pyradiomics": rad,
        "her2study commit": _git_commit() + " (working tree, may hold uncommitted edits)",
        "load average at start (1/5/15 min)": loadavg(),
    }


def machine_md(info: dict) -> str:
    return "\n".join(f"- {k}: {v}" for k, v in info.items())


# ---------------------------------------------------------------------------------------------
# process tree memory


def _children_map() -> dict[int, list[int]]:
    kids: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as fh:
                stat = fh.read().decode(errors="replace")
            ppid = int(stat.rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        kids.setdefault(ppid, []).append(int(entry))
    return kids


def _rss_kib(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/status") as fh:
            for line in fh:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def tree_rss_kib(root: int) -> tuple[int, int]:
    """(summed RSS of root and all its descendants, number of processes), KiB."""
    kids = _children_map()
    todo, seen, total = [root], set(), 0
    while todo:
        pid = todo.pop()
        if pid in seen:
            continue
        seen.add(pid)
        total += _rss_kib(pid)
        todo.extend(kids.get(pid, []))
    return total, len(seen)


class TreeSampler(threading.Thread):
    """Sample the summed RSS of a process tree until stopped; keeps the peak."""

    def __init__(self, pid: int, interval: float = 0.25):
        super().__init__(daemon=True)
        self.pid, self.interval = pid, interval
        self.peak_kib, self.peak_procs = 0, 0
        self._stop_evt = threading.Event()

    def run(self) -> None:
        while not self._stop_evt.is_set():
            kib, n = tree_rss_kib(self.pid)
            if kib > self.peak_kib:
                self.peak_kib, self.peak_procs = kib, n
            self._stop_evt.wait(self.interval)

    def stop(self) -> None:
        self._stop_evt.set()
        self.join()


# ---------------------------------------------------------------------------------------------
# measured subprocess


@dataclass
class Measured:
    cmd: list[str]
    returncode: int
    start: float  # time.time() at launch
    end: float  # time.time() when reaped
    wall_s: float  # perf_counter difference
    maxrss_mib: float  # wait4 ru_maxrss: largest single process of the tree (reaped ones)
    tree_peak_mib: float  # sampled peak of the summed RSS of the process tree
    tree_peak_procs: int
    user_s: float
    sys_s: float
    lines: list[tuple[float, str, str]] = field(default_factory=list)  # (time, stream, text)

    def stdout(self) -> str:
        return "\n".join(t for _, s, t in self.lines if s == "out")

    def stderr(self) -> str:
        return "\n".join(t for _, s, t in self.lines if s == "err")

    def tail(self, n: int = 15) -> str:
        return "\n".join(f"[{s}] {t}" for _, s, t in self.lines[-n:])


def _reader(stream, name: str, sink: list, echo: bool) -> None:
    for raw in iter(stream.readline, b""):
        text = raw.decode(errors="replace").rstrip("\r\n")
        sink.append((time.time(), name, text))
        if echo:
            print(f"    | {text[-160:]}", flush=True)
    stream.close()


def run_measured(
    cmd: list[str],
    cwd: str | Path | None = None,
    env: dict | None = None,
    echo: bool = False,
    interval: float = 0.25,
) -> Measured:
    """Run ``cmd``; wall time, peak RSS (wait4 and sampled tree sum), time-stamped output."""
    full_env = dict(os.environ)
    full_env["PYTHONUNBUFFERED"] = "1"
    if env:
        full_env.update(env)
    lines: list[tuple[float, str, str]] = []
    start = time.time()
    t0 = time.perf_counter()
    proc = subprocess.Popen(
        cmd, cwd=cwd, env=full_env, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    sampler = TreeSampler(proc.pid, interval)
    sampler.start()
    readers = [
        threading.Thread(target=_reader, args=(proc.stdout, "out", lines, echo), daemon=True),
        threading.Thread(target=_reader, args=(proc.stderr, "err", lines, echo), daemon=True),
    ]
    for r in readers:
        r.start()
    _, status, usage = os.wait4(proc.pid, 0)  # rusage of the child and its reaped descendants
    wall = time.perf_counter() - t0
    end = time.time()
    proc.returncode = os.waitstatus_to_exitcode(status)
    sampler.stop()
    for r in readers:
        r.join(timeout=30)
    lines.sort(key=lambda x: x[0])
    return Measured(
        cmd=[str(c) for c in cmd],
        returncode=proc.returncode,
        start=start,
        end=end,
        wall_s=wall,
        maxrss_mib=usage.ru_maxrss / 1024,
        tree_peak_mib=sampler.peak_kib / 1024,
        tree_peak_procs=sampler.peak_procs,
        user_s=usage.ru_utime,
        sys_s=usage.ru_stime,
        lines=lines,
    )


# ---------------------------------------------------------------------------------------------
# output


def fmt(x, nd: int = 2) -> str:
    if x is None:
        return "-"
    if isinstance(x, float):
        if x != x:
            return "-"
        return f"{x:.{nd}f}"
    return str(x)


def md_table(rows: list[dict], columns: list[str] | None = None) -> str:
    if not rows:
        return "(no rows)"
    if columns is None:
        columns = []
        for r in rows:
            columns += [k for k in r if k not in columns]
    out = ["| " + " | ".join(columns) + " |", "|" + "|".join("---" for _ in columns) + "|"]
    for r in rows:
        out.append("| " + " | ".join(fmt(r.get(c)) for c in columns) + " |")
    return "\n".join(out)


def write_csv(path: Path, rows: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    cols: list[str] = []
    for r in rows:
        cols += [k for k in r if k not in cols]
    with open(path, "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=cols)
        w.writeheader()
        w.writerows(rows)


def write_result(name: str, quick: bool, markdown: str, rows: list[dict]) -> Path:
    """results/<name>[_quick].md and .csv; prints the Markdown."""
    stem = f"{name}_quick" if quick else name
    RESULTS.mkdir(parents=True, exist_ok=True)
    md = RESULTS / f"{stem}.md"
    md.write_text(markdown.rstrip() + "\n")
    write_csv(RESULTS / f"{stem}.csv", rows)
    print(markdown)
    print(f"\nwritten: {md} and {md.with_suffix('.csv')}")
    return md
