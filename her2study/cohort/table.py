"""Bring your own features: a CSV/Parquet table (case_id, features, label, clinical columns).

Feature columns are named ``<region>_<feature>`` (``intra_``, ``peri1mm_``, ``band1to2mm_``,
as ``task=extract`` writes them). A table whose columns carry no region prefix at all is one
region, the tumour: its columns are read as ``intra_<name>``. Every feature value must be a
finite number; duplicated column names, text columns, NaN and inf are reported (case and
column) before anything is fitted.
"""

from __future__ import annotations

import csv
import logging
import re
from pathlib import Path

import numpy as np
import pandas as pd

from her2study.cohort.manifest import Cohort, CohortError, Problem, check_table, site_problems

log = logging.getLogger(__name__)

REGION_PREFIX = re.compile(r"^(intra|peri[0-9p]+mm|band[0-9p]+to[0-9p]+mm|reader2_)_")
SHOWN = 8  # cells listed per kind of problem (then "... and N more")


def read_table(path: str | Path) -> pd.DataFrame:
    path = Path(path)
    if path.suffix.lower() in {".parquet", ".pq"}:
        return pd.read_parquet(path)
    return pd.read_csv(path)


def _header(path: Path) -> list[str]:
    """The column names as written (pandas renames a duplicate ``f`` to ``f.1``)."""
    if path.suffix.lower() in {".parquet", ".pq"}:
        return []
    with open(path, newline="", encoding="utf-8", errors="replace") as fh:
        return [c.strip() for c in next(csv.reader(fh), [])]


def _duplicates(path: Path) -> list[Problem]:
    header = _header(path)
    problems = []
    for name in sorted({c for c in header if header.count(c) > 1}):
        where = ", ".join(str(i + 1) for i, c in enumerate(header) if c == name)
        problems.append(
            Problem(
                "",
                path.name,
                f"column '{name}' appears {header.count(name)} times (columns {where})",
                "give every column a unique name, or drop the copies",
            )
        )
    return problems


def region_columns(feature_cols: list[str], file: str) -> tuple[dict[str, str], list[Problem]]:
    """Feature column -> its name with a region prefix; unprefixed columns are the tumour's
    (``intra_``) when no column has a prefix, else left out with a warning naming them."""
    plain = [c for c in feature_cols if not REGION_PREFIX.match(str(c))]
    if not plain:
        return {c: c for c in feature_cols}, []
    if len(plain) == len(feature_cols):
        log.info(
            "features table %s: its %d feature columns have no region prefix (intra_, "
            "peri<w>mm_): read as one region, the tumour (intra_<name>)",
            file,
            len(plain),
        )
        return {c: f"intra_{c}" for c in feature_cols}, []
    shown = ", ".join(map(repr, plain[:SHOWN])) + (" ..." if len(plain) > SHOWN else "")
    names = {c: c for c in feature_cols if c not in plain}
    return names, [
        Problem(
            "",
            file,
            f"{len(plain)} column(s) without a region prefix ({shown}) beside feature columns "
            "that have one: left out",
            "to use them, name them <region>_<feature> (intra_, peri1mm_, ...) or list them in "
            "data.clinical_columns",
            severity="warning",
        )
    ]


def _bad_values(values: pd.DataFrame, ids: pd.Series, file: str) -> list[Problem]:
    """NaN and inf cells of the feature columns, each named by case and column."""
    arr = values.to_numpy(dtype=np.float64)
    problems = []
    for what, bad in (("missing (NaN)", np.isnan(arr)), ("infinite", np.isinf(arr))):
        if not bad.any():
            continue
        rows, cols = np.nonzero(bad)
        for r, c in list(zip(rows, cols, strict=True))[:SHOWN]:
            problems.append(
                Problem(
                    str(ids.iloc[r]),
                    file,
                    f"feature '{values.columns[c]}' is {what}",
                    "fill it in, or drop that column or case (no model fits on NaN or inf)",
                )
            )
        if len(rows) > SHOWN:
            n_cols = len(set(cols.tolist()))
            problems.append(
                Problem(
                    "",
                    file,
                    f"... and {len(rows) - SHOWN} more {what} feature value(s), in {n_cols} "
                    "column(s) in all",
                    "fill them in, or drop those columns or cases",
                )
            )
    return problems


def load_features_table(
    path: str | Path,
    *,
    case_column: str = "case_id",
    label_column: str = "label",
    clinical_columns: list[str] | tuple[str, ...] = (),
    keep_columns: list[str] | tuple[str, ...] = (),
    site_column: str | None = None,
) -> tuple[Cohort, pd.DataFrame]:
    """Validate a features table; return the cohort (labels + clinical) and the feature columns.

    Every column that is not the id, the label, ``split``, a clinical column or one of
    ``keep_columns`` (``split.balance_on``) is a feature and must hold finite numbers.
    """
    path = Path(path).resolve()
    if not path.is_file():
        raise CohortError(
            [Problem("", str(path), "features table not found", "check data.features_table")],
            str(path),
        )
    try:
        df = read_table(path)
    except Exception as exc:
        raise CohortError(
            [Problem("", path.name, f"cannot read the table ({exc})", "save it as CSV or Parquet")],
            str(path),
        ) from None
    clinical = list(clinical_columns)
    problems = _duplicates(path) + check_table(df, path.name, case_column, label_column, clinical)
    problems += site_problems(df, path.name, case_column, site_column)
    kept = [c for c in keep_columns if c in df.columns and c not in clinical and c != site_column]
    reserved = {
        case_column,
        label_column,
        "split",
        *clinical,
        *kept,
        *([site_column] if site_column else []),
    }
    feature_cols = [c for c in df.columns if c not in reserved]
    if not feature_cols:
        problems.append(Problem("", path.name, "no feature columns", "add feature columns"))
    non_numeric = [c for c in feature_cols if not pd.api.types.is_numeric_dtype(df[c])]
    for col in non_numeric:
        problems.append(
            Problem(
                "",
                path.name,
                f"feature column '{col}' is not numeric",
                "drop it, or list it in data.clinical_columns after coding it as numbers",
            )
        )
    names, prefix_problems = region_columns(feature_cols, path.name)
    problems += prefix_problems
    # the second reader's columns may be empty where a case was read once
    numeric = [c for c in names if c not in non_numeric and not str(c).startswith("reader2__")]
    if case_column in df.columns:
        problems += _bad_values(df[numeric], df[case_column].astype(str).str.strip(), path.name)
    if any(p.severity == "error" for p in problems):
        raise CohortError(problems, str(path))
    for warning in problems:
        log.warning("%s", warning)
    all_columns = [str(c) for c in df.columns]
    df = df.assign(**{case_column: df[case_column].astype(str).str.strip()}).set_index(case_column)
    df.index.name = "case_id"
    keep = [label_column] + clinical + (["split"] if "split" in df.columns else [])
    keep += [site_column] if site_column and site_column not in clinical else []
    keep += [c for c in kept if c not in keep]
    table = df[keep].copy()
    table[label_column] = pd.to_numeric(table[label_column]).astype(int)
    features = df[list(names)].astype(np.float64).rename(columns=names)
    cohort = Cohort(
        table=table,
        source=str(path),
        label_column=label_column,
        columns=all_columns,
    )
    return cohort, features
