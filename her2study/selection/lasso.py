"""LASSO (L1) logistic regression with the penalty chosen by K-fold cross-validation."""

from __future__ import annotations

import math
import warnings
from numbers import Integral, Real

import numpy as np
from sklearn.base import BaseEstimator
from sklearn.exceptions import ConvergenceWarning
from sklearn.feature_selection import SelectorMixin
from sklearn.model_selection import StratifiedKFold
from sklearn.svm import l1_min_c
from sklearn.utils._param_validation import Interval, StrOptions
from sklearn.utils.validation import check_is_fitted, validate_data
from threadpoolctl import threadpool_limits

from ._common import (
    _binary_target,
    _binary_target_tags,
    _seed,
    _standardise,
)
from ._l1path import _l1_logistic_path, _score_path
from ._memo import ArrayMemo, array_digest

__all__ = ["LassoCVSelector", "LassoPathMemo"]


class LassoCVSelector(SelectorMixin, BaseEstimator):
    """Keep the features with non-zero L1-logistic coefficients at a CV-chosen penalty.

    The path follows glmnet: ``n_lambdas`` values of ``C`` on a log grid from the smallest
    ``C`` that admits one feature (``sklearn.svm.l1_min_c`` on centred ``X`` with
    ``loss="log"``, i.e. ``1 / max_j |x_j' (y - mean(y))|``) up to ``C_min / lambda_ratio``.
    The same grid, computed on all of ``X``, is used in every fold. Each fold scores every
    ``C`` on its held-out part; ``rule`` picks ``C`` from the mean fold score.

    The intercept is not penalised (as glmnet): at the chosen ``C`` the fit satisfies
    ``sum(y - p) = 0``. Each fit is solved exactly by a proximal Newton method (Lee, Sun &
    Saunders 2014; glmnet's outer loop): the log-likelihood is replaced by its quadratic
    approximation at the current point, that L1-penalised weighted least-squares problem
    is solved exactly by feature-sign search (Lee, Battle, Raina & Ng 2007; the intercept
    is a free variable), and a backtracking line search on the true objective gives the
    step. Iterations stop when every KKT condition holds to within ``tol * lambda``. Fits
    along the path are warm-started, and glmnet's sequential strong rule screens the
    columns: each fit sees only the features active at the previous ``C`` plus those whose
    gradient passes the strong-rule bound; the KKT conditions of the full problem are then
    checked and violators added until none remain (see ``experiments/benchmarks``).

    Parameters
    ----------
    cv : int or CV splitter, default=10
        Number of stratified folds (shuffled with ``random_state``) or a splitter with a
        ``split(X, y)`` method. An int larger than the minority-class count is reduced to
        it with a warning.
    n_lambdas : int, default=20
        Number of penalty values on the path.
    lambda_ratio : float, default=1e-2
        Smallest over largest penalty (glmnet's ``lambda.min.ratio``; 1e-2 = two decades).
    rule : {"min", "1se"}, default="min"
        ``"min"``: best mean CV score (ties: larger penalty). ``"1se"``: largest penalty
        whose mean score is within one standard error of the best.
    scoring : {"neg_log_loss", "roc_auc"}, default="neg_log_loss"
        Held-out score (glmnet's ``type.measure="deviance"`` or ``"auc"``).
    max_features : int or None, default=None
        Upper bound on the selected count (glmnet's ``dfmax``): the chosen ``C`` is moved
        down the path until at most this many coefficients are non-zero.
    standardize : bool, default=True
        Penalise coefficients of z-scored columns (glmnet's default), standardising each
        training fold on its own; ``coef_`` is reported on the scale of ``X``. A no-op when
        ``X`` is already z-scored, as in :func:`her2study.models.make_radiomics_pipeline`.
    screen : bool, default=True
        Use the strong-rule working set (same solution, faster). ``False`` fits every
        ``C`` on all columns.
    tol : float, default=1e-4
        Relative KKT tolerance of each fit: stop when ``|sum(y - p)|``, ``|x_j'(y - p) -
        lambda sign(w_j)|`` (non-zero ``w_j``) and ``|x_j'(y - p)| - lambda`` (zero ``w_j``)
        are all at most ``tol * lambda`` (columns z-scored, ``lambda = 1 / C``).
    max_iter : int, default=1000
        Newton iteration limit per fit.
    random_state : int, RandomState or None, default=0
        Seeds the fold shuffling (the solver itself is deterministic).

    Attributes
    ----------
    C_ : float
        Chosen inverse penalty.
    lambda_ : float
        ``1 / C_`` (penalty on the summed log-loss; glmnet's lambda is ``1 / (C_ n)``).
    coef_ : ndarray of shape (n_features_in_,)
        Coefficients fitted on all of ``X`` at ``C_``.
    intercept_ : float
    support_ : ndarray of bool, shape (n_features_in_,)
        ``coef_ != 0``.
    coef_path_ : ndarray of shape (n_lambdas, n_features_in_)
        Full-data coefficients along the path (for coefficient-path plots).
    intercept_path_ : ndarray of shape (n_lambdas,)
    cv_results_ : dict
        ``Cs``, ``lambdas``, ``mean_score``, ``se_score`` (sd / sqrt(n_folds)),
        ``split_scores`` (n_folds, n_lambdas), ``n_nonzero`` (full-data path), ``best_index``
        (for the "min" rule) and ``chosen_index``.
    classes_ : ndarray of shape (2,)
        ``classes_[1]`` is the positive class of the coefficients.
    n_iter_ : int
        Largest Newton iteration count over all fits.
    """

    _parameter_constraints: dict = {
        "cv": [Interval(Integral, 2, None, closed="left"), "cv_object"],
        "n_lambdas": [Interval(Integral, 2, None, closed="left")],
        "lambda_ratio": [Interval(Real, 0, 1, closed="neither")],
        "rule": [StrOptions({"min", "1se"})],
        "scoring": [StrOptions({"neg_log_loss", "roc_auc"})],
        "max_features": [None, Interval(Integral, 1, None, closed="left")],
        "standardize": ["boolean"],
        "screen": ["boolean"],
        "tol": [Interval(Real, 0, None, closed="neither")],
        "max_iter": [Interval(Integral, 1, None, closed="left")],
        "random_state": ["random_state"],
    }

    def __init__(
        self,
        cv=10,
        n_lambdas=20,
        lambda_ratio=1e-2,
        rule="min",
        scoring="neg_log_loss",
        max_features=None,
        standardize=True,
        screen=True,
        tol=1e-4,
        max_iter=1000,
        random_state=0,
    ):
        self.cv = cv
        self.n_lambdas = n_lambdas
        self.lambda_ratio = lambda_ratio
        self.rule = rule
        self.scoring = scoring
        self.max_features = max_features
        self.standardize = standardize
        self.screen = screen
        self.tol = tol
        self.max_iter = max_iter
        self.random_state = random_state

    def fit(self, X, y):
        """Cross-validate the L1 path on ``(X, y)`` and keep the non-zero coefficients."""
        self._validate_params()
        X, y = validate_data(self, X, y, dtype=np.float64, ensure_min_samples=2)
        self.classes_, y01 = _binary_target(self, y)
        # The path is hundreds of small matrix-vector products; multi-threaded BLAS only
        # adds synchronisation cost to them (up to 40x on a busy two-core machine).
        with threadpool_limits(limits=1, user_api="blas"):
            return self._fit(X, y01)

    def _fit(self, X, y01):
        seed = _seed(self.random_state)
        splitter = self._splitter(y01, seed)
        memo = LassoPathMemo.current() if isinstance(self.cv, Integral) else None
        key = None
        if memo is not None:
            key = LassoPathMemo.key(X, y01, self._path_params(seed, splitter.get_n_splits()))
        path = memo.get(key) if memo is not None else None
        if path is None:
            path = self._cv_path(X, y01, splitter, seed)
            if memo is not None:
                memo.put(key, path)
        Cs, split_scores = path["Cs"].copy(), path["split_scores"].copy()
        coef_path, icpt_path = path["coef_path"].copy(), path["icpt_path"].copy()
        self.n_iter_ = int(path["n_iter"])
        n_unconverged = int(path["n_unconverged"])
        if n_unconverged:
            warnings.warn(
                f"LassoCVSelector: {n_unconverged} L1-logistic fit(s) hit max_iter="
                f"{self.max_iter}; consider raising it.",
                ConvergenceWarning,
                stacklevel=3,
            )

        n_folds = split_scores.shape[0]
        mean = split_scores.mean(axis=0)
        se = split_scores.std(axis=0, ddof=1) / np.sqrt(n_folds) if n_folds > 1 else 0 * mean
        best = int(np.argmax(mean))  # first maximum = smallest C = largest penalty
        if self.rule == "min":
            chosen = best
        else:
            chosen = int(np.flatnonzero(mean >= mean[best] - se[best])[0])
        nnz = np.count_nonzero(coef_path, axis=1)

        if nnz[chosen] == 0:
            later = np.flatnonzero(nnz > 0)
            if later.size == 0:
                raise ValueError("LassoCVSelector: every coefficient is zero along the path.")
            new = int(later[0])
            warnings.warn(
                f"LassoCVSelector: all coefficients are zero at the CV-chosen "
                f"C={Cs[chosen]:.4g}; using the smallest C on the path with a non-zero "
                f"coefficient (C={Cs[new]:.4g}, {nnz[new]} feature(s)).",
                UserWarning,
                stacklevel=3,
            )
            chosen = new
        if self.max_features is not None and nnz[chosen] > self.max_features:
            ok = np.flatnonzero((nnz[: chosen + 1] >= 1) & (nnz[: chosen + 1] <= self.max_features))
            if ok.size:
                chosen = int(ok[-1])
            else:  # the path jumps past max_features at its first step
                chosen = int(np.flatnonzero(nnz > 0)[0])
                weakest = np.argsort(np.abs(coef_path[chosen]))[: -self.max_features]
                coef_path[chosen, weakest] = 0.0
                warnings.warn(
                    "LassoCVSelector: no point on the path has <= max_features features; "
                    f"keeping the {self.max_features} largest coefficients at C={Cs[chosen]:.4g}.",
                    UserWarning,
                    stacklevel=3,
                )

        self.C_ = float(Cs[chosen])
        self.lambda_ = 1.0 / self.C_
        self.coef_ = coef_path[chosen].copy()
        self.intercept_ = float(icpt_path[chosen])
        self.support_ = self.coef_ != 0
        self.coef_path_ = coef_path
        self.intercept_path_ = icpt_path
        self.cv_results_ = {
            "Cs": Cs,
            "lambdas": 1.0 / Cs,
            "mean_score": mean,
            "se_score": se,
            "split_scores": split_scores,
            "n_nonzero": nnz,
            "best_index": best,
            "chosen_index": chosen,
        }
        return self

    def _cv_path(self, X, y01, splitter, seed) -> dict:
        """The rule-free part of ``fit``: the grid, the held-out scores of every fold along it
        and the full-data path (what :class:`LassoPathMemo` shares between rules)."""
        Xs = _standardise(X) if self.standardize else X - X.mean(axis=0)
        if not np.any(np.abs(Xs.T @ (y01 - y01.mean())) > 1e-12):
            raise ValueError(
                "LassoCVSelector: no feature is associated with y at all (constant features?)."
            )
        c_min = l1_min_c(Xs, y01, loss="log", fit_intercept=False)
        Cs = c_min * np.logspace(0, math.log10(1.0 / self.lambda_ratio), self.n_lambdas)

        split_scores = []
        n_unconverged = n_iter = 0
        for train, test in splitter.split(X, y01):
            if np.unique(y01[train]).size < 2 or np.unique(y01[test]).size < 2:
                raise ValueError(
                    "LassoCVSelector: a cross-validation fold holds one class only; "
                    "use fewer folds or a stratified splitter."
                )
            coefs, icpts, bad, iters = _l1_logistic_path(
                X[train], y01[train], Cs, self._solver_options(seed)
            )
            n_unconverged += bad
            n_iter = max(n_iter, iters)
            eta = X[test] @ coefs.T + icpts
            split_scores.append(_score_path(y01[test], eta, self.scoring))
        coef_path, icpt_path, bad, iters = _l1_logistic_path(X, y01, Cs, self._solver_options(seed))
        return {
            "Cs": Cs,
            "split_scores": np.asarray(split_scores),
            "coef_path": coef_path,
            "icpt_path": icpt_path,
            "n_unconverged": np.int64(n_unconverged + bad),
            "n_iter": np.int64(max(n_iter, iters)),
        }

    def _path_params(self, seed, n_splits) -> tuple:
        """Everything but the data that :meth:`_cv_path` depends on (not ``rule``,
        ``max_features``)."""
        return (
            n_splits,
            self.n_lambdas,
            self.lambda_ratio,
            self.scoring,
            self.standardize,
            self.screen,
            self.tol,
            self.max_iter,
            seed,
        )

    def _solver_options(self, seed):
        return {
            "standardize": self.standardize,
            "screen": self.screen,
            "tol": self.tol,
            "max_iter": self.max_iter,
            "seed": seed,
        }

    def _splitter(self, y01, seed):
        if not isinstance(self.cv, Integral):
            return self.cv
        minority = int(min(y01.sum(), y01.size - y01.sum()))
        if minority < 2:
            raise ValueError(
                f"LassoCVSelector needs at least 2 samples of each class for "
                f"cross-validation, got {minority} in the minority class."
            )
        n_splits = self.cv
        if n_splits > minority:
            warnings.warn(
                f"LassoCVSelector: cv={self.cv} exceeds the minority-class count "
                f"({minority}); using {minority} folds.",
                UserWarning,
                stacklevel=4,
            )
            n_splits = minority
        return StratifiedKFold(n_splits=n_splits, shuffle=True, random_state=seed)

    def _get_support_mask(self):
        check_is_fitted(self)
        return self.support_

    def __sklearn_tags__(self):
        return _binary_target_tags(super().__sklearn_tags__())


class LassoPathMemo(ArrayMemo):
    """The rule-free part of :meth:`LassoCVSelector.fit` (grid, fold scores along it, full-data
    path), keyed by the bytes of ``X`` and ``y`` and the path's parameters: a fit with another
    ``rule`` or ``max_features`` on the same data takes the stored path, so its selection is
    the one it computes alone (tested). Only for an int ``cv`` (a splitter object is not
    keyed). Activate with :meth:`active`.
    """

    @staticmethod
    def key(X: np.ndarray, y01: np.ndarray, params: tuple) -> tuple:
        return (repr(params), array_digest(X, y01))
