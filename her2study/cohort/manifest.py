"""Read a cohort manifest and validate all of it before any work.

A manifest is a CSV with one row per lesion: ``case_id``, ``image``, ``mask``, ``label`` and
optionally ``spacing_x_mm``/``spacing_y_mm``, ``mask_reader2``, ``split`` and clinical columns.
Paths are relative to the manifest. Every problem of the whole manifest is collected and reported
at once, each naming the case, the file and the fix.

New cases to predict have no labels: ``load_cohort(..., require_labels=False)``; with
``on_error="collect"`` a case with a problem of its own (missing file, empty mask, missing clinical
value) is set aside in ``Cohort.failed`` with the reason instead of stopping the whole manifest.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from her2study.cohort.checks import check_image, check_mask
from her2study.cohort.io import ImageReadError
from her2study.errors import Her2StudyError

log = logging.getLogger(__name__)

REQUIRED = ("image", "mask")
SPLIT_VALUES = {"train", "test"}


@dataclass(frozen=True)
class Case:
    """One lesion: its files, label and optional second reader's mask."""

    case_id: str
    image: Path
    mask: Path
    label: int | None  # 0/1; None for a cohort loaded without labels (-1: invalid, reported)
    mask_reader2: Path | None = None
    spacing_mm: tuple[float, float] | None = None  # from the manifest or config, else the header
    split: str | None = None


@dataclass(frozen=True)
class Problem:
    """One thing wrong with the input, with where it is and how to fix it."""

    case_id: str
    file: str
    message: str
    fix: str
    severity: str = "error"  # error | warning

    def __str__(self) -> str:
        where = f"case {self.case_id}" if self.case_id else "manifest"
        if self.file == "config" and not self.case_id:
            where = "config"
        file = f" [{self.file}]" if self.file and where != "config" else ""
        fix = f" -> fix: {self.fix}" if self.fix else ""
        return f"{self.severity.upper()} {where}{file}: {self.message}{fix}"


class CohortError(Her2StudyError, ValueError):
    """The cohort cannot be used; ``problems`` holds every error found."""

    def __init__(self, problems: list[Problem], source: str):
        self.problems = problems
        errors = [p for p in problems if p.severity == "error"]
        lines = [f"{len(errors)} problem(s) in {source}:"] + [f"  {p}" for p in problems]
        super().__init__("\n".join(lines))


@dataclass
class Cohort:
    """A validated cohort: cases with files (or none, for a features table) and a table."""

    table: pd.DataFrame  # index: case id; columns: label, clinical columns, split (if any)
    source: str  # "synthetic" or the manifest / features table path
    synthetic: bool = False
    cases: list[Case] = field(default_factory=list)
    warnings: list[Problem] = field(default_factory=list)
    label_column: str = "label"
    failed: dict[str, str] = field(default_factory=dict)  # on_error="collect": case -> reason
    columns: list[str] = field(default_factory=list)  # every column of the source file

    @property
    def has_labels(self) -> bool:
        return (
            self.label_column in self.table.columns and self.table[self.label_column].notna().all()
        )

    @property
    def labels(self) -> pd.Series:
        if self.label_column not in self.table.columns:
            raise ValueError(f"this cohort has no label column '{self.label_column}'")
        return self.table[self.label_column].astype(int)

    @property
    def ids(self) -> list[str]:
        return list(self.table.index)


def _check_labels(df: pd.DataFrame, id_col: str, label_col: str, file: str) -> list[Problem]:
    problems = []
    raw = df[label_col]
    numeric = pd.to_numeric(raw, errors="coerce")
    bad = df[~numeric.isin([0, 1])]
    for _, row in bad.iterrows():
        problems.append(
            Problem(
                str(row[id_col]),
                file,
                f"label {row[label_col]!r} is not 0 or 1",
                f"code column '{label_col}' as 1 = positive class, 0 = negative class",
            )
        )
    good = numeric[numeric.isin([0, 1])]
    if len(good) and good.nunique() < 2:
        problems.append(
            Problem(
                "",
                file,
                f"only one class in '{label_col}' (all {int(good.iloc[0])})",
                "a study needs cases of both classes",
            )
        )
    return problems


