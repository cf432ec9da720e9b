"""Training/test split as the paper did it: stratified block randomisation, age-matched.

Within each class, cases are ordered by the balancing variable (age) and cut into blocks of
``block_size``; inside each block a seeded random draw sends its share to the test set, the
fractional shares carried from block to block so that the totals match ``test_size`` exactly.
Neighbouring ages thus land on both sides, which balances age between the sets. A manifest's own
``split`` column is used instead when asked for.

Device / site-aware validation (``data.site_column``): ``site`` trains on some sites and tests on
others (``split.train_sites``, ``split.test_sites``; cases of sites in neither are ``unused``);
``leave_one_site_out`` gives one such split per site (:func:`site_splits`), each site held out in
turn -- what a model meets on a scanner it has never seen.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from her2study.cohort.manifest import Problem
from her2study.errors import ConfigError


def block_split(
    table: pd.DataFrame,
    label_column: str = "label",
    test_size: float = 54 / 209,
    block_size: int = 10,
    balance_on: str | None = "age",
    seed: int = 0,
) -> pd.Series:
    """A Series (index = case ids) of "train"/"test"."""
    if not 0 < test_size < 1:
        raise ConfigError(f"split.test_size must be in (0, 1), got {test_size}")
    if block_size < 2:
        raise ConfigError(f"split.block_size must be >= 2, got {block_size}")
    if balance_on is not None and balance_on not in table.columns:
        raise ConfigError(
            f"split.balance_on={balance_on!r} is not a cohort column; "
            f"use one of {list(table.columns)} or null"
        )
    rng = np.random.default_rng(seed)
    out = pd.Series("train", index=table.index, name="split")
    for label in sorted(table[label_column].unique()):
        ids = table.index[table[label_column] == label]
        if balance_on is not None:
            keys = table.loc[ids, balance_on].to_numpy(dtype=float)
            order = np.lexsort((rng.random(len(ids)), keys))  # random order among equal ages
        else:
            order = rng.permutation(len(ids))
        ids = ids[order]
        n_test_total = int(round(len(ids) * test_size))
        taken, owed = 0, 0.0
        for start in range(0, len(ids), block_size):
            block = ids[start : start + block_size]
            owed += len(block) * test_size
            k = min(int(round(owed - taken)), len(block), n_test_total - taken)
            if start + block_size >= len(ids):
                k = n_test_total - taken  # last block settles the total
            chosen = rng.choice(len(block), size=max(k, 0), replace=False)
            out.loc[block[chosen]] = "test"
            taken += max(k, 0)
    return out


def check_site_config(cfg_split, site_column: str | None, harmonise=None) -> None:
    """What the config alone can tell about site splits and harmonisation, before any work."""
    method = str(cfg_split.method)
    if method in ("site", "leave_one_site_out") and not site_column:
        site_values(pd.DataFrame(), site_column, method)  # raises: needs data.site_column
    if method == "site" and not cfg_split.test_sites:
        raise ConfigError(
            "split.method=site needs split.test_sites (the sites held out) -> fix: e.g. "
            "split.test_sites=[C]"
        )
    if harmonise is not None and not site_column:
        raise ConfigError(
            "selection.harmonise=combat needs each case's device or site -> fix: set "
            "data.site_column (e.g. data.site_column=device)"
        )


def site_values(table: pd.DataFrame, site_column: str | None, method: str) -> pd.Series:
    """The cases' sites as strings; a clear message when ``data.site_column`` is missing."""
    if not site_column:
        raise ConfigError(
            f"split.method={method} needs data.site_column (the manifest column naming each "
            "case's device or site) -> fix: e.g. data.site_column=device"
        )
    if site_column not in table.columns:
        raise ConfigError(
            f"data.site_column={site_column!r} is not a cohort column -> fix: add it to the "
            "manifest / features table, or name the right column"
        )
    return table[site_column].astype(str).str.strip()


def site_split(sites: pd.Series, train_sites=None, test_sites=None) -> pd.Series:
    """Train on ``train_sites`` (default: every other site), test on ``test_sites``; the cases of
    sites in neither are ``unused``."""
    present = sorted(sites.unique())
    if not test_sites:
        raise ConfigError(
            f"split.method=site needs split.test_sites (one or more of {present}) -> fix: e.g. "
            f"split.test_sites=[{present[-1]}]"
        )
    test = [str(s) for s in test_sites]
    train = [str(s) for s in train_sites] if train_sites else [s for s in present if s not in test]
    unknown = [s for s in train + test if s not in present]
    if unknown:
        raise ConfigError(f"split sites {unknown} do not occur in the cohort's sites {present}")
    both = sorted(set(train) & set(test))
    if both:
        raise ConfigError(f"sites {both} are in both split.train_sites and split.test_sites")
    if not train:
        raise ConfigError("split.method=site leaves no site to train on: set split.train_sites")
    out = pd.Series("unused", index=sites.index, name="split")
    out[sites.isin(train)] = "train"
    out[sites.isin(test)] = "test"
    return out


