"""Keys and values made acceptable to MLflow: sanitised names, string values, finite metrics,
flattened configs, Markdown tables. (Batching and truncating long values are MLflow's client's
job: ``MlflowClient.log_batch`` and ``MLFLOW_TRUNCATE_LONG_VALUES``.)"""

from __future__ import annotations

import enum
import math
import numbers
import os
import re
import unicodedata
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any


def _key_limit() -> int:
    from mlflow.utils.validation import MAX_ENTITY_KEY_LENGTH

    return MAX_ENTITY_KEY_LENGTH  # 250


_BAD_KEY_CHARS = re.compile(r"[^A-Za-z0-9_\-./:]" if os.name != "nt" else r"[^A-Za-z0-9_\-./]")


def sanitize_key(key: Any, max_len: int | None = None) -> str:
    """A metric / param / tag name MLflow accepts.

    MLflow allows alphanumerics and ``_ - . space / :`` (no colon on Windows); here spaces and
    anything else become ``_`` (``"IntraPeri 1 mm"`` -> ``"IntraPeri_1_mm"``, ``"µm"`` -> ``"um"``),
    ``/``-segments that MLflow rejects as paths (empty, ``.``, ``..``) are dropped, and the result
    is cut to MLflow's key length limit.
    """
    s = str(key).replace("µ", "u").replace("μ", "u")
    s = unicodedata.normalize("NFKD", s).encode("ascii", "ignore").decode("ascii")
    s = _BAD_KEY_CHARS.sub("_", s)
    s = "/".join(seg for seg in s.split("/") if seg not in ("", ".", ".."))
    s = s or "_"
    return s[: max_len or _key_limit()]


def _unique_keys(keys: Iterable[Any]) -> list[str]:
    """Sanitised keys; names that collide after sanitising get ``_2``, ``_3`` ... suffixes."""
    seen: set[str] = set()
    out = []
    for k in keys:
        s = base = sanitize_key(k)
        i = 2
        while s in seen:
            s = f"{base}_{i}"
            i += 1
        seen.add(s)
        out.append(s)
    return out


def _to_plain(x: Any) -> Any:
    """OmegaConf / numpy / pandas / Path values as plain Python (for JSON, YAML and params)."""
    try:
        from omegaconf import OmegaConf

        if OmegaConf.is_config(x):
            x = OmegaConf.to_container(x, resolve=True, throw_on_missing=False)
    except ImportError:  # pragma: no cover - omegaconf is a dependency
        pass
    if isinstance(x, Mapping):
        return {str(k): _to_plain(v) for k, v in x.items()}
    if isinstance(x, (list, tuple, set, frozenset)):
        return [_to_plain(v) for v in x]
    if hasattr(x, "tolist") and not isinstance(x, (str, bytes)):  # numpy arrays and scalars
        return _to_plain(x.tolist())
    if isinstance(x, Path):
        return str(x)
    if hasattr(x, "isoformat"):  # datetime, pandas Timestamp
        return x.isoformat()
    if isinstance(x, enum.Enum):
        return x.name
    return x


def _param_str(v: Any) -> str:
    v = _to_plain(v)
    if isinstance(v, str):
        return v
    return str(v)


def params_to_log(logged: Mapping[str, str], flat: Mapping[str, Any]) -> dict[str, str]:
    """The params of ``flat`` still to log on a run that has ``logged``: keys sanitised, values
    stringified; a key already there with the same value is skipped, with another value (MLflow
    refuses to change a param) it becomes ``resolved.<key>`` (logged once: a later change of
    that is dropped)."""
    new: dict[str, str] = {}
    for key, v in zip(_unique_keys(flat.keys()), flat.values(), strict=True):
        value = _param_str(v)
        if key in logged and logged[key] != value:
            key = f"resolved.{key}"
        if key not in logged and key not in new:
            new[key] = value
    return new


def _tag_values(tags: Mapping[str, Any] | None) -> dict[str, str]:
    """Tags as MLflow takes them (sanitised keys, string values; MLflow truncates long values)."""
    return {sanitize_key(k): _param_str(v) for k, v in (tags or {}).items()}


def _finite_float(v: Any) -> float | None:
    """``v`` as a finite float; None for None, NaN, inf and anything that is not a number."""
    if isinstance(v, (str, bytes)) or not (
        isinstance(v, numbers.Number) or (hasattr(v, "dtype") and getattr(v, "ndim", 1) == 0)
    ):
        return None
    try:
        val = float(v)
    except (TypeError, ValueError):
        return None
    return val if math.isfinite(val) else None


def flatten_config(cfg: Any, exclude: tuple[str, ...] = ("hydra",), sep: str = ".") -> dict:
    """Flatten a nested mapping or (resolved) OmegaConf config into dotted keys.

    Lists become their string form (``region.ring_widths_mm`` -> ``"[1.0, 2.0]"``), empty
    mappings ``"{}"``; scalars are kept as they are. ``exclude`` holds top-level keys or dotted
    prefixes (``"hydra"``, ``"data.manifest"``) to leave out. Missing values (``???``) stay
    ``"???"``.
    """
    plain = _to_plain(cfg)
    if not isinstance(plain, Mapping):
        raise TypeError(f"flatten_config needs a mapping or DictConfig, got {type(cfg).__name__}")
    excl = tuple(exclude or ())

    def skip(key: str) -> bool:
        return any(key == e or key.startswith(e + sep) for e in excl)

    out: dict[str, Any] = {}

    def walk(node: Mapping, prefix: str) -> None:
        for k, v in node.items():
            key = f"{prefix}{sep}{k}" if prefix else str(k)
            if skip(key):
                continue
            if isinstance(v, Mapping) and v:
                walk(v, key)
            elif isinstance(v, Mapping):
                out[key] = "{}"
            elif isinstance(v, list):
                out[key] = str(v)
            else:
                out[key] = v

    walk(plain, "")
    return out


def _to_markdown(df) -> str:
    import pandas as pd

    if not isinstance(df.index, pd.RangeIndex) or df.index.name is not None:
        df = df.reset_index()

    def cell(x: Any) -> str:
        if isinstance(x, float) and math.isnan(x):
            return ""
        return str(x).replace("|", r"\|").replace("\n", " ")

    cols = [cell(c) for c in df.columns]
    lines = ["| " + " | ".join(cols) + " |", "|" + "|".join("---" for _ in cols) + "|"]
    for row in df.itertuples(index=False):
        lines.append("| " + " | ".join(cell(x) for x in row) + " |")
    return "\n".join(lines) + "\n"


def table_text(df, artifact_file: str) -> str:
    """A DataFrame as the text of a ``.csv`` or ``.md`` (Markdown) artifact; a named or
    non-range index is written as column(s)."""
    import pandas as pd

    ext = Path(artifact_file).suffix.lower()
    if ext == ".csv":
        keep_index = not isinstance(df.index, pd.RangeIndex) or df.index.name is not None
        return df.to_csv(index=keep_index)
    if ext in (".md", ".markdown"):
        return _to_markdown(df)
    raise ValueError(f"log_table writes .csv or .md files, not {artifact_file!r}")
