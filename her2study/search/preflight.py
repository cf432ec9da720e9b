"""The search's share of the up-front checks (:mod:`her2study.preflight` calls them before any
extraction or fit): its settings and space against the config, its fold counts against the
classes, and its space against the regions and columns the data have.

Dimensions of the default search space the data cannot have (a ring width a features table has
no columns for, ``use_clinical`` without clinical columns) are dropped with one info line; a
space the user set is checked against the data.
"""

from __future__ import annotations

import logging

import pandas as pd
from omegaconf import OmegaConf, open_dict

from her2study.cohort.manifest import Problem
from her2study.errors import ConfigError
from her2study.split import class_size_problem, fold_train_size, smallest_class

log = logging.getLogger(__name__)

CONFIG = "config"


def config_problem(message: str, fix: str, file: str = CONFIG) -> Problem:
    """A problem of the config (or, with ``file``, of the data as a whole), with its fix."""
    return Problem("", file, message, fix)


def check_search_settings(cfg, extracts: bool) -> list[Problem]:
    """The search settings and space; with ``extracts``, its ring widths against those the
    config extracts (a features table is checked against its columns instead)."""
    from her2study.search.candidate import search_defaults
    from her2study.search.checks import check_search_config
    from her2study.search.space import parse_space

    problems = []
    try:
        check_search_config(cfg)  # its warnings are logged by the search itself
    except ConfigError as err:
        problems.append(config_problem(str(err), ""))
    try:
        dims = parse_space(cfg.search.space, search_defaults(cfg))
    except ConfigError as err:
        return problems + [config_problem(str(err), "")]
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
                config_problem(
                    f"search.space.ring_width_mm has width(s) {missing} mm whose features are "
                    f"not extracted (region.ring_widths_mm={sorted(have)})",
                    "add them, e.g. 'region.ring_widths_mm=[0.5,1,1.5,2,3]', or use +exp=search",
                )
            )
        if 0 in values and not cfg.region.include_intra:
            problems.append(
                config_problem(
                    "search.space.ring_width_mm has 0 (tumour only) but no tumour features are "
                    "extracted",
                    "set region.include_intra=true, or drop 0 from search.space.ring_width_mm",
                )
            )
    return problems


def check_search_folds(cfg, y: pd.Series, names: dict, task: str, table=None) -> list[Problem]:
    """Class counts of the nested search: outer folds on all cases (by site: each held-out site
    and its training sites, :func:`~her2study.search.outer.site_fold_problems`), inner folds in
    each outer training fold, LASSO's CV in each inner training fold (and the final study)."""
    n, cls = smallest_class(y, names)
    lasso = int(cfg.selection.lasso_cv)
    if task == "export" or cfg.get("search") is None:
        if n < lasso:
            return [class_size_problem("the cohort", n, cls, "selection.lasso_cv", lasso)]
        return []
    from her2study.search.outer import outer_method, site_fold_problems

    if outer_method(cfg) != "stratified":
        return [config_problem(*found) for found in site_fold_problems(cfg, y, table, names)]
    s = cfg.search
    outer, inner = int(s.outer_folds), int(s.inner_folds)
    if n < outer:
        return [class_size_problem("the cohort", n, cls, "search.outer_folds", outer)]
    m1 = fold_train_size(n, outer)
    if m1 < inner:
        return [
            config_problem(
                f"each outer training fold of search.outer_folds={outer} keeps about {m1} "
                f"case(s) of class {cls}; search.inner_folds={inner} needs at least {inner} per "
                "class",
                f"lower search.inner_folds (e.g. search.inner_folds={max(2, m1)}) or "
                "search.outer_folds, or add cases",
            )
        ]
    m2 = fold_train_size(m1, inner)
    if m2 < lasso:
        return [
            config_problem(
                f"each inner training fold (search.outer_folds={outer}, "
                f"search.inner_folds={inner}) keeps about {m2} case(s) of class {cls}; "
                f"selection.lasso_cv={lasso} inside it needs at least {lasso} per class",
                f"lower selection.lasso_cv (e.g. selection.lasso_cv={max(2, m2)}) or the "
                "search folds, or add cases",
            )
        ]
    return []


def regions_available(cfg, table: pd.DataFrame | None) -> set[str]:
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
    regions = regions_available(cfg, table)
    has_clinical = bool(configured_clinical(cfg))
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
                config_problem(
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
                config_problem(
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
            config_problem(
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


def configured_clinical(cfg) -> list[str]:
    cols = OmegaConf.select(cfg, "model.clinical.columns", default=None)
    return list(cols) if cols is not None else list(cfg.data.clinical_columns)
