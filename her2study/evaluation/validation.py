"""Optimism-corrected bootstrap validation of a whole modelling pipeline (Harrell's method).

:func:`optimism_bootstrap` follows R ``rms::validate`` (Harrell, Lee & Mark 1996; Harrell,
*Regression Modeling Strategies*, 2nd ed., section 5.3.5; Steyerberg, *Clinical Prediction
Models*, 2nd ed., chapter 17):

1. Fit the estimator on all ``n`` cases and compute each index on the same cases: the
   *apparent* performance (rms ``index.orig``).
2. For ``b = 1..B``: draw ``n`` cases with replacement, refit a clone of the estimator on
   them, compute the indices on that bootstrap sample (``training``) and on the original
   cases (``test``).
3. ``optimism = mean_b(training_b - test_b)`` and ``corrected = apparent - optimism``
   (rms ``index.corrected``).

The estimator is refit from scratch in every repetition, feature selection included,
so the optimism of the selection is part of the correction; that is the point of
validating the pipeline rather than the final model.

Indices (rows):

``auc``
    ROC AUC (Mann-Whitney). rms reports Somers' ``Dxy = 2 * AUC - 1``, so rms's Dxy
    optimism is twice this one.
``cal_slope``
    Logistic recalibration slope: coefficient ``b`` of ``y ~ a + b * logit(p)``; rms's
    ``Slope``. It is 1 in the apparent fit of an unpenalised maximum-likelihood logistic
    model but not for penalised or selected pipelines, so it is computed, not assumed.
``cal_intercept``
    Calibration-in-the-large: ``a`` in ``y ~ a + offset(logit(p))``, as
    :func:`her2study.evaluation.calibration_slope_intercept`. rms's ``Intercept`` is the
    intercept of the two-parameter fit ``y ~ a + b * logit(p)`` instead (it goes with the
    slope); both are 0 under perfect calibration.
``brier``
    ``mean((p - y)^2)``; rms's ``B``.
"""

from __future__ import annotations

import logging
import re
import warnings
from collections import Counter
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
from joblib import Parallel, delayed
from sklearn.base import clone
from threadpoolctl import threadpool_limits

from her2study.fitcache import active_fit_cache, content_key

from .delong import _batch_auc

__all__ = ["INDICES", "ValidationResult", "optimism_bootstrap", "performance_indices"]

log = logging.getLogger(__name__)

INDICES = ("auc", "cal_slope", "cal_intercept", "brier")
_CLIP = 1e-9  # as the study clips probabilities before taking logits


@dataclass(frozen=True)
class ValidationResult:
    """Result of :func:`optimism_bootstrap`; one entry per index in ``index``.

    Attributes
    ----------
    index : tuple of str
        Index names (rows of :meth:`to_frame`).
    apparent, training, test, optimism, corrected : ndarray of shape (n_index,)
        rms ``validate`` columns ``index.orig``, ``training``, ``test``, ``optimism`` and
        ``index.corrected``: the apparent value, the mean over successful repetitions of
        the index on the bootstrap sample and on the original data, their mean difference,
        and ``apparent - optimism``.
    n : ndarray of int, shape (n_index,)
        Repetitions used for each index (rms ``n``): successful repetitions whose index
        was finite on both samples.
    n_boot : int
        Repetitions requested.
    n_failed : int
        Repetitions excluded (single-class bootstrap sample, failed fit or prediction).
    failures : dict
        Reason -> count for the excluded repetitions.
    warnings : dict
        ``"Category: message"`` -> count of the warnings raised while refitting (they are
        collected rather than repeated ``n_boot`` times). Numbers in a message are ``<n>``,
        so one kind of warning is one entry whatever count or p-value each refit had
        (``CorrelationFilter dropped <n> constant feature(s).``: once per validation).
    boot_training, boot_test : ndarray of shape (n_boot - n_failed, n_index)
        Per-repetition indices, for diagnostics.
    """

    index: tuple[str, ...]
    apparent: np.ndarray
    training: np.ndarray
    test: np.ndarray
    optimism: np.ndarray
    corrected: np.ndarray
    n: np.ndarray
    n_boot: int
    n_failed: int
    failures: dict = field(default_factory=dict)
    warnings: dict = field(default_factory=dict)
    boot_training: np.ndarray = field(default_factory=lambda: np.empty((0, 0)))
    boot_test: np.ndarray = field(default_factory=lambda: np.empty((0, 0)))

    def to_frame(self) -> pd.DataFrame:
        """One row per index: ``apparent, training, test, optimism, corrected, n, n_boot,
        n_failed`` (rms ``validate`` layout with our column names)."""
        return pd.DataFrame(
            {
                "apparent": self.apparent,
                "training": self.training,
                "test": self.test,
                "optimism": self.optimism,
                "corrected": self.corrected,
                "n": self.n,
                "n_boot": self.n_boot,
                "n_failed": self.n_failed,
            },
            index=pd.Index(self.index, name="index"),
        )

    def __getitem__(self, name: str) -> dict:
        """``result["auc"]`` -> dict of that row."""
        return self.to_frame().loc[name].to_dict()


