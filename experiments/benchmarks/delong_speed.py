"""Fast (midrank, O(n log n)) versus naive (O(m*n)) DeLong on n = 10,000.

Run: ``python experiments/benchmarks/delong_speed.py``. Prints both timings,
their ratio and the largest absolute difference of AUC and variance.
"""

from __future__ import annotations

import time

import numpy as np

from her2study.evaluation import delong_covariance


def naive_delong(y: np.ndarray, s: np.ndarray) -> tuple[float, float]:
    """DeLong AUC and variance from the full m x n comparison matrix."""
    x, z = s[y == 1], s[y == 0]
    psi = (x[:, None] > z[None, :]) + 0.5 * (x[:, None] == z[None, :])
    v10, v01 = psi.mean(axis=1), psi.mean(axis=0)
    return float(psi.mean()), float(v10.var(ddof=1) / x.size + v01.var(ddof=1) / z.size)


def main(n: int = 10_000, seed: int = 0) -> None:
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, n)
    s = np.round(rng.normal(y, 1.0), 2)  # rounding creates ties
    t0 = time.perf_counter()
    aucs, cov = delong_covariance(y, s)
    t_fast = time.perf_counter() - t0
    t0 = time.perf_counter()
    auc_n, var_n = naive_delong(y, s)
    t_naive = time.perf_counter() - t0
    print(
        f"n={n}: fast {t_fast * 1e3:.1f} ms, naive {t_naive * 1e3:.1f} ms, "
        f"ratio naive/fast = {t_naive / t_fast:.0f}x"
    )
    print(f"max |diff|: auc {abs(aucs[0] - auc_n):.2e}, var {abs(cov[0, 0] - var_n):.2e}")


if __name__ == "__main__":
    main()
