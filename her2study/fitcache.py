"""A content-addressed cache of deterministic results: bootstrap validations, fits' numbers.

A result is stored under the digest of everything it depends on: the data (values, index,
columns and dtypes), the estimator's class and parameters, the seed and settings, the library
versions and the code version (a digest of every ``her2study`` source file, so any edit of the
code misses). Values are NumPy arrays in an ``.npz`` read with ``allow_pickle=False`` plus a small
JSON document: a cache entry can never run code. Entries are written atomically (temporary file
and rename); one that cannot be read is treated as absent and recomputed.

Activate a cache for a block with :func:`use_fit_cache`; code below it (e.g.
:func:`her2study.evaluation.validation.optimism_bootstrap`) consults :func:`active_fit_cache`.
"""

from __future__ import annotations

import contextlib
import contextvars
import functools
import hashlib
import io
import json
import logging
from pathlib import Path

import numpy as np

from her2study.features.cache import atomic_write_bytes

log = logging.getLogger(__name__)

PACKAGE = Path(__file__).resolve().parent


@functools.cache
def code_digest() -> str:
    """SHA-256 over the path and bytes of every ``her2study/**/*.py`` (the code version)."""
    h = hashlib.sha256()
    for path in sorted(PACKAGE.rglob("*.py")):
        h.update(str(path.relative_to(PACKAGE)).encode())
        h.update(path.read_bytes())
    return h.hexdigest()


@functools.cache
def _versions() -> dict:
    import scipy
    import sklearn

    return {"numpy": np.__version__, "scipy": scipy.__version__, "sklearn": sklearn.__version__}


def _update(h, obj) -> None:
    """Feed ``obj`` to the hash ``h``: arrays and frames by their bytes, the rest as JSON."""
    import pandas as pd

    if isinstance(obj, pd.DataFrame):
        h.update(b"frame")
        _update(h, [str(c) for c in obj.columns])
        _update(h, [str(t) for t in obj.dtypes])
        _update(h, obj.index)
        for col in obj.columns:
            _update(h, obj[col].to_numpy())
    elif isinstance(obj, pd.Series):
        h.update(b"series")
        _update(h, [str(obj.name), str(obj.dtype)])
        _update(h, obj.index)
        _update(h, obj.to_numpy())
    elif isinstance(obj, pd.Index):
        _update(h, [str(v) for v in obj])
    elif isinstance(obj, np.ndarray):
        if obj.dtype == object:
            _update(h, [repr(v) for v in obj.ravel().tolist()])
        else:
            h.update(f"{obj.dtype.str}{obj.shape}".encode())
            h.update(np.ascontiguousarray(obj).view(np.uint8))
    elif hasattr(obj, "get_params"):  # an estimator: its class and parameters, deep
        params = obj.get_params(deep=True)
        _update(
            h,
            [f"{type(obj).__module__}.{type(obj).__qualname__}"]
            + sorted((k, _param_text(v)) for k, v in params.items()),
        )
    else:
        h.update(json.dumps(obj, sort_keys=True, default=repr).encode())


def _param_text(value) -> str:
    if hasattr(value, "get_params"):
        h = hashlib.sha256()
        _update(h, value)
        return h.hexdigest()
    return repr(value)


def content_key(kind: str, **parts) -> str:
    """The key of a result of ``kind`` computed from ``parts`` (and this code and libraries)."""
    h = hashlib.sha256()
    _update(h, {"kind": kind, "code": code_digest(), "versions": _versions()})
    for name in sorted(parts):
        h.update(name.encode())
        _update(h, parts[name])
    return h.hexdigest()


class FitCache:
    """Arrays + a JSON document per key under ``root/fits/``."""

    def __init__(self, root: str | Path):
        self.root = Path(root) / "fits"
        self.hits = 0
        self.misses = 0

    def _path(self, key: str) -> Path:
        return self.root / key[:2] / f"{key}.npz"

    def get(self, key: str) -> tuple[dict, dict] | None:
        """``(arrays, meta)`` stored under ``key``, or None (absent or unreadable)."""
        path = self._path(key)
        try:
            with np.load(path, allow_pickle=False) as npz:
                arrays = {k: npz[k] for k in npz.files}
            meta = json.loads(arrays.pop("__meta__").tobytes().decode())
        except FileNotFoundError:
            self.misses += 1
            return None
        except Exception as exc:  # noqa: BLE001 - a damaged entry is recomputed
            log.warning("fit cache entry %s unreadable (%s): recomputed", path.name, exc)
            self.misses += 1
            return None
        self.hits += 1
        return arrays, meta

    def put(self, key: str, arrays: dict, meta: dict) -> None:
        buf = io.BytesIO()
        meta_bytes = np.frombuffer(json.dumps(meta, sort_keys=True).encode(), dtype=np.uint8)
        np.savez(buf, __meta__=meta_bytes, **{k: np.asarray(v) for k, v in arrays.items()})
        with contextlib.suppress(OSError):  # a read-only cache only costs the reuse
            atomic_write_bytes(self._path(key), buf.getvalue())


_ACTIVE: contextvars.ContextVar[FitCache | None] = contextvars.ContextVar(
    "her2study_fit_cache", default=None
)


@contextlib.contextmanager
def use_fit_cache(root: str | Path | None):
    """Within this block, cacheable computations reuse results stored under ``root`` (None:
    no cache)."""
    token = _ACTIVE.set(FitCache(root) if root is not None else None)
    try:
        yield _ACTIVE.get()
    finally:
        _ACTIVE.reset(token)


def active_fit_cache() -> FitCache | None:
    return _ACTIVE.get()