def _logistic_newton(y, lp, slope: bool, max_iter: int = 100):
    """Maximum-likelihood ``y ~ a + b * lp`` (``slope=True``) or ``y ~ a + offset(lp)``.

    Newton-Raphson with step halving on the log-likelihood, from ``a = 0, b = 1`` (perfect
    calibration). Returns ``(a, b)`` (``b = 1`` for the offset model); NaN when the
    maximum-likelihood estimate does not exist (separation: the estimate runs off) or
    the iterations do not converge.
    """

    if slope and (lp[y == 0].max() <= lp[y == 1].min() or lp[y == 1].max() <= lp[y == 0].min()):
        return np.nan, np.nan  # (quasi-)complete separation by lp: no finite slope

    def loglik(a, b):
        eta = a + b * lp
        return float(np.sum(y * eta - np.logaddexp(0.0, eta)))

    a, b = 0.0, 1.0
    ll = loglik(a, b)
    for _ in range(max_iter):
        eta = a + b * lp
        p = 0.5 * (1.0 + np.tanh(0.5 * eta))
        r = y - p
        w = p * (1.0 - p)
        if slope:
            g = np.array([r.sum(), r @ lp])
            h = np.array([[w.sum(), w @ lp], [w @ lp, w @ (lp * lp)]])
            try:
                step = np.linalg.solve(h, g)
            except np.linalg.LinAlgError:
                return np.nan, np.nan
        else:
            sw = w.sum()
            if not sw > 0:
                return np.nan, np.nan
            step = np.array([r.sum() / sw, 0.0])
        if not np.all(np.isfinite(step)):
            return np.nan, np.nan
        t = 1.0
        while True:
            a_t, b_t = a + t * step[0], b + t * step[1]
            ll_t = loglik(a_t, b_t)
            if ll_t >= ll - 1e-12 * (1.0 + abs(ll)) or t < 1e-8:
                break
            t *= 0.5
        done = t * np.max(np.abs(step)) < 1e-9 * (1.0 + abs(a_t) + abs(b_t))
        a, b, ll = a_t, b_t, ll_t
        if abs(a) > 1e4 or abs(b) > 1e4:  # separation: no finite estimate
            return np.nan, np.nan
        if done:
            return float(a), float(b)
    return np.nan, np.nan


