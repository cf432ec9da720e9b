"""Tables for people: the Table-3-like results next to the paper's, as text and Markdown."""

from __future__ import annotations

from importlib import resources

import numpy as np
import pandas as pd

METRICS = ["auc", "ppv", "npv", "sensitivity", "specificity", "accuracy"]


def paper_table3() -> pd.DataFrame:
    """The source paper's Table 3 (shipped with the package)."""
    with resources.files("her2study.reference").joinpath("paper_table3.csv").open() as fh:
        return pd.read_csv(fh)


def _ci(est, lo, hi) -> str:
    if any(pd.isna(v) for v in (est, lo, hi)):
        return "-"
    return f"{est:.3f} ({lo:.3f}-{hi:.3f})"


def _num(v) -> str:
    return "-" if pd.isna(v) else f"{v:.3f}"


def paper_reference_on(cfg, synthetic: bool) -> bool:
    """Whether the paper's HER2 figures are shown beside ours: ``report.paper_reference``
    (null: only on the synthetic cohort, whose design mirrors the paper's; a user's cohort
    measures something else)."""
    from omegaconf import OmegaConf

    value = OmegaConf.select(cfg, "report.paper_reference", default=None)
    return bool(synthetic) if value is None else bool(value)


def compare_with_paper(metrics: pd.DataFrame, with_paper: bool = True) -> pd.DataFrame:
    """One row per set x signature: ours, and (``with_paper``) the paper's where it has the
    same signature."""
    paper = paper_table3().set_index(["set", "signature"])
    rows = []
    # the paper's training figures are apparent (in-sample): set beside our apparent row
    ours_to_paper = {"train_apparent": "train", "test": "test"}
    for _, r in metrics[metrics["set"].isin(list(ours_to_paper))].iterrows():
        key = (ours_to_paper[r["set"]], r["signature"])
        p = paper.loc[key] if key in paper.index else None
        row = {
            "set": r["set"],
            "signature": r["signature"],
            "AUC (95% CI)": _ci(r["auc"], r["auc_ci_low"], r["auc_ci_high"]),
            "paper AUC (95% CI)": _ci(p["auc"], p["auc_ci_low"], p["auc_ci_high"])
            if p is not None
            else "-",
        }
        for m in METRICS[1:]:
            ours = _ci(r[m], r.get(f"{m}_ci_low"), r.get(f"{m}_ci_high"))  # Wilson 95% CI
            row[m.upper() if m in ("ppv", "npv") else m.capitalize()] = ours
            row[f"paper {m.upper() if m in ('ppv', 'npv') else m.capitalize()}"] = (
                _num(p[m]) if p is not None else "-"
            )
        rows.append(row)
    out = pd.DataFrame(rows)
    if not with_paper:
        out = out[[c for c in out.columns if not str(c).startswith("paper ")]]
    return out


def compact_comparison(comparison: pd.DataFrame) -> pd.DataFrame:
    """The columns that fit a terminal: AUC beside the paper's, then our threshold metrics."""
    cols = [
        "set",
        "signature",
        "AUC (95% CI)",
        "paper AUC (95% CI)",
        "Sensitivity",
        "Specificity",
        "PPV",
        "NPV",
        "Accuracy",
    ]
    cols = [c for c in cols if c in comparison.columns]
    return comparison[cols].rename(
        columns={"Sensitivity": "Sens", "Specificity": "Spec", "Accuracy": "Acc"}
    )


def to_markdown(df: pd.DataFrame, floatfmt: str = ".3f") -> str:
    """A GitHub-flavoured Markdown table (no extra dependency)."""

    def fmt(v):
        if isinstance(v, (float, np.floating)):
            return "-" if np.isnan(v) else format(v, floatfmt)
        return str(v)

    head = "| " + " | ".join(map(str, df.columns)) + " |"
    sep = "|" + "|".join("---" for _ in df.columns) + "|"
    body = ["| " + " | ".join(fmt(v) for v in row) + " |" for row in df.itertuples(index=False)]
    return "\n".join([head, sep, *body])


def to_text(df: pd.DataFrame) -> str:
    """A plain fixed-width table for the terminal."""
    cells = [list(map(str, df.columns))] + [
        [str(v) for v in row] for row in df.itertuples(index=False)
    ]
    widths = [max(len(r[i]) for r in cells) for i in range(len(df.columns))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) for r in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)
