"""Helpers shared by tasks: output folder, regions and features from a config."""

from __future__ import annotations

import logging
import os
import shutil
from contextlib import contextmanager
from pathlib import Path

from omegaconf import OmegaConf

from her2study.cohort.source import load_from_config
from her2study.errors import ConfigError
from her2study.features import FeatureSet, extract_features, load_params
from her2study.regions import region_specs
from her2study.reporting import to_markdown

log = logging.getLogger(__name__)


def output_dir(cfg) -> Path:
    """The Hydra job's output folder, or ./outputs/<study> outside Hydra."""
    try:
        from hydra.core.hydra_config import HydraConfig

        return Path(HydraConfig.get().runtime.output_dir)
    except (ValueError, ImportError):
        out = Path("outputs") / cfg.study
        out.mkdir(parents=True, exist_ok=True)
        return out


@contextmanager
def result_set(out: Path):
    """Write a task's results into the yielded temporary folder beside ``out``; they are moved
    into ``out`` when the block ends without error (the report last), so a failed run leaves
    no partial result set. A write error with no file name (a full disk) names the file that
    was being written, and a file of the temporary folder is named by its place in ``out``.
    Log MLflow artifacts from ``out`` afterwards (:func:`final_paths`)."""
    out = Path(out)
    stage = out.parent / f".{out.name}.results.tmp"
    shutil.rmtree(stage, ignore_errors=True)
    stage.mkdir(parents=True)
    try:
        yield stage
    except OSError as err:
        newest = _newest(stage)
        shutil.rmtree(stage, ignore_errors=True)
        if err.filename is None and newest is not None:
            raise OSError(err.errno, err.strerror, str(out / newest)) from None
        written = err.filename2 or err.filename  # a copy's error names its source first
        if written is not None and Path(written).is_relative_to(stage):
            shown = out / Path(written).relative_to(stage)  # where it was to be
            raise OSError(err.errno, err.strerror, str(shown)) from None
        raise
    except BaseException:
        shutil.rmtree(stage, ignore_errors=True)
        raise
    entries = sorted(stage.iterdir(), key=lambda p: (p.name == "report.html", p.name))
    for entry in entries:
        target = out / entry.name
        if target.is_dir() and entry.is_dir():
            shutil.rmtree(target)
        os.replace(entry, target)
    stage.rmdir()


def _newest(folder: Path) -> Path | None:
    """The most recently written file under ``folder``, relative to it (the one a full disk
    stopped)."""
    files = [p for p in folder.rglob("*") if p.is_file()]
    if not files:
        return None
    return max(files, key=lambda p: p.stat().st_mtime_ns).relative_to(folder)


def write_atomic(path: Path, text: str) -> Path:
    """Write a result that lives outside the result set (an exported experiment file, a
    predictions file the user placed) atomically: a temporary file beside it and
    ``os.replace``. A write error with no file name (a full disk) names ``path``."""
    from her2study.features.cache import atomic_write_text

    try:
        atomic_write_text(path, text)
    except OSError as err:
        if err.filename is None:
            raise OSError(err.errno, err.strerror, str(path)) from None
        raise
    return Path(path)


def final_paths(paths, stage: Path, out: Path) -> list[Path]:
    """Paths written under ``stage`` as they are after :func:`result_set` moved them."""
    return [Path(out) / Path(p).relative_to(stage) for p in paths]


def save_table(out: Path, name: str, df, source: str, md: bool = True) -> list[Path]:
    """``<name>.csv`` and, with ``md``, ``<name>.md`` headed by the data source; their paths."""
    df.to_csv(out / f"{name}.csv", index=False)
    paths = [out / f"{name}.csv"]
    if md:
        (out / f"{name}.md").write_text(f"_Data: {source}_\n\n" + to_markdown(df) + "\n")
        paths.append(out / f"{name}.md")
    return paths


def specs_from_config(cfg):
    r = cfg.region
    return region_specs(r.include_intra, list(r.ring_widths_mm), [list(b) for b in r.bands_mm])


def extractor_params(cfg) -> dict:
    params = cfg.extractor.params
    params = OmegaConf.to_container(params, resolve=True) if OmegaConf.is_config(params) else params
    return load_params(cfg.extractor.params_file, params)


def features_from_config(cohort, specs, cfg) -> FeatureSet:
    """Cached pyradiomics features of ``cohort`` for ``specs`` with the configured settings."""
    return extract_features(
        cohort,
        specs,
        extractor_params(cfg),
        cfg.cache_dir,
        fov_mode=cfg.region.fov,
        mask_label=cfg.data.mask_label,
        n_jobs=cfg.execution.n_jobs,
        backend=cfg.execution.backend,
        progress=cfg.execution.progress,
        min_coverage=cfg.region.min_coverage,
    )