def performance_indices(y_true, prob) -> np.ndarray:
    """The :data:`INDICES` (auc, cal_slope, cal_intercept, brier) of ``prob`` for ``y_true``.

    Labels must be 0/1 with both classes present. Probabilities are clipped to
    ``[1e-9, 1 - 1e-9]`` before taking logits (as the study does); the point estimates
    equal :func:`her2study.evaluation.calibration_slope_intercept`'s, computed by a few
    Newton steps instead of a statsmodels fit (the bootstrap needs thousands of them).
    A recalibration whose maximum-likelihood estimate does not exist (separation) is NaN.
    """
    y = np.asarray(y_true, dtype=float)
    p = np.asarray(prob, dtype=float)
    auc = float(_batch_auc(p[None, :], y[None, :])[0])
    pc = np.clip(p, _CLIP, 1 - _CLIP)
    lp = np.log(pc / (1 - pc))
    _, slope = _logistic_newton(y, lp, slope=True) if np.ptp(lp) > 0 else (np.nan, np.nan)
    citl, _ = _logistic_newton(y, lp, slope=False)
    brier = float(np.mean((p - y) ** 2))
    return np.array([auc, slope, citl, brier])


def _take(obj, idx):
    if isinstance(obj, (pd.DataFrame, pd.Series)):
        return obj.iloc[idx]
    return obj[idx]


def _positive_proba(model, X):
    proba = np.asarray(model.predict_proba(X))
    return proba[:, 1] if proba.ndim == 2 else proba


def _seeded(estimator, seed: int):
    """Clone, with every ``random_state`` parameter left at None set to ``seed``."""
    est = clone(estimator)
    unset = {
        k: seed
        for k, v in est.get_params(deep=True).items()
        if (k == "random_state" or k.endswith("__random_state")) and v is None
    }
    if unset:
        est.set_params(**unset)
    return est


def _fit_kwargs(fit_kwargs, idx, n):
    """Index per-sample fit arguments (arrays with ``n`` rows), as scikit-learn's CV does."""
    out = {}
    for k, v in (fit_kwargs or {}).items():
        if hasattr(v, "shape") and len(getattr(v, "shape", ())) >= 1 and v.shape[0] == n:
            out[k] = _take(v, idx)
        else:
            out[k] = v
    return out


def _one_repetition(estimator, X, y, y01, idx, seed, fit_kwargs):
    """Fit on the bootstrap sample ``idx``; indices on it and on the original data.

    Returns ``(training, test, None, warnings)`` or ``(None, None, reason, warnings)``.
    """
    yb = y01[idx]
    if yb.min() == yb.max():
        return None, None, "bootstrap sample holds one class only", []
    # small refits: multi-threaded BLAS only adds synchronisation cost (see LassoCVSelector)
    with warnings.catch_warnings(record=True) as caught, threadpool_limits(1, user_api="blas"):
        warnings.simplefilter("always")
        try:
            model = _seeded(estimator, seed)
            model.fit(_take(X, idx), _take(y, idx), **_fit_kwargs(fit_kwargs, idx, len(y01)))
            p_boot = _positive_proba(model, _take(X, idx))
            p_orig = _positive_proba(model, X)
        except Exception as exc:  # noqa: BLE001 - any failure of a refit is summarised
            msg = str(exc).strip().splitlines()[0][:120] if str(exc).strip() else ""
            reason = f"fit or predict failed: {type(exc).__name__}: {msg}"
            return None, None, reason, _warning_keys(caught)
    if not (np.isfinite(p_boot).all() and np.isfinite(p_orig).all()):
        return None, None, "non-finite predicted probabilities", _warning_keys(caught)
    return (
        performance_indices(yb, p_boot),
        performance_indices(y01, p_orig),
        None,
        _warning_keys(caught),
    )


_NUMBER = re.compile(r"\d+(?:\.\d+)?(?:[eE][-+]?\d+)?")


def _warning_keys(caught) -> list[str]:
    """One key per kind of warning: its category and first line, numbers as ``<n>``."""
    return [
        f"{w.category.__name__}: {_NUMBER.sub('<n>', str(w.message).splitlines()[0])[:100]}"
        for w in caught
    ]


