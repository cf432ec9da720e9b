"""Optuna: storage URLs and their checks, the per-trial seeded sampler (seeded per study from the
study name and the data digest), the pruner over inner folds, studies (refused when made on
other data) and trials."""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import socket
import threading
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import optuna

from her2study.errors import ConfigError, Her2StudyError
from her2study.search.candidate import candidate_from_params
from her2study.search.memo import InnerCV
from her2study.search.space import Dim, resolve, suggest

SAMPLERS = ("tpe", "random")
PRUNERS = ("none", "median", "successive_halving")
FIT_ERRORS = (ValueError, ArithmeticError, np.linalg.LinAlgError)
WORKER = f"{socket.gethostname()}:{os.getpid()}"  # who ran a trial (several workers)


# Optuna: storage, sampler, study
# ------------------------------------------------------------------------------------------


def storage_url(search_cfg, study: str) -> str:
    """``search.storage``, or the default SQLite file under ``search.output_root``."""
    if search_cfg.storage:
        return str(search_cfg.storage)
    root = Path(search_cfg.output_root).resolve()
    safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in study)
    return f"sqlite:///{root / f'optuna_{safe}.db'}"


_STORAGES: dict[str, Any] = {}


def open_storage(url: str, create_dirs: bool = False):
    """An Optuna storage for ``url``; :class:`ConfigError` (before any work) when it cannot be
    opened. ``journal:///path`` is a JournalStorage on that file."""
    if url in _STORAGES:
        return _STORAGES[url]
    hint = (
        "search.storage takes sqlite:///relative.db, sqlite:////absolute.db, "
        "postgresql+psycopg2://user:password@host:5432/db (any SQLAlchemy URL), "
        "journal:///path/to/file.log, or null for the default SQLite file"
    )
    if not isinstance(url, str) or "://" not in url:
        raise ConfigError(f"search.storage {url!r} is not a storage URL. {hint}")
    scheme = url.split("://", 1)[0].lower()
    if scheme == "journal":
        if not url.startswith("journal:///"):
            raise ConfigError(
                f"search.storage {url!r}: use journal:///relative/file.log or "
                f"journal:////absolute/file.log. {hint}"
            )
        path = Path(url[len("journal:///") :])  # as SQLAlchemy's sqlite:///: 4 slashes = absolute
        if not str(path) or str(path) == ".":
            raise ConfigError(f"search.storage {url!r} names no file. {hint}")
        _check_folder(path, url, create_dirs)
        from optuna.storages.journal import JournalFileBackend

        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            storage = optuna.storages.JournalStorage(JournalFileBackend(str(path)))
    else:
        kwargs: dict = {}
        if scheme == "sqlite":
            rest = url[len("sqlite:///") :].split("?", 1)[0]
            if not url.startswith("sqlite:///") or rest in ("", ":memory:"):
                raise ConfigError(
                    f"search.storage {url!r}: an in-memory or malformed SQLite "
                    f"URL cannot be resumed or shared. {hint}"
                )
            _check_folder(Path(rest), url, create_dirs)
            kwargs["engine_kwargs"] = {"connect_args": {"timeout": 60}}
        storage = _rdb_storage(_postgres_driver(url), kwargs, hint)
    _STORAGES[url] = storage
    return storage


def _postgres_driver(url: str) -> str:
    """``postgresql://`` with the driver that is installed: SQLAlchemy 2.1 defaults to psycopg
    (3); the ``cluster`` extra installs psycopg2-binary."""
    if not url.lower().startswith("postgresql://"):
        return url
    import importlib.util

    if importlib.util.find_spec("psycopg") is None and importlib.util.find_spec("psycopg2"):
        return "postgresql+psycopg2://" + url[len("postgresql://") :]
    return url


def _rdb_storage(url: str, kwargs: dict, hint: str):
    """RDBStorage; workers starting together on a new database race to create its tables
    ("already exists", "locked", alembic's "UNIQUE constraint failed", PostgreSQL's "duplicate
    key value violates unique constraint"): the loser retries and finds them."""
    for attempt in range(6):
        try:
            return optuna.storages.RDBStorage(url, **kwargs)
        except Exception as exc:  # bad dialect, missing driver, unreachable server, ...
            text = str(exc).lower()
            racing = ("already exists", "locked", "unique constraint failed", "duplicate key value")
            if attempt < 5 and any(r in text for r in racing):
                time.sleep(0.2 * (attempt + 1))
                continue
            raise ConfigError(
                f"search.storage {url!r} cannot be opened: {type(exc).__name__}: {exc}. {hint}"
            ) from None
    raise AssertionError("unreachable")  # pragma: no cover