def add_reader2_features(cohort, fs: FeatureSet, specs, cfg) -> FeatureSet:
    """Features of the second reader's masks, as ``reader2__<column>`` (NaN where absent)."""
    from dataclasses import replace

    from her2study.cohort.manifest import Cohort

    read2 = [replace(c, mask=c.mask_reader2) for c in cohort.cases if c.mask_reader2 is not None]
    if not read2:
        log.warning("no mask_reader2 in the manifest: the ICC filter has nothing to compare")
        return fs
    sub = Cohort(
        table=cohort.table.loc[[c.case_id for c in read2]], source=cohort.source, cases=read2
    )
    fs2 = features_from_config(sub, specs, cfg)
    table = fs.table.join(fs2.table.add_prefix("reader2__"))
    return FeatureSet(
        table=table,
        region_stats=fs.region_stats,
        n_cached=fs.n_cached + fs2.n_cached,
        n_extracted=fs.n_extracted + fs2.n_extracted,
    )


def add_perturbed_features(cohort, fs: FeatureSet, specs, cfg) -> FeatureSet:
    """Features of each case's contour-perturbed masks (``region.perturb``), every region rebuilt
    from the perturbed tumour mask, through the same cache: columns ``perturb<k>__<column>``."""
    from her2study.cohort.perturb import PerturbSpec, write_perturbed_cohorts

    spec = PerturbSpec(**OmegaConf.to_container(cfg.region.perturb, resolve=True))
    cohorts = write_perturbed_cohorts(
        cohort, spec, Path(cfg.cache_dir) / "perturbed_masks", cfg.data.mask_label
    )
    table, n_cached, n_extracted = fs.table, fs.n_cached, fs.n_extracted
    for k, sub in enumerate(cohorts, start=1):
        fk = features_from_config(sub, specs, cfg)
        table = table.join(fk.table.add_prefix(f"perturb{k}__"))
        n_cached, n_extracted = n_cached + fk.n_cached, n_extracted + fk.n_extracted
    log.info("contour perturbations: %d per case (region.perturb), features extracted", spec.n)
    return FeatureSet(
        table=table, region_stats=fs.region_stats, n_cached=n_cached, n_extracted=n_extracted
    )


SECRET_KEYS = ("pseudonym_salt",)


def public_config(cfg) -> dict:
    """The resolved config as a plain dict with secrets replaced by "***" (for logs, MLflow)."""

    def redact(node):
        if isinstance(node, dict):
            return {
                k: ("***" if k in SECRET_KEYS and v is not None else redact(v))
                for k, v in node.items()
            }
        if isinstance(node, list):
            return [redact(v) for v in node]
        return node

    return redact(OmegaConf.to_container(cfg, resolve=True))


def run_tags(task: str, cfg, cohort=None, **extra) -> dict:
    """Tags of a task's MLflow parent run: task, her2study version, sweep id, and with ``cohort``
    the data source. (The code's git commit is MLflow's own ``mlflow.source.git.commit``.)"""
    from her2study import __version__

    tags = {"task": task, "her2study_version": __version__, "sweep_id": sweep_id(cfg), **extra}
    if cohort is not None:
        tags["data_source"] = "synthetic" if cohort.synthetic else str(cfg.data.source)
    return tags


def open_run(cfg, task: str, run_name: str, **tags):
    """The task's MLflow parent run, to enter when the task starts (before extraction, search or
    fit), so that its Duration is the study's and an error or a signal ends it FAILED or KILLED
    instead of leaving no run; runs of the study left RUNNING by a dead process are marked
    FAILED on entry. The config (:func:`config_params`) is logged as params when it opens, so
    a run that fails later still says how it was configured. A no-op tracker with
    ``tracking=off``."""
    from her2study.tracking import Tracker

    return Tracker(
        cfg.tracking.tracking_uri,
        cfg.tracking.experiment,
        enabled=cfg.tracking.enabled,
        run_name=run_name,
        tags=run_tags(task, cfg, **tags),
        study=cfg.study,
        params=config_params(cfg) if cfg.tracking.enabled else None,
    )


def sweep_id(cfg) -> str:
    """The sweep a run belongs to: ``<study>/<multirun folder>`` for a Hydra ``-m`` job, else
    ``<study>/run:<run folder>`` (a single run is a sweep of one); task=compare groups by it."""
    from pathlib import Path

    try:
        from hydra.core.hydra_config import HydraConfig
        from hydra.types import RunMode

        hc = HydraConfig.get()
    except (ImportError, ValueError):
        return f"{cfg.study}/interactive"
    if hc.mode == RunMode.MULTIRUN:
        return f"{cfg.study}/{Path(hc.sweep.dir).name}"
    return f"{cfg.study}/run:{Path(hc.runtime.output_dir).name}"


