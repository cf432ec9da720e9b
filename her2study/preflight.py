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
Dimensions of the default search space the data cannot have (a ring width a features table has
no columns for, ``use_clinical`` without clinical columns) are dropped with one info line
instead; a space the user set is checked against the data.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path

import pandas as pd
from omegaconf import OmegaConf, open_dict

from her2study.cohort.manifest import CohortError, Problem
from her2study.errors import ConfigError

log = logging.getLogger(__name__)

CONFIG = "config"
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


def _problem(message: str, fix: str, file: str = CONFIG) -> Problem:
    return Problem("", file, message, fix)


# --- the config alone ---------------------------------------------------------------------------


def check_config(cfg) -> list[Problem]:
    """Problems of the config that no data can fix: params file, search settings and space."""
    problems: list[Problem] = []
    extracts = str(cfg.data.source) != "features" and _task(cfg) in ("extract", *FITTING_TASKS)
    if extracts:
        problems += check_params_file(OmegaConf.select(cfg, "extractor.params_file"))
    if cfg.get("search") is not None and _task(cfg) == "search":  # export searches no space
        problems += _check_search_settings(cfg, extracts)
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


def _check_search_settings(cfg, extracts: bool) -> list[Problem]:
    from her2study.search import check_search_config, parse_space, search_defaults

    problems = []
    try:
        check_search_config(cfg)  # its warnings are logged by the search itself
    except ConfigError as err:
        problems.append(_problem(str(err), ""))
    try:
        dims = parse_space(cfg.search.space, search_defaults(cfg))
    except ConfigError as err:
        return problems + [_problem(str(err), "")]
    if not extracts:
        return problems  # a features table: checked against its columns
    have = {float(w) for w in cfg.region.ring_widths_mm}
    for dim in dims:
        if dim.name != "ring_width_mm":
            continue
        values = dim.choices if dim.kind == "categorical" else (dim.value,)
        missing = [w for w in values if w and float(w) not in have]
        if missing:
            problems.append(
                _problem(
                    f"search.space.ring_width_mm has width(s) {missing} mm whose features are "
                    f"not extracted (region.ring_widths_mm={sorted(have)})",
                    "add them, e.g. 'region.ring_widths_mm=[0.5,1,1.5,2,3]', or use +exp=search",
                )
            )
        if 0 in values and not cfg.region.include_intra:
            problems.append(
                _problem(
                    "search.space.ring_width_mm has 0 (tumour only) but no tumour features are "
                    "extracted",
                    "set region.include_intra=true, or drop 0 from search.space.ring_width_mm",
                )
            )
    return problems


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


def _train_size(n: int, k: int) -> int:
    """The smallest count of a class in the training part of a stratified k-fold split."""
    return n - math.ceil(n / k)


def _class_problem(where: str, n: int, cls: str, key: str, k: int) -> Problem:
    return _problem(
        f"{where} has {n} case(s) of class {cls}; {key}={k} needs at least {k} per class",
        f"lower {key} (e.g. {key}={max(2, n)}) or add cases",
    )


def _smallest(y: pd.Series, names: dict) -> tuple[int, str]:
    counts = y.value_counts()
    if len(counts) < 2:
        present = int(counts.index[0]) if len(counts) else 0
        return 0, names.get(1 - present, str(1 - present))
    return int(counts.min()), names.get(int(counts.idxmin()), str(counts.idxmin()))


def check_paper_folds(cfg, y: pd.Series, split: pd.Series, names: dict) -> list[Problem]:
    """Class counts of the paper protocol: the training CV (``evaluation.cv_folds``, repeated
    ``evaluation.cv_repeats`` times, also the nomogram's cross-fitting folds) and LASSO's CV
    (``selection.lasso_cv``) on all training cases and inside each of those folds."""
    problems = []
    train = y[split.loc[y.index] == "train"]
    test = y[split.loc[y.index] == "test"]
    n, cls = _smallest(train, names)
    if n == 0:
        return [
            _problem(
                f"the training set has no case of class {cls}",
                "use a split with both classes in training (split.method=block stratifies)",
            )
        ]
    if test.nunique() < 2:
        tn, tcls = _smallest(test, names)
        problems.append(
            _problem(
                f"the test set has {tn} case(s) of class {tcls}: no test AUC",
                "raise split.test_size or mark test cases of both classes",
            )
        )
    k = int(cfg.evaluation.cv_folds)
    lasso = int(cfg.selection.lasso_cv)
    if n < lasso:
        problems.append(_class_problem("the training set", n, cls, "selection.lasso_cv", lasso))
    if n < k:
        problems.append(_class_problem("the training set", n, cls, "evaluation.cv_folds", k))
    elif _train_size(n, k) < lasso <= n:
        m = _train_size(n, k)
        problems.append(
            _problem(
                f"each training fold of evaluation.cv_folds={k} (out-of-fold predictions, "
                f"repeated CV, the nomogram's cross-fitting) keeps about {m} case(s) of class "
                f"{cls}; selection.lasso_cv={lasso} inside it needs at least {lasso} per class",
                f"lower selection.lasso_cv (e.g. selection.lasso_cv={max(2, m)}) or "
                "evaluation.cv_folds, or add cases",
            )
        )
    return problems


