"""How cost grows with cohort size: synthetic cohorts of 100, 400 and 2,000 cases.

Run: ``python experiments/benchmarks/scale.py [--quick] [--sizes 100 400 2000]``
(the 2,000-case run takes a while: ``nohup python experiments/benchmarks/scale.py > scale.log &``)

Per size N, in a temporary folder of its own, each step a fresh subprocess of the real CLI
(``execution.n_jobs=2``, ``tracking=off``, ``hydra.run.dir`` per step):

1. ``python -m her2study task=synth data.synthetic.n_cases=N``: writes the synthetic cohort;
2. ``python -m her2study task=extract data.synthetic.n_cases=N extractor=<settings>``: features
   of intra + 1 mm + 2 mm from an empty cache (cold), ``features.parquet`` written;
   once with ``extractor=fast`` (every size) and once with ``extractor=paper`` for the sizes
   whose estimated paper-settings extraction stays under ``--paper-max-minutes`` (15): the
   estimate is the per-case time of the largest paper run so far times N;
   For a size whose paper-settings extraction is skipped, a memory probe runs instead:
   ``seed_paper_cache`` fills the feature cache with copies of one really extracted
   paper-settings entry under every (case, region) key (her2study's own
   ``features.extraction._entry_key``; checked by a cached ``extract_case`` call), then the
   same ``task=extract extractor=paper`` runs warm: every worker, pickling and table-assembly
   step of the real run with the paper's 3,933 columns, without the extraction cost. This
   measures the memory that grows with N (the parent's result dicts and the table);
3. if the checkout has the search task (``conf/task/search.yaml``): a short search
   on the cached fast features (``search.n_trials=5 search.outer_folds=2 search.inner_folds=3``);
   otherwise it is reported as pending.

Measured per subprocess: wall time, peak RSS summed over the process tree (sampled every
0.25 s) and of the largest single process (wait4 / getrusage of the reaped children), and the
extraction phase from the run's log (``cohort:`` -> ``features:`` lines). Reported: time per
case and its ratio to the smallest size (1.0 = linear), memory and its ratio.
"""

from __future__ import annotations

import argparse
import datetime as dt
import re
import shutil
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _bench  # noqa: E402

LOG_LINE = re.compile(r"^\[(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3})\]\[([^\]]+)\]\[(\w+)\] - (.*)")
MEMORY_LIMIT_MIB = 2048


def log_records(path: Path) -> list[tuple[float, str]]:
    out = []
    if path.is_file():
        for line in path.read_text(errors="replace").splitlines():
            m = LOG_LINE.match(line)
            if m:
                t = dt.datetime.strptime(m.group(1), "%Y-%m-%d %H:%M:%S,%f").timestamp()
                out.append((t, m.group(4)))
    return out


def search_available() -> tuple[bool, str]:
    """Whether this checkout has the search task (``conf/task/search.yaml`` names its target)."""
    import importlib.util

    import her2study

    conf = Path(her2study.__file__).resolve().parents[1] / "conf" / "task" / "search.yaml"
    if conf.is_file() and importlib.util.find_spec("her2study.tasks.search") is not None:
        return True, "her2study.tasks.search"
    return False, "no conf/task/search.yaml / her2study.tasks.search in this checkout"


def seed_paper_cache(cwd: Path, n: int) -> dict:
    """Fill ``cwd/.her2study_cache/features`` with paper-settings entries for every case.

    The config is composed as the CLI composes it (``task=extract extractor=paper
    data.synthetic.n_cases=N``), and cohort, params and regions come from it through the
    package's own helpers, so the keys are the ones the CLI run looks up.
    """
    import os
    import time

    from hydra import compose, initialize_config_dir

    from her2study.cohort.source import load_from_config
    from her2study.config import register_configs
    from her2study.digest import canonical_digest, file_digest
    from her2study.features.cache import FeatureCache
    from her2study.features.extraction import _entry_key, extract_case
    from her2study.tasks.common import extractor_params, specs_from_config

    t0 = time.perf_counter()
    register_configs()
    old = os.getcwd()
    os.chdir(cwd)
    try:
        with initialize_config_dir(config_dir=str(_bench.REPO / "conf"), version_base="1.3"):
            cfg = compose(
                config_name="config",
                overrides=["task=extract", "extractor=paper", f"data.synthetic.n_cases={n}"],
            )
        cohort, _ = load_from_config(cfg.data)
        params, specs = extractor_params(cfg), specs_from_config(cfg)
        cache_root = str(Path(cfg.cache_dir).resolve())
        fov, label = cfg.region.fov, cfg.data.mask_label
        first = extract_case(cohort.cases[0], specs, params, cache_root, fov, label)  # real
        cache = FeatureCache(cache_root)
        params_key = canonical_digest(params)
        for case in cohort.cases[1:]:
            digest = {
                "image": file_digest(case.image),
                "mask": file_digest(case.mask),
                "spacing": list(case.spacing_mm) if case.spacing_mm else None,
                "mask_label": label,
            }
            for spec in specs:
                cache.put(
                    _entry_key(digest, spec, fov, params_key),
                    {"features": first.features[spec.name], "stats": first.stats[spec.name]},
                )
        check = extract_case(cohort.cases[-1], specs, params, cache_root, fov, label)
        if check.n_cached != len(specs) or check.n_extracted:
            raise RuntimeError("seeded keys do not match her2study's cache keys")
    finally:
        os.chdir(old)
    return {"seed_s": time.perf_counter() - t0, "entries": len(cache)}


