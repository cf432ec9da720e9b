"""Peak memory of the manifest check on one huge image: before (a baseline commit) vs now.

Writes a one-case cohort with a ``--size`` x ``--size`` image (default 10,000 x 10,000) and its
lesion mask as PNG (8-bit grayscale and 8-bit RGB, the usual ultrasound exports, spacing in the
manifest) and as a float32 MHA, then runs ``load_cohort`` on each in a fresh process:

* **before**: the package of ``--baseline`` (default: the merge base with ``main``), exported
  read-only with ``git archive`` into a temporary folder (the one-case check read every image
  in full and converted it to float);
* **after, no limit**: this working tree with ``max_image_pixels=None`` (headers only; the mask's
  pixels are read, and the float MHA's pixels are scanned for NaN/inf);
* **after, default limit**: this working tree with the default ``data.max_image_pixels``: the
  image is refused from its header.

Each run is a subprocess measured with ``_bench.run_measured`` (``ru_maxrss`` of the process);
the sampled peak (every 0.25 s) beside it; the image files are written by another child, so
that no measured process inherits a large peak. The "import only" row is the floor (Python +
numpy + SimpleITK + pandas). Runs alternate before/after per repetition. Results:
``results/manifest_memory[_quick].md`` and ``.csv``.

    python experiments/benchmarks/manifest_memory.py [--quick] [--size 10000] [--reps 1]
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _bench import (  # noqa: E402
    PYTHON,
    REPO,
    machine,
    machine_md,
    md_table,
    run_measured,
    write_result,
)

CHILD = """
import resource, sys
sys.path.insert(0, {root!r})
from her2study.cohort.manifest import load_cohort, CohortError
kwargs = {kwargs}
try:
    c = load_cohort({manifest!r}, **kwargs)
    print("OK", len(c.cases))
except CohortError as e:
    print("REFUSED", str(e).splitlines()[1].strip()[:160])
"""

IMPORT_ONLY = (
    "import numpy, pandas, SimpleITK; import sys; sys.path.insert(0, {root!r}); "
    "import her2study.cohort.manifest"
)


def write_cohort(folder: Path, size: int, kind: str) -> Path:
    """A one-case manifest with a ``kind`` (gray | rgb | mha) image of size x size pixels."""
    import SimpleITK as sitk
    from PIL import Image

    Image.MAX_IMAGE_PIXELS = None  # our own file; PIL's bomb check is not what is measured
    folder.mkdir(parents=True, exist_ok=True)
    yy, xx = np.ogrid[:size, :size]
    gray = ((xx * 7 + yy * 3) % 251).astype(np.uint8)
    mask = ((xx - size / 2) / (size / 5)) ** 2 + ((yy - size / 2) / (size / 7)) ** 2 <= 1
    Image.fromarray(mask.astype(np.uint8)).save(folder / "mask.png", compress_level=1)
    if kind == "gray":
        Image.fromarray(gray).save(folder / "image.png", compress_level=1)
        image = "image.png"
    elif kind == "rgb":
        Image.fromarray(np.dstack([gray, gray, gray])).save(folder / "image.png", compress_level=1)
        image = "image.png"
    else:
        sitk.WriteImage(sitk.GetImageFromArray(gray.astype(np.float32)), str(folder / "image.mha"))
        sitk.WriteImage(sitk.GetImageFromArray(mask.astype(np.uint8)), str(folder / "mask.mha"))
        image = "image.mha"
    del gray, mask
    mask_file = "mask.mha" if kind == "mha" else "mask.png"
    manifest = folder / "manifest.csv"
    manifest.write_text(
        "case_id,image,mask,label,spacing_x_mm,spacing_y_mm\n"
        f"C0,{image},{mask_file},1,0.1,0.1\nC1,{image},{mask_file},0,0.1,0.1\n"
    )
    return manifest


def export_baseline(ref: str, into: Path) -> str:
    archive = subprocess.run(
        ["git", "-C", str(REPO), "archive", ref, "her2study"], capture_output=True, check=True
    ).stdout
    subprocess.run(["tar", "-x", "-C", str(into)], input=archive, check=True)
    return subprocess.run(
        ["git", "-C", str(REPO), "rev-parse", "--short", ref],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="3,000 x 3,000 pixels, gray PNG only")
    ap.add_argument("--size", type=int, default=10_000)
    ap.add_argument("--reps", type=int, default=1)
    ap.add_argument("--baseline", default=None, help="git ref (default: merge base with main)")
    ap.add_argument("--write", nargs=3, metavar=("KIND", "SIZE", "DIR"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.write:
        write_cohort(Path(args.write[2]), int(args.write[1]), args.write[0])
        return
    size = 3000 if args.quick else args.size
    kinds = ["gray"] if args.quick else ["gray", "rgb", "mha"]
    ref = (
        args.baseline
        or subprocess.run(
            ["git", "-C", str(REPO), "merge-base", "HEAD", "main"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    )
    info = machine()
    rows = []
    with tempfile.TemporaryDirectory(prefix="manifest_memory_") as tmp:
        tmp = Path(tmp)
        (tmp / "baseline").mkdir()
        base_sha = export_baseline(ref, tmp / "baseline")
        floor = run_measured([PYTHON, "-c", IMPORT_ONLY.format(root=str(REPO))])
        rows.append({"image": "-", "variant": "import only", "peak RSS MiB": floor.maxrss_mib})
        for kind in kinds:
            # written by a child process: Linux keeps a process's peak RSS across fork + exec,
            # so a parent that had held the image would lend its peak to every measured child
            subprocess.run(
                [PYTHON, __file__, "--write", kind, str(size), str(tmp / kind)], check=True
            )
            manifest = tmp / kind / "manifest.csv"
            variants = {
                f"before ({base_sha})": (str(tmp / "baseline"), {}),
                "after, no limit": (str(REPO), {"max_image_pixels": None}),
                "after, default limit": (str(REPO), {}),
            }
            measured: dict[str, list] = {v: [] for v in variants}
            for rep in range(args.reps):
                order = list(variants) if rep % 2 == 0 else list(reversed(variants))
                for name in order:
                    root, kwargs = variants[name]
                    code = CHILD.format(root=root, kwargs=kwargs, manifest=str(manifest))
                    m = run_measured([PYTHON, "-c", code], cwd=tmp)
                    measured[name].append(m)
                    print(
                        f"{kind:4s} {name:24s} {m.maxrss_mib:8.0f} MiB "
                        f"(tree {m.tree_peak_mib:6.0f})  {m.stdout()[:90]}",
                        flush=True,
                    )
            before = min(m.maxrss_mib for m in measured[f"before ({base_sha})"])
            for name, runs in measured.items():
                peak = min(m.maxrss_mib for m in runs)
                rows.append(
                    {
                        "image": f"{kind} {size}x{size}",
                        "variant": name,
                        "peak RSS MiB": peak,
                        "sampled peak MiB": min(m.tree_peak_mib for m in runs),
                        "above import floor MiB": peak - floor.maxrss_mib,
                        "before / this": before / peak,
                        "wall s": min(m.wall_s for m in runs),
                        "outcome": runs[0].stdout().strip()[:80],
                    }
                )
    md = (
        f"# Manifest check: peak memory on a {size:,} x {size:,} image\n\n"
        f"Two cases sharing one image + mask; `load_cohort` in a fresh process per run "
        f"(`ru_maxrss`, min over {args.reps} repetition(s), before/after alternated).\n\n"
        + md_table(rows)
        + "\n\n"
        + machine_md(info)
        + "\n"
    )
    write_result("manifest_memory", args.quick, md, rows)


if __name__ == "__main__":
    main()
