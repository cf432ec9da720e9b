"""The task=compare and task=search reports (the paper report is in :mod:`builders`)."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from her2study.report.builders import (  # noqa: F401
    REPORT_NAME,
    _p_cols,
    _title,
    figure_blocks,
    search_design_items,
)
from her2study.report.html import Captioned, Heading, Section, write_report


def compare_report(
    out_dir,
    *,
    table: pd.DataFrame,
    figure,
    source: str,
    synthetic: bool,
    experiment: str,
    date: str | None = None,
    paired: pd.DataFrame | None = None,
    note: str | None = None,
) -> Path:
    """The ``task=compare`` report (AUC against ring width across runs): ``out_dir/report.html``."""
    widths = sorted(w for w in table.get("width_mm", []) if w > 0)
    intro = (
        f"Region choices of one sweep of MLflow experiment '{experiment}' (outer edges "
        f"{', '.join(f'{w:g}' for w in widths) or '-'} mm, tumour only included). The comparison "
        "is made on the training cases: repeated stratified cross-validation of the whole "
        "pipeline, the same folds for every region choice, fold AUCs with the corrected "
        "resampled t interval (Nadeau & Bengio). The test-set AUC is shown for description "
        "only: one small test set cannot rank margins, and choosing on it tunes on the test set."
    )
    results = [Captioned(table, "Training-side CV AUC (95% CI) and descriptive test AUC")]
    if paired is not None and len(paired):
        results.append(
            Captioned(paired, "Each region choice minus tumour only, paired on the same folds")
        )
    if note:
        results.append(note)
    sections = [
        Section("Design", [intro]),
        Section("Results", results),
        Section(
            "Figures",
            [Captioned(figure, "Training CV AUC against region width; test AUC and the paper's")]
            if figure is not None
            else ["No figure."],
        ),
    ]
    return write_report(
        Path(out_dir) / REPORT_NAME,
        title=f"{experiment}: which margin?",
        source=source,
        synthetic=synthetic,
        sections=sections,
        date=date,
    )


def search_report(
    out_dir,
    *,
    title: str,
    source: str,
    synthetic: bool,
    design: dict,
    tables: dict,
    figures: dict,
    checklist: dict | None = None,
    date: str | None = None,
    notes: list[str] | None = None,
) -> Path:
    """The ``task=search`` report (nested CV design, tables, figures): ``out_dir/report.html``;
    ``notes`` (warnings about the search itself) open it, in a section of their own."""
    table_blocks: list = []
    for name, df in tables.items():
        table_blocks += [Heading(_title(name)), _p_cols(df) if isinstance(df, pd.DataFrame) else df]
    sections = [Section("Warnings", [f"WARNING: {n}" for n in notes])] if notes else []
    sections += [
        Section("Design", [design]),
        Section("Results", table_blocks or ["No tables."]),
        Section("Figures", figure_blocks(figures) or ["No figures."]),
    ]
    if checklist:
        sections.append(Section("Reviewer checklist", [checklist]))
    return write_report(
        Path(out_dir) / REPORT_NAME,
        title=title,
        source=source,
        synthetic=synthetic,
        sections=sections,
        date=date,
    )
