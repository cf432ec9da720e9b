"""Start-up: ``python -m her2study --help`` now vs Hydra's per-group ConfigStore deep copies.

Run: ``python experiments/benchmarks/startup.py [--reps 5]``

Side by side, alternated, each a fresh interpreter:

* **now**: ``python -m her2study --help``;
* **baseline**: the same entry point with ``ConfigStore.__deepcopy__`` removed again (what Hydra
  1.3 does by itself: it deep-copies the config repository, ConfigStore and all, once per config
  group it lists).

Also records which heavy libraries the entry path imports (``-X importtime``): none of
sklearn, mlflow, radiomics, matplotlib, SimpleITK or pandas should appear for ``--help``.
Writes ``results/startup.md`` / ``.csv``.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _bench  # noqa: E402

HEAVY = ("sklearn", "mlflow", "radiomics", "matplotlib", "SimpleITK", "pandas", "optuna")
BASELINE = (
    "import sys; from hydra.core.config_store import ConfigStore; import her2study.__main__ as m; "
    "del ConfigStore.__deepcopy__; sys.argv = ['her2study', '--help']; m.main()"
)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--reps", type=int, default=5)
    args = ap.parse_args()
    info = _bench.machine()
    cmds = {
        "now": [sys.executable, "-m", "her2study", "--help"],
        "baseline (Hydra's deep copies)": [sys.executable, "-c", BASELINE],
    }
    rows = []
    for rep in range(args.reps):
        order = list(cmds) if rep % 2 == 0 else list(cmds)[::-1]
        for name in order:
            m = _bench.run_measured(cmds[name], cwd=_bench.REPO)
            assert m.returncode == 0, m.tail()
            rows.append({"rep": rep, "run": name, "wall_s": m.wall_s, "cpu_s": m.user_s + m.sys_s})
    imp = subprocess.run(
        [sys.executable, "-X", "importtime", "-m", "her2study", "--help"],
        capture_output=True,
        text=True,
        cwd=_bench.REPO,
    ).stderr
    modules = {ln.split("|")[-1].strip() for ln in imp.splitlines() if "|" in ln}
    heavy = sorted(h for h in HEAVY if h in modules)
    info["load average at end (1/5/15 min)"] = _bench.loadavg()
    summary = []
    for name in cmds:
        walls = [r["wall_s"] for r in rows if r["run"] == name]
        cpus = [r["cpu_s"] for r in rows if r["run"] == name]
        summary.append(
            {
                "run": name,
                "median wall s": statistics.median(walls),
                "min wall s": min(walls),
                "median CPU s": statistics.median(cpus),
            }
        )
    ratio = summary[0]["median CPU s"] / summary[1]["median CPU s"]
    md = f"""## Start-up: `python -m her2study --help`

Machine:
{_bench.machine_md(info)}

{args.reps} alternated repetitions, each a fresh interpreter.

{_bench.md_table(summary)}

CPU ratio now / baseline (medians): **{ratio:.2f}**. Heavy libraries imported by `--help`:
{", ".join(heavy) or "none"} (checked: {", ".join(HEAVY)}).

{_bench.md_table(rows)}
"""
    _bench.write_result("startup", False, md, rows)


if __name__ == "__main__":
    main()
