"""A self-contained HTML report: inline CSS, figures as base64 PNG, no scripts, no external URLs.

A report is a title, a data-source banner and a list of :class:`Section` s, each a list of
blocks rendered in order:

- ``str``: a paragraph (escaped);
- ``pandas.DataFrame`` / ``Series``: a table (escaped; numbers right-aligned);
- ``matplotlib.figure.Figure``: an embedded PNG;
- ``dict``: a two-column table (key, value; multi-line values shown preformatted);
- :class:`Heading`: a sub-heading; :class:`Captioned`: any block with a caption;
- :class:`Html`: a trusted raw snippet, inserted as is.

Everything that is not :class:`Html` is escaped, so case ids, feature names and config values
containing ``<`` or ``&`` are shown as text. The file is written atomically.
"""

from __future__ import annotations

import base64
import html
import io
import os
import re
import tempfile
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

import numpy as np
import pandas as pd

from her2study import __version__

__all__ = [
    "Captioned",
    "Grid",
    "Heading",
    "Html",
    "Section",
    "SYNTHETIC_BANNER",
    "figure_png",
    "render_report",
    "write_report",
]

SYNTHETIC_BANNER = "SYNTHETIC DATA \u2014 simulated ultrasound, not clinical results"
MAX_ROWS = 200  # longer tables are cut, with a note (the CSV next to the report has them all)
DPI = 100


@dataclass(frozen=True)
class Html:
    """A trusted HTML snippet, inserted without escaping."""

    raw: str


@dataclass(frozen=True)
class Heading:
    """A sub-heading inside a section."""

    text: str


@dataclass
class Captioned:
    """A block (table, figure, ...) with a caption under it."""

    block: object
    caption: str


@dataclass
class Grid:
    """Blocks side by side (e.g. the training and test figures), wrapping on narrow pages."""

    blocks: list


@dataclass
class Section:
    """One numbered section of the report (listed in the table of contents)."""

    title: str
    blocks: list = field(default_factory=list)


def esc(value) -> str:
    return html.escape(str(value), quote=True)


# ---------------------------------------------------------------------------------------- cells

_NUMERIC = re.compile(
    r"^[<>\u2264\u2265]?\s*[-+\u2212]?(\d[\d,]*\.?\d*|\.\d+)(e[-+]?\d+)?%?"  # 0.852, <0.001, 12%
    r"(\s*\([^()]*\))?$",  # optional "(0.788-0.916)" / "(12.5%)"
    re.IGNORECASE,
)
_BLANK = {"", "-", "\u2013", "nan", "NaN", "None"}


def format_cell(v) -> str:
    """A cell's text: floats with 3 decimals (3 significant digits from a million on)."""
    if v is None:
        return "-"
    if isinstance(v, (bool, np.bool_)):
        return "yes" if v else "no"
    if isinstance(v, (int, np.integer)):
        return str(int(v))
    if isinstance(v, (float, np.floating)):
        v = float(v)
        if np.isnan(v):
            return "-"
        if np.isinf(v):
            return "\u221e" if v > 0 else "\u2212\u221e"
        if abs(v) >= 1e6:
            return f"{v:.3g}"
        if float(v).is_integer() and abs(v) >= 1000:
            return f"{int(v)}"
        text = f"{v:.3f}"
        return "0.000" if text == "-0.000" else text
    if isinstance(v, (list, tuple)):
        return ", ".join(format_cell(x) for x in v)
    return str(v)


def _is_numeric_text(s: str) -> bool:
    return s in _BLANK or bool(_NUMERIC.match(s.strip()))


def _numeric_column(values: list, texts: list[str]) -> bool:
    shown = [t for t in texts if t not in _BLANK]
    if not shown:
        return False
    return all(
        isinstance(v, (int, float, np.integer, np.floating))
        and not isinstance(v, bool)
        or _is_numeric_text(t)
        for v, t in zip(values, texts, strict=True)
    )


def table_html(df: pd.DataFrame | pd.Series, max_rows: int = MAX_ROWS) -> str:
    """An escaped HTML table; numeric columns right-aligned; a non-default index shown."""
    if isinstance(df, pd.Series):
        df = df.to_frame(name=df.name if df.name is not None else "value")
    show_index = not (
        isinstance(df.index, pd.RangeIndex) and df.index.start == 0 and df.index.step == 1
    )
    if show_index:
        names = [n if n is not None else "" for n in df.index.names]
        df = df.reset_index()
        df.columns = [*names, *df.columns[len(names) :]]
    total = len(df)
    cut = df.iloc[:max_rows]
    columns = [str(c) for c in cut.columns]
    texts = [[format_cell(v) for v in cut.iloc[:, i]] for i in range(len(columns))]
    klass = []
    for i, c in enumerate(columns):
        names = ["num"] if _numeric_column(list(cut.iloc[:, i]), texts[i]) else []
        names += ["ref"] if c.startswith("paper ") else []  # the paper's reference values
        klass.append(f' class="{" ".join(names)}"' if names else "")
    head = "".join(f"<th{k} scope=col>{esc(c)}</th>" for k, c in zip(klass, columns, strict=True))
    body = []
    for r in range(len(cut)):
        cells = "".join(f"<td{klass[i]}>{esc(texts[i][r])}</td>" for i in range(len(columns)))
        body.append(f"<tr>{cells}</tr>")
    note = ""
    if total > max_rows:
        note = f"<p class=note>First {max_rows} of {total} rows shown.</p>"
    if not total:
        body.append(f"<tr><td colspan={max(len(columns), 1)} class=empty>(no rows)</td></tr>")
    return (
        f"<div class=table-wrap><table><thead><tr>{head}</tr></thead>"
        f"<tbody>{''.join(body)}</tbody></table></div>{note}"
    )


