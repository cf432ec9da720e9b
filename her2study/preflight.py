"""Every check that depends on the config or the data, made before any extraction or fit.

One place for them, called by each task through :func:`her2study.tasks.common.cohort_and_features`
(so before features are extracted, a model is fitted or a result is written):

* the config alone: the pyradiomics params file (readable YAML mapping), the search settings and
  space (structure, ring widths that would not be extracted);
* the cohort against the config: the split (``split.balance_on`` a column of the cohort, the
  ``split`` column filled with train/test and both present), the clinical columns, the class
  counts of every cross-validation level the task runs (the paper's training CV, LASSO's CV
  inside each of its folds and the nomogram's cross-fitting; the search's outer, inner and LASSO
  folds), the search space against the regions and columns the data have.

Every problem is collected and raised at once as one :class:`PreflightError`, each with its fix.
The search's checks (settings, fold counts, the space against the data: dimensions of the default
space the data cannot have are dropped with one info line) live beside the search, in
:mod:`her2study.search.preflight`; the fold-count rule shared with the paper protocol's own guard
in :mod:`her2study.split`.
"""

from __future__ import annotations

import logging
from pathlib import Path

import pandas as pd
from omegaconf import OmegaConf

from her2study.cohort.manifest import CohortError, Problem
from her2study.errors import ConfigError
from her2study.search.preflight import (
    CONFIG,
    adapt_search_space,
    check_search_folds,
    check_search_settings,
    configured_clinical,
    regions_available,
)
from her2study.search.preflight import config_problem as _problem
from her2study.split import smallest_class, training_fold_problems

log = logging.getLogger(__name__)

FITTING_TASKS = ("paper", "search", "export")


class PreflightError(CohortError, ConfigError):
    """Every problem found before the work (a :class:`CohortError`, and a :class:`ConfigError`
    since many are the config's)."""


def preflight(cfg, load):
    """``load()`` -> ``(cohort, features_or_None)``; run every check around it, raise all
    problems at once; return what ``load`` returned."""
    problems = check_config(cfg)
    try:
        cohort, table = load()
    except CohortError as err:
        if not problems:
            raise
        raise PreflightError(problems + err.problems, err_source(err)) from None
    problems += check_data(cfg, cohort, table)
    if any(p.severity == "error" for p in problems):
        raise PreflightError(problems, Path(str(cohort.source)).name or cohort.source)
    return cohort, table


def raise_config_problems(cfg) -> None:
    """Raise the config's own problems (:func:`check_config`) now, before a run opens; the data
    checks follow in :func:`preflight`."""
    problems = [p for p in check_config(cfg) if p.severity == "error"]
    if problems:
        raise PreflightError(problems, CONFIG)


def err_source(err: CohortError) -> str:
    first = str(err).splitlines()[0] if str(err) else ""
    return first.split(" problem(s) in ", 1)[-1].rstrip(":") or "the input"


def _task(cfg) -> str:
    return str(OmegaConf.select(cfg, "task.name", default=""))


# --- the config alone ---------------------------------------------------------------------------


def check_config(cfg) -> list[Problem]:
    """Problems of the config that no data can fix: params file, search settings and space."""
    problems: list[Problem] = []
    extracts = str(cfg.data.source) != "features" and _task(cfg) in ("extract", *FITTING_TASKS)
    if extracts:
        problems += check_params_file(OmegaConf.select(cfg, "extractor.params_file"))
    if cfg.get("search") is not None and _task(cfg) == "search":  # export searches no space
        problems += check_search_settings(cfg, extracts)
    return problems


def check_params_file(params_file) -> list[Problem]:
    """A pyradiomics params file that exists and reads as a YAML mapping (pyradiomics' own
    schema checks its keys when the extractor is built, still before any extraction)."""
    import yaml

    if not params_file:
        return []
    path = Path(str(params_file))
    fix = "give a readable pyradiomics params YAML (extractor.params_file), or null"
    if not path.is_file():
        return [_problem(f"extractor.params_file {path} not found", fix, path.name)]
    try:
        with open(path, encoding="utf-8") as fh:
            content = yaml.safe_load(fh)
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
        why = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        return [_problem(f"cannot read the pyradiomics params file ({why})", fix, path.name)]
    if content is not None and not isinstance(content, dict):
        return [
            _problem(
                f"the pyradiomics params file holds a {type(content).__name__}, not a mapping "
                "of setting / imageType / featureClass",
                fix,
                path.name,
            )
        ]
    return []


# --- the cohort against the config -------------------------------------------------------------


def check_data(cfg, cohort, table: pd.DataFrame | None) -> list[Problem]:
    """Problems of the cohort for what this task will do with it."""
    file = Path(str(cohort.source)).name if not cohort.synthetic else "synthetic cohort"
    task = _task(cfg)
    problems = _check_clinical(cfg, cohort, file)
    if task not in FITTING_TASKS or not cohort.has_labels:
        return problems
    y = cohort.labels
    names = {0: str(cfg.data.negative_class), 1: str(cfg.data.positive_class)}
    if task == "paper" and str(cfg.split.method) not in ("block", "column"):
        problems += _check_signatures(cfg, cohort, table, file)  # sites: checked by the split
    elif task == "paper":
        split_problems = check_split(cfg, cohort, file)
        problems += split_problems
        if not split_problems:
            from her2study.split import split_from_config

            split = split_from_config(cohort.table, cfg.split, cohort.label_column, int(cfg.seed))
            problems += check_paper_folds(cfg, y, split, names)
        problems += _check_signatures(cfg, cohort, table, file)
    else:
        problems += check_search_folds(cfg, y, names, task, cohort.table)
        if cfg.get("search") is not None and task == "search":
            problems += adapt_search_space(cfg, cohort, table)
    return problems


