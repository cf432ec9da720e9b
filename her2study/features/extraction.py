"""PyRadiomics features for the tumour and its peritumoral regions, cached and parallel.

Feature columns are named ``<region>_<pyradiomics name>``, e.g. ``intra_original_firstorder_Mean``,
``peri1mm_wavelet-LH_glcm_Idn``, ``peri0p5mm_...`` or ``band1to2mm_...``.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import yaml

from her2study.cohort.io import ImageReadError, read_image, read_mask
from her2study.cohort.manifest import Case, Cohort
from her2study.digest import canonical_digest, file_digest
from her2study.errors import ConfigError, Her2StudyError
from her2study.features.cache import FeatureCache
from her2study.features.shared import execute_regions
from her2study.regions import (
    REGION_VERSION,
    RegionMaker,
    RegionSpec,
    field_of_view,
    region_image,
)

log = logging.getLogger(__name__)

# Bump when the meaning of a cached value changes (region definition, value conversion).
# 2: entries carry a checksum of their content (older entries are not looked up)
FEATURE_CODE_VERSION = 2
STATS_COLUMNS = ["case_id", "region", "n_pixels", "area_mm2", "coverage"]


class ExtractionError(Her2StudyError, RuntimeError):
    """Extraction failed for some cases; the message lists each case, region and reason."""


def load_params(params_file: str | None, params: dict | None) -> dict:
    """The pyradiomics parameter block: a user's params YAML as is, or the inline mapping."""
    if params_file:
        path = Path(params_file)
        if not path.is_file():
            raise ConfigError(f"pyradiomics params file not found: {path} (extractor.params_file)")
        with open(path, encoding="utf-8") as fh:
            return yaml.safe_load(fh) or {}
    return dict(params or {})


_EXTRACTORS: dict[str, Any] = {}


def build_extractor(params: dict):
    """A validated pyradiomics extractor (memoised per process and settings)."""
    import radiomics
    from radiomics import featureextractor

    key = canonical_digest(params)
    if key not in _EXTRACTORS:
        radiomics.setVerbosity(logging.ERROR)
        logging.getLogger("radiomics").setLevel(logging.ERROR)
        logging.getLogger("pykwalify").setLevel(logging.CRITICAL)  # we report its errors once
        try:
            _EXTRACTORS[key] = featureextractor.RadiomicsFeatureExtractor(params)
        except Exception as exc:  # pykwalify's SchemaError and friends
            found = [ln.strip(" -.") for ln in str(exc).splitlines() if ln.strip().startswith("- ")]
            why = "; ".join(found) or str(exc)
            raise ConfigError(
                f"pyradiomics rejected the extractor settings: {why} -> fix: correct the "
                "params file or extractor.params (keys: "
                "https://pyradiomics.readthedocs.io/en/latest/customization.html)"
            ) from None
    return _EXTRACTORS[key]


@functools.cache
def radiomics_version() -> str:
    """pyradiomics' ``__version__`` (it keys the cache), read without importing the package when
    it is not loaded yet: a fully cached extraction then never pays pyradiomics' import."""
    import sys

    if "radiomics" not in sys.modules:
        import importlib.util

        try:
            spec = importlib.util.find_spec("radiomics")
            folder = Path(next(iter(spec.submodule_search_locations)))
            vspec = importlib.util.spec_from_file_location(
                "_h2s_rad_version", folder / "_version.py"
            )
            module = importlib.util.module_from_spec(vspec)
            vspec.loader.exec_module(module)
            return str(module.get_versions()["version"])
        except Exception:  # noqa: BLE001 - any other layout: import the package
            pass
    import radiomics

    return str(radiomics.__version__)


@dataclass
class CaseResult:
    case_id: str
    features: dict[str, dict[str, float]] = field(default_factory=dict)  # region -> name -> value
    stats: dict[str, dict] = field(default_factory=dict)  # region -> RegionStats as dict
    n_cached: int = 0
    n_extracted: int = 0
    errors: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)  # e.g. damaged cache entries, recomputed


@dataclass
class FeatureSet:
    """Extracted features of a cohort."""

    table: pd.DataFrame  # index case_id; one column per region x feature
    region_stats: pd.DataFrame  # case_id, region, n_pixels, area_mm2, coverage
    n_cached: int = 0
    n_extracted: int = 0
    failed: dict[str, str] = field(default_factory=dict)  # on_error="collect": case -> reasons


