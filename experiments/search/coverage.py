"""Coverage of the nested estimate's intervals (recorded in experiments/search/README.md).

Repeats: draw a development cohort (``--n`` cases) from a cheap synthetic features generator with
a weak signal; run the real nested search (Optuna SQLite storage, the real pipelines, a tiny
fixed space) and its final search; fit the chosen configuration on all the cohort and score it
on a large fresh cohort (``--fresh`` cases) from the same generator. Then, per interval (the
Nadeau-Bengio corrected t, the naive t across outer folds, DeLong on the pooled out-of-fold
predictions), how often it covers

* the fresh AUC of that repetition's final model (what a user would like to know), and
* the mean of those fresh AUCs over the repetitions (the expected AUC of the procedure at n
  cases, the quantity a cross-validation estimates; Bates, Hastie & Tibshirani 2021).

Rows are appended to ``--out`` as they finish, so a run can be stopped and resumed (repetitions
already in the file are skipped). ``--workers`` processes share the repetitions.

    python experiments/search/coverage.py --reps 100 --workers 2
    python experiments/search/coverage.py --summary   # coverage table + figure from the CSV
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")  # one BLAS thread per worker process

import argparse  # noqa: E402
import sys
import tempfile
import time
import warnings
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path

import numpy as np
import pandas as pd

REPO = Path(__file__).resolve().parents[2]
RESULTS = Path(__file__).resolve().parent / "results"

SPACE = {
    "ring_width_mm": {"type": "categorical", "choices": [0, 1]},
    "mw_alpha": {"type": "categorical", "choices": [0.05, 0.2]},
    "model": {"type": "categorical", "choices": ["logistic", "ridge"]},
}


def cohort(n: int, seed: int, p: int = 12, delta: float = 0.45):
    """Features of tumour (``intra_*``) and a 1 mm ring (``peri1mm_*``), ``p`` each; 40%
    positives; the first 3 tumour and 2 ring features shift by ``delta`` SD in positives."""
    rng = np.random.default_rng(seed)
    y = (rng.random(n) < 0.4).astype(int)
    cols = [f"{r}_f{i}" for r in ("intra", "peri1mm") for i in range(p)]
    X = pd.DataFrame(rng.standard_normal((n, len(cols))), columns=cols)
    for c in ("intra_f0", "intra_f1", "intra_f2", "peri1mm_f0", "peri1mm_f1"):
        X[c] += delta * y
    X.index = pd.Index([f"S{seed}_{i:05d}" for i in range(n)], name="case_id")
    return X, pd.Series(y, index=X.index, name="label")


def make_cfg(args):
    from hydra import compose, initialize_config_dir

    from her2study.config import register_configs

    register_configs()
    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        cfg = compose(
            "config",
            overrides=[
                "task=search",
                "tracking=off",
                "execution.progress=false",
                f"search.outer_folds={args.outer}",
                f"search.outer_repeats={args.repeats}",
                f"search.inner_folds={args.inner}",
                f"search.n_trials={args.trials}",
                "search.sampler=random",
                "selection.lasso_cv=3",
                "selection.lasso_n_lambdas=10",
                "data.clinical_columns=[]",
            ],
        )
    cfg.search.space = SPACE
    return cfg


def one_rep(rep: int, args) -> dict:
    from sklearn.metrics import roc_auc_score

    from her2study.search import Design, build_pipeline, nested_search, open_storage

    warnings.simplefilter("ignore")
    cfg = make_cfg(args)
    X, y = cohort(args.n, seed=rep)
    Xf, yf = cohort(args.fresh, seed=1_000_000 + rep)
    design = Design.from_tables(X, y, None, synthetic=True)
    t0 = time.monotonic()
    with tempfile.TemporaryDirectory() as tmp:
        storage = open_storage(f"sqlite:///{tmp}/cov.db")
        res = nested_search(cfg, design, storage, f"cov{rep}", final=True, progress=lambda s: 0)
    cand = res.chosen_candidate
    cols = design.columns(cand)
    pipe = build_pipeline(cand, int(cfg.seed)).fit(X[cols], y)
    fresh = float(roc_auc_score(yf, pipe.predict_proba(Xf[cols])[:, 1]))
    e = res.estimate
    return {
        "rep": rep,
        "n": args.n,
        "outer_folds": args.outer,
        "outer_repeats": args.repeats,
        "inner_folds": args.inner,
        "n_trials": args.trials,
        "mean_outer_auc": e["mean_outer_auc"],
        "nb_low": e["ci_low"],
        "nb_high": e["ci_high"],
        "naive_low": e["naive_t_ci_low"],
        "naive_high": e["naive_t_ci_high"],
        "pooled_auc": e["pooled_auc"],
        "delong_low": e["pooled_auc_ci_low"],
        "delong_high": e["pooled_auc_ci_high"],
        "fresh_auc": fresh,
        "chosen": cand.label(),
        "seconds": round(time.monotonic() - t0, 1),
    }


INTERVALS = {
    "Nadeau-Bengio corrected t (mean outer AUC)": ("nb_low", "nb_high"),
    "naive t across outer folds (mean outer AUC)": ("naive_low", "naive_high"),
    "DeLong on pooled out-of-fold predictions": ("delong_low", "delong_high"),
}


def summary(df: pd.DataFrame) -> pd.DataFrame:
    from her2study.evaluation.metrics import wilson_ci

    target = float(df["fresh_auc"].mean())
    rows = []
    for name, (lo, hi) in INTERVALS.items():
        row = {"interval": name, "reps": len(df)}
        for what, truth in (("final model", df["fresh_auc"]), ("expected", target)):
            k = int(((df[lo] <= truth) & (truth <= df[hi])).sum())
            c = wilson_ci(k, len(df))
            row[f"covers_{what}"] = k / len(df)
            row[f"covers_{what}_ci"] = f"{c[0]:.2f}-{c[1]:.2f}"
        row["mean_width"] = float((df[hi] - df[lo]).mean())
        rows.append(row)
    return pd.DataFrame(rows)


def figure(df: pd.DataFrame, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 4.2), sharey=True)
    order = np.argsort(df["fresh_auc"].to_numpy())
    d = df.iloc[order].reset_index(drop=True)
    x = np.arange(len(d))
    for ax, (name, (lo, hi)) in zip(axes, list(INTERVALS.items())[:2], strict=True):
        cover = (d[lo] <= d["fresh_auc"]) & (d["fresh_auc"] <= d[hi])
        for ok, colour in ((True, "#1f77b4"), (False, "#d62728")):
            m = cover == ok
            ax.vlines(x[m], d[lo][m], d[hi][m], color=colour, lw=1.2, alpha=0.8)
        ax.plot(x, d["mean_outer_auc"], ".", color="black", ms=3, label="nested estimate")
        ax.plot(x, d["fresh_auc"], "_", color="#2ca02c", ms=6, label="final model, fresh")
        ax.set_title(f"{name}\ncovers the fresh AUC in {cover.mean():.0%} of {len(d)}", fontsize=9)
        ax.set_xlabel("repetition (sorted by fresh AUC)")
    axes[0].set_ylabel("AUC")
    axes[0].legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--reps", type=int, default=100)
    ap.add_argument("--start", type=int, default=0)
    ap.add_argument("--n", type=int, default=150)
    ap.add_argument("--fresh", type=int, default=4000)
    ap.add_argument("--outer", type=int, default=5)
    ap.add_argument("--repeats", type=int, default=1)
    ap.add_argument("--inner", type=int, default=3)
    ap.add_argument("--trials", type=int, default=4)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--out", type=Path, default=None)
    ap.add_argument("--summary", action="store_true", help="only summarise the CSV")
    args = ap.parse_args()
    out = args.out or RESULTS / f"coverage_R{args.repeats}.csv"
    out.parent.mkdir(parents=True, exist_ok=True)
    if not args.summary:
        done = set(pd.read_csv(out)["rep"]) if out.exists() else set()
        todo = [r for r in range(args.start, args.start + args.reps) if r not in done]
        print(f"{len(todo)} repetitions to run -> {out}", flush=True)
        with ProcessPoolExecutor(max_workers=args.workers) as pool:
            futures = [pool.submit(one_rep, r, args) for r in todo]
            for f in as_completed(futures):
                row = f.result()
                pd.DataFrame([row]).to_csv(out, mode="a", header=not out.exists(), index=False)
                print(
                    f"rep {row['rep']}: nested {row['mean_outer_auc']:.3f} "
                    f"NB [{row['nb_low']:.3f}, {row['nb_high']:.3f}] naive "
                    f"[{row['naive_low']:.3f}, {row['naive_high']:.3f}] fresh "
                    f"{row['fresh_auc']:.3f} ({row['seconds']:.0f} s)",
                    flush=True,
                )
    df = pd.read_csv(out)
    table = summary(df)
    print(table.to_string(index=False, float_format=lambda v: f"{v:.3f}"))
    print(
        f"\nreps {len(df)}; mean nested estimate {df['mean_outer_auc'].mean():.3f}, mean fresh AUC "
        f"{df['fresh_auc'].mean():.3f} (SD {df['fresh_auc'].std():.3f}); mean seconds per rep "
        f"{df['seconds'].mean():.0f}"
    )
    figure(df, out.with_suffix(".png"))
    print(f"figure: {out.with_suffix('.png')}")


if __name__ == "__main__":
    sys.path.insert(0, str(REPO))
    main()
