"""Bring your own features: a CSV/Parquet table (case_id, features, label, clinical columns)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from her2study.cohort.manifest import Cohort, CohortError, Problem, check_table, site_problems


def read_table(path: str | Path) -> pd.DataFrame:
    path = Path(path)
    if path.suffix.lower() in {".parquet", ".pq"}:
        return pd.read_parquet(path)
    return pd.read_csv(path)


def load_features_table(
    path: str | Path,
    *,
    case_column: str = "case_id",
    label_column: str = "label",
    clinical_columns: list[str] | tuple[str, ...] = (),
    site_column: str | None = None,
) -> tuple[Cohort, pd.DataFrame]:
    """Validate a features table; return the cohort (labels + clinical) and the feature columns.

    Every column that is not the id, the label, ``split`` or a clinical column is a feature and
    must be numeric.
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
    problems = check_table(df, path.name, case_column, label_column, clinical)
    problems += site_problems(df, path.name, case_column, site_column)
    reserved = {
        case_column,
        label_column,
        "split",
        *clinical,
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
    if problems:
        raise CohortError(problems, str(path))
    df = df.assign(**{case_column: df[case_column].astype(str).str.strip()}).set_index(case_column)
    df.index.name = "case_id"
    keep = [label_column] + clinical + (["split"] if "split" in df.columns else [])
    keep += [site_column] if site_column and site_column not in clinical else []
    table = df[keep].copy()
    table[label_column] = pd.to_numeric(table[label_column]).astype(int)
    features = df[feature_cols].astype(np.float64)
    cohort = Cohort(table=table, source=str(path), label_column=label_column)
    return cohort, features