def _entry_key(case_digest: dict, spec: RegionSpec, fov: str, params_key: str) -> str:
    return canonical_digest(
        {
            **case_digest,
            "region": spec.as_dict(),
            "fov": fov if not spec.is_intra else "",
            # ring masks follow the boundary rule of this version (the tumour's never changes)
            **({"regions": REGION_VERSION} if not spec.is_intra else {}),
            "params": params_key,
            "pyradiomics": radiomics_version(),
            "code": FEATURE_CODE_VERSION,
        }
    )


def _to_float(value) -> float:
    try:
        return float(np.asarray(value).item())
    except (TypeError, ValueError):
        return float("nan")


def _case_keys(case: Case, specs: list[RegionSpec], params_key: str, fov_mode: str, mask_label):
    """Cache key of every region of ``case`` (hashes its image and mask files)."""
    digest = {
        "image": file_digest(case.image),
        "mask": file_digest(case.mask),
        "spacing": list(case.spacing_mm) if case.spacing_mm else None,
        "mask_label": mask_label,
    }
    return {spec.name: _entry_key(digest, spec, fov_mode, params_key) for spec in specs}


def lookup_case(
    case: Case,
    specs: list[RegionSpec],
    params_key: str,
    cache: FeatureCache,
    fov_mode: str = "nonzero",
    mask_label: int | None = None,
) -> tuple[CaseResult, list[RegionSpec], dict[str, str]]:
    """The cached regions of one case, the regions still to extract and every region's cache
    key (no pyradiomics, no image read: the parent serves fully cached cases with this and sends
    only misses to the workers)."""
    result = CaseResult(case.case_id)
    keys = _case_keys(case, specs, params_key, fov_mode, mask_label)
    todo = []
    start = len(cache.problems)
    for spec in specs:
        entry = cache.get(keys[spec.name])
        if entry is not None and not _valid_entry(entry):
            entry = cache.discard(keys[spec.name], "does not hold features and region stats")
        if entry is None:
            todo.append(spec)
        else:
            result.features[spec.name] = entry["features"]
            result.stats[spec.name] = entry["stats"]
            result.n_cached += 1
    result.warnings += [f"case {case.case_id}: {p}" for p in cache.problems[start:]]
    return result, todo, keys


def extract_case(
    case: Case,
    specs: list[RegionSpec],
    params: dict,
    cache_root: str,
    fov_mode: str = "nonzero",
    mask_label: int | None = None,
) -> CaseResult:
    """Features of one case for every region, from the cache where possible."""
    cache = FeatureCache(cache_root, log_problems=False)  # reported via result.warnings
    params_key = canonical_digest(params)
    result, todo, keys = lookup_case(case, specs, params_key, cache, fov_mode, mask_label)
    if not todo:
        return result

    image, _ = read_image(case.image, case.spacing_mm)
    mask = read_mask(case.mask, image, mask_label, plain_spacing=case.spacing_mm is not None)
    fov = field_of_view(image, fov_mode)
    outer = max((s.outer_mm for s in todo if not s.is_intra), default=0.0)
    maker = RegionMaker(mask, fov, outer)
    extractor = build_extractor(params)
    min_size = int(params.get("setting", {}).get("minimumROISize", 1) or 1)
    masks, stats_of, problems = {}, {}, {}
    for spec in todo:
        region, stats = maker.make(spec)
        if stats.n_pixels < max(min_size, 1):
            problems[spec.name] = _too_small(case, spec, stats, maker, min_size)
            continue
        masks[spec.name], stats_of[spec.name] = region_image(region, image), stats
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # skimage's LBP float warning, numpy empty-slice noise
        raws = execute_regions(extractor, image, masks, label=1)  # filters once per case
    for spec in todo:
        raw = raws.get(spec.name)
        if isinstance(raw, Exception):
            problems[spec.name] = (
                f"case {case.case_id} [{case.image.name}] region {spec.name}: "
                f"pyradiomics failed ({raw})"
            )
        if spec.name in problems:
            result.errors.append(problems[spec.name])
            continue
        values = {k: _to_float(v) for k, v in raw.items() if not k.startswith("diagnostics_")}
        entry = {"features": values, "stats": asdict(stats_of[spec.name])}
        cache.put(keys[spec.name], entry)
        result.features[spec.name] = values
        result.stats[spec.name] = entry["stats"]
        result.n_extracted += 1
    return result


