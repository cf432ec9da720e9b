"""A bounded, thread-safe memo of array results that selectors consult while it is active.

The threshold-free work of a selector's ``fit`` (a correlation matrix, Mann-Whitney p-values,
a LASSO path) depends on the data and on some parameters only; a search that tries several
thresholds or rules on the same fold data can compute it once. Each memo class has its own
context variable: a selector uses the memo only inside ``with memo.active():`` (this thread or
task), so a plain ``fit`` is never affected.
"""

from __future__ import annotations

import contextlib
import contextvars
import hashlib
import threading
from collections import OrderedDict

import numpy as np


def array_digest(*arrays) -> str:
    """Digest of the shapes, dtypes and bytes of ``arrays``."""
    h = hashlib.blake2b(digest_size=20)
    for a in arrays:
        a = np.ascontiguousarray(a)
        h.update(f"{a.shape}{a.dtype.str}".encode())
        h.update(a.view(np.uint8).reshape(-1))
    return h.hexdigest()


def _nbytes(entry) -> int:
    if isinstance(entry, dict):
        return sum(_nbytes(v) for v in entry.values()) + 64
    if isinstance(entry, (tuple, list)):
        return sum(_nbytes(v) for v in entry) + 64
    return int(getattr(entry, "nbytes", 0) or 0) + 64


class ArrayMemo:
    """Least-recently-used entries go first beyond ``max_mb``; ``hits``/``misses`` count look-ups.

    Subclasses get their own context variable (:meth:`active`, :meth:`current`).
    """

    _var: contextvars.ContextVar

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        cls._var = contextvars.ContextVar(f"her2study_{cls.__name__}", default=None)

    def __init__(self, max_mb: float = 256):
        self.max_bytes = int(max_mb * 2**20)
        self._entries: OrderedDict = OrderedDict()
        self._sizes: dict = {}
        self._bytes = 0
        self._lock = threading.Lock()
        self.hits = 0
        self.misses = 0

    @contextlib.contextmanager
    def active(self):
        """Within this block (this thread), the selectors of this memo's kind use it."""
        token = self._var.set(self)
        try:
            yield self
        finally:
            self._var.reset(token)

    @classmethod
    def current(cls):
        """The memo of this class active here, or None."""
        return cls._var.get()

    def _lookup(self, key, usable=None):
        with self._lock:
            entry = self._entries.get(key)
            if entry is None or (usable is not None and not usable(entry)):
                self.misses += 1
                return None
            self._entries.move_to_end(key)
            self.hits += 1
            return entry

    def get(self, key):
        return self._lookup(key)

    def put(self, key, entry) -> None:
        size = _nbytes(entry)
        if size > self.max_bytes:
            return
        with self._lock:
            if key in self._entries:
                self._bytes -= self._sizes.pop(key)
                del self._entries[key]
            self._entries[key] = entry
            self._sizes[key] = size
            self._bytes += size
            while self._bytes > self.max_bytes and len(self._entries) > 1:
                old, _ = self._entries.popitem(last=False)
                self._bytes -= self._sizes.pop(old)