def _text_html(text: str) -> str:
    """Escaped text; lines kept; indented or commented blocks (YAML, code) preformatted."""
    lines = text.splitlines()
    if len(lines) <= 1:
        return esc(text)
    if any(ln[:1] in (" ", "\t", "#") for ln in lines):
        return f"<pre>{esc(text)}</pre>"
    return "<br>".join(esc(ln) for ln in lines)


def kv_html(items: dict) -> str:
    """A two-column table of a dict; multi-line values preformatted."""
    rows = []
    for k, v in items.items():
        if isinstance(v, Html):
            value = v.raw
        else:
            value = _text_html(format_cell(v))
        rows.append(f"<tr><th scope=row>{esc(k)}</th><td>{value}</td></tr>")
    return f"<div class=table-wrap><table class=kv><tbody>{''.join(rows)}</tbody></table></div>"


def figure_png(fig, dpi: int = DPI) -> bytes:
    """A matplotlib Figure as PNG bytes (a figure already rendered to PNG bytes as it is)."""
    if isinstance(fig, bytes):
        return fig
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi, bbox_inches="tight", facecolor="white")
    return buf.getvalue()


def figure_html(fig, alt: str = "figure") -> str:
    data = base64.b64encode(figure_png(fig)).decode("ascii")
    return f'<img class=fig alt="{esc(alt)}" src="data:image/png;base64,{data}">'


def _is_figure(block) -> bool:
    if isinstance(block, bytes):
        return block.startswith(b"\x89PNG\r\n\x1a\n")  # rendered once (tasks' figures)
    try:
        from matplotlib.figure import Figure
    except ImportError:  # pragma: no cover
        return False
    return isinstance(block, Figure)


def block_html(block, caption: str | None = None) -> str:
    if isinstance(block, Captioned):
        return block_html(block.block, block.caption)
    if isinstance(block, Grid):
        cells = "".join(f"<div>{block_html(b)}</div>" for b in block.blocks)
        return f"<div class=grid>{cells}</div>"
    if isinstance(block, Html):
        inner = block.raw
    elif isinstance(block, Heading):
        return f"<h3>{esc(block.text)}</h3>"
    elif isinstance(block, str):
        inner = f"<p>{esc(block)}</p>"
    elif isinstance(block, (pd.DataFrame, pd.Series)):
        inner = table_html(block)
    elif isinstance(block, dict):
        inner = kv_html(block)
    elif _is_figure(block):
        inner = figure_html(block, alt=caption or "figure")
    else:
        raise TypeError(
            f"report block of type {type(block).__name__}: use str, DataFrame, Figure, dict, "
            "Heading, Captioned, Grid or Html"
        )
    if caption is None:
        return inner
    return f"<figure>{inner}<figcaption>{esc(caption)}</figcaption></figure>"


# ---------------------------------------------------------------------------------------- page