def _too_small(case, spec, stats, maker, min_size: int) -> str:
    """Why a region has too few pixels, with the fix that applies: a tiny tumour mask, a ring
    lying outside the image's non-zero field of view, or a ring thinner than a pixel."""
    where = f"case {case.case_id} [{case.mask.name}] region {spec.name}: only {stats.n_pixels} "
    where += f"pixels (pyradiomics minimumROISize {min_size})"
    if spec.is_intra:
        return where + (
            ": the tumour mask is too small for texture features -> fix: check the mask and "
            "its pixel spacing, or leave the case out of the manifest"
        )
    fov, maker.fov = maker.fov, None
    try:
        unclipped = maker.make(spec)[1].n_pixels
    finally:
        maker.fov = fov
    if unclipped >= max(min_size, 1):
        return where + (
            f" of {unclipped} inside the image: the image is zero around the lesion, so the "
            "ring falls outside the field of view -> fix: set region.fov=none"
        )
    return where + (
        ": the ring is thinner than a pixel at this spacing -> fix: use a wider ring "
        "(region.ring_widths_mm) or check the pixel spacing"
    )


def _valid_entry(entry) -> bool:
    return (
        isinstance(entry, dict)
        and isinstance(entry.get("features"), dict)
        and isinstance(entry.get("stats"), dict)
        and all(k in entry["stats"] for k in STATS_COLUMNS[2:])
    )


def _extract_or_report(case: Case, *args) -> CaseResult:
    """:func:`extract_case`, with a case whose files cannot be read reported, not raised."""
    try:
        return extract_case(case, *args)
    except ImageReadError as err:
        return CaseResult(case.case_id, errors=[f"case {case.case_id}: {err} -> fix: {err.fix}"])


_WORKER_READY = False


def _in_worker(job, *args) -> CaseResult:
    """``job(*args)`` in a pool worker whose SimpleITK filters run on one thread: the pool
    already has a process per core, and SimpleITK's default (a thread per core in every
    worker) only makes the workers' filter threads compete for the same cores."""
    global _WORKER_READY
    if not _WORKER_READY:
        import SimpleITK as sitk

        sitk.ProcessObject_SetGlobalDefaultNumberOfThreads(1)
        _WORKER_READY = True
    return job(*args)


@contextlib.contextmanager
def _backend(backend: str, n_jobs: int):
    """joblib backend context: loky/threading locally, dask or ray for a cluster. ``dask``: the
    scheduler that Dask's config names (``DASK_SCHEDULER_ADDRESS``, e.g. tcp://host:8786), else
    a local cluster of ``n_jobs`` worker processes."""
    import joblib

    if backend == "dask":
        import dask
        from dask.distributed import Client, LocalCluster

        address = dask.config.get("scheduler-address", None)
        if address:
            with Client(address), joblib.parallel_config(backend="dask"):
                yield
            return
        with LocalCluster(n_workers=max(n_jobs, 1), threads_per_worker=1, processes=True) as lc:
            with Client(lc), joblib.parallel_config(backend="dask"):
                yield
    elif backend == "ray":
        from ray.util.joblib import register_ray

        register_ray()
        with joblib.parallel_config(backend="ray"):
            yield
    else:
        with joblib.parallel_config(backend=backend):
            yield


