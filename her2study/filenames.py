"""File names derived from untrusted text (case ids from a manifest): one safe path component.

A case id is whatever the manifest says: ``../../x``, ``a/b``, ``a\\b``, ``Müller Anna`` or
``.hidden``. :func:`safe_filename` keeps ``[A-Za-z0-9._-]``, replaces everything else by ``_``
and, when anything changed (or the name would start with a dot), appends a short hash of the raw
id, so that two different ids never share a file and no name leaves its folder.
"""

from __future__ import annotations

import hashlib
import re

__all__ = ["safe_filename"]

_UNSAFE = re.compile(r"[^A-Za-z0-9._-]")
MAX_STEM = 80  # leave room for the hash and a suffix under the usual 255-byte limit


def safe_filename(raw: object, suffix: str = "") -> str:
    """``raw`` as a single, non-hidden file name made of ``[A-Za-z0-9._-]`` (plus ``suffix``)."""
    text = str(raw)
    name = _UNSAFE.sub("_", text)
    changed = name != text or not name or name.startswith(".") or len(name) > MAX_STEM
    if changed:
        name = name.lstrip(".")
        name = "_" * (len(text) - len(text.lstrip("."))) + name  # keep the length visible
        digest = hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()[:8]
        name = f"{name[:MAX_STEM]}_{digest}" if name else digest
    return name + suffix