def config_params(cfg) -> dict:
    """The resolved config (secrets redacted) as flat params, with the her2study version."""
    from her2study import __version__
    from her2study.tracking import flatten_config

    return {**flatten_config(public_config(cfg)), "her2study.version": __version__}


def log_run_config(tracker, cfg, cohort, n_cases: int) -> None:
    """The resolved config (secrets redacted) as params and as ``config/resolved.yaml``, with
    the cohort's size. The params logged when the run opened are not repeated; a setting the
    task changed since (a search space adapted to the data) is logged as ``resolved.<key>``."""
    if not tracker.enabled:
        return
    public = public_config(cfg)
    params = config_params(cfg)
    params.update({"data.n_cases": n_cases, "data.synthetic": cohort.synthetic})
    tracker.log_params(params)
    tracker.log_text(OmegaConf.to_yaml(OmegaConf.create(public)), "config/resolved.yaml")


def protect_ids(cohort, table, data_cfg):
    """Warn when case ids look like names or PatientIDs; pseudonymise them when asked.

    The ids themselves are never printed: only how many look identifying.
    """
    from dataclasses import replace

    from her2study.privacy import looks_identifying, pseudonymise

    flagged = looks_identifying(cohort.ids)
    if not data_cfg.pseudonymise:
        if flagged:
            log.warning(
                "%d case id(s) look like patient names or PatientIDs/MRNs; they would appear in "
                "output tables and MLflow. Set data.pseudonymise=true (with a secret "
                "HER2STUDY_SALT) to replace every id by a salted hash before anything is written.",
                len(flagged),
            )
        return cohort, table
    if not data_cfg.pseudonym_salt:
        raise ConfigError(
            "data.pseudonymise=true needs a secret salt: export HER2STUDY_SALT=... "
            "(from the environment only, never on the command line)"
        )
    codes = pseudonymise(cohort.ids, data_cfg.pseudonym_salt)
    cohort.table = cohort.table.rename(index=codes)
    cohort.cases = [replace(c, case_id=codes[c.case_id]) for c in cohort.cases]
    if table is not None:
        table = table.rename(index=codes)
    log.info("case ids pseudonymised (salted SHA-256) for %d cases", len(codes))
    return cohort, table


def cohort_and_features(cfg):
    """Load the configured cohort and its features (extracted and cached, or the given table),
    after every check of the config and the data (:func:`her2study.preflight.preflight`)."""
    from her2study.preflight import preflight

    def load():
        keep = [cfg.split.balance_on] if cfg.split.method == "block" else []
        cohort, table = load_from_config(cfg.data, n_jobs=cfg.execution.n_jobs, keep_columns=keep)
        return protect_ids(cohort, table, cfg.data)

    cohort, table = preflight(cfg, load)
    log.info("cohort: %d cases (%s)", len(cohort.ids), cohort.source)
    if table is not None:
        return cohort, FeatureSet(table=table, region_stats=None)
    specs = specs_from_config(cfg)
    qa = image_qa(cohort, specs, cfg)  # warnings before any extraction
    fs = features_from_config(cohort, specs, cfg)
    if cfg.region.reader2 or cfg.selection.icc_threshold is not None:
        fs = add_reader2_features(cohort, fs, specs, cfg)
    if qa is not None and fs.region_stats is not None:
        fs.region_stats = fs.region_stats.merge(qa, on=["case_id", "region"], how="left")
    if cfg.selection.get("robustness_threshold") is not None:
        fs = add_perturbed_features(cohort, fs, specs, cfg)
    log.info(
        "features: %d cases x %d columns (%s); %d region entries from cache, %d extracted",
        fs.table.shape[0],
        fs.table.shape[1],
        ", ".join(s.name for s in specs),
        fs.n_cached,
        fs.n_extracted,
    )
    return cohort, fs


def image_qa(cohort, specs, cfg):
    """Image checks of the analysed regions, logged as warnings before extraction: burned-in
    annotations per case (returned as the QA columns of ``region_stats``, or None when off) and
    derived image types left with <= 2 grey-level bins (``extractor.check_bins``)."""
    from her2study.features.qa import annotation_qa, check_derived_bins

    if cfg.extractor.get("check_bins", True):
        for note in check_derived_bins(
            cohort,
            specs,
            extractor_params(cfg),
            cfg.region.fov,
            cfg.data.mask_label,
            cache_root=cfg.cache_dir,
        ):
            log.warning("%s", note)
    if not cfg.region.get("annotation_check", True):
        return None
    table, notes = annotation_qa(
        cohort,
        specs,
        cfg.region.fov,
        cfg.data.mask_label,
        cache_root=cfg.cache_dir,
        n_jobs=cfg.execution.n_jobs,
    )
    for note in notes:
        log.warning("%s", note)
    return table