def _check_folder(path: Path, url: str, create: bool) -> None:
    folder = path.parent if str(path.parent) else Path(".")
    if create:
        folder.mkdir(parents=True, exist_ok=True)
    if not folder.is_dir():
        raise ConfigError(
            f"search.storage {url!r}: folder {str(folder.resolve())!r} does not "
            "exist; create it or choose another path"
        )
    if not os.access(folder, os.W_OK | os.X_OK) or (path.exists() and not os.access(path, os.W_OK)):
        raise ConfigError(f"search.storage {url!r}: {str(path.resolve())!r} is not writable")


class PerTrialSeedSampler(optuna.samplers.BaseSampler):
    """A sampler whose trial ``n`` draws from a sampler seeded with ``seed + 7919 n``.

    ``seed`` is the study's own (:func:`study_seed`: from the search seed, the study name and
    the data digest), so two studies, or the same study name on other data, draw other
    candidates. Within a study the search is then deterministic given the trials before it, and
    two workers sharing a study (or a resumed run) never repeat each other's random draws, which
    one seeded sampler per process would do. Model-based samplers (TPE) read the history from
    the study, so a fresh instance per trial loses nothing.
    """

    def __init__(self, kind: str, seed: int, n_startup_trials: int = 10):
        if kind not in SAMPLERS:
            raise ConfigError(f"search.sampler={kind!r}: choose one of {', '.join(SAMPLERS)}")
        self.kind = kind
        self.seed = int(seed)
        self.n_startup_trials = int(n_startup_trials)
        self._samplers: dict[int, Any] = {}
        self._lock = threading.Lock()

    def __getstate__(self) -> dict:  # picklable: the lock and the per-trial samplers stay behind
        return {"kind": self.kind, "seed": self.seed, "n_startup_trials": self.n_startup_trials}

    def __setstate__(self, state: dict) -> None:
        self.__init__(state["kind"], state["seed"], state["n_startup_trials"])

    def __repr__(self) -> str:
        return f"PerTrialSeedSampler({self.kind!r}, seed={self.seed})"

    def _make(self, number: int):
        s = (self.seed + 7919 * int(number)) % (2**32)
        if self.kind == "random":
            return optuna.samplers.RandomSampler(seed=s)
        return optuna.samplers.TPESampler(
            seed=s, n_startup_trials=self.n_startup_trials, group=True, multivariate=True
        )

    def _for(self, trial):
        with self._lock:
            if trial.number not in self._samplers:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                    self._samplers[trial.number] = self._make(trial.number)
            return self._samplers[trial.number]

    def infer_relative_search_space(self, study, trial):
        return self._for(trial).infer_relative_search_space(study, trial)

    def sample_relative(self, study, trial, search_space):
        return self._for(trial).sample_relative(study, trial, search_space)

    def sample_independent(self, study, trial, param_name, param_distribution):
        return self._for(trial).sample_independent(study, trial, param_name, param_distribution)

    def before_trial(self, study, trial):
        self._for(trial).before_trial(study, trial)

    def after_trial(self, study, trial, state, values):
        try:
            self._for(trial).after_trial(study, trial, state, values)
        finally:
            with self._lock:
                self._samplers.pop(trial.number, None)

    def reseed_rng(self):  # the per-trial seeds already differ
        pass


def study_seed(seed: int, name: str, data_digest: str) -> int:
    """The sampler seed of study ``name``: from the search seed, the study name and the digest
    of the data it searches. Same data, name and seed: the same candidates; other data (or
    another outer fold, another permutation): other candidates."""
    h = hashlib.sha256(f"{int(seed)}|{name}|{data_digest}".encode()).digest()
    return int.from_bytes(h[:4], "big")


REQUIRED_ATTRS = ("data",)  # a study with trials but without these cannot be checked


