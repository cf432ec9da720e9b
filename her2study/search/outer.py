"""The outer folds of the nested search: repeated stratified K-fold, or by site.

``split.method`` chooses the outer loop (the search has no fixed training/test split of its own):

* ``block`` / ``column`` (the paper's split methods; the default) -- repeated stratified K-fold
  over all cases (``search.outer_folds`` x ``search.outer_repeats``, ``search.seed``);
* ``leave_one_site_out`` -- one outer fold per site of ``data.site_column``: its test cases are
  exactly that site's, the search and the refit see the other sites only (the nested estimate is
  then a *leave-one-site-out nested* estimate);
* ``site`` -- one outer fold: train on ``split.train_sites`` (default: every other site), test on
  ``split.test_sites``; cases of sites in neither are unused.

The inner CV stays stratified K-fold on the outer training cases (every training site in
every inner fold, so ComBat's batches are all seen in each inner fit): it chooses among
configurations, and leaving a site out there too would halve the data of each inner fit on a
three-site cohort for little gain in what is chosen.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
from sklearn.model_selection import RepeatedStratifiedKFold

from her2study.errors import ConfigError
from her2study.split import site_split, site_splits, site_values

SITE_METHODS = ("leave_one_site_out", "site")


@dataclass(frozen=True)
class OuterFold:
    """One outer fold: positions (into the design's rows) of its training and test cases."""

    repeat: int
    fold: int
    train: np.ndarray
    test: np.ndarray
    site: str | None = None  # the held-out site(s), comma-joined; None for stratified folds


def outer_method(cfg) -> str:
    """``stratified`` or one of :data:`SITE_METHODS`."""
    method = str(cfg.split.method) if cfg.get("split") is not None else "block"
    return method if method in SITE_METHODS else "stratified"


def site_test_sets(cfg, sites: pd.Series | None) -> dict[str, pd.Series]:
    """Held-out site(s) -> split Series (train/test/unused) of each outer fold by site."""
    method = outer_method(cfg)
    if sites is None:
        raise ConfigError(
            f"split.method={method} as the search's outer loop needs data.site_column (the "
            "manifest column naming each case's device or site) -> fix: e.g. "
            "data.site_column=device"
        )
    if method == "leave_one_site_out":
        return site_splits(sites)
    split = site_split(sites, cfg.split.train_sites, cfg.split.test_sites)
    return {",".join(sorted(set(sites[split == "test"]))): split}


def site_fold_problems(cfg, y: pd.Series, sites, names: dict) -> list[tuple]:
    """(message, fix) of every outer fold by site whose classes cannot give the estimate: a
    held-out site needs both classes (its AUC), its training sites ``search.inner_folds`` cases
    of each class (the inner CV); also a missing site column or too few sites. ``sites``: the
    cases' sites, or the cohort table (its ``data.site_column``). Made before any work
    (:mod:`her2study.preflight`)."""
    inner = int(cfg.search.inner_folds)
    out = []
    try:
        if isinstance(sites, pd.DataFrame):
            sites = site_values(sites, cfg.data.get("site_column"), str(cfg.split.method))
        tests = site_test_sets(cfg, sites)
    except ConfigError as exc:
        message, _, fix = str(exc).partition(" -> fix: ")
        return [(message, fix)]
    for held, split in tests.items():
        for part, need in (("test", 1), ("train", inner)):
            counts = y[split.loc[y.index] == part].value_counts()
            for cls in (0, 1):
                n = int(counts.get(cls, 0))
                if n >= need:
                    continue
                where = (
                    f"held-out site {held}"
                    if part == "test"
                    else f"the training sites of the outer fold holding out {held}"
                )
                key = "" if part == "test" else f"; search.inner_folds={inner} needs {inner}"
                fix = (
                    "use a site with both classes as split.test_sites, merge small sites in "
                    "data.site_column, or use the stratified outer loop (split.method=block)"
                    if part == "test"
                    else f"lower search.inner_folds (e.g. search.inner_folds={max(2, n)})"
                )
                out.append((f"{where} has {n} case(s) of class {names.get(cls, cls)}{key}", fix))
    return out


def outer_folds(cfg, y: pd.Series, sites: pd.Series | None, seed: int) -> list[OuterFold]:
    """The outer folds of the nested search (see the module docstring)."""
    s = cfg.search
    if outer_method(cfg) == "stratified":
        minority = int(min(y.sum(), len(y) - y.sum()))
        if minority < s.outer_folds:
            raise ConfigError(
                f"search.outer_folds={s.outer_folds} exceeds the minority class count ({minority})"
            )
        outer = RepeatedStratifiedKFold(
            n_splits=s.outer_folds, n_repeats=s.outer_repeats, random_state=seed
        )
        return [
            OuterFold(*divmod(j, int(s.outer_folds)), tr, te)
            for j, (tr, te) in enumerate(outer.split(np.zeros(len(y)), y.to_numpy()))
        ]
    problems = site_fold_problems(cfg, y, sites, {})
    if problems:
        message, fix = problems[0]
        raise ConfigError(f"{message} -> fix: {fix}" if fix else message)
    folds = []
    for k, (held, split) in enumerate(site_test_sets(cfg, sites).items()):
        where = split.loc[y.index].to_numpy()
        train, test = np.flatnonzero(where == "train"), np.flatnonzero(where == "test")
        folds.append(OuterFold(0, k, train, test, held))
    return folds


def outer_design(cfg, sites: pd.Series | None, seed: int) -> str:
    """The outer loop in words (the studies' ``design`` attribute, the estimate's
    ``outer_design``)."""
    s = cfg.search
    if outer_method(cfg) == "stratified":
        return f"outer {s.outer_folds}x{s.outer_repeats} inner {s.inner_folds} seed {seed}"
    held = list(site_test_sets(cfg, sites))
    return (
        f"outer {outer_method(cfg)} ({cfg.data.site_column}: held out {'; '.join(held)}) "
        f"inner {s.inner_folds} seed {seed}"
    )
