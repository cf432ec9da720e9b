"""The L1-logistic path solver of :class:`~her2study.selection.LassoCVSelector`: exact proximal
Newton fits, warm-started along ``C`` and screened by the sequential strong rule."""

from __future__ import annotations

import math

import numpy as np
from scipy import stats

from ._common import _expit


def _l1_logistic_path(X, y01, Cs, options):
    """L1-logistic coefficients for each ``C`` in increasing ``Cs``, intercept unpenalised.

    Minimises ``||w||_1 + C * sum_i logloss_i(b + x_i'w)`` over ``w`` and ``b`` (on
    z-scored columns when ``options["standardize"]``; the coefficients returned are on the
    scale of ``X``). Each ``C`` starts from the previous solution. With
    ``options["screen"]`` each fit is restricted to the previous active set plus the
    sequential strong set ``|g_j| >= 2/C_k - 1/C_{k-1}``, where ``g = X'(y - p)`` at the
    previous solution, then refitted with any feature that violates the KKT condition
    ``|g_j| <= 1/C`` added (Tibshirani et al. 2012).

    Returns ``(coefs (n_Cs, p), intercepts (n_Cs,), n_unconverged, max n_iter)``.
    """
    screen = options["screen"]
    center = X.mean(axis=0)
    scale = np.sqrt(((X - center) ** 2).mean(axis=0)) if options["standardize"] else np.ones(1)
    scale = np.where(scale > 0, scale, 1.0)
    X = (X - center) / scale
    n, p = X.shape
    coefs = np.zeros((len(Cs), p))
    icpts = np.zeros(len(Cs))
    ybar = y01.mean()
    b = math.log(ybar / (1 - ybar))
    w = np.zeros(p)
    grad = X.T @ (y01 - ybar)
    lam_prev = 1.0 / Cs[0]
    unconverged = max_iter_seen = 0
    for k, C in enumerate(Cs):
        lam = 1.0 / C
        tol = options["tol"] * lam
        keep = (w != 0) | (np.abs(grad) >= 2 * lam - lam_prev) if screen else np.ones(p, bool)
        for _ in range(50):
            idx = np.flatnonzero(keep)
            if idx.size:
                v, iters, ok = _l1_logistic_fit(
                    X[:, idx], y01, lam, w[idx], b, tol, options["max_iter"]
                )
                unconverged += not ok
                max_iter_seen = max(max_iter_seen, iters)
                w = np.zeros(p)
                w[idx] = v[1:]
                b = float(v[0])
            eta = X @ w + b
            grad = X.T @ (y01 - _expit(eta))
            if not screen:
                break
            violators = ~keep & (np.abs(grad) > lam + tol)
            if not violators.any():
                break
            keep |= violators
        coefs[k] = w
        icpts[k] = b
        lam_prev = lam
    coefs /= scale
    icpts -= coefs @ center
    return coefs, icpts, unconverged, max_iter_seen


def _kkt_residual(g, w, lam):
    """Largest violation of the L1-logistic optimality conditions.

    ``g = Z'(y - p)`` with the intercept first: ``g_0 = 0``, ``g_j = lam sign(w_j)`` for
    non-zero ``w_j`` and ``|g_j| <= lam`` for zero ``w_j``.
    """
    nz = w != 0
    res = abs(float(g[0]))
    gw = g[1:]
    if nz.any():
        res = max(res, float(np.max(np.abs(gw[nz] - lam * np.sign(w[nz])))))
    if not nz.all():
        res = max(res, float(np.max(np.abs(gw[~nz]))) - lam)
    return res