def make_pruner(kind: str, n_startup_trials: int = 10):
    """The pruner of ``search.pruner``; its steps are the inner folds (see :func:`make_objective`).

    ``median``: after inner fold ``i`` a trial whose mean AUC over folds ``0..i`` is below the
    median of earlier trials' at the same fold stops, once ``n_startup_trials`` trials are
    complete. ``successive_halving``: asynchronous successive halving (rungs after 1, 2, 4, ...
    folds, the best half kept). ``none``: every trial runs all folds.
    """
    kind = str(kind)
    if kind == "none":
        return optuna.pruners.NopPruner()
    if kind == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=int(n_startup_trials), n_warmup_steps=0)
    if kind == "successive_halving":
        return optuna.pruners.SuccessiveHalvingPruner(min_resource=1, reduction_factor=2)
    raise ConfigError(f"search.pruner={kind!r}: choose one of {', '.join(PRUNERS)}")


def pruner_label(kind: str, n_startup_trials: int = 10) -> str:
    """The pruner of :func:`make_pruner` with its settings, as recorded in a study's attrs."""
    kind = str(kind)
    if kind == "median":
        return f"median(n_startup_trials={int(n_startup_trials)}, n_warmup_steps=0)"
    if kind == "successive_halving":
        return "successive_halving(min_resource=1, reduction_factor=2)"
    return kind


def open_study(
    storage,
    name: str,
    sampler: str,
    seed: int,
    n_startup_trials: int,
    attrs: dict,
    pruner: str = "none",
):
    """Create or load study ``name`` (sampler seeded with ``seed``, ``pruner`` of
    :func:`make_pruner`); refuse to resume a study made with another design, another pruner
    (recorded as attr ``pruner``: which trials were stopped early depends on it) or on other
    data (``attrs["data"]``: feature values, columns, case ids, labels, extractor settings)."""
    if str(sampler) not in SAMPLERS:
        raise ConfigError(f"search.sampler={sampler!r}: choose one of {', '.join(SAMPLERS)}")
    attrs = {**attrs, "pruner": pruner_label(pruner, n_startup_trials)}
    study = optuna.create_study(
        storage=storage,
        study_name=name,
        direction="maximize",
        load_if_exists=True,
        sampler=PerTrialSeedSampler(str(sampler), seed, n_startup_trials),
        pruner=make_pruner(pruner, n_startup_trials),
    )
    existing = study.user_attrs
    fix = (
        f"Use a new study name (study=...) or another search.storage, or delete the study "
        f"(optuna delete-study --study-name '{name}' --storage <url>)"
    )
    for key, value in attrs.items():
        if key in existing and existing[key] != value:
            if key == "data":
                raise ConfigError(
                    f"Optuna study '{name}' was made on other data (digest {existing[key]!r}, "
                    f"now {value!r}: feature values, feature columns, case ids, labels or "
                    f"extractor settings differ), so its trials do not score these data. {fix}"
                )
            if key == "pruner":
                raise ConfigError(
                    f"Optuna study '{name}' was made with the pruner {existing[key]} (now "
                    f"{value}): which of its trials stopped early depends on it. Resume with "
                    f"the search.pruner (and search.n_startup_trials) it had. {fix}"
                )
            raise ConfigError(
                f"Optuna study '{name}' exists with another {key} ({existing[key]!r}, now "
                f"{value!r}): it was made by a different search. {fix}"
            )
    missing = [k for k in REQUIRED_ATTRS if k in attrs and k not in existing]
    if missing and study.get_trials(deepcopy=False):
        raise ConfigError(
            f"Optuna study '{name}' has trials but no record of the data they scored ({missing}: "
            f"made by an older her2study), so they cannot be checked against these data. {fix}"
        )
    for key, value in attrs.items():
        if key not in existing:
            study.set_user_attr(key, value)
    return study


def n_complete(study, states=None) -> int:
    """Trials of ``study`` in ``states`` (default: COMPLETE), from every worker."""
    from optuna.trial import TrialState

    return len(study.get_trials(deepcopy=False, states=states or (TrialState.COMPLETE,)))