def site_splits(sites: pd.Series) -> dict[str, pd.Series]:
    """Leave-one-site-out: for each site, the split that tests on it and trains on the rest."""
    present = sorted(sites.unique())
    if len(present) < 2:
        raise ConfigError(
            f"split.method=leave_one_site_out needs at least 2 sites, the cohort has {present}"
        )
    return {s: site_split(sites, test_sites=[s]) for s in present}


def split_from_config(
    table: pd.DataFrame, cfg_split, label_column: str, seed: int, site_column: str | None = None
) -> pd.Series:
    """The configured split: ``block`` randomisation, the manifest's ``column``, or ``site``
    (``leave_one_site_out`` has one split per site: :func:`site_splits`)."""
    if cfg_split.method == "site":
        sites = site_values(table, site_column, "site")
        return site_split(sites, cfg_split.train_sites, cfg_split.test_sites)
    if cfg_split.method == "leave_one_site_out":
        raise ConfigError(
            "split.method=leave_one_site_out has one split per site: use site_splits()"
        )
    if cfg_split.method == "column":
        if "split" not in table.columns or table["split"].isna().any():
            raise ConfigError(
                "split.method=column needs a 'split' column (train/test) filled for every case "
                "-> fix: add it to the manifest / features table, or use split.method=block"
            )
        return table["split"].astype(str).str.lower().rename("split")
    if cfg_split.method == "block":
        return block_split(
            table,
            label_column,
            cfg_split.test_size,
            cfg_split.block_size,
            cfg_split.balance_on,
            seed,
        )
    raise ConfigError(
        f"unknown split.method {cfg_split.method!r}: use block, column, site or leave_one_site_out"
    )


# --- how many cases of each class the folds need ------------------------------------------------
# The rule once, for the up-front checks (her2study.preflight, search.preflight) and for the
# paper protocol's own guard (study.fit_signatures): a stratified k-fold CV needs k cases of each
# class, and the training part of each of its folds keeps n - ceil(n / k) of a class of n.


def fold_train_size(n: int, k: int) -> int:
    """The smallest count of a class of ``n`` in the training part of a stratified k-fold split."""
    return n - math.ceil(n / k)


def smallest_class(y: pd.Series, names: dict) -> tuple[int, str]:
    """(count, name) of the rarer class of ``y`` (0 and the absent class's name for one class)."""
    counts = y.value_counts()
    if len(counts) < 2:
        present = int(counts.index[0]) if len(counts) else 0
        return 0, names.get(1 - present, str(1 - present))
    return int(counts.min()), names.get(int(counts.idxmin()), str(counts.idxmin()))


def class_size_problem(where: str, n: int, cls: str, key: str, k: int) -> Problem:
    """``where`` has too few (``n``) cases of ``cls`` for ``key=k`` folds, with the fix."""
    return Problem(
        "",
        "config",
        f"{where} has {n} case(s) of class {cls}; {key}={k} needs at least {k} per class",
        f"lower {key} (e.g. {key}={max(2, n)}) or add cases",
    )


def training_fold_problems(
    y_train: pd.Series, cv_folds: int, lasso_cv: int, names: dict, inside_folds: bool = True
) -> list[Problem]:
    """Class counts of the paper protocol's training set: its CV (``evaluation.cv_folds``: the
    out-of-fold predictions, repeated CV, the nomogram's cross-fitting) and LASSO's CV
    (``selection.lasso_cv``) on all training cases and, with ``inside_folds``, inside each of
    those folds (where LASSO would otherwise fall back to fewer folds with a warning)."""
    n, cls = smallest_class(y_train, names)
    problems = []
    if n < lasso_cv:
        problems.append(
            class_size_problem("the training set", n, cls, "selection.lasso_cv", lasso_cv)
        )
    if n < cv_folds:
        problems.append(
            class_size_problem("the training set", n, cls, "evaluation.cv_folds", cv_folds)
        )
    elif inside_folds and fold_train_size(n, cv_folds) < lasso_cv <= n:
        m = fold_train_size(n, cv_folds)
        problems.append(
            Problem(
                "",
                "config",
                f"each training fold of evaluation.cv_folds={cv_folds} (out-of-fold predictions, "
                f"repeated CV, the nomogram's cross-fitting) keeps about {m} case(s) of class "
                f"{cls}; selection.lasso_cv={lasso_cv} inside it needs at least {lasso_cv} per "
                "class",
                f"lower selection.lasso_cv (e.g. selection.lasso_cv={max(2, m)}) or "
                "evaluation.cv_folds, or add cases",
            )
        )
    return problems
