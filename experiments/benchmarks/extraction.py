"""Extraction throughput: her2study vs pyradiomics' own batch command, same cases and settings.

Run: ``python experiments/benchmarks/extraction.py [--quick] [--n 60] [--reps 2] [--jobs 2]``

1. Writes a synthetic cohort of N cases to a temporary folder.
2. Builds the 1 mm and 2 mm ring masks as NIfTI files with her2study's own ``RegionMaker`` /
   ``region_image`` (same distance map and field-of-view clipping as her2study uses), timed
   separately: pyradiomics' batch needs them on disk, her2study builds them in memory per case.
   The tumour row of the batch CSV uses the cohort's own mask file.
3. Per repetition, side by side, in alternating order (rep 0: P, C, W; rep 1: C, W, P; ...):
   P  ``pyradiomics batch.csv -p params.yaml -o out.csv -f csv --jobs J`` (3 rows per case)
   C  her2study ``extract_features(..., n_jobs=J)`` in a fresh process, empty cache (cold)
   W  the same again, cache filled by C (warm)
   every one a separate process (interpreter start-up and imports included in all three).
4. Checks that both computed the same features (rep 0 outputs) and writes
   ``results/extraction[_quick].md`` / ``.csv``.

Settings: the ``params`` block of ``conf/extractor/paper.yaml`` (``--extractor fast`` for the
small set), passed unchanged to both.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _bench  # noqa: E402
import yaml  # noqa: E402

REGIONS = (None, 1.0, 2.0)  # intra + 1 mm + 2 mm rings


def extractor_params(name: str) -> dict:
    conf = yaml.safe_load((_bench.REPO / "conf" / "extractor" / f"{name}.yaml").read_text())
    return conf["params"]


# ---------------------------------------------------------------------------------------------
# worker: one her2study extraction in its own process


def worker(manifest: str, cache: str, params_file: str, n_jobs: int) -> None:
    t0 = time.perf_counter()
    from her2study.cohort.manifest import load_cohort
    from her2study.features import extract_features
    from her2study.regions import region_specs

    t_import = time.perf_counter() - t0
    params = yaml.safe_load(Path(params_file).read_text())
    cohort = load_cohort(manifest, synthetic=True)
    specs = region_specs(True, [w for w in REGIONS if w is not None])
    t1 = time.perf_counter()
    fs = extract_features(cohort, specs, params, cache, n_jobs=n_jobs)
    t_extract = time.perf_counter() - t1
    print(
        "RESULT "
        + json.dumps(
            {
                "import_s": t_import,
                "extract_s": t_extract,
                "n_cached": fs.n_cached,
                "n_extracted": fs.n_extracted,
                "shape": list(fs.table.shape),
            }
        )
    )


def engine(manifest: str, params_file: str) -> None:
    """The engine limit: raw ``RadiomicsFeatureExtractor.execute`` per (case, region), one
    process, images and masks already in memory; sums the execute wall and CPU times."""
    import warnings

    from her2study.cohort.io import read_image, read_mask
    from her2study.cohort.manifest import load_cohort
    from her2study.features.extraction import build_extractor
    from her2study.regions import RegionMaker, field_of_view, region_image, region_specs

    params = yaml.safe_load(Path(params_file).read_text())
    extractor = build_extractor(params)
    specs = region_specs(True, [w for w in REGIONS if w is not None])
    outer = max(s.outer_mm for s in specs if not s.is_intra)
    wall = cpu = 0.0
    count = 0
    for case in load_cohort(manifest, synthetic=True).cases:
        image, _ = read_image(case.image, case.spacing_mm)
        mask = read_mask(case.mask, image, None, plain_spacing=case.spacing_mm is not None)
        maker = RegionMaker(mask, field_of_view(image, "nonzero"), outer)
        for spec in specs:
            region = region_image(maker.make(spec)[0], image)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                t0, c0 = time.perf_counter(), time.process_time()
                extractor.execute(image, region, label=1)
                wall += time.perf_counter() - t0
                cpu += time.process_time() - c0
            count += 1
    print("RESULT " + json.dumps({"execute_s": wall, "execute_cpu_s": cpu, "n": count}))


def _result(m: _bench.Measured) -> dict:
    for _, stream, text in m.lines:
        if stream == "out" and text.startswith("RESULT "):
            return json.loads(text[len("RESULT ") :])
    raise RuntimeError(f"worker failed (rc={m.returncode}):\n{m.tail(30)}")


# ---------------------------------------------------------------------------------------------
# setup


def build_masks(manifest: Path, work: Path) -> tuple[Path, float, int]:
    """Ring masks as NIfTI + the pyradiomics batch CSV; returns (csv, seconds, n_rows)."""
    import SimpleITK as sitk

    from her2study.cohort.io import read_image, read_mask
    from her2study.cohort.manifest import load_cohort
    from her2study.regions import RegionMaker, field_of_view, region_image, region_specs

    cohort = load_cohort(manifest, synthetic=True)
    specs = region_specs(True, [w for w in REGIONS if w is not None])
    outer = max(s.outer_mm for s in specs if not s.is_intra)
    mask_dir = work / "ring_masks"
    mask_dir.mkdir()
    float_dir = work / "float32_images"  # pyradiomics' CLI keeps uint8 files as uint8 (and
    float_dir.mkdir()  # wraps its bin edges): it gets the float32 image her2study extracts from
    rows = []
    t0 = time.perf_counter()
    for case in cohort.cases:
        image, _ = read_image(case.image, case.spacing_mm)
        image_path = float_dir / f"{case.case_id}.nii.gz"
        sitk.WriteImage(image, str(image_path), useCompression=True)
        mask = read_mask(case.mask, image, None, plain_spacing=case.spacing_mm is not None)
        maker = RegionMaker(mask, field_of_view(image, "nonzero"), outer)
        for spec in specs:
            if spec.is_intra:
                path = case.mask  # the tumour: the cohort's own mask file
            else:
                region, _ = maker.make(spec)
                path = mask_dir / f"{case.case_id}_{spec.name}.nii.gz"
                sitk.WriteImage(region_image(region, image), str(path), useCompression=True)
            rows.append((str(image_path), str(path), case.case_id, spec.name))
    seconds = time.perf_counter() - t0
    csv_path = work / "batch.csv"
    with open(csv_path, "w") as fh:
        fh.write("Image,Mask\n")
        for img, msk, _, _ in rows:
            fh.write(f"{img},{msk}\n")
    (work / "batch_ids.json").write_text(json.dumps([[r[2], r[3]] for r in rows]))
    return csv_path, seconds, len(rows)


def compare_outputs(work: Path, pyrad_csv: Path, cache: Path, params: dict) -> dict:
    """How far pyradiomics' batch output is from her2study's features, value by value.

    pyradiomics' CLI reads the uint8 NIfTI as uint8; her2study casts images to float32. In
    pyradiomics 3.1.4 ``imageoperations.getBinEdges`` computes ``maximum + 2 * binWidth`` in the
    image's dtype, which wraps around for uint8 when the ROI's maximum grey level is at least
    ``256 - 2 * binWidth``: every texture and histogram feature of such an ROI is then wrong. Those
    rows are counted apart.
    """
    import numpy as np
    import pandas as pd

    from her2study.cohort.manifest import load_cohort
    from her2study.features import extract_features
    from her2study.regions import region_specs

    ids = json.loads((work / "batch_ids.json").read_text())
    cohort = load_cohort(work / "cohort" / "manifest.csv", synthetic=True)
    specs = region_specs(True, [w for w in REGIONS if w is not None])
    table = extract_features(cohort, specs, params, cache, n_jobs=1).table  # from the cache
    pr = pd.read_csv(pyrad_csv)
    feats = [c for c in pr.columns if c not in ("Image", "Mask") and not c.startswith("diagn")]
    assert len(pr) == len(ids), "pyradiomics wrote a different number of rows"
    bin_width = float(params.get("setting", {}).get("binWidth", 25))
    overflow_at = 256 - 2 * bin_width
    ok = {"rows": 0, "vals": 0, "rel1e6": 0, "close": 0, "worst": 0.0, "where": ""}
    bad = {"rows": 0, "vals": 0, "close": 0}
    missing = 0
    for i, (cid, region) in enumerate(ids):  # pyradiomics keeps the batch CSV's row order
        a = pr.iloc[i]
        roi_max = float(table.at[cid, f"{region}_original_firstorder_Maximum"])
        group = bad if roi_max >= overflow_at else ok
        group["rows"] += 1
        for f in feats:
            col = f"{region}_{f}"
            if col not in table.columns:
                missing += 1
                continue
            x, y = float(a[f]), float(table.at[cid, col])
            group["vals"] += 1
            if np.isnan(x) or np.isnan(y):
                same = np.isnan(x) and np.isnan(y)
                rel, close = (0.0 if same else np.inf), same
            else:
                rel = abs(x - y) / max(abs(x), abs(y), 1e-300)
                close = abs(x - y) <= 1e-4 * max(abs(x), abs(y)) + 1e-6
            group["close"] += bool(close)
            if group is ok:
                ok["rel1e6"] += rel <= 1e-6
                if not close and rel > ok["worst"]:
                    ok["worst"], ok["where"] = rel, f"{cid} {col}: {x:.6g} vs {y:.6g}"
    return {
        "(case, region) rows": len(ids),
        f"rows with ROI max grey >= {overflow_at:g} (pyradiomics uint8 overflow)": bad["rows"],
        "other rows: values equal within 1e-6 rel.": f"{ok['rel1e6'] / max(ok['vals'], 1):.3%}",
        "other rows: within 1e-4 rel. + 1e-6 abs.": f"{ok['close'] / max(ok['vals'], 1):.3%}",
        "other rows: largest difference beyond that": (
            f"{ok['worst']:.1e} ({ok['where']})" if ok["where"] else "none"
        ),
        "overflow rows: within 1e-4 rel. + 1e-6 abs.": (
            f"{bad['close'] / bad['vals']:.1%}" if bad["vals"] else "-"
        ),
        "features missing in her2study": missing,
        "pyradiomics features per region": len(feats),
    }


# ---------------------------------------------------------------------------------------------


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="12 cases")
    ap.add_argument("--n", type=int, default=None, help="cases (default 60, quick 12)")
    ap.add_argument("--reps", type=int, default=2, help="alternating repetitions (default 2)")
    ap.add_argument("--jobs", type=int, default=2)
    ap.add_argument("--extractor", default="paper", choices=["paper", "fast"])
    ap.add_argument("--keep", action="store_true", help="keep the temporary folder")
    ap.add_argument(
        "--worker", nargs=4, metavar=("MANIFEST", "CACHE", "PARAMS", "JOBS"), help=argparse.SUPPRESS
    )
    ap.add_argument("--engine", nargs=2, metavar=("MANIFEST", "PARAMS"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.engine:
        engine(*args.engine)
        return
    if args.worker:
        m, c, p, j = args.worker
        worker(m, c, p, int(j))
        return

    from her2study.cohort.synthetic import SyntheticSpec, write_synthetic_cohort

    n = args.n or (12 if args.quick else 60)
    info = _bench.machine()
    params = extractor_params(args.extractor)
    work = Path(tempfile.mkdtemp(prefix="her2bench_extraction_"))
    print(f"work folder {work}; {n} cases, {args.reps} reps, {args.jobs} jobs", flush=True)
    try:
        t0 = time.perf_counter()
        manifest = write_synthetic_cohort(SyntheticSpec(n_cases=n), work / "cohort", n_jobs=2)
        t_gen = time.perf_counter() - t0
        params_file = work / "params.yaml"
        params_file.write_text(yaml.safe_dump(params, sort_keys=False))
        batch_csv, t_masks, n_rows = build_masks(manifest, work)
        print(
            f"cohort {t_gen:.1f} s; ring masks + batch CSV ({n_rows} rows) {t_masks:.1f} s",
            flush=True,
        )
        pyrad = str(Path(sys.executable).with_name("pyradiomics"))
        # untimed warm-up of both tools (page cache, .pyc files) on one or two cases
        head = work / "warmup.csv"
        head.write_text("\n".join(batch_csv.read_text().splitlines()[:4]) + "\n")
        warm_manifest = work / "cohort" / "warmup_manifest.csv"  # paths relative to it
        import pandas as pd

        pd.read_csv(manifest).groupby("label").head(1).to_csv(warm_manifest, index=False)
        for cmd in (
            [
                pyrad,
                str(head),
                "-p",
                str(params_file),
                "-o",
                str(work / "warmup_out.csv"),
                "-f",
                "csv",
                "--jobs",
                str(args.jobs),
            ],
            [
                sys.executable,
                __file__,
                "--worker",
                str(warm_manifest),
                str(work / "cache_warmup"),
                str(params_file),
                str(args.jobs),
            ],
        ):
            m = _bench.run_measured(cmd, cwd=work)
            if m.returncode != 0:
                raise RuntimeError(f"warm-up failed:\n{m.tail(30)}")

        rows = []
        for rep in range(args.reps):
            cache = work / f"cache_rep{rep}"
            out_csv = work / f"pyradiomics_rep{rep}.csv"
            steps = {
                "pyradiomics batch": [
                    pyrad,
                    str(batch_csv),
                    "-p",
                    str(params_file),
                    "-o",
                    str(out_csv),
                    "-f",
                    "csv",
                    "--jobs",
                    str(args.jobs),
                ],
                "her2study cold": [
                    sys.executable,
                    __file__,
                    "--worker",
                    str(manifest),
                    str(cache),
                    str(params_file),
                    str(args.jobs),
                ],
            }
            steps["her2study warm"] = steps["her2study cold"]
            steps["engine limit"] = [
                sys.executable,
                __file__,
                "--engine",
                str(manifest),
                str(params_file),
            ]
            order = ["pyradiomics batch", "her2study cold", "her2study warm", "engine limit"]
            if rep % 2:
                order = ["engine limit", "her2study cold", "her2study warm", "pyradiomics batch"]
            for name in order:
                m = _bench.run_measured(steps[name], cwd=work)
                if m.returncode != 0:
                    raise RuntimeError(f"{name} failed (rc={m.returncode}):\n{m.tail(30)}")
                row = {
                    "rep": rep,
                    "run": name,
                    "order": order.index(name) + 1,
                    "wall_s": m.wall_s,
                    "cases_per_s": n / m.wall_s,
                    "cpu_s": m.user_s + m.sys_s,
                    "peak_tree_rss_mib": m.tree_peak_mib,
                    "max_single_rss_mib": m.maxrss_mib,
                    "load_after": _bench.loadavg().split()[0],
                }
                if name == "engine limit":
                    r = _result(m)
                    row.update(
                        execute_s=r["execute_s"],
                        execute_cpu_s=r["execute_cpu_s"],
                        limit_wall_s=r["execute_s"] / args.jobs,
                    )
                if name.startswith("her2study"):
                    r = _result(m)
                    row.update(
                        inner_extract_s=r["extract_s"],
                        n_cached=r["n_cached"],
                        n_extracted=r["n_extracted"],
                    )
                    if name.endswith("cold") and r["n_cached"]:
                        raise RuntimeError("cold run found cached entries")
                    if name.endswith("warm") and r["n_extracted"]:
                        raise RuntimeError("warm run extracted entries")
                rows.append(row)
                print(
                    f"  rep {rep} {name:18s} {m.wall_s:7.1f} s  {n / m.wall_s:6.2f} cases/s  "
                    f"peak tree RSS {m.tree_peak_mib:6.0f} MiB",
                    flush=True,
                )

        check = compare_outputs(work, work / "pyradiomics_rep0.csv", work / "cache_rep0", params)
        info["load average at end (1/5/15 min)"] = _bench.loadavg()
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)

    def wall(rep, name, key="wall_s"):
        return next(r[key] for r in rows if r["rep"] == rep and r["run"] == name)

    ratios = []
    for rep in range(args.reps):
        names = ("pyradiomics batch", "her2study cold", "her2study warm")
        p, c, w = (wall(rep, k) for k in names)
        pc, cc, wc = (wall(rep, k, "cpu_s") for k in names)
        limit = wall(rep, "engine limit", "limit_wall_s")
        ratios.append(
            {
                "rep": rep,
                "throughput: her2study cold / pyradiomics batch (= P wall / C wall)": p / c,
                "throughput: her2study cold / engine limit (= limit / C wall)": limit / c,
                "CPU: engine execute CPU / her2study cold CPU": wall(
                    rep, "engine limit", "execute_cpu_s"
                )
                / cc,
                "her2study cold / pyradiomics batch": c / p,
                "her2study cold / (pyradiomics batch + ring masks)": c / (p + t_masks),
                "her2study warm / her2study cold": w / c,
                "her2study warm / pyradiomics batch": w / p,
                "CPU s: her2study cold / pyradiomics batch": cc / pc,
                "CPU s: her2study warm / her2study cold": wc / cc,
            }
        )
    med = {k: statistics.median(r[k] for r in ratios) for k in ratios[0] if k != "rep"}
    summary = []
    for name in ("pyradiomics batch", "her2study cold", "her2study warm", "engine limit"):
        walls = [r["wall_s"] for r in rows if r["run"] == name]
        rss = [r["peak_tree_rss_mib"] for r in rows if r["run"] == name]
        summary.append(
            {
                "run": name,
                "median wall s": statistics.median(walls),
                "cases/s": n / statistics.median(walls),
                "peak tree RSS MiB (max)": max(rss),
            }
        )

    title = "quick smoke run" if args.quick else "full run"
    md = f"""## Extraction throughput: her2study vs `pyradiomics` batch ({title})

