"""Are two runs' numbers identical? Compares every CSV and JSON result file two run folders share.

    python experiments/groundwork/same_numbers.py BEFORE_DIR AFTER_DIR [--files metrics.csv ...]

Numbers must be equal to the last bit (``--rtol`` to loosen); text columns must be equal. Files,
columns and keys present only after are listed as added, not failed (new outputs are allowed);
ones present only before are differences unless ``--rename OLD=NEW`` maps them (a key renamed to
the one metric vocabulary). Exit 1 on any difference. Used to show that issue 7's moves left
the numbers of ``+exp=paper`` and a small ``+exp=search`` unchanged
(``experiments/groundwork/README.md``).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import pandas as pd

DEFAULT = ("metrics.csv", "table3.csv", "delong_tests.csv", "nested_estimate.json")


def _flat(obj, prefix=""):
    if isinstance(obj, dict):
        for k, v in obj.items():
            yield from _flat(v, f"{prefix}{k}.")
    elif isinstance(obj, list):
        for i, v in enumerate(obj):
            yield from _flat(v, f"{prefix}{i}.")
    else:
        yield prefix.rstrip("."), obj


ADDED: list[str] = []


def compare_json(a: Path, b: Path, rtol: float, rename: dict) -> list[str]:
    fa = {rename.get(k, k): v for k, v in _flat(json.loads(a.read_text()))}
    fb = dict(_flat(json.loads(b.read_text())))
    out = []
    for k in sorted(set(fa) | set(fb)):
        if k not in fa:
            ADDED.append(f"{a.name}: key {k}")
            continue
        if k not in fb:
            out.append(f"{a.name}: key {k} only before")
            continue
        va, vb = fa[k], fb[k]
        if isinstance(va, (int, float)) and isinstance(vb, (int, float)):
            if not np.isclose(va, vb, rtol=rtol, atol=0, equal_nan=True):
                out.append(f"{a.name}: {k}: {va!r} != {vb!r}")
        elif va != vb:
            out.append(f"{a.name}: {k}: {va!r} != {vb!r}")
    return out


def compare_csv(a: Path, b: Path, rtol: float, rename: dict) -> list[str]:
    da, db = pd.read_csv(a).rename(columns=rename), pd.read_csv(b)
    out = []
    common = [c for c in da.columns if c in db.columns]
    for c in sorted(set(db.columns) - set(da.columns)):
        ADDED.append(f"{a.name}: column {c}")
    for c in sorted(set(da.columns) - set(db.columns)):
        out.append(f"{a.name}: column {c} only before")
    if len(da) != len(db):
        return [*out, f"{a.name}: {len(da)} rows before, {len(db)} after"]
    for c in common:
        x, y = da[c], db[c]
        if pd.api.types.is_numeric_dtype(x) and pd.api.types.is_numeric_dtype(y):
            bad = ~np.isclose(
                x.to_numpy(float), y.to_numpy(float), rtol=rtol, atol=0, equal_nan=True
            )
        else:
            bad = (x.astype(str) != y.astype(str)).to_numpy()
        for i in np.flatnonzero(bad)[:5]:
            out.append(f"{a.name}: row {i} {c}: {x.iloc[i]!r} != {y.iloc[i]!r}")
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("before", type=Path)
    ap.add_argument("after", type=Path)
    ap.add_argument("--files", nargs="*", default=None)
    ap.add_argument("--rtol", type=float, default=0.0)
    ap.add_argument("--rename", nargs="*", default=[], help="OLD=NEW key or column renames")
    args = ap.parse_args(argv)
    names = args.files or sorted(
        {p.name for p in args.before.glob("*") if p.suffix in (".csv", ".json")}
        & {p.name for p in args.after.glob("*") if p.suffix in (".csv", ".json")}
    )
    problems, checked = [], []
    for name in names:
        a, b = args.before / name, args.after / name
        if not (a.is_file() and b.is_file()):
            print(f"skip {name}: not in both folders")
            continue
        fn = compare_json if name.endswith(".json") else compare_csv
        problems += fn(a, b, args.rtol, dict(r.split("=", 1) for r in args.rename))
        checked.append(name)
    print(f"compared {len(checked)} files: {', '.join(checked)}")
    for item in ADDED:
        print("added", item)
    for p in problems:
        print("DIFF", p)
    print("identical" if not problems else f"{len(problems)} differences")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