def optimism_bootstrap(
    estimator,
    X,
    y,
    n_boot: int = 200,
    seed: int | None = 0,
    n_jobs: int | None = 1,
    fit_kwargs: dict | None = None,
    *,
    apparent_prob=None,
    stratified: bool = False,
) -> ValidationResult:
    """Harrell's optimism-corrected bootstrap validation (R ``rms::validate``).

    Parameters
    ----------
    estimator : scikit-learn classifier or Pipeline with ``predict_proba``
        Unfitted template; ``clone(estimator)`` is fitted in every repetition, so every
        data-driven step (scaling, feature selection, tuning) is repeated.
    X : array-like or DataFrame of shape (n, p)
    y : array-like of shape (n,)
        Binary labels; the positive class is the fitted model's ``classes_[1]`` (the larger
        label, e.g. 1).
    n_boot : int, default=200
        Bootstrap repetitions (Harrell suggests 150-400).
    seed : int or None, default=0
        Seeds one ``numpy.random.SeedSequence`` from which every repetition's resampling
        indices and seed are drawn up front, so the result does not depend on ``n_jobs``.
        Estimator parameters named ``random_state`` that are None are set to the
        repetition's seed (fixed seeds are kept).
    n_jobs : int or None, default=1
        Parallel repetitions (joblib).
    fit_kwargs : dict, optional
        Extra ``fit`` arguments; arrays with ``n`` rows (e.g. ``sample_weight``) are
        resampled with the cases, other values are passed unchanged.
    apparent_prob : array-like of shape (n,), optional
        Predictions of the estimator fitted on all of ``(X, y)`` for the same cases (e.g.
        from the study's final fit). If None, the function fits ``clone(estimator)`` on
        ``(X, y)`` itself.
    stratified : bool, default=False
        Resample cases and controls separately (fixed class counts). The default is the
        plain bootstrap of ``rms::validate``; a plain sample with one class is counted
        in ``n_failed``.

    Returns
    -------
    ValidationResult
        ``to_frame()`` has one row per index (``auc, cal_slope, cal_intercept, brier``) and
        columns ``apparent, training, test, optimism, corrected, n, n_boot, n_failed``
        (rms: ``index.orig, training, test, optimism, index.corrected, n``).

    Notes
    -----
    Repetitions whose bootstrap sample holds one class, whose fit or prediction raises,
    or whose probabilities are not finite are excluded and counted (``n_failed``,
    reasons in ``failures``); warnings raised by the refits are counted in ``warnings``
    and logged once. An index that is NaN in a repetition (a recalibration without a
    maximum-likelihood estimate, i.e. a perfectly separated sample) is left out of that
    index's mean only, so ``n`` can differ between rows.
    """
    if n_boot < 1:
        raise ValueError("n_boot must be >= 1")
    y_arr = np.asarray(y)
    classes = np.unique(y_arr)
    if classes.size != 2:
        raise ValueError(f"y must hold exactly two classes, got {classes.size}")
    y01 = (y_arr == classes[1]).astype(float)
    n = y01.size
    if (X.shape[0] if hasattr(X, "shape") else len(X)) != n:
        raise ValueError("X and y have different numbers of rows")

    ss = np.random.SeedSequence(seed)
    children = ss.spawn(n_boot + 1)
    pos, neg = np.flatnonzero(y01 == 1), np.flatnonzero(y01 == 0)
    draws = []
    for child in children[1:]:
        rng = np.random.default_rng(child)
        if stratified:
            idx = np.concatenate([rng.choice(pos, pos.size), rng.choice(neg, neg.size)])
        else:
            idx = rng.integers(0, n, n)
        draws.append((idx, int(child.generate_state(1)[0])))

    if apparent_prob is None:
        full = _seeded(estimator, int(children[0].generate_state(1)[0]))
        full.fit(X, y, **(fit_kwargs or {}))
        apparent_prob = _positive_proba(full, X)
    apparent_prob = np.asarray(apparent_prob, dtype=float)
    if apparent_prob.shape != (n,):
        raise ValueError(f"apparent_prob must have shape ({n},), got {apparent_prob.shape}")
    cache = active_fit_cache() if seed is not None else None
    if cache is not None:
        key = content_key(
            "optimism_bootstrap",
            estimator=estimator,
            X=X,
            y=y_arr,
            n_boot=int(n_boot),
            seed=int(seed),
            stratified=bool(stratified),
            apparent_prob=apparent_prob,
            fit_kwargs={k: _digest_text(v) for k, v in (fit_kwargs or {}).items()},
        )
        stored = cache.get(key)
        if stored is not None:  # the same inputs, code and libraries: the same result
            result = _from_stored(*stored)
            _log_exclusions(result.n_failed, result.n_boot, result.failures, result.warnings)
            return result
    apparent = performance_indices(y01, apparent_prob)

    results = Parallel(n_jobs=n_jobs)(
        delayed(_one_repetition)(estimator, X, y, y01, idx, s, fit_kwargs) for idx, s in draws
    )
    failures = Counter(r[2] for r in results if r[2] is not None)
    caught = Counter(w for r in results for w in r[3])
    ok = [r for r in results if r[2] is None]
    n_failed = n_boot - len(ok)
    if not ok:
        raise RuntimeError(f"every bootstrap repetition failed: {dict(failures)}")
    train = np.array([r[0] for r in ok])
    test = np.array([r[1] for r in ok])
    finite = np.isfinite(train) & np.isfinite(test)
    n_used = finite.sum(axis=0)
    with np.errstate(invalid="ignore"):
        diff = np.where(finite, train - test, 0.0).sum(axis=0) / n_used
        tr_mean = np.where(finite, train, 0.0).sum(axis=0) / n_used
        te_mean = np.where(finite, test, 0.0).sum(axis=0) / n_used
    _log_exclusions(n_failed, n_boot, dict(failures), dict(caught))
    result = ValidationResult(
        index=INDICES,
        apparent=apparent,
        training=tr_mean,
        test=te_mean,
        optimism=diff,
        corrected=apparent - diff,
        n=n_used.astype(int),
        n_boot=int(n_boot),
        n_failed=int(n_failed),
        failures=dict(failures),
        warnings=dict(caught),
        boot_training=train,
        boot_test=test,
    )
    if cache is not None:
        cache.put(key, *_to_stored(result))
    return result


