"""Training/test split as the paper did it: stratified block randomisation, age-matched.

Within each class, cases are ordered by the balancing variable (age) and cut into blocks of
``block_size``; inside each block a seeded random draw sends its share to the test set, the
fractional shares carried from block to block so that the totals match ``test_size`` exactly.
Neighbouring ages thus land on both sides, which balances age between the sets. A manifest's own
``split`` column is used instead when asked for.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

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


def split_from_config(table: pd.DataFrame, cfg_split, label_column: str, seed: int) -> pd.Series:
    """The configured split: ``block`` randomisation or the manifest's ``column``."""
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
    raise ConfigError(f"unknown split.method {cfg_split.method!r}: use block or column")