def check_search_folds(cfg, y: pd.Series, names: dict, task: str, table=None) -> list[Problem]:
    """Class counts of the nested search: outer folds on all cases (by site: each held-out site
    and its training sites, :func:`~her2study.search.outer.site_fold_problems`), inner folds in
    each outer training fold, LASSO's CV in each inner training fold (and the final study)."""
    n, cls = _smallest(y, names)
    lasso = int(cfg.selection.lasso_cv)
    if task == "export" or cfg.get("search") is None:
        if n < lasso:
            return [_class_problem("the cohort", n, cls, "selection.lasso_cv", lasso)]
        return []
    from her2study.search.outer import outer_method, site_fold_problems

    if outer_method(cfg) != "stratified":
        return [_problem(*found) for found in site_fold_problems(cfg, y, table, names)]
    s = cfg.search
    outer, inner = int(s.outer_folds), int(s.inner_folds)
    if n < outer:
        return [_class_problem("the cohort", n, cls, "search.outer_folds", outer)]
    m1 = _train_size(n, outer)
    if m1 < inner:
        return [
            _problem(
                f"each outer training fold of search.outer_folds={outer} keeps about {m1} "
                f"case(s) of class {cls}; search.inner_folds={inner} needs at least {inner} per "
                "class",
                f"lower search.inner_folds (e.g. search.inner_folds={max(2, m1)}) or "
                "search.outer_folds, or add cases",
            )
        ]
    m2 = _train_size(m1, inner)
    if m2 < lasso:
        return [
            _problem(
                f"each inner training fold (search.outer_folds={outer}, "
                f"search.inner_folds={inner}) keeps about {m2} case(s) of class {cls}; "
                f"selection.lasso_cv={lasso} inside it needs at least {lasso} per class",
                f"lower selection.lasso_cv (e.g. selection.lasso_cv={max(2, m2)}) or the "
                "search folds, or add cases",
            )
        ]
    return []


def _regions_available(cfg, table: pd.DataFrame | None) -> set[str]:
    """Region names (column prefixes) the features will have."""
    if table is not None:
        return {str(c).split("_", 1)[0] for c in table.columns if not c.startswith("reader2__")}
    from her2study.regions import region_specs

    r = cfg.region
    return {
        s.name
        for s in region_specs(
            r.include_intra, list(r.ring_widths_mm), [list(b) for b in r.bands_mm]
        )
    }


def adapt_search_space(cfg, cohort, table: pd.DataFrame | None) -> list[Problem]:
    """Drop the choices of ``search.space`` the data cannot have (a ring width without features
    in a features table, ``use_clinical=true`` without clinical columns) with one info line;
    a dimension with no choice left, or a fixed setting that cannot be met, is a problem."""
    from her2study.regions import ring_spec

    space = cfg.search.space
    regions = _regions_available(cfg, table)
    has_clinical = bool(_clinical(cfg))
    dropped, problems = [], []
    ring = space.get("ring_width_mm") if space is not None else None
    if table is not None and OmegaConf.is_dict(ring) and ring.get("type") == "categorical":
        keep = [
            w
            for w in ring.choices
            if (float(w) == 0 and "intra" in regions)
            or (float(w) > 0 and "intra" in regions and ring_spec(float(w)).name in regions)
        ]
        gone = [w for w in ring.choices if w not in keep]
        have = sorted(r for r in regions if r.startswith(("intra", "peri")))
        if gone and not _is_default(space, "ring_width_mm"):  # a space the user set: checked
            problems.append(
                _problem(
                    f"search.space.ring_width_mm: no features for width(s) {list(gone)} mm "
                    f"(regions in the features table: {have}; a width needs intra_ and "
                    "peri<w>mm_ columns, 0 needs intra_)",
                    "drop them from search.space.ring_width_mm, or add those columns",
                )
            )
        elif gone and keep:
            dropped.append(f"ring_width_mm {list(gone)} (no such region in the features table)")
            with open_dict(space):
                space.ring_width_mm.choices = keep
        elif gone:
            problems.append(
                _problem(
                    "no search.space.ring_width_mm choice has features (regions in the table: "
                    f"{have}; a width needs intra_ and peri<w>mm_ columns, 0 needs intra_)",
                    "name the table's columns by region (intra_..., peri1mm_...), or set "
                    "search.space.ring_width_mm=null",
                )
            )
    clin = space.get("use_clinical") if space is not None else None
    default_clin = _is_default(space, "use_clinical")
    if (
        not has_clinical
        and OmegaConf.is_dict(clin)
        and True in list(clin.get("choices", []))
        and default_clin
    ):
        with open_dict(space):
            space.use_clinical = False  # a fixed value, not a dimension
        dropped.append("use_clinical (no clinical columns: data.clinical_columns is empty)")
    elif not has_clinical and (
        clin is True
        or (clin is None and cfg.search.use_clinical)
        or (OmegaConf.is_dict(clin) and True in list(clin.get("choices", [])))
    ):
        problems.append(
            _problem(
                "use_clinical=true, but there are no clinical columns",
                "set data.clinical_columns, or search.use_clinical=false",
            )
        )
    if dropped:
        log.info("search space adapted to the data: dropped %s", "; ".join(dropped))
    return problems


def _is_default(space, key: str) -> bool:
    """``space[key]`` is as in the shipped default space (conf/search/default.yaml): such a
    dimension adapts to the data; one the user set is checked against it."""
    from importlib import resources

    with resources.files("her2study.conf").joinpath("search/default.yaml").open() as fh:
        default = OmegaConf.load(fh).space.get(key)
    value = space.get(key)
    plain = OmegaConf.to_container(value) if OmegaConf.is_config(value) else value
    return plain == (OmegaConf.to_container(default) if OmegaConf.is_config(default) else default)


def _clinical(cfg) -> list[str]:
    cols = OmegaConf.select(cfg, "model.clinical.columns", default=None)
    return list(cols) if cols is not None else list(cfg.data.clinical_columns)


def _check_signatures(cfg, cohort, table, file) -> list[Problem]:
    """The paper's signatures this data can give: the missing ones in one log line; none at
    all is a problem."""
    from her2study.study import planned_signatures

    regions = _regions_available(cfg, table)
    planned, missing = planned_signatures(cfg, regions, bool(_clinical(cfg)))
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