def check_table(
    df: pd.DataFrame,
    file: str,
    case_column: str,
    label_column: str,
    clinical_columns: list[str],
    require_labels: bool = True,
) -> list[Problem]:
    """Checks shared by manifests and features tables: ids, labels, clinical columns.

    ``require_labels=False``: the label column may be absent, and its values are not checked.
    """
    problems: list[Problem] = []
    needed = (case_column, label_column) if require_labels else (case_column,)
    missing = [c for c in needed if c not in df.columns]
    if missing:
        return [
            Problem(
                "",
                file,
                f"missing column(s) {missing}; found {list(df.columns)[:12]}",
                "add them, or name yours with data.case_column / data.label_column",
            )
        ]
    ids = df[case_column].astype(str).str.strip()
    for case in ids[ids.eq("") | df[case_column].isna()].index:
        problems.append(Problem(f"row {case + 2}", file, "empty case id", "give every row an id"))
    for dup in sorted(ids[ids.duplicated() & ids.ne("")].unique()):
        rows = ", ".join(str(i + 2) for i in ids.index[ids == dup])
        problems.append(
            Problem(dup, file, f"duplicate case id (CSV lines {rows})", "make case ids unique")
        )
    if require_labels:
        problems += _check_labels(df, case_column, label_column, file)
    for col in clinical_columns:
        if col not in df.columns:
            problems.append(
                Problem(
                    "",
                    file,
                    f"clinical column '{col}' named in config is absent",
                    f"add it, or remove it from data.clinical_columns ({list(df.columns)[:12]})",
                )
            )
            continue
        values = pd.to_numeric(df[col], errors="coerce")
        if len(df) and df[col].isna().all():
            problems.append(
                Problem(
                    "",
                    file,
                    f"clinical column '{col}' is empty (no case has a value)",
                    f"fill it in, or remove '{col}' from data.clinical_columns",
                )
            )
            continue
        for i in df.index[values.isna()]:
            shown = df.at[i, col]
            what = "missing (NaN)" if pd.isna(shown) else f"not numeric ({shown!r})"
            problems.append(
                Problem(
                    str(df.at[i, case_column]),
                    file,
                    f"clinical value '{col}' is {what}",
                    "fill it in (numeric; code categories as 0/1), or drop the column",
                )
            )
    return problems


def site_problems(
    df: pd.DataFrame, file: str, case_column: str, site_column: str | None
) -> list[Problem]:
    """The device/site column (``data.site_column``): present and filled for every case."""
    if not site_column:
        return []
    if site_column not in df.columns:
        return [
            Problem(
                "",
                file,
                f"missing column(s) ['{site_column}'] (data.site_column)",
                f"add a '{site_column}' column naming each case's device or site, "
                "or set data.site_column=null",
            )
        ]
    blank = df[site_column].isna() | (df[site_column].astype(str).str.strip() == "")
    return [
        Problem(str(cid), file, f"no {site_column} given", f"fill the '{site_column}' column")
        for cid in df.loc[blank, case_column]
    ]


def _check_shape(df: pd.DataFrame, file: str) -> Problem | None:
    """A manifest read as one column because of another delimiter, or with no rows."""
    if len(df.columns) == 1:
        header = str(df.columns[0])
        for sep, name in ((";", "semicolons"), ("\t", "tabs"), ("|", "'|'")):
            if sep in header:
                return Problem(
                    "",
                    file,
                    f"the manifest {file} is delimited by {name} ({sep!r}), not commas: "
                    f"it reads as one column {header[:60]!r}",
                    "save it as comma-separated CSV (in a spreadsheet: CSV UTF-8, comma; "
                    "decimals with a dot)",
                )
    if len(df) == 0:
        return Problem(
            "",
            file,
            f"the manifest {file} has no cases (only a header line)",
            "add one row per lesion below the header",
        )
    return None


SPACING_COLUMNS = ("spacing_x_mm", "spacing_y_mm")


def _check_spacing(df: pd.DataFrame, case_column: str, file: str) -> list[Problem]:
    """Pixel spacing columns: numbers with a dot, greater than 0 mm (empty: from the header)."""
    problems = []
    for col in SPACING_COLUMNS:
        if col not in df.columns:
            continue
        values = pd.to_numeric(df[col], errors="coerce")
        for i in df.index:
            raw = df.at[i, col]
            if pd.isna(raw) or (isinstance(raw, str) and not raw.strip()):
                continue
            case = str(df.at[i, case_column]).strip()
            value = values.at[i]
            if pd.isna(value):
                comma = isinstance(raw, str) and "," in raw
                problems.append(
                    Problem(
                        case,
                        file,
                        f"spacing column '{col}' is {raw!r}, not a number"
                        + (" (decimal comma)" if comma else ""),
                        f"use a dot as the decimal separator ({str(raw).replace(',', '.')})"
                        if comma
                        else "give the pixel spacing in mm as a number > 0 (e.g. 0.2)",
                    )
                )
            elif not np.isfinite(value) or value <= 0:
                problems.append(
                    Problem(
                        case,
                        file,
                        f"spacing column '{col}' is {raw!r}",
                        "spacing must be > 0 mm: give the pixel size in mm (e.g. 0.2), or "
                        "leave it empty to use the image header",
                    )
                )
    return problems