def run_step(label: str, overrides: list[str], cwd: Path, echo: bool) -> dict:
    run_dir = f"runs/{label}"
    cmd = [
        sys.executable,
        "-m",
        "her2study",
        *overrides,
        "tracking=off",
        "execution.progress=false",
        f"hydra.run.dir={run_dir}",
    ]
    print(f"  {label}: {' '.join(cmd[3:])}", flush=True)
    m = _bench.run_measured(cmd, cwd=cwd, echo=echo)
    row = {
        "step": label,
        "rc": m.returncode,
        "wall_s": m.wall_s,
        "cpu_s": m.user_s + m.sys_s,
        "peak_tree_rss_mib": m.tree_peak_mib,
        "max_single_rss_mib": m.maxrss_mib,
        "procs_at_peak": m.tree_peak_procs,
    }
    rec = log_records(cwd / run_dir / "__main__.log")
    cohort = next((t for t, msg in rec if msg.startswith("cohort: ")), None)
    feats = next(((t, msg) for t, msg in rec if msg.startswith("features: ")), None)
    if cohort is not None and feats is not None:
        row["extraction_s"] = feats[0] - cohort
        row["after_extraction_s"] = m.end - feats[0]
        hit = re.search(r"features: (\d+) cases x (\d+) columns", feats[1])
        if hit:
            row["columns"] = int(hit[2])
        hit = re.search(r"(\d+) region entries from cache, (\d+) extracted", feats[1])
        if hit:
            row["cached"], row["extracted"] = int(hit[1]), int(hit[2])
    if cohort is not None:
        row["startup_cohort_s"] = cohort - m.start
    if m.returncode != 0:
        row["error"] = m.tail(6).replace("\n", " / ")[-400:]
        print(f"    FAILED rc={m.returncode}:\n{m.tail(20)}", flush=True)
    print(
        "    " + ", ".join(f"{k}={_bench.fmt(v, 1)}" for k, v in row.items() if k != "step"),
        flush=True,
    )
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="sizes 10, 20, 40")
    ap.add_argument("--sizes", type=int, nargs="*", default=None)
    ap.add_argument("--paper-max-minutes", type=float, default=15.0)
    ap.add_argument("--no-paper", action="store_true", help="fast settings only")
    ap.add_argument(
        "--paper-rate",
        type=float,
        default=None,
        help="seconds per case of paper-settings extraction to assume before any "
        "paper run (e.g. to go straight to the memory probe)",
    )
    ap.add_argument("--no-fast", action="store_true", help="skip the fast-settings series")
    ap.add_argument("--tag", default="", help="suffix of the result file name")
    ap.add_argument("--keep", action="store_true")
    ap.add_argument("--echo", action="store_true")
    args = ap.parse_args()
    sizes = sorted(args.sizes or ([10, 20, 40] if args.quick else [100, 400, 2000]))
    info = _bench.machine()
    has_search, search_note = search_available()
    print(f"sizes {sizes}; search: {search_note}", flush=True)

    work = Path(tempfile.mkdtemp(prefix="her2bench_scale_"))
    rows: list[dict] = []
    paper_rate = args.paper_rate  # s/case of the largest paper-settings extraction so far
    skipped = []
    try:
        for n in sizes:
            cwd = work / f"n{n}"
            cwd.mkdir()
            data = f"data.synthetic.n_cases={n}"
            r = run_step(f"synth_n{n}", ["task=synth", data], cwd, args.echo)
            rows.append({"n": n, "series": "cohort generation", **r, "gen_s": r.get("wall_s")})
            if not args.no_fast:
                r = run_step(
                    f"extract_fast_n{n}", ["task=extract", data, "extractor=fast"], cwd, args.echo
                )
                rows.append({"n": n, "series": "extract fast", **r})
            if not args.no_paper:
                estimate = paper_rate * n / 60 if paper_rate else None
                if estimate is not None and estimate > args.paper_max_minutes:
                    skipped.append((n, estimate))
                    print(
                        f"  paper settings for n={n}: estimated {estimate:.0f} min > "
                        f"{args.paper_max_minutes:g} min, skipped; memory probe instead",
                        flush=True,
                    )
                    seeded = seed_paper_cache(cwd, n)
                    print(
                        f"    seeded {seeded['entries']} cache entries in {seeded['seed_s']:.0f} s",
                        flush=True,
                    )
                    r = run_step(
                        f"extract_paper_seeded_n{n}",
                        ["task=extract", data, "extractor=paper"],
                        cwd,
                        args.echo,
                    )
                    rows.append({"n": n, "series": "paper, seeded cache (memory probe)", **r})
                else:
                    r = run_step(
                        f"extract_paper_n{n}",
                        ["task=extract", data, "extractor=paper"],
                        cwd,
                        args.echo,
                    )
                    rows.append({"n": n, "series": "extract paper", **r})
                    if r.get("extraction_s"):
                        paper_rate = r["extraction_s"] / n
            if has_search:
                r = run_step(
                    f"search_n{n}",
                    [
                        "+exp=search",
                        data,
                        "extractor=fast",
                        # the rings extracted above (cached): tumour only, 1 mm, 2 mm
                        "region.ring_widths_mm=[1.0,2.0]",
                        "search.space.ring_width_mm.choices=[0,1,2]",
                        "search.n_trials=5",
                        "search.outer_folds=2",
                        "search.inner_folds=3",
                    ],
                    cwd,
                    args.echo,
                )
                rows.append({"n": n, "series": "search (fast features)", **r})
        info["load average at end (1/5/15 min)"] = _bench.loadavg()
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)

    # per-case time and ratios to the smallest size of each series
    summary = []
    for series in dict.fromkeys(r["series"] for r in rows):
        srows = [r for r in rows if r["series"] == series and r["rc"] == 0]
        if not srows:
            continue
        base = srows[0]
        key = "extraction_s" if series.startswith(("extract", "paper")) else "wall_s"
        for r in srows:
            per_case = r.get(key, float("nan")) / r["n"]
            base_per_case = base.get(key, float("nan")) / base["n"]
            summary.append(
                {
                    "series": series,
                    "cases": r["n"],
                    "timed part": "extraction (log)" if key == "extraction_s" else "whole process",
                    "seconds": r.get(key),
                    "ms per case": 1000 * per_case,
                    f"per-case ratio to n={base['n']}": per_case / base_per_case,
                    "process wall s": r["wall_s"],
                    "peak tree RSS MiB": r["peak_tree_rss_mib"],
                    f"RSS ratio to n={base['n']}": r["peak_tree_rss_mib"]
                    / base["peak_tree_rss_mib"],
                    "largest process MiB": r["max_single_rss_mib"],
                    "columns": r.get("columns"),
                }
            )
    worst_mem = max(r["peak_tree_rss_mib"] for r in rows)
    mem_verdict = (
        f"largest peak (summed over the process tree) {worst_mem:.0f} MiB: "
        f"**{'under' if worst_mem < MEMORY_LIMIT_MIB else 'OVER'}** the 2 GB limit"
    )
    notes = []
    if skipped:
        notes += [
            f"- paper settings skipped for n={n}: estimated {e:.0f} min of extraction "
            f"(> {args.paper_max_minutes:g} min); that size is measured with "
            "`extractor=fast` only."
            for n, e in skipped
        ]
    if any(r["series"].startswith("paper, seeded") for r in rows):
        notes.append(
            "- `paper, seeded cache (memory probe)`: the cache holds copies of one real "
            "paper-settings entry under every key, so the run is warm: its time is NOT "
            "extraction time; its memory is that of the real run's workers, transfers "
            "and table assembly at this size."
        )
    notes.append(f"- search: {'run' if has_search else 'pending'} ({search_note}).")
    title = "quick smoke run" if args.quick else "full run"
    step_cols = [
        "n",
        "series",
        "rc",
        "wall_s",
        "startup_cohort_s",
        "extraction_s",
        "after_extraction_s",
        "cpu_s",
        "peak_tree_rss_mib",
        "max_single_rss_mib",
        "procs_at_peak",
        "columns",
        "cached",
        "extracted",
        "error",
    ]
    md = f"""## Scale: 100 / 400 / 2,000 cases ({title})

Sizes {", ".join(map(str, sizes))}; each step a fresh `python -m her2study` subprocess with
`execution.n_jobs=2 tracking=off`; regions intra + 1 mm + 2 mm; extraction from an empty
feature cache. Settings: `extractor=fast` (original image; shape2D, firstorder, GLCM, GLSZM:
67 features per region) at every size, `extractor=paper` (1,311 per region) where the
estimate allowed.

Machine:
{_bench.machine_md(info)}

{chr(10).join(notes)}

Memory: {mem_verdict}.

### Per case, and ratio to the smallest size (1.00 = linear)

{_bench.md_table(summary)}

### Every step

{_bench.md_table(rows, step_cols)}

`extraction_s`: from the run's log, `cohort:` -> `features:` line; `startup_cohort_s`: process
start -> `cohort:` (imports, Hydra, checking/loading the manifest); `after_extraction_s`:
`features:` -> exit (join, `features.parquet`, interpreter exit). Peak RSS summed over the
process tree is sampled every 0.25 s (pages shared between processes count in each);
`max_single_rss_mib` is the largest single process (wait4).
"""
    _bench.write_result("scale" + args.tag, args.quick, md, rows)


if __name__ == "__main__":
    main()