def clinical_columns(cfg) -> list[str]:
    """The run's clinical columns: ``model.clinical.columns``, else ``data.clinical_columns``
    (the rule the up-front checks use: ``search.preflight.configured_clinical``)."""
    from her2study.search.preflight import configured_clinical

    return configured_clinical(cfg)


def check_design_config(cfg) -> None:
    """What the config alone says about the site column, the split by site and ComBat's
    covariates (clinical columns, never the label): before any run opens or any work."""
    from her2study.split import check_site_config

    check_site_config(cfg.split, cfg.data.get("site_column"), cfg.selection.get("harmonise"))
    if cfg.selection.get("harmonise") is not None:
        import pandas as pd

        from her2study.models import pipeline_from_config

        pipeline_from_config(  # the factory's own checks, on a stand-in of the clinical columns
            cfg.selection,
            cfg.model,
            int(cfg.seed),
            sites=pd.Series(dtype=str),
            covariates=pd.DataFrame(columns=[*clinical_columns(cfg), *cfg.data.clinical_columns]),
            label_column=str(cfg.data.label_column),
        )


def load_design(cfg):
    """The cohort's features (+ clinical columns) and labels as the search's ``Design``; with
    ``data.site_column`` each case's site (outer folds by site, ComBat's batch), with
    ``selection.harmonise_covariates`` ComBat's covariates, with
    ``selection.robustness_threshold`` the perturbed masks' features (the filter's input)."""
    from her2study.cohort.source import describe_source
    from her2study.search import Design
    from her2study.split import site_values

    check_design_config(cfg)
    site_column = cfg.data.get("site_column")
    cohort, fs = cohort_and_features(cfg)
    cols = clinical_columns(cfg)
    clinical = cohort.table[cols] if cols else None
    sites = None
    if site_column:
        sites = site_values(cohort.table, site_column, str(cfg.split.method))
    names = list(cfg.selection.get("harmonise_covariates") or [])
    design = Design.from_tables(
        fs.table,
        cohort.labels,
        clinical,
        cohort.synthetic,
        describe_source(cohort),
        outside_exclude=tuple(cfg.region.ring_exclude_classes or ()),
        sites=sites,
        covariates=cohort.table[[c for c in names if c in cohort.table.columns]] if names else None,
    )
    return design, cohort


def extraction_settings(cfg, columns, clinical=()) -> dict:
    """The ``extraction`` block of a model card: how task=predict makes a new case's features
    (the regions of ``columns``, the extractor settings, field of view, mask label of ``cfg``)."""
    regions = sorted({c.split("_", 1)[0] for c in columns if c not in set(clinical)})
    return {
        "params": extractor_params(cfg),
        "fov": str(cfg.region.fov),
        "mask_label": cfg.data.mask_label,
        "regions": regions,
        "ring_widths_mm": [float(w) for w in cfg.region.ring_widths_mm],
        "bands_mm": [[float(a), float(b)] for a, b in (cfg.region.bands_mm or [])],
    }


def region_kind(cfg) -> str:
    """The regions of a run in words for the MLflow dashboard: ``tumour+ring``, ``tumour+rings``
    (several ring widths), ``tumour``, ``ring+bands``, ... (``none`` without any region)."""
    r = cfg.region
    n_rings, n_bands = len(r.ring_widths_mm or []), len(r.bands_mm or [])
    parts = ["tumour"] if r.include_intra else []
    if n_rings:
        parts.append("ring" if n_rings == 1 else "rings")
    if n_bands:
        parts.append("band" if n_bands == 1 else "bands")
    return "+".join(parts) or "none"


def dashboard_params(cfg) -> dict:
    """Scalar params that MLflow's chart view can use as x axis and to group a sweep:
    ``region.ring_width_mm`` (only with exactly one ring width), ``region.kind``, ``sweep_id``."""
    widths = [float(w) for w in cfg.region.ring_widths_mm or []]
    params = {"region.kind": region_kind(cfg), "sweep_id": sweep_id(cfg)}
    if len(widths) == 1:
        params["region.ring_width_mm"] = widths[0]
    return params


SIGNATURE_ROLES = {"Intra": "tumour", "Clinic": "clinic", "Nomogram": "nomogram"}


def signature_role(name: str, ring_widths_mm) -> str | None:
    """The stable role of a signature in metric keys (``<set>.<role>.auc``): ``tumour``,
    ``clinic``, ``nomogram``, and ``ring`` for the IntraPeri signature when exactly one ring
    width is configured (several rings have no single role: their own keys name the width)."""
    from her2study.regions import ring_label

    if name in SIGNATURE_ROLES:
        return SIGNATURE_ROLES[name]
    widths = list(ring_widths_mm or [])
    if len(widths) == 1 and name == ring_label(widths[0]):
        return "ring"
    return None