{n} synthetic cases x 3 regions (intra, peri1mm, peri2mm) = {n_rows} (case, region) extractions;
extractor settings: the `params` block of `conf/extractor/{args.extractor}.yaml`
({check["pyradiomics features per region"]} features per region);
{args.jobs} worker processes each; {args.reps} repetitions, order alternated.

Machine:
{_bench.machine_md(info)}

One-off setup (not in the ratios unless said; an untimed warm-up of both tools on one case
comes first): synthetic cohort written in {t_gen:.1f} s
(2 processes); ring masks for pyradiomics built and written in **{t_masks:.1f} s**
({1000 * t_masks / n:.0f} ms/case, one process, her2study's `RegionMaker` + `region_image`,
`.nii.gz`) -- pyradiomics' batch needs them on disk, her2study builds them in memory.

### Summary (medians over repetitions)

{_bench.md_table(summary)}

### Ratios (same repetition, side by side; < 1 = the numerator is faster)

Wall-time ratios, then CPU-time ratios (user + sys of the process and its reaped workers, less
sensitive to other jobs on the shared cores).

{_bench.md_table(ratios)}

Median: {"; ".join(f"{k} = **{v:.2f}**" for k, v in med.items())}.

### Every run

{_bench.md_table(rows)}

`wall_s` is the whole process (interpreter start-up and imports included for both tools);
`inner_extract_s` is her2study's `extract_features` call alone. `peak_tree_rss_mib` sums the
RSS of the process and its workers (sampled every 0.25 s); `max_single_rss_mib` is the largest
single process (wait4). `load_after` is the 1-minute load average after the run.

### Same numbers?

{_bench.md_table([{"check": k, "value": v} for k, v in check.items()])}

pyradiomics' CLI is given the float32 image her2study extracts from (written as float32 NIfTI
during set-up): fed the cohort's uint8 files, pyradiomics 3.1.4 keeps them as uint8 and its
`imageoperations.getBinEdges` computes `maximum + 2 * binWidth` in that dtype, which wraps around
when an ROI's maximum grey level is >= 256 - 2 x binWidth (wrong histogram and texture features,
and a cheaper, unfair extraction). The engine limit is the sum of the raw
`RadiomicsFeatureExtractor.execute` times of every (case, region), images and masks in memory,
one process, divided by the {args.jobs} cores; her2study can beat it because it filters each
case's image once for all its regions (`her2study/features/shared.py`).
"""
    _bench.write_result(
        "extraction", args.quick, md, rows + [{"ratio_" + k: v for k, v in med.items()}]
    )


if __name__ == "__main__":
    main()