def _l1_logistic_fit(X, y, lam, w, b, tol, max_iter):
    """Exact L1-logistic fit with an unpenalised intercept by proximal Newton.

    Minimises ``F(b, w) = sum_i [log(1 + exp(eta_i)) - y_i eta_i] + lam ||w||_1`` with
    ``eta = b + X w``, from the start ``(b, w)``. Each iteration solves the penalised
    quadratic model of ``F`` exactly (:func:`_lasso_qp`) and backtracks along the step
    until the Armijo condition holds. Stops when :func:`_kkt_residual` ``<= tol``.

    Returns ``(v, n_iter, converged)`` with ``v = (b, w_1, ..., w_k)``.
    """
    n = X.shape[0]
    Z = np.empty((n, X.shape[1] + 1))
    Z[:, 0] = 1.0
    Z[:, 1:] = X
    v = np.r_[b, w].astype(float)
    eta = Z @ v
    f = float(np.sum(np.logaddexp(0.0, eta) - y * eta) + lam * np.abs(v[1:]).sum())
    for it in range(max_iter + 1):
        prob = _expit(eta)
        r = y - prob
        g = Z.T @ r
        if _kkt_residual(g, v[1:], lam) <= tol:
            return v, it, True
        if it == max_iter:
            break
        h = np.maximum(prob * (1.0 - prob), 1e-10)
        v_new = _lasso_qp(Z * np.sqrt(h)[:, None], Z.T @ (h * eta + r), lam, v)
        d = v_new - v
        # directional derivative of F along d (the proximal Newton decrement)
        decrement = float(-(g @ d) + lam * (np.abs(v_new[1:]).sum() - np.abs(v[1:]).sum()))
        if not decrement < 0:  # no descent direction left: optimal to rounding error
            return v, it, _kkt_residual(g, v[1:], lam) <= 10 * tol
        t = 1.0
        while True:
            v_t = v + t * d if t < 1.0 else v_new
            eta_t = Z @ v_t
            f_t = float(np.sum(np.logaddexp(0.0, eta_t) - y * eta_t) + lam * np.abs(v_t[1:]).sum())
            if f_t <= f + 1e-4 * t * decrement:
                break
            t *= 0.5
            if t < 1e-12:
                return v, it, False
        v, eta, f = v_t, eta_t, f_t
    return v, max_iter, False


def _lasso_qp(Zs, c, lam, v0):
    """Exact minimiser of ``0.5 ||Zs v||^2 - c'v + lam * sum_{j >= 1} |v_j|`` (``v_0`` free).

    Feature-sign search (Lee, Battle, Raina & Ng 2007): for the current active set and
    signs the minimiser solves a linear system; a discrete line search over the sign
    changes between the current point and that solution keeps every step a descent; the
    zero coefficient that most violates its optimality condition enters when the active
    ones are optimal. Starts from ``v0`` (the previous Newton iterate). With fewer columns
    than rows the Gram matrix ``Zs'Zs`` is formed once; otherwise only its active block.
    """
    m = c.size
    pen = np.full(m, lam)
    pen[0] = 0.0
    v = v0.copy()
    qtol = 1e-11 * max(1.0, lam, float(np.max(np.abs(c))))
    full = Zs.T @ Zs if m <= Zs.shape[0] else None
    for _ in range(10 * m + 100):
        active = v != 0
        active[0] = True
        theta = np.sign(v)
        grad = (full @ v if full is not None else Zs.T @ (Zs @ v)) - c
        if np.max(np.abs(grad[active] + pen[active] * theta[active])) <= qtol:
            viol = np.where(active, -np.inf, np.abs(grad) - lam)
            i = int(np.argmax(viol))
            if viol[i] <= qtol:
                return v
            active[i] = True
            theta[i] = -np.sign(grad[i])
        idx = np.flatnonzero(active)
        if full is not None:
            gram = full[np.ix_(idx, idx)]
        else:
            za = Zs[:, idx]
            gram = za.T @ za
        rhs = c[idx] - pen[idx] * theta[idx]
        try:
            target = np.linalg.solve(gram, rhs)
        except np.linalg.LinAlgError:
            target = np.linalg.lstsq(gram, rhs, rcond=None)[0]
        old = v[idx]
        step = target - old
        with np.errstate(divide="ignore", invalid="ignore"):
            t_cross = -old / step
        crossing = np.flatnonzero((old != 0) & (t_cross > 0) & (t_cross < 1))
        if crossing.size:
            cand = old + np.append(t_cross[crossing], 1.0)[:, None] * step
            cand[np.arange(crossing.size), crossing] = 0.0
            values = (
                0.5 * np.einsum("ij,jk,ik->i", cand, gram, cand)
                - cand @ c[idx]
                + np.abs(cand) @ pen[idx]
            )
            best = cand[int(np.argmin(values))]
        else:
            best = target
        if np.array_equal(best, old):  # no progress: optimal to rounding error
            return v
        v[idx] = best
    return v


def _score_path(y01, eta, scoring):
    """Held-out score of each column of linear predictors ``eta`` (n, n_Cs)."""
    if scoring == "neg_log_loss":
        sign = 2 * y01[:, None] - 1
        return -np.logaddexp(0.0, -sign * eta).mean(axis=0)
    ranks = stats.rankdata(eta, axis=0)
    n_pos = y01.sum()
    n_neg = y01.size - n_pos
    return (ranks[y01 == 1].sum(axis=0) - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg)