CSS = """
:root { --ink: #1d2430; --muted: #5b6573; --line: #d9dee5; --zebra: #f4f6f9;
        --accent: #1f5fa8; --warn-bg: #b3261e; --info-bg: #e8f0fa; }
* { box-sizing: border-box; }
html { -webkit-text-size-adjust: 100%; }
body { margin: 0; background: #fff; color: var(--ink);
       font: 15px/1.5 -apple-system, "Segoe UI", Roboto, "Helvetica Neue", Arial,
             "Liberation Sans", "DejaVu Sans", sans-serif; }
main { max-width: 1200px; margin: 0 auto; padding: 24px 32px 64px; }
header.top { border-bottom: 2px solid var(--ink); padding-bottom: 10px; margin-bottom: 18px; }
h1 { font-size: 28px; line-height: 1.2; margin: 0 0 6px; }
.meta { color: var(--muted); font-size: 13px; margin: 0; }
.meta span + span::before { content: "\\00b7"; margin: 0 8px; }
.banner { margin: 14px 0 6px; padding: 12px 16px; border-radius: 6px; font-weight: 600; }
.banner.synthetic { background: var(--warn-bg); color: #fff; font-size: 18px;
                    letter-spacing: .02em; text-align: center; }
.banner.real { background: var(--info-bg); border: 1px solid #b9cde6; color: #17375e;
               word-break: break-all; }
nav.toc { background: #fafbfc; border: 1px solid var(--line); border-radius: 6px;
          padding: 10px 18px; margin: 18px 0 8px; }
nav.toc h2 { font-size: 14px; text-transform: uppercase; letter-spacing: .06em;
             color: var(--muted); margin: 4px 0; border: 0; padding: 0; }
nav.toc ol { margin: 4px 0; padding-left: 22px; columns: 2; column-gap: 32px; }
nav.toc a { color: var(--accent); text-decoration: none; }
nav.toc a:hover { text-decoration: underline; }
section { margin-top: 28px; }
h2 { font-size: 21px; margin: 0 0 10px; padding-bottom: 4px; border-bottom: 1px solid var(--line); }
h3 { font-size: 16px; margin: 20px 0 6px; color: #2b3645; }
p { margin: 8px 0; max-width: 80ch; }
p.note { color: var(--muted); font-size: 13px; }
.table-wrap { overflow-x: auto; margin: 8px 0 14px; }
table { border-collapse: collapse; font-size: 13px; font-variant-numeric: tabular-nums; }
th, td { padding: 5px 10px; border-bottom: 1px solid var(--line); text-align: left;
         vertical-align: top; white-space: nowrap; }
thead th { background: #eef1f5; border-bottom: 2px solid #b8c0cc; font-weight: 600;
           white-space: nowrap; }
tbody tr:nth-child(even) { background: var(--zebra); }
td.num, th.num { text-align: right; white-space: nowrap; }
td.empty { color: var(--muted); font-style: italic; }
td.ref { color: #6b7480; background: rgba(0, 0, 0, .035); }
table.kv { width: 100%; }
table.kv th { width: 28%; font-weight: 600; background: transparent; }
table.kv th, table.kv td { white-space: normal; }
table.kv td { word-break: break-word; }
pre { margin: 0; font: 12px/1.4 "DejaVu Sans Mono", Menlo, Consolas, monospace;
      background: #f6f8fa; border: 1px solid var(--line); border-radius: 4px; padding: 8px;
      white-space: pre-wrap; }
figure { margin: 10px 0 20px; }
figcaption { color: var(--muted); font-size: 13px; margin-top: 4px; }
img.fig { display: block; max-width: 100%; height: auto; border: 1px solid var(--line);
          border-radius: 4px; }
.grid { display: grid; grid-template-columns: repeat(auto-fit, minmax(420px, 1fr)); gap: 8px 20px; }
.grid figure { margin: 6px 0; }
footer { margin-top: 40px; color: var(--muted); font-size: 12px;
         border-top: 1px solid var(--line); padding-top: 8px; }
@media print { nav.toc { display: none; } section { break-inside: avoid-page; } }
"""


def _slug(i: int, title: str) -> str:
    words = re.sub(r"[^a-z0-9]+", "-", title.lower()).strip("-")
    return f"s{i}-{words}"[:60]


def render_report(
    *, title: str, source: str, synthetic: bool, sections: list[Section], date: str | None = None
) -> str:
    """The report as one HTML string."""
    date = date or datetime.now().strftime("%Y-%m-%d %H:%M")
    if synthetic:
        banner = f'<div class="banner synthetic" role=alert>{esc(SYNTHETIC_BANNER)}</div>'
    else:
        banner = f'<div class="banner real">Data: {esc(source)}</div>'
    ids = [_slug(i, s.title) for i, s in enumerate(sections, 1)]
    toc = "".join(
        f'<li><a href="#{sid}">{esc(s.title)}</a></li>'
        for sid, s in zip(ids, sections, strict=True)
    )
    body = []
    for i, (sid, s) in enumerate(zip(ids, sections, strict=True), 1):
        blocks = "\n".join(block_html(b) for b in s.blocks)
        body.append(f'<section id="{sid}"><h2>{i}. {esc(s.title)}</h2>\n{blocks}\n</section>')
    return f"""<!DOCTYPE html>
<html lang=en>
<head>
<meta charset=utf-8>
<meta name=viewport content="width=device-width, initial-scale=1">
<meta name=generator content="her2study {esc(__version__)}">
<title>{esc(title)}</title>
<style>{CSS}</style>
</head>
<body>
<main>
<header class=top>
<h1>{esc(title)}</h1>
<p class=meta><span>{esc(date)}</span><span>her2study {esc(__version__)}</span></p>
{banner}
</header>
<nav class=toc aria-label=Contents><h2>Contents</h2><ol>{toc}</ol></nav>
{chr(10).join(body)}
<footer>Generated by her2study {esc(__version__)} on {esc(date)}. Self-contained file: figures
are embedded; no scripts, no external resources.</footer>
</main>
</body>
</html>
"""


def write_report(
    path: str | Path,
    *,
    title: str,
    source: str,
    synthetic: bool,
    sections: list[Section],
    date: str | None = None,
) -> Path:
    """Render and write the report atomically (temp file in the same folder + ``os.replace``)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    text = render_report(
        title=title, source=source, synthetic=synthetic, sections=sections, date=date
    )
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path