def _check_clinical(cfg, cohort, file: str) -> list[Problem]:
    """``model.clinical.columns`` must be among the loaded ``data.clinical_columns``."""
    cols = OmegaConf.select(cfg, "model.clinical.columns", default=None)
    if cols is None:
        return []
    have = list(cfg.data.clinical_columns)
    absent = [c for c in cols if c not in have]
    if not absent:
        return []
    return [
        _problem(
            f"model.clinical.columns names {absent}, not in data.clinical_columns={have}",
            "add them to data.clinical_columns (the columns that are read), or "
            "model.clinical.columns=null to use all of them",
        )
    ]


def check_split(cfg, cohort, file: str) -> list[Problem]:
    """The split settings against the cohort's columns and values."""
    s = cfg.split
    table = cohort.table
    method = str(s.method)
    if method == "column":
        if "split" not in table.columns:
            return [
                _problem(
                    f"split.method=column needs a 'split' column (train/test); {file} has "
                    f"columns {cohort.columns or list(table.columns)}",
                    "add it to the manifest / features table, or use split.method=block",
                )
            ]
        values = table["split"].astype("string").str.strip().str.lower()
        problems = []
        unknown = values[values.isna() | ~values.isin(["train", "test"])]
        for cid in unknown.index[:10]:
            raw = table.at[cid, "split"]
            problems.append(
                Problem(
                    str(cid),
                    file,
                    f"split {raw!r} is not train/test",
                    "use train or test for every case (split.method=column needs a 'split' "
                    "column (train/test) filled for every case)",
                )
            )
        if len(unknown) > 10:
            problems.append(
                _problem(f"... and {len(unknown) - 10} more split values", "", file=file)
            )
        for side in ("train", "test"):
            if not unknown.size and not (values == side).any():
                other = "test" if side == "train" else "train"
                problems.append(
                    _problem(
                        f"the 'split' column has no {side} cases (all {len(values)} are '{other}')",
                        f"mark some cases '{side}', or use split.method=block (a seeded, "
                        "stratified split)",
                        file=file,
                    )
                )
        return problems
    problems = []
    if not 0 < float(s.test_size) < 1:
        problems.append(_problem(f"split.test_size={s.test_size}", "use a fraction in (0, 1)"))
    if int(s.block_size) < 2:
        problems.append(_problem(f"split.block_size={s.block_size}", "use a block size >= 2"))
    col = s.balance_on
    if col is not None:
        if col not in table.columns:
            shown = cohort.columns or list(table.columns)
            problems.append(
                _problem(
                    f"split.balance_on={col!r} is not a column of {file} (its columns: {shown})",
                    "set split.balance_on to one of those columns, or split.balance_on=null "
                    "to split without matching",
                )
            )
        else:
            values = pd.to_numeric(table[col], errors="coerce")
            if values.isna().any():
                n = int(values.isna().sum())
                problems.append(
                    _problem(
                        f"split.balance_on={col!r} is missing or not numeric for {n} case(s)",
                        f"fill in '{col}' with numbers, or split.balance_on=null",
                        file=file,
                    )
                )
    return problems


def check_paper_folds(cfg, y: pd.Series, split: pd.Series, names: dict) -> list[Problem]:
    """Class counts of the paper protocol: both classes in training and in test, and the
    training set's CV levels (:func:`her2study.split.training_fold_problems`)."""
    problems = []
    train = y[split.loc[y.index] == "train"]
    test = y[split.loc[y.index] == "test"]
    n, cls = smallest_class(train, names)
    if n == 0:
        return [
            _problem(
                f"the training set has no case of class {cls}",
                "use a split with both classes in training (split.method=block stratifies)",
            )
        ]
    if test.nunique() < 2:
        tn, tcls = smallest_class(test, names)
        problems.append(
            _problem(
                f"the test set has {tn} case(s) of class {tcls}: no test AUC",
                "raise split.test_size or mark test cases of both classes",
            )
        )
    k, lasso = int(cfg.evaluation.cv_folds), int(cfg.selection.lasso_cv)
    return problems + training_fold_problems(train, k, lasso, names)


def _check_signatures(cfg, cohort, table, file) -> list[Problem]:
    """The paper's signatures this data can give: the missing ones in one log line; none at
    all is a problem."""
    from her2study.study import planned_signatures

    regions = regions_available(cfg, table)
    planned, missing = planned_signatures(cfg, regions, bool(configured_clinical(cfg)))
    if missing:
        log.info(
            "signatures not fitted: %s",
            "; ".join(f"{name} ({why})" for name, why in missing.items()),
        )
    if not planned:
        return [
            _problem(
                "no signature can be fitted: " + "; ".join(f"{k}: {v}" for k, v in missing.items()),
                "give feature columns of the configured regions (intra_..., peri<w>mm_...) or "
                "clinical columns (data.clinical_columns)",
                file=file,
            )
        ]
    return []