def _row_spacing(row: pd.Series, spacing_mm: float | None) -> tuple[float, float] | None:
    sx, sy = (pd.to_numeric(row.get(c), errors="coerce") for c in SPACING_COLUMNS)
    if pd.notna(sx) and pd.notna(sy) and sx > 0 and sy > 0:  # bad values: _check_spacing
        return float(sx), float(sy)
    if spacing_mm is not None:
        return float(spacing_mm), float(spacing_mm)
    return None


DEFAULT_MAX_IMAGE_PIXELS = 25_000_000  # data.max_image_pixels (config.py) documents it


def _check_case(
    case: Case, mask_label: int | None, root: Path, max_pixels: int | None = None
) -> list[Problem]:
    """Check one case's files from their headers (plus the mask's pixels and a NaN/inf scan of
    float images); report what is wrong with them. No image pixels are loaded otherwise."""
    problems = []

    def rel(p: Path) -> str:
        try:
            return str(p.relative_to(root))
        except ValueError:
            return str(p)

    try:
        header = check_image(case.image, case.spacing_mm, max_pixels)
    except ImageReadError as err:
        return [Problem(case.case_id, rel(case.image), str(err), err.fix)]
    for path, who in ((case.mask, "mask"), (case.mask_reader2, "second reader's mask")):
        if path is None:
            continue
        try:
            facts = check_mask(path, header, mask_label)
        except ImageReadError as err:
            problems.append(Problem(case.case_id, rel(path), f"{who}: {err}", err.fix))
            continue
        if not facts.has_lesion:
            problems.append(
                Problem(
                    case.case_id,
                    rel(path),
                    f"{who} is empty (no lesion pixels"
                    + (f" with label {mask_label})" if mask_label is not None else ")"),
                    "segment the lesion, or set data.mask_label to the lesion's label",
                )
            )
        elif facts.touches_edge:
            problems.append(
                Problem(
                    case.case_id,
                    rel(path),
                    f"{who} touches the image edge: peritumoral rings will be clipped",
                    "check the lesion is fully in view; coverage is reported per ring",
                    severity="warning",
                )
            )
    return problems


