"""Inner cross-validation of candidates, reusing fitted pipeline prefixes across trials."""

from __future__ import annotations

import contextlib
import threading
from collections import OrderedDict

import numpy as np
import pandas as pd
from sklearn.base import clone
from sklearn.metrics import roc_auc_score
from sklearn.model_selection import StratifiedKFold

from her2study.errors import ConfigError
from her2study.search.candidate import Candidate, Design, build_pipeline
from her2study.selection.correlation import CorrelationMemo
from her2study.selection.lasso import LassoPathMemo
from her2study.selection.mannwhitney import MannWhitneyMemo

# ------------------------------------------------------------------------------------------
# Inner CV with reuse of fitted pipeline prefixes
# ------------------------------------------------------------------------------------------


def _param_key(step) -> tuple:
    return (type(step).__name__,) + tuple(
        sorted((k, repr(v)) for k, v in step.get_params(deep=True).items())
    )


def _nbytes(value) -> int:
    if isinstance(value, tuple):
        return sum(_nbytes(v) for v in value)
    return int(getattr(value, "nbytes", 0) or 0) or (
        int(value.memory_usage(index=False).sum()) if isinstance(value, pd.DataFrame) else 64
    )


class InnerCV:
    """Inner stratified K-fold AUC of candidates on one set of cases.

    With ``reuse=True`` every fitted prefix of the pipeline is memoised per fold, keyed by the
    columns and by the class and parameters of each step so far; a later trial that shares a
    prefix (e.g. the same ring, correlation threshold and Mann-Whitney alpha with another model)
    starts from its outputs. The result equals fitting the whole Pipeline per fold (tested).
    The Spearman matrix of a fold's columns is computed once and shared by every correlation
    threshold (:class:`~her2study.selection.correlation.CorrelationMemo`, a quarter of
    ``cache_mb``), each column's Mann-Whitney test once per fold (``MannWhitneyMemo``) and the
    LASSO path once for both lambda rules (``LassoPathMemo``; a sixteenth each). Thread-safe
    (Optuna ``n_jobs``); the memo is bounded by ``cache_mb`` (least recently used entries go
    first).
    """

    def __init__(
        self,
        design: Design,
        index,
        n_folds: int,
        seed: int,
        reuse: bool = True,
        cache_mb: int = 1024,
    ):
        self.design = design
        self.index = pd.Index(index)
        self.X = design.X.loc[self.index]
        self.y = design.y.loc[self.index]
        self.seed = int(seed)
        minority = int(min(self.y.sum(), len(self.y) - self.y.sum()))
        if minority < n_folds:
            raise ConfigError(
                f"search.inner_folds={n_folds} exceeds the minority class count "
                f"({minority}) of an outer training fold; use fewer folds"
            )
        cv = StratifiedKFold(n_splits=n_folds, shuffle=True, random_state=self.seed)
        self.splits = list(cv.split(np.zeros(len(self.y)), self.y.to_numpy()))
        self.reuse = reuse
        self.cache_bytes = int(cache_mb) * 2**20
        self._memo: OrderedDict = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()
        self._key_locks: dict = {}
        self.corr_memo = CorrelationMemo(max_mb=max(int(cache_mb) / 4, 1))
        self.mw_memo = MannWhitneyMemo(max_mb=max(int(cache_mb) / 16, 1))
        self.lasso_memo = LassoPathMemo(max_mb=max(int(cache_mb) / 16, 1))
        self.hits = 0
        self.misses = 0
        self.fits = 0
        self._values = None  # X as one float64 array (the memoised path's z-score input)

    # -- memo --
    def _cached(self, key, compute):
        with self._lock:
            if key in self._memo:
                self._memo.move_to_end(key)
                self.hits += 1
                return self._memo[key]
            key_lock = self._key_locks.setdefault(key, threading.Lock())
        with key_lock:
            with self._lock:
                if key in self._memo:
                    self.hits += 1
                    return self._memo[key]
            value = compute()
            size = _nbytes(value)
            with self._lock:
                self.misses += 1
                self._memo[key] = value
                self._bytes += size
                while self._bytes > self.cache_bytes and len(self._memo) > 1:
                    _, old = self._memo.popitem(last=False)
                    self._bytes -= _nbytes(old)
                self._key_locks.pop(key, None)
            return value

    def _fold_data(self, i: int, cols: tuple):
        tr, va = self.splits[i]
        return self.X.iloc[tr][list(cols)], self.X.iloc[va][list(cols)], self.y.iloc[tr]

    def _fold_arrays(self, i: int, cols: tuple):
        """The fold's columns as float64 arrays: what ``scale`` turns a frame into anyway, without
        scikit-learn's per-column dtype checks of a frame of thousands of columns (the memoised
        path's z-score on 2,600 columns took 85 ms on a frame). Column-major, as scikit-learn's
        conversion of a frame: the column sums, hence every number after them, are then those
        of the frame bit for bit (row-major sums round differently)."""
        if self._values is None:
            self._values = self.X.to_numpy(dtype=np.float64)
        tr, va = self.splits[i]
        j = self.X.columns.get_indexer(list(cols))
        return (
            np.asfortranarray(self._values[np.ix_(tr, j)]),
            np.asfortranarray(self._values[np.ix_(va, j)]),
        )

    def _prob_reuse(self, i: int, cols: tuple, cols_key, pipe) -> np.ndarray:
        key: tuple = ("fold", i, cols_key)
        ytr = self.y.iloc[self.splits[i][0]]
        data = None
        # a frame only where a first step needs the case ids or column names (ComBat, the
        # robustness filter); ``scale`` gives an array either way, so its outputs are equal
        first = self._fold_arrays if pipe.steps[0][0] == "scale" else self._fold_data
        for name, step in pipe.steps[:-1]:
            key = key + ((name, _param_key(step)),)
            prev = data

            def fit_step(step=step, prev=prev):
                xtr, xva = prev if prev is not None else first(i, cols)[:2]
                fitted = clone(step)
                with self._count(), self.selection_memos():
                    ztr = fitted.fit_transform(xtr, ytr)
                return ztr, fitted.transform(xva)

            data = self._cached(key, fit_step)
        name, final = pipe.steps[-1]
        key = key + ((name, _param_key(final)),)

        def fit_final():
            xtr, xva = data
            fitted = clone(final)
            with self._count(), self.selection_memos():  # lasso_logistic: the LASSO path
                fitted.fit(xtr, ytr)
            return fitted.predict_proba(xva)[:, 1]

        return self._cached(key, fit_final)

    @contextlib.contextmanager
    def selection_memos(self):
        """The threshold-free work of the selectors shared within this block: the Spearman
        matrix (every correlation threshold), per-column Mann-Whitney tests (every column subset
        and alpha), the LASSO path (both lambda rules)."""
        with self.corr_memo.active(), self.mw_memo.active(), self.lasso_memo.active():
            yield

    @contextlib.contextmanager
    def _count(self, steps: int = 1):
        """Counts fitted pipeline steps (a whole pipeline counts its steps)."""
        yield
        with self._lock:
            self.fits += steps

    def iter_fold_probs(self, cand: Candidate, seed: int | None = None):
        """Predicted probabilities of each inner validation fold, one fold at a time."""
        seed = self.seed if seed is None else int(seed)
        cols = tuple(self.design.columns(cand))
        cols_key = (cand.region()[0], cand.use_clinical)  # region choice: its columns
        pipe = build_pipeline(cand, seed, self.design)
        for i in range(len(self.splits)):
            if self.reuse:
                yield self._prob_reuse(i, cols, cols_key, pipe)
            else:
                xtr, xva, ytr = self._fold_data(i, cols)
                fitted = clone(pipe)
                with self._count(len(pipe.steps)):
                    fitted.fit(xtr, ytr)
                yield fitted.predict_proba(xva)[:, 1]

    def fold_probs(self, cand: Candidate, seed: int | None = None) -> list[np.ndarray]:
        """Predicted probabilities of each inner validation fold."""
        return list(self.iter_fold_probs(cand, seed))

    def score(
        self, cand: Candidate, seed: int | None = None, on_fold=None
    ) -> tuple[float, list[float]]:
        """Mean inner-fold AUC (the objective) and the per-fold AUCs. ``on_fold(i, aucs)`` is
        called after each fold with the AUCs so far (a pruner stops the trial there by
        raising)."""
        aucs: list[float] = []
        for (_, va), p in zip(self.splits, self.iter_fold_probs(cand, seed), strict=False):
            aucs.append(float(roc_auc_score(self.y.iloc[va].to_numpy(), p)))
            if on_fold is not None:
                on_fold(len(aucs) - 1, aucs)
        return float(np.mean(aucs)), aucs


# ------------------------------------------------------------------------------------------
