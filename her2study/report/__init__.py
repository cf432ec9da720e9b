"""The study report: one self-contained HTML file per ``paper``, ``search`` and ``compare`` run.

All figures are embedded as base64 PNG, the CSS is inline, there is no JavaScript and no external
URL; every text is HTML-escaped. See :func:`write_report` for the generic API and
:func:`paper_report`, :func:`search_report`, :func:`compare_report` for the tasks' reports.
"""

from .builders import (
    REPORT_NAME,
    design_items,
    figure_blocks,
    paper_report,
    search_design_items,
    split_table,
)
from .checklist import reviewer_checklist
from .html import (
    SYNTHETIC_BANNER,
    Captioned,
    Grid,
    Heading,
    Html,
    Section,
    render_report,
    write_report,
)
from .studies import compare_report, search_report
from .table1 import cohort_summary, format_p, format_summary

__all__ = [
    "REPORT_NAME",
    "SYNTHETIC_BANNER",
    "Captioned",
    "Grid",
    "Heading",
    "Html",
    "Section",
    "cohort_summary",
    "compare_report",
    "design_items",
    "figure_blocks",
    "format_p",
    "format_summary",
    "paper_report",
    "render_report",
    "reviewer_checklist",
    "search_design_items",
    "search_report",
    "split_table",
    "write_report",
]
