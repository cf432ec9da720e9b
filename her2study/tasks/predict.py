"""task=predict: apply an exported model to new cases -> ``predictions.csv``.

``python -m her2study task=predict predict.model_uri=<model folder | model.joblib | models:/...>
data=manifest data.manifest=new_cases.csv`` (or ``data=features data.features_table=...``).

The model's own extraction settings (pyradiomics parameters, regions, field of view), feature
columns and threshold come with it (``card.json``, or the MLflow model's metadata), so new cases
are processed exactly as the training cases were. Cases are checked one by one: a case that fails
(missing or unreadable file, empty mask, too small a ring, missing clinical value) is listed in
``predictions.csv`` with ``status=failed`` and the reason, never dropped silently. Labels are not
needed; when the manifest has them, they are copied to the output. The user's files are only
read: a checked copy of the manifest (absolute paths) is written to the run folder.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import joblib
import numpy as np
import pandas as pd

from her2study.cohort.manifest import CohortError, load_cohort
from her2study.errors import ConfigError
from her2study.tasks.common import output_dir

log = logging.getLogger(__name__)

PAD = "__her2study_pad__"


def predict_config(cfg):
    pc = cfg.get("predict") if hasattr(cfg, "get") else getattr(cfg, "predict", None)
    if pc is None or not pc.get("model_uri"):
        raise ConfigError(
            "task=predict needs predict.model_uri=<model folder, model.joblib, or an MLflow "
            "models:/... or runs:/... URI> (written by task=export)"
        )
    return pc


def load_model(uri: str, tracking_uri: str):
    """(fitted pipeline, model card) from a folder / joblib file / MLflow model URI."""
    if uri.startswith(("models:/", "runs:/")) or "://" in uri:
        return _load_mlflow(uri, tracking_uri)
    path = Path(uri)
    if path.is_dir():
        path = path / "model.joblib"
    if not path.is_file():
        raise ConfigError(
            f"predict.model_uri: no model at {str(path)!r} (expected the model "
            "folder written by task=export, or its model.joblib)"
        )
    bundle = joblib.load(path)
    if not isinstance(bundle, dict) or "pipeline" not in bundle or "card" not in bundle:
        raise ConfigError(f"predict.model_uri: {str(path)!r} is not a her2study export")
    return bundle["pipeline"], bundle["card"]


def _load_mlflow(uri: str, tracking_uri: str):
    from her2study.tracking import _using_tracking_uri, load_sklearn_model

    pipe = load_sklearn_model(tracking_uri, uri)
    import mlflow

    with _using_tracking_uri(tracking_uri):
        card = mlflow.models.get_model_info(uri).metadata
    if not card or "columns" not in card:
        raise ConfigError(
            f"predict.model_uri: the MLflow model {uri} has no her2study model card "
            "(metadata); export it with task=export"
        )
    return pipe, card


def _absolute(df: pd.DataFrame, root: Path, columns) -> pd.DataFrame:
    df = df.copy()
    for col in columns:
        if col in df.columns:
            df[col] = [
                str((root / str(v).strip()).resolve()) if isinstance(v, str) and v.strip() else v
                for v in df[col]
            ]
    return df


def checked_cohort(manifest: Path, data_cfg, clinical: list[str], out: Path):
    """Validate a manifest case by case: (cohort of the good cases or None, failed, labels).

    The whole-manifest loader stops at the first bad manifest; here the named cases are taken
    out and a filtered copy (absolute paths, placeholder labels) is checked again.
    """
    case_col, label_col = data_cfg.case_column, data_cfg.label_column
    try:
        df = pd.read_csv(manifest, dtype={case_col: str})
    except (OSError, ValueError) as exc:
        raise ConfigError(f"cannot read the manifest {str(manifest)!r}: {exc}") from None
    missing = [c for c in (case_col, "image", "mask") if c not in df.columns]
    if missing:
        raise ConfigError(f"manifest {str(manifest)!r} lacks column(s) {missing}")
    df[case_col] = df[case_col].astype(str).str.strip()
    labels = None
    if label_col in df.columns:
        labels = pd.to_numeric(df[label_col], errors="coerce").set_axis(df[case_col])
    copy = _absolute(df, manifest.resolve().parent, ("image", "mask"))
    copy = copy.drop(columns=[c for c in ("mask_reader2", "split") if c in copy.columns])
    failed: dict[str, str] = {}
    target = out / "manifest_checked.csv"
    while len(copy):
        trial = copy.copy()
        trial[label_col] = np.arange(len(trial)) % 2  # placeholders: labels are not needed
        if len(trial) == 1:  # the loader needs both classes
            pad = trial.iloc[[0]].assign(**{case_col: PAD, label_col: 1})
            trial = pd.concat([trial, pad], ignore_index=True)
        trial.to_csv(target, index=False)
        try:
            cohort = load_cohort(
                target,
                case_column=case_col,
                label_column=label_col,
                spacing_mm=data_cfg.spacing_mm,
                mask_label=data_cfg.mask_label,
                clinical_columns=clinical,
            )
        except CohortError as err:
            ids = set(copy[case_col])
            errors = [p for p in err.problems if p.severity == "error"]
            general = [p for p in errors if p.case_id not in ids and p.case_id != PAD]
            if general:
                raise CohortError(general, str(manifest)) from None
            for p in errors:
                cid = p.case_id if p.case_id != PAD else copy[case_col].iloc[0]
                failed[cid] = "; ".join(filter(None, [failed.get(cid), str(p)]))
            copy = copy[~copy[case_col].isin(failed)]
            continue
        if PAD in cohort.table.index:
            cohort.table = cohort.table.drop(index=PAD)
            cohort.cases = [c for c in cohort.cases if c.case_id != PAD]
        return cohort, failed, labels, list(df[case_col])
    return None, failed, labels, list(df[case_col])


def features_from_images(cohort, card: dict, cache_dir: str, n_jobs: int):
    """Feature rows of the cohort's cases with the model's extraction settings; failures."""
    from joblib import Parallel, delayed

    from her2study.features.extraction import extract_case
    from her2study.regions import region_specs

    ext = card["extraction"]
    specs = region_specs(True, list(ext.get("ring_widths_mm") or []), [])
    specs = [s for s in specs if s.name in set(ext["regions"])]
    cache_root = str(Path(cache_dir).resolve())
    results = Parallel(n_jobs=n_jobs)(
        delayed(extract_case)(
            case, specs, ext["params"], cache_root, ext["fov"], ext.get("mask_label")
        )
        for case in cohort.cases
    )
    rows, failed = {}, {}
    for r in results:
        if r.errors:
            failed[r.case_id] = "; ".join(r.errors)
            continue
        row = {}
        for spec in specs:
            row.update({f"{spec.name}_{k}": v for k, v in r.features[spec.name].items()})
        rows[r.case_id] = row
    table = pd.DataFrame.from_dict(rows, orient="index")
    table.index.name = "case_id"
    return table, failed


def run(cfg) -> int:
    pc = predict_config(cfg)
    pipe, card = load_model(str(pc.model_uri), cfg.tracking.tracking_uri)
    out = output_dir(cfg)
    columns = list(card["columns"])
    clinical = list(card.get("clinical_columns") or [])
    threshold = float(pc.threshold if pc.get("threshold") is not None else card["threshold"])
    data = cfg.data
    if data.source == "features":
        X, failed, labels, order = _from_table(Path(data.features_table), data, columns)
    else:
        if data.source == "manifest":
            manifest = Path(data.manifest)
        else:
            from her2study.cohort.source import ensure_synthetic

            manifest = ensure_synthetic(data, n_jobs=cfg.execution.n_jobs)
        if not manifest.is_file():
            raise ConfigError(f"data.manifest: no file at {str(manifest)!r}")
        cohort, failed, labels, order = checked_cohort(manifest, data, clinical, out)
        X = pd.DataFrame()
        if cohort is not None and cohort.cases:
            X, more = features_from_images(cohort, card, cfg.cache_dir, cfg.execution.n_jobs)
            failed.update(more)
            if clinical:
                X = X.join(cohort.table[clinical])
    missing = [c for c in columns if c not in X.columns] if len(X) else []
    if missing:
        raise ConfigError(
            f"{len(missing)} model column(s) absent from the new cases' features, "
            f"e.g. {missing[:3]}: were they extracted with other settings?"
        )
    if len(X):
        X = X[columns]
        bad = ~np.isfinite(X.to_numpy(dtype=float)).all(axis=1)
        for cid in X.index[bad]:
            cols = [c for c in columns if not np.isfinite(float(X.at[cid, c]))]
            failed[cid] = f"non-finite feature value(s): {cols[:5]}"
        X = X[~bad]
    prob = pd.Series(pipe.predict_proba(X)[:, 1], index=X.index) if len(X) else pd.Series()
    rows = []
    for cid in order:
        row = {"case_id": cid}
        if cid in prob.index:
            p = float(prob[cid])
            cls = int(p >= threshold)
            row.update(
                probability=p,
                **{"class": cls},
                predicted=card.get("positive_class") if cls else card.get("negative_class"),
                status="ok",
                problem="",
            )
        else:
            row.update(
                probability=np.nan,
                **{"class": pd.NA},
                predicted="",
                status="failed",
                problem=failed.get(cid, "not processed"),
            )
        if labels is not None and cid in labels.index:
            row["label"] = labels[cid]
        rows.append(row)
    table = pd.DataFrame(rows)
    target = Path(pc.output) if pc.get("output") else out / "predictions.csv"
    target.parent.mkdir(parents=True, exist_ok=True)
    table.to_csv(target, index=False)
    n_ok = int((table["status"] == "ok").sum())
    note = " (model trained on a SYNTHETIC cohort)" if card.get("data", {}).get("synthetic") else ""
    print(
        f"predictions: {n_ok} of {len(table)} cases -> {target}{note}; threshold "
        f"{threshold:.4f} ({'given' if pc.get('threshold') is not None else 'exported'})"
    )
    for cid, why in failed.items():
        print(f"  FAILED {cid}: {why}")
    (out / "predict_card.json").write_text(
        json.dumps(
            {
                "model_uri": str(pc.model_uri),
                "threshold": threshold,
                "n_ok": n_ok,
                "n_failed": len(table) - n_ok,
            },
            indent=2,
        )
        + "\n"
    )
    return 0 if n_ok else 1


def _from_table(path: Path, data, columns: list[str]):
    from her2study.cohort.table import read_table

    if not path.is_file():
        raise ConfigError(f"data.features_table: no file at {str(path)!r}")
    df = read_table(path)
    if data.case_column not in df.columns:
        raise ConfigError(
            f"features table {str(path)!r} lacks the case column '{data.case_column}'"
        )
    df[data.case_column] = df[data.case_column].astype(str).str.strip()
    df = df.set_index(data.case_column)
    labels = (
        pd.to_numeric(df[data.label_column], errors="coerce")
        if data.label_column in df.columns
        else None
    )
    failed: dict[str, str] = {}
    missing = [c for c in columns if c not in df.columns]
    if missing:
        raise ConfigError(
            f"features table lacks {len(missing)} model column(s), e.g. {missing[:3]}"
        )
    X = df[columns].apply(pd.to_numeric, errors="coerce")
    return X, failed, labels, list(df.index)