_ARRAYS = (
    "apparent",
    "training",
    "test",
    "optimism",
    "corrected",
    "n",
    "boot_training",
    "boot_test",
)


def _to_stored(result: ValidationResult) -> tuple[dict, dict]:
    arrays = {name: getattr(result, name) for name in _ARRAYS}
    meta = {
        "index": list(result.index),
        "n_boot": result.n_boot,
        "n_failed": result.n_failed,
        "failures": result.failures,
        "warnings": result.warnings,
    }
    return arrays, meta


def _from_stored(arrays: dict, meta: dict) -> ValidationResult:
    return ValidationResult(
        index=tuple(meta["index"]),
        n_boot=int(meta["n_boot"]),
        n_failed=int(meta["n_failed"]),
        failures=dict(meta["failures"]),
        warnings=dict(meta["warnings"]),
        **{name: arrays[name] for name in _ARRAYS},
    )


def _digest_text(value) -> str:
    import hashlib

    from her2study.fitcache import _update

    h = hashlib.sha256()
    _update(h, value)
    return h.hexdigest()


def _log_exclusions(n_failed: int, n_boot: int, failures: dict, caught: dict) -> None:
    if n_failed:
        log.warning(
            "optimism_bootstrap: %d of %d repetitions excluded: %s",
            n_failed,
            n_boot,
            failures,
        )
    if caught:
        log.warning(
            "optimism_bootstrap: the refits raised %d warning(s): %s",
            sum(caught.values()),
            dict(Counter(caught).most_common(5)),
        )
