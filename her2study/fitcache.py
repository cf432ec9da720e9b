"""A content-addressed cache of deterministic results: bootstrap validations, fits' numbers,
fitted estimators.

A result is stored under the digest of everything it depends on: the data (values, index,
columns and dtypes), the estimator's class and parameters, the seed and settings, the library
versions and the code version (a digest of every ``her2study`` source file, so any edit of the
code misses). Values are NumPy arrays in an ``.npz`` read with ``allow_pickle=False`` plus a small
JSON document: a cache entry can never run code. A fitted estimator (:func:`cached_fit`) is kept
as its skops file's bytes (a zip of JSON and ``.npy`` arrays, not pickle), read back trusting
only classes of scikit-learn, NumPy, SciPy and her2study's estimators
(:mod:`her2study.trusted_types`); an estimator skops cannot store is simply refitted each time.
Entries are written atomically (temporary file and rename); one that cannot be read is treated as
absent and recomputed.

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
import weakref
from collections.abc import Mapping
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
        kinds = {t.kind if isinstance(t, np.dtype) else "x" for t in obj.dtypes}
        if obj.shape[1] and len(set(obj.dtypes)) == 1 and kinds <= set("fiub"):
            _update(h, obj.to_numpy())  # one dtype: its values in one block (wide tables)
        else:
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
    elif isinstance(obj, Mapping):
        h.update(f"map{len(obj)}".encode())
        for k in sorted(obj, key=str):
            _update(h, str(k))
            _update(h, obj[k])
    elif isinstance(obj, (list, tuple)) and not all(isinstance(v, _PLAIN) for v in obj):
        h.update(f"seq{len(obj)}".encode())  # e.g. (y, scores) pairs: each array by its bytes
        for v in obj:
            _update(h, v)
    else:
        h.update(json.dumps(obj, sort_keys=True, default=repr).encode())


_PLAIN = (str, int, float, bool, type(None))


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


def cached_fit(estimator, X, y, **fit_kwargs):
    """``clone(estimator).fit(X, y, **fit_kwargs)``, or the same fitted estimator read back from
    the active cache (its key: the estimator's class and parameters, ``X`` and ``y`` bytes,
    ``fit_kwargs``, the skops, library and code versions). Without an active cache, or for an
    estimator skops cannot store (e.g. one holding statsmodels results), a plain fit."""
    from sklearn.base import clone

    cache = active_fit_cache()
    if cache is None:
        return clone(estimator).fit(X, y, **fit_kwargs)
    import skops

    key = content_key(  # y by values and index (not its name: the fit does not see it)
        "fit",
        estimator=estimator,
        X=X,
        y=np.asarray(y),
        y_index=getattr(y, "index", None),
        skops=skops.__version__,
        **{f"fit_{k}": v for k, v in fit_kwargs.items()},
    )
    stored = cache.get(key)
    if stored is not None and stored[1].get("kind") == "not_storable":
        return clone(estimator).fit(X, y, **fit_kwargs)  # known: no skops attempt again
    if stored is not None:
        fitted = _from_skops(stored[0].get("skops"), stored[1])
        if fitted is not None:
            _SKOPS[fitted] = stored[0]["skops"].tobytes()
            return fitted
    fitted = clone(estimator).fit(X, y, **fit_kwargs)
    data, types = _to_skops(fitted)
    if data is None:
        cache.put(key, {}, {"kind": "not_storable"})
    else:
        cache.put(
            key, {"skops": np.frombuffer(data, dtype=np.uint8)}, {"kind": "skops", "types": types}
        )
        _SKOPS[fitted] = data
    return fitted


_SKOPS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def skops_bytes(fitted) -> bytes | None:
    """The skops file of an estimator :func:`cached_fit` returned (stored or read back; its types
    checked), so that a model file need not be written again; None for any other object."""
    try:
        return _SKOPS.get(fitted)
    except TypeError:  # not weak-referenceable: not one of ours
        return None


def _to_skops(fitted) -> tuple[bytes | None, list[str]]:
    """The skops bytes of ``fitted`` and the types they name beyond skops' defaults; None when
    skops cannot store it or it would hold a type :func:`_from_skops` refuses."""
    import skops.io as sio

    from her2study.trusted_types import refused_types

    try:
        data = sio.dumps(fitted)
        types = sio.get_untrusted_types(data=data)
    except Exception as exc:  # noqa: BLE001 - not storable: refitted on every run instead
        log.debug("fit cache: %s not stored (%s)", type(fitted).__name__, exc)
        return None, []
    bad = refused_types(types)
    if bad:
        log.debug("fit cache: %s not stored (types %s)", type(fitted).__name__, bad)
        return None, []
    return data, types


def _from_skops(array, meta: dict):
    """The estimator stored by :func:`cached_fit`; None (refit) if the entry is not a skops
    file of trusted types only. The types the entry lists are checked against the trust list
    and given to ``skops.io.loads``, which refuses a file naming any other type."""
    import skops.io as sio

    from her2study.trusted_types import refused_types

    if array is None or meta.get("kind") != "skops":
        return None
    types = [str(t) for t in meta.get("types", [])]
    bad = refused_types(types)
    if bad:
        log.warning("fit cache entry names untrusted types %s: refitted", bad[:5])
        return None
    try:
        return sio.loads(np.asarray(array, dtype=np.uint8).tobytes(), trusted=types)
    except Exception as exc:  # noqa: BLE001 - damaged, or other types inside: refitted
        log.warning("fit cache entry unreadable (%s): refitted", exc)
        return None