def counted_states(pruner: str = "none") -> tuple:
    """The trial states that count toward ``search.n_trials``: COMPLETE, and PRUNED when a pruner
    is on (a pruned trial is a trial tried: pruning saves time, not trials)."""
    from optuna.trial import TrialState

    if str(pruner) == "none":
        return (TrialState.COMPLETE,)
    return (TrialState.COMPLETE, TrialState.PRUNED)


class TrialFitFailed(Exception):
    """A candidate failed to fit (a :data:`FIT_ERRORS` error that is no user error): the trial
    is FAILED and the study goes on. Config and input errors (:class:`Her2StudyError`) are not
    wrapped, so they stop the search with their own message."""


@contextlib.contextmanager
def quiet_optuna():
    """Optuna's per-trial INFO lines off while the search runs (one line per outer fold
    instead), its verbosity restored after; a verbosity the caller chose other than Optuna's
    default (INFO) is left as it is."""
    before = optuna.logging.get_verbosity()
    if before == logging.INFO:
        optuna.logging.set_verbosity(logging.WARNING)
    try:
        yield
    finally:
        if before == logging.INFO:
            optuna.logging.set_verbosity(before)


def run_study(
    study,
    objective,
    n_trials: int,
    timeout_s: float | None = None,
    n_jobs: int = 1,
    states: tuple | None = None,
) -> int:
    """Run trials until ``n_trials`` are in ``states`` (default COMPLETE; see
    :func:`counted_states`) in the study, counting earlier runs and other workers
    (:class:`optuna.study.MaxTrialsCallback`), the timeout passes, or this process has tried
    three times the trials still missing. Returns the count in ``states``."""
    from optuna.study import MaxTrialsCallback
    from optuna.trial import TrialState

    states = tuple(states or (TrialState.COMPLETE,))
    remaining = n_trials - n_complete(study, states)
    if remaining <= 0:
        return n_complete(study, states)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        study.optimize(
            objective,
            n_trials=3 * remaining,  # a bound on failing fits; the callback stops it first
            timeout=timeout_s,
            n_jobs=n_jobs,
            catch=(TrialFitFailed,),
            callbacks=[MaxTrialsCallback(n_trials, states=states)],
            gc_after_trial=False,
        )
    return n_complete(study, states)


def make_objective(
    inner: InnerCV, dims: list[Dim], defaults: dict, cfg, seed: int, tracker=None, prefix: str = ""
):
    """The objective: the candidate's mean inner-fold AUC. After each inner fold the mean AUC of
    the folds so far is reported to the study's pruner as the intermediate value at that fold
    (step ``i``); a pruned trial records its fold AUCs and stops (:class:`optuna.TrialPruned`).
    With the ``none`` pruner nothing is reported and every fold runs."""
    last = len(inner.splits) - 1

    def objective(trial):
        params = suggest(trial, dims, defaults)
        cand = candidate_from_params(params, cfg)
        on_fold = None
        if not isinstance(trial.study.pruner, optuna.pruners.NopPruner):

            def on_fold(i: int, aucs: list[float]) -> None:
                trial.report(float(np.mean(aucs)), i)
                if i < last and trial.should_prune():  # after the last fold: complete
                    trial.set_user_attr("fold_auc", [round(a, 6) for a in aucs])
                    trial.set_user_attr("worker", WORKER)
                    raise optuna.TrialPruned(f"pruned after inner fold {i}")

        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # "no feature passes" etc. in weak folds
                value, aucs = inner.score(cand, seed, on_fold=on_fold)
        except Her2StudyError:
            raise  # a config or input error: the search stops with its message
        except FIT_ERRORS as exc:
            raise TrialFitFailed(f"{type(exc).__name__}: {exc}") from exc
        trial.set_user_attr("fold_auc", [round(a, 6) for a in aucs])
        trial.set_user_attr("worker", WORKER)
        if tracker is not None and tracker.enabled:
            with tracker.child(f"{prefix}trial {trial.number}", tags={"kind": "trial"}):
                tracker.log_params({k: v for k, v in params.items()})
                tracker.log_metrics({"inner_auc": value})
        return value

    return objective


def best_params(study, dims: list[Dim], defaults: dict) -> dict:
    return resolve(dims, study.best_trial.params, defaults)


# ------------------------------------------------------------------------------------------
# The nested search
# ------------------------------------------------------------------------------------------