def extract_features(
    cohort: Cohort,
    specs: list[RegionSpec],
    params: dict,
    cache_root: str | Path,
    *,
    fov_mode: str = "nonzero",
    mask_label: int | None = None,
    n_jobs: int = 1,
    backend: str = "loky",
    progress: bool = False,
    min_coverage: float = 0.8,
    on_error: str = "raise",
) -> FeatureSet:
    """Features for every case and region of a cohort; cached entries are reused.

    ``on_error="raise"``: raises :class:`ExtractionError` listing every failed case and region.
    ``on_error="collect"``: the failed cases (a region too small, pyradiomics failing, a file
    that cannot be read) are left out of the table and listed with their reasons in
    :attr:`FeatureSet.failed`.
    """
    from joblib import Parallel, delayed
    from tqdm.auto import tqdm

    if on_error not in ("raise", "collect"):
        raise ValueError(f"on_error must be 'raise' or 'collect', not {on_error!r}")
    cache_root = str(Path(cache_root).resolve())
    cache = FeatureCache(cache_root, log_problems=False)
    params_key = canonical_digest(params)
    served: list[CaseResult] = []  # fully cached cases, read here: no worker process started
    misses: list[Case] = []
    for case in cohort.cases:
        try:
            hit, todo, _ = lookup_case(case, specs, params_key, cache, fov_mode, mask_label)
        except OSError:  # a file that cannot be read: the worker reports it, as before
            misses.append(case)
            continue
        for warning in hit.warnings:  # damaged entries: discarded here, redone by a worker
            log.warning("%s", warning)
        hit.warnings = []
        (misses if todo else served).append(case if todo else hit)
    if misses or not cohort.cases:
        build_extractor(params)  # validate the settings once, before any extraction
    job = extract_case if on_error == "raise" else _extract_or_report
    if n_jobs != 1:
        job = functools.partial(_in_worker, job)

    def results():
        yield from served
        if misses:
            jobs = (
                delayed(job)(case, specs, params, cache_root, fov_mode, mask_label)
                for case in misses
            )
            with _backend(backend, n_jobs):
                yield from Parallel(n_jobs=n_jobs, return_as="generator_unordered")(jobs)

    row_of = {cid: i for i, cid in enumerate(cohort.ids)}
    names: dict[str, list[str]] = {}  # region -> feature names, from the first case
    values = None  # float64 (cases x columns), filled as results arrive: no per-case dicts kept
    stats, errors = [], []
    failed: dict[str, str] = {}
    n_cached = n_extracted = 0
    for r in tqdm(
        results(),
        total=len(cohort.cases),
        desc=f"features ({len(specs)} regions)",
        disable=not progress,
        unit="case",
    ):
        n_cached += r.n_cached
        n_extracted += r.n_extracted
        for warning in r.warnings:  # from a worker process: logged here, in the run's log
            log.warning("%s", warning)
        if r.errors:
            errors += r.errors
            failed[r.case_id] = "; ".join(r.errors)
            continue
        if values is None:
            names = {s.name: list(r.features[s.name]) for s in specs}
            width = sum(len(v) for v in names.values())
            values = np.full((len(row_of), width), np.nan)
        row = values[row_of[r.case_id]]
        start = 0
        for spec in specs:
            feats = r.features[spec.name]
            keys = names[spec.name]
            if len(feats) == len(keys) and list(feats) == keys:  # the usual case: same order
                row[start : start + len(keys)] = np.fromiter(feats.values(), float, len(keys))
            else:
                row[start : start + len(keys)] = [feats.get(k, np.nan) for k in keys]
            start += len(keys)
            stats.append({"case_id": r.case_id, "region": spec.name, **r.stats[spec.name]})
    if errors and on_error == "raise":
        raise ExtractionError(f"{len(errors)} extraction problem(s):\n  " + "\n  ".join(errors))
    columns = [f"{region}_{k}" for region, keys in names.items() for k in keys]
    if values is None:  # no case succeeded (on_error="collect")
        values = np.full((len(row_of), 0), np.nan)
    table = pd.DataFrame(values, index=pd.Index(cohort.ids, name="case_id"), columns=columns)
    if failed:
        table = table.drop(index=list(failed))
        failed = {cid: failed[cid] for cid in cohort.ids if cid in failed}  # cohort order
    order = {(s.name): i for i, s in enumerate(specs)}
    stats.sort(key=lambda d: (row_of[d["case_id"]], order[d["region"]]))
    region_stats = pd.DataFrame(stats) if stats else pd.DataFrame(columns=STATS_COLUMNS)
    low = region_stats[region_stats["coverage"] < min_coverage]
    for _, row in low.iterrows():
        log.warning(
            "case %s: %s keeps %.0f%% of its full ring after clipping to the image/field of view "
            "(region.min_coverage=%.2f)",
            row["case_id"],
            row["region"],
            100 * row["coverage"],
            min_coverage,
        )
    return FeatureSet(
        table=table,
        region_stats=region_stats,
        n_cached=n_cached,
        n_extracted=n_extracted,
        failed=failed,
    )
