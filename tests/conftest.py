"""Shared fixtures and helpers: one definition each.

* Small real cohorts written as image files in a temporary folder (``make_cohort``,
  ``ellipse_case``, ``write_nifti``) and noise feature tables (``noise_features``,
  ``write_features_table``).
* The project's config: ``compose_config`` (Hydra's compose API; the ``compose`` fixture is the
  same function) and ``run_cli`` (``python -m her2study`` in a real subprocess, outside the
  checkout). ``QUICK_FIT``: small inner loops for the paper protocol.
* ``synthetic_cache``: ONE small synthetic cohort (``SMALL``) and its fast pyradiomics features
  for the tumour and every ring width of ``SHARED_RINGS``, generated and extracted once per
  session. The end-to-end tests point a run at it with ``cache_dir=<it>``; it is read-only for
  them (checked after each test, and by checksum at the end of the session); a test that writes
  takes ``synthetic_cache_copy``.
* A guard that fails the test (or the session) that wrote into the checkout.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import SimpleITK as sitk

os.environ.setdefault("MPLBACKEND", "Agg")
REPO = Path(__file__).resolve().parents[1]
CONF = REPO / "conf"

# ------------------------------------------------------------------------------------------
# common override lists
# ------------------------------------------------------------------------------------------

# The shared end-to-end cohort: 100 synthetic cases with a strong band (7 dB; at the default
# 3 dB a 100-case search does not reliably find the planted band, test_search.py), the fast
# extractor. A run with these overrides and ``cache_dir=<synthetic_cache>`` finds its cohort and
# the features of the tumour and of every ring width in SHARED_RINGS in the cache.
SMALL_N = 100
SMALL = [
    "extractor=fast",
    f"data.synthetic.n_cases={SMALL_N}",
    "data.synthetic.band_strength=7.0",
    "data.synthetic.intra_strength=0.3",
    "execution.progress=false",
    # the burned-in annotation QA caches per (case, widest ring): off here, so that tests with
    # other widths do not add entries to the shared cache (tests/test_us_inputs.py checks it)
    "region.annotation_check=false",
]
SHARED_RINGS = (0.5, 1.0, 1.5, 2.0, 3.0)  # the search space's widths; the paper's are 1 and 2
# Fewer folds for the paper protocol's inner loops (LASSO lambda, CV AUC), no bootstrap; a
# test that wants the bootstrap adds evaluation.bootstrap_reps=<n> after these.
QUICK_FIT = ["selection.lasso_cv=5", "evaluation.cv_folds=3", "evaluation.bootstrap_reps=0"]


# ------------------------------------------------------------------------------------------
# small cohorts as files, noise feature tables
# ------------------------------------------------------------------------------------------


def ellipse_case(shape=(120, 140), spacing=(0.2, 0.2), center=None, axes_mm=(5.0, 3.5), seed=0):
    """A speckle-like image (Rayleigh) with a darker elliptical lesion, and its mask."""
    rng = np.random.default_rng(seed)
    h, w = shape
    sx, sy = spacing
    cy, cx = center if center is not None else (h * sy / 2, w * sx / 2)
    yy, xx = np.mgrid[:h, :w]
    y, x = (yy + 0.5) * sy - cy, (xx + 0.5) * sx - cx
    mask = (x / axes_mm[0]) ** 2 + (y / axes_mm[1]) ** 2 <= 1
    img = rng.rayleigh(60.0, shape)
    img[mask] *= 0.4
    img = np.clip(img + 5, 1, 255).astype(np.float32)
    return img, mask.astype(np.uint8)


def write_nifti(arr, path, spacing=(0.2, 0.2), origin=(0.0, 0.0)):
    im = sitk.GetImageFromArray(arr)
    im.SetSpacing(spacing)
    im.SetOrigin(origin)
    sitk.WriteImage(im, str(path))
    return path


@pytest.fixture
def make_cohort(tmp_path):
    """Factory: write ``n`` ellipse cases as NIfTI (or PNG) plus a manifest; return its path."""

    def _make(n=6, fmt="nifti", spacing=(0.2, 0.2), reader2=False, extra=None):
        root = tmp_path / "cohort"
        (root / "img").mkdir(parents=True, exist_ok=True)
        rows = []
        for i in range(n):
            img, mask = ellipse_case(spacing=spacing, seed=i, axes_mm=(4.0 + 0.3 * i, 3.0))
            cid = f"C{i:03d}"
            row = {"case_id": cid, "label": i % 2, "age": 40 + i, "er_pct": 10 * i}
            if fmt == "png":
                sitk.WriteImage(
                    sitk.GetImageFromArray(img.astype(np.uint8)), str(root / f"img/{cid}.png")
                )
                sitk.WriteImage(sitk.GetImageFromArray(mask), str(root / f"img/{cid}_mask.png"))
                row.update(image=f"img/{cid}.png", mask=f"img/{cid}_mask.png")
                row.update(spacing_x_mm=spacing[0], spacing_y_mm=spacing[1])
            else:
                write_nifti(img, root / f"img/{cid}.nii.gz", spacing)
                write_nifti(mask, root / f"img/{cid}_mask.nii.gz", spacing)
                row.update(image=f"img/{cid}.nii.gz", mask=f"img/{cid}_mask.nii.gz")
            if reader2:
                _, m2 = ellipse_case(spacing=spacing, seed=i, axes_mm=(4.1 + 0.3 * i, 3.1))
                write_nifti(m2, root / f"img/{cid}_mask2.nii.gz", spacing)
                row["mask_reader2"] = f"img/{cid}_mask2.nii.gz"
            rows.append(row)
        df = pd.DataFrame(rows)
        if extra is not None:
            df = extra(df, root)
        df.to_csv(root / "manifest.csv", index=False)
        return root / "manifest.csv"

    return _make


FAST_PARAMS = {
    "setting": {"binWidth": 10, "force2D": False, "label": 1, "minimumROISize": 4},
    "imageType": {"Original": {}},
    "featureClass": {"firstorder": None, "shape2D": None, "glcm": None},
}


def noise_features(
    n=120, p=40, seed=0, signal=("intra_f0", "peri1mm_f0"), regions=("intra", "peri1mm", "peri2mm")
):
    """A features table of standard-normal noise with region-named columns ``<region>_f<i>``
    (``p`` per region); the ``signal`` columns are shifted by 1.2 in label-1 cases (``signal=()``:
    pure noise). Labels are shuffled, 60 % positive.

    Returns ``(X, clinical, y)`` indexed by case_id; ``clinical`` has age and er_pct (er_pct
    carries a weak label signal)."""
    rng = np.random.default_rng(seed)
    y = np.r_[np.ones(n * 6 // 10, int), np.zeros(n - n * 6 // 10, int)]
    rng.shuffle(y)
    cols = [f"{r}_f{i}" for r in regions for i in range(p)]
    X = pd.DataFrame(rng.normal(size=(n, len(cols))), columns=cols)
    for c in signal:
        X[c] += 1.2 * y
    X.index = pd.Index([f"P{i:03d}" for i in range(n)], name="case_id")
    clinical = pd.DataFrame(
        {
            "age": rng.normal(52, 12, n).round(),
            "er_pct": np.clip(rng.normal(70 + 8 * y, 25), 0, 100),
        },
        index=X.index,
    )
    return X, clinical, pd.Series(y, index=X.index, name="label")


def write_features_table(path, X, clinical=None, y=None):
    """``X`` (+ ``clinical`` columns) + ``label`` as the CSV that ``data=features`` reads
    (``case_id`` first). Returns ``path``."""
    table = X if clinical is None else X.join(clinical)
    table = table.assign(label=y).reset_index()
    table.to_csv(path, index=False)
    return Path(path)


# ------------------------------------------------------------------------------------------
# the config and the command line
# ------------------------------------------------------------------------------------------


def compose_config(*overrides, space=None, searchpath=None):
    """The project's config (Hydra's compose API: no run, no output folder) with ``overrides``.

    ``space`` replaces ``search.space`` (a command-line dict would be merged into the default
    space); ``searchpath`` puts a folder on Hydra's search path (e.g. an exported experiment).
    """
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    from her2study.config import register_configs

    register_configs()
    extra = [f"hydra.searchpath=[file://{searchpath}]"] if searchpath else []
    with initialize_config_dir(str(CONF), version_base="1.3"):
        cfg = hydra_compose("config", overrides=[*extra, *overrides])
    if space is not None:
        cfg.search.space = space
    return cfg


@pytest.fixture
def compose():
    """:func:`compose_config` as a fixture: ``compose("+exp=paper", "seed=1")``."""
    return compose_config


def run_cli(args, cwd, *, code=0, timeout=600, env=None):
    """``python -m her2study ARGS`` in a real subprocess in ``cwd`` (a folder outside the
    checkout); asserts the exit code unless ``code`` is None. Returns the CompletedProcess."""
    cwd = Path(cwd).resolve()
    assert not cwd.is_relative_to(REPO), f"run the CLI in a temporary folder, not in {cwd}"
    res = subprocess.run(
        [sys.executable, "-m", "her2study", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
    )
    if code is not None:
        assert res.returncode == code, res.stdout[-2000:] + res.stderr[-4000:]
    return res


# ------------------------------------------------------------------------------------------
# the shared synthetic cohort and feature cache
# ------------------------------------------------------------------------------------------


def tree_state(root) -> dict:
    """``{relative path: (size, mtime_ns)}`` of every file under ``root`` (cheap; per test)."""
    root = Path(root)
    out = {}
    for dirpath, _, files in os.walk(root):
        for name in files:
            p = Path(dirpath, name)
            st = p.lstat()
            out[str(p.relative_to(root))] = (st.st_size, st.st_mtime_ns)
    return out


def tree_digest(root) -> dict:
    """``{relative path: sha256}`` of every file under ``root`` (once at each end of a session)."""
    root = Path(root)
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


# Content-addressed results kept beside the features: the image QA (qa/, per set of regions a
# run analyses) and the fit cache (fits/, per data, estimator, seed and code). A run with other
# settings adds its own entries, which changes no other entry and no feature: additions there are
# allowed; a changed or removed entry is not.
_ADDITIVE = ("qa/", "fits/")


def _changes(before: dict, after: dict) -> list[str]:
    new = sorted(k for k in set(after) - set(before) if not k.startswith(_ADDITIVE))
    gone = sorted(set(before) - set(after))
    changed = sorted(k for k in set(before) & set(after) if before[k] != after[k])
    return [f"+ {k}" for k in new] + [f"- {k}" for k in gone] + [f"~ {k}" for k in changed]


_SHARED: dict = {}  # the shared cache once built: its root, per-file (size, mtime), sha256


@pytest.fixture(scope="session")
def synthetic_cache(tmp_path_factory):
    """The shared cache folder: the ``SMALL`` cohort (100 synthetic cases) and its fast features
    for the tumour and every width of ``SHARED_RINGS``, generated and extracted once per session.

    Point a run at it with ``cache_dir=<it>`` plus ``SMALL``: the cohort and the features are
    found there. Read-only: a test that wrote into it (another cohort spec, ring width or
    extractor, new cases) fails (checked after every test, and by sha256 at the session's end);
    such a test takes ``synthetic_cache_copy``."""
    from her2study.tasks.common import cohort_and_features

    root = tmp_path_factory.mktemp("shared-cache")
    rings = ",".join(str(w) for w in SHARED_RINGS)
    cfg = compose_config(
        *SMALL, f"cache_dir={root}", f"region.ring_widths_mm=[{rings}]", "tracking=off"
    )
    cohort, fs = cohort_and_features(cfg)
    assert len(cohort.ids) == SMALL_N and fs.n_extracted == SMALL_N * (1 + len(SHARED_RINGS))
    _SHARED.update(root=root, state=tree_state(root), digest=tree_digest(root))
    yield root
    changes = _changes(_SHARED["digest"], tree_digest(root))
    _SHARED.clear()
    if changes:
        pytest.fail(
            "the session changed the shared synthetic cache (sha256): " + ", ".join(changes[:10]),
            pytrace=False,
        )


@pytest.fixture
def synthetic_cache_copy(synthetic_cache, tmp_path):
    """A private copy of the shared cache (under tmp_path) for a test that writes into it."""
    return Path(shutil.copytree(synthetic_cache, tmp_path / "cache", symlinks=True))


def _shared_cache_changes() -> list[str]:
    """Files the last test added to, changed in or removed from the shared cache (if built)."""
    if not _SHARED:
        return []
    after = tree_state(_SHARED["root"])
    changes = _changes(_SHARED["state"], after)
    _SHARED["state"] = after  # report once, in the test that wrote
    return changes


# ------------------------------------------------------------------------------------------
# the checkout guard: no test writes into the repository
# ------------------------------------------------------------------------------------------

# Not a test's doing (or not in the checkout's content): caches of pytest and Python, the
# virtual environment and linters' caches; never walked.
_GUARD_SKIP = {".pytest_cache", "__pycache__", ".git", ".venv", "venv", ".ruff_cache"}


def checkout_state(repo=REPO) -> dict | None:
    """What ``git status --porcelain --untracked-files=all --ignored=matching`` lists in
    ``repo`` (new, changed, deleted tracked files; untracked and git-ignored files such as
    outputs/, mlflow.db, .her2study_cache/), each untracked or ignored file with its size and
    mtime, so a later write to it shows too; an ignored folder counts file by file. Paths under
    ``_GUARD_SKIP`` are left out. None when git cannot tell (not a checkout)."""
    try:
        res = subprocess.run(
            # --no-optional-locks: a read-only status (no index refresh written, no lock taken
            # that a git command of the user's would trip over)
            ["git", "--no-optional-locks", "-C", str(repo), "status", "--porcelain", "-z"]
            + ["--untracked-files=all", "--ignored=matching", "--no-renames"],
            capture_output=True,
            timeout=60,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    if res.returncode != 0:
        return None
    out = {}
    for entry in res.stdout.decode(errors="replace").split("\0"):
        if not entry:
            continue
        code, rel = entry[:2], entry[3:].rstrip("/")
        if _GUARD_SKIP & set(Path(rel).parts):
            continue
        path = repo / rel
        if code not in ("??", "!!"):
            out[rel] = code  # a tracked file: its status
        elif path.is_dir() and not path.is_symlink():
            for dirpath, dirs, files in os.walk(path):
                dirs[:] = [d for d in dirs if d not in _GUARD_SKIP]
                for name in files:
                    out[str(Path(dirpath, name).relative_to(repo))] = _stat(Path(dirpath, name))
        else:
            out[rel] = _stat(path)
    return out


def _stat(path: Path):
    try:
        st = path.lstat()
    except FileNotFoundError:  # removed meanwhile
        return None
    return (st.st_size, st.st_mtime_ns)


_CHECKOUT: dict = {}


def pytest_sessionstart(session):
    _CHECKOUT["state"] = checkout_state()


@pytest.fixture(autouse=True)
def _checkout_untouched():
    """Fail the test that wrote into the checkout (a new, changed or removed file) or into the
    shared synthetic cache. Writes of a
    module or session fixture are charged to the test that first used it (set-up) or to the
    next test (tear-down); the session's last ones to the session (pytest_sessionfinish).
    Editing the checkout by hand while the suite runs is reported too."""
    yield
    problems = []
    cached = _shared_cache_changes()
    if cached:
        problems.append(
            "the test wrote into the shared synthetic cache (use synthetic_cache_copy): "
            + ", ".join(cached[:10])
        )
    before = _CHECKOUT.get("state")
    if before is not None:
        after = checkout_state()
        changes = _changes(before, after or {})
        if changes:
            _CHECKOUT["state"] = after  # report once
            problems.append(f"the test wrote into the checkout {REPO}: " + ", ".join(changes[:10]))
    if problems:
        pytest.fail("; ".join(problems), pytrace=False)


def pytest_sessionfinish(session, exitstatus):
    before = _CHECKOUT.get("state")
    if before is None:
        return
    changes = _changes(before, checkout_state() or {})
    if changes:
        msg = f"the test session wrote into the checkout {REPO}: " + ", ".join(changes[:10])
        tr = session.config.pluginmanager.get_plugin("terminalreporter")
        if tr is not None:
            tr.write_line(msg, red=True)
        else:
            print(msg, file=sys.stderr)
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


@pytest.fixture
def tiny_mount(tmp_path):
    """Mount a small tmpfs (root only; skipped where mounting is not allowed)."""
    import subprocess

    mounted = []

    def _mount(name, options):
        target = tmp_path / name
        target.mkdir()
        res = subprocess.run(
            ["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(target)],
            capture_output=True,
            text=True,
        )
        if res.returncode != 0:
            pytest.skip(f"cannot mount a tmpfs here: {res.stderr.strip()}")
        mounted.append(target)
        return target

    yield _mount
    for target in mounted:
        subprocess.run(["umount", "-l", str(target)], capture_output=True)