def load_cohort(
    manifest: str | Path,
    *,
    case_column: str = "case_id",
    label_column: str = "label",
    spacing_mm: float | None = None,
    mask_label: int | None = None,
    clinical_columns: list[str] | tuple[str, ...] = (),
    synthetic: bool = False,
    check_files: bool = True,
    require_labels: bool = True,
    on_error: str = "raise",
    ignore_columns: tuple[str, ...] | list[str] = (),
    keep_columns: tuple[str, ...] | list[str] = (),
    max_image_pixels: int | None = DEFAULT_MAX_IMAGE_PIXELS,
    site_column: str | None = None,
) -> Cohort:
    """Read and validate a manifest; raise :class:`CohortError` listing every problem.

    ``require_labels=False`` (new cases to predict): no label column is needed; when there is one
    its values are kept as numbers (NaN where not numeric) without checks. ``on_error="collect"``:
    the cases that have problems of their own (files, masks, clinical values, split) are left out
    and listed with the reasons in :attr:`Cohort.failed`; problems of the manifest as a whole
    (missing columns, empty or duplicate case ids) still raise. ``ignore_columns``: optional
    columns not to read at all (predict ignores ``mask_reader2`` and ``split``); ``keep_columns``:
    columns kept in :attr:`Cohort.table` as they are, when present (``split.balance_on``). Input
    files are only read, never written to. ``max_image_pixels``: larger images are reported from
    their header, before any pixel is read (None: no limit).
    """
    if on_error not in ("raise", "collect"):
        raise ValueError(f"on_error must be 'raise' or 'collect', not {on_error!r}")
    manifest = Path(manifest).resolve()
    file = manifest.name
    if not manifest.is_file():
        raise CohortError(
            [Problem("", str(manifest), "manifest not found", "check data.manifest")], str(manifest)
        )
    try:
        df = pd.read_csv(manifest, dtype={case_column: str}, keep_default_na=True)
    except Exception as exc:
        raise CohortError(
            [Problem("", file, f"cannot read the CSV ({exc})", "save it as UTF-8 CSV")], file
        ) from None
    df = df.drop(columns=[c for c in ignore_columns if c in df.columns])
    shape_problem = _check_shape(df, file)
    if shape_problem is not None:
        raise CohortError([shape_problem], str(manifest))
    clinical = list(clinical_columns)
    problems = check_table(df, file, case_column, label_column, clinical, require_labels)
    problems += site_problems(df, file, case_column, site_column)
    missing = [c for c in REQUIRED if c not in df.columns]
    if missing:
        problems.append(
            Problem("", file, f"missing column(s) {missing}", "add image and mask paths")
        )
    if any(p.message.startswith("missing column") for p in problems):
        raise CohortError(problems, str(manifest))

    problems += _check_spacing(df, case_column, file)
    root = manifest.parent
    cases = []
    for _, row in df.iterrows():
        cid = str(row[case_column]).strip()
        split = row.get("split")
        if split is not None and pd.notna(split) and str(split).strip().lower() not in SPLIT_VALUES:
            problems.append(
                Problem(cid, file, f"split {split!r} is not train/test", "use train or test")
            )
        paths = {}
        for col in ("image", "mask", "mask_reader2"):
            value = row.get(col)
            if value is None or (isinstance(value, float) and np.isnan(value)) or value == "":
                if col != "mask_reader2":
                    problems.append(Problem(cid, file, f"no {col} path", f"fill in '{col}'"))
                paths[col] = None
                continue
            paths[col] = (root / str(value).strip()).resolve()
        label = None
        if label_column in df.columns:
            value = pd.to_numeric(pd.Series([row[label_column]]), errors="coerce").iloc[0]
            label = int(value) if value in (0, 1) else (-1 if require_labels else None)
        if paths["image"] is None or paths["mask"] is None:
            continue
        cases.append(
            Case(
                case_id=cid,
                image=paths["image"],
                mask=paths["mask"],
                label=label,
                mask_reader2=paths["mask_reader2"],
                spacing_mm=_row_spacing(row, spacing_mm),
                split=str(split).strip().lower() if split is not None and pd.notna(split) else None,
            )
        )
    if check_files:
        for case in cases:
            problems += _check_case(case, mask_label, root, max_image_pixels)

    failed: dict[str, str] = {}
    if on_error == "collect":
        failed = _set_aside(problems, df[case_column].astype(str).str.strip())
        problems = [p for p in problems if p.case_id not in failed]
        cases = [c for c in cases if c.case_id not in failed]
    errors = [p for p in problems if p.severity == "error"]
    warnings = [p for p in problems if p.severity == "warning"]
    if errors:
        raise CohortError(problems, str(manifest))
    for w in warnings:
        log.warning("%s", w)

    has_label = label_column in df.columns
    keep = (
        ([label_column] if has_label else [])
        + clinical
        + (["split"] if "split" in df.columns else [])
        + ([site_column] if site_column and site_column not in clinical else [])
    )
    keep += [c for c in keep_columns if c in df.columns and c not in keep and c != case_column]
    table = df.assign(**{case_column: df[case_column].astype(str).str.strip()})
    table = table.set_index(case_column)[keep]
    table = table[~table.index.isin(list(failed))]
    if has_label:
        labels = pd.to_numeric(table[label_column], errors="coerce")
        table[label_column] = labels.astype(int) if require_labels else labels
    for col in clinical:
        table[col] = pd.to_numeric(table[col])
    table.index.name = "case_id"
    return Cohort(
        table=table,
        source="synthetic" if synthetic else str(manifest),
        synthetic=synthetic,
        cases=cases,
        warnings=warnings,
        label_column=label_column,
        failed=failed,
        columns=[str(c) for c in df.columns],
    )


def _set_aside(problems: list[Problem], ids: pd.Series) -> dict[str, str]:
    """Case id -> its errors (joined), for the errors that belong to one identifiable case."""
    unique = set(ids[~ids.duplicated(keep=False) & ids.ne("")])
    failed: dict[str, str] = {}
    for p in problems:
        if p.severity == "error" and p.case_id in unique:
            failed[p.case_id] = "; ".join(filter(None, [failed.get(p.case_id), str(p)]))
    return {cid: failed[cid] for cid in ids if cid in failed}
