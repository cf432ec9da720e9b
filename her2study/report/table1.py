"""Table 1: the cohort's clinical characteristics by class, with the paper's tests.

Continuous columns: median (Q1, Q3) per class and overall, Mann-Whitney U test (two-sided).
Binary / categorical columns (at most ``max_levels`` distinct values): n (%) per class and
overall, Fisher's exact test for a 2x2 table with any expected count below 5, the chi-squared
test otherwise (with Yates' continuity correction on 2x2 tables, as R's ``chisq.test``).
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from scipy import stats

__all__ = ["cohort_summary", "format_p", "format_summary", "is_categorical"]

MANN_WHITNEY = "Mann-Whitney U"
CHI2 = "Chi-squared"
FISHER = "Fisher's exact"


def is_categorical(values: pd.Series, max_levels: int = 5) -> bool:
    """A column with at most ``max_levels`` distinct non-missing values (or non-numeric)."""
    v = values.dropna()
    return not pd.api.types.is_numeric_dtype(v) or v.nunique() <= max_levels


def _decimals(x: np.ndarray) -> int:
    """One decimal for values of ordinary size, more for small ones (e.g. ratios < 1)."""
    scale = float(np.nanmax(np.abs(x))) if len(x) else 0.0
    return 1 if scale >= 10 or scale == 0 else (2 if scale >= 1 else 3)


def _median_iqr(x: np.ndarray, decimals: int) -> str:
    if len(x) == 0:
        return "-"
    q1, med, q3 = np.percentile(x, [25, 50, 75])  # R's default quantile type 7
    return f"{med:.{decimals}f} ({q1:.{decimals}f}, {q3:.{decimals}f})"


def _n_pct(n: int, total: int) -> str:
    return f"{n} ({100 * n / total:.1f}%)" if total else "0 (-)"


def _level(v) -> str:
    if isinstance(v, (float, np.floating)) and float(v).is_integer():
        return str(int(v))
    return str(v)


def _categorical_test(counts: np.ndarray) -> tuple[float, str]:
    """p and the test's name for a levels x classes contingency table."""
    counts = counts[counts.sum(axis=1) > 0]
    if counts.shape[0] < 2 or (counts.sum(axis=0) == 0).any():
        return np.nan, "-"
    expected = stats.contingency.expected_freq(counts)
    if counts.shape == (2, 2) and (expected < 5).any():
        return float(stats.fisher_exact(counts).pvalue), FISHER
    return float(stats.chi2_contingency(counts).pvalue), CHI2


def cohort_summary(
    table: pd.DataFrame,
    label_column: str,
    columns: list[str],
    class_names: tuple[str, str] = ("negative", "positive"),
    max_levels: int = 5,
) -> pd.DataFrame:
    """A Table-1-like summary of ``columns`` by class (label 0 vs label 1).

    Returns one row per continuous variable and one row per level of a categorical one, with
    columns ``variable``, ``level``, ``<class 0> (n=..)``, ``<class 1> (n=..)``,
    ``Overall (n=..)``, ``p`` (numeric; on the first row of each variable) and ``test``.
    Missing values are left out of each variable's statistics and counted in a ``missing``
    row when there are any.
    """
    y = pd.to_numeric(table[label_column])
    if not set(y.dropna().unique()) <= {0, 1}:
        raise ValueError(f"{label_column!r} must be coded 0/1")
    g0, g1 = table[y == 0], table[y == 1]
    heads = [
        f"{class_names[0]} (n={len(g0)})",
        f"{class_names[1]} (n={len(g1)})",
        f"Overall (n={len(table)})",
    ]
    rows: list[dict] = []

    def row(variable, level, cells, p=np.nan, test=""):
        cells = dict(zip(heads, cells, strict=True))
        rows.append({"variable": variable, "level": level, **cells, "p": p, "test": test})

    for col in columns:
        values = table[col]
        if is_categorical(values, max_levels):
            levels = sorted(values.dropna().unique(), key=lambda v: (str(type(v)), v))
            counts = np.array(
                [[int((g[col] == lev).sum()) for g in (g0, g1)] for lev in levels], dtype=int
            ).reshape(len(levels), 2)
            p, test = _categorical_test(counts)
            totals = [int(g0[col].notna().sum()), int(g1[col].notna().sum())]
            for i, lev in enumerate(levels):
                cells = [
                    _n_pct(counts[i, 0], totals[0]),
                    _n_pct(counts[i, 1], totals[1]),
                    _n_pct(int(counts[i].sum()), sum(totals)),
                ]
                row(col, _level(lev), cells, p if i == 0 else np.nan, test if i == 0 else "")
        else:
            x0 = pd.to_numeric(g0[col], errors="coerce").dropna().to_numpy(float)
            x1 = pd.to_numeric(g1[col], errors="coerce").dropna().to_numpy(float)
            xa = pd.to_numeric(values, errors="coerce").dropna().to_numpy(float)
            if len(x0) and len(x1):
                p = float(stats.mannwhitneyu(x0, x1, alternative="two-sided").pvalue)
            else:
                p = np.nan
            dec = _decimals(xa)
            cells = [_median_iqr(x0, dec), _median_iqr(x1, dec), _median_iqr(xa, dec)]
            row(col, "median (Q1, Q3)", cells, p, MANN_WHITNEY)
        n_missing = [int(g[col].isna().sum()) for g in (g0, g1, table)]
        if n_missing[2]:
            row(col, "missing", [str(n) for n in n_missing])
    return pd.DataFrame(rows, columns=["variable", "level", *heads, "p", "test"])


def format_p(p) -> str:
    """p-values as journals print them: 0.034, 0.21, <0.001; '' when absent."""
    if p is None or (isinstance(p, float) and np.isnan(p)):
        return ""
    p = float(p)
    if p < 0.001:
        return "<0.001"
    return f"{p:.3f}"


def format_summary(summary: pd.DataFrame) -> pd.DataFrame:
    """The summary for display: p as text, the variable named on its first row only."""
    out = summary.copy()
    out["p"] = out["p"].map(format_p)
    repeat = out["variable"].eq(out["variable"].shift())
    out.loc[repeat, "variable"] = ""
    return out
