"""A content-addressed, crash-safe cache of per-case, per-region feature vectors.

The key hashes everything the value depends on (image and mask bytes, spacing, region, extractor
settings, pyradiomics version); entries are written to a temporary file and renamed into place,
so a killed run leaves either a whole entry or none, and a rerun redoes only what is missing.
Every entry carries a checksum of its content: a damaged or edited entry is reported and redone.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import tempfile
from pathlib import Path

log = logging.getLogger(__name__)


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """Write ``data`` to ``path`` via a temporary file in the same folder and a rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_text(path: str | Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def content_checksum(value) -> str:
    """SHA-256 of ``value`` as canonical JSON (sorted keys; NaN spelled as JSON does)."""
    text = json.dumps(value, sort_keys=True, separators=(",", ":"), allow_nan=True)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


# An entry is written as {"sha256": <checksum of the value>, "raw_sha256": <SHA-256 of the value's
# JSON text as stored (keys in their order)>, "value": <that text>}: plain JSON, and a read can
# check the stored bytes against raw_sha256 without re-encoding the value (a warm run reads
# hundreds of entries). Anything else (older entries, hand edits) is checked the slow way.
_PREFIX, _RAW, _MIDDLE = b'{"sha256": "', b'", "raw_sha256": "', b'", "value": '
_HEX = 64


def _fast_value(raw: bytes):
    """The value of an entry in the layout above whose stored bytes match raw_sha256; else None
    (then the entry is parsed and checked as a whole)."""
    raw_at = len(_PREFIX) + _HEX
    start = raw_at + len(_RAW) + _HEX + len(_MIDDLE)
    if not (
        raw.startswith(_PREFIX)
        and raw[raw_at : raw_at + len(_RAW)] == _RAW
        and raw[start - len(_MIDDLE) : start] == _MIDDLE
        and raw.endswith(b"}")
    ):
        return None
    body = raw[start:-1]
    if hashlib.sha256(body).hexdigest().encode() != raw[raw_at + len(_RAW) : start - len(_MIDDLE)]:
        return None
    try:
        return json.loads(body)
    except (json.JSONDecodeError, UnicodeDecodeError):
        return None


class FeatureCache:
    """Feature vectors stored as one JSON file per key under ``root/features/``.

    Each file holds ``{"sha256": <checksum of value>, "value": value}``. An entry that cannot be
    read, is emptied (``{}``), has no checksum or one that does not match its content (a partial
    write by another tool, bit rot, a hand edit) is reported in :attr:`problems` (and logged),
    deleted and treated as absent, so it is recomputed.
    """

    def __init__(self, root: str | Path, log_problems: bool = True):
        self.root = Path(root) / "features"
        self.problems: list[str] = []  # one line per discarded entry, naming its file
        self.log_problems = log_problems  # False: the caller logs :attr:`problems` itself

    def _path(self, key: str) -> Path:
        return self.root / key[:2] / f"{key}.json"

    def entry_name(self, key: str) -> str:
        return str(self._path(key).relative_to(self.root.parent))

    def get(self, key: str) -> dict | None:
        """The stored value, or None when absent or damaged (then it is recomputed)."""
        path = self._path(key)
        try:
            with open(path, "rb") as fh:
                raw = fh.read()
        except FileNotFoundError:
            return None
        except OSError as exc:
            return self.discard(key, f"is unreadable ({type(exc).__name__})")
        value = _fast_value(raw)
        if value is not None:
            return value
        try:
            entry = json.loads(raw)
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            return self.discard(key, f"is unreadable ({type(exc).__name__})")
        if not isinstance(entry, dict) or not entry:
            return self.discard(key, "is empty")
        if "sha256" not in entry or "value" not in entry:
            return self.discard(key, "has no checksum (edited by hand?)")
        if content_checksum(entry["value"]) != entry["sha256"]:
            return self.discard(key, "does not match its checksum (edited or damaged)")
        with contextlib.suppress(OSError):  # an older layout: rewritten so the next read is fast
            self.put(key, entry["value"])
        return entry["value"]

    def discard(self, key: str, why: str) -> None:
        """Report the entry ``key`` as damaged and delete it; returns None (treat as absent)."""
        message = f"features cache entry {self.entry_name(key)} {why}: discarded and recomputed"
        self.problems.append(message)
        if self.log_problems:
            log.warning("%s", message)
        self._path(key).unlink(missing_ok=True)
        return None

    def put(self, key: str, value: dict) -> None:
        body = json.dumps(value, separators=(",", ":"), allow_nan=True).encode()
        checksum = content_checksum(value).encode()
        raw_digest = hashlib.sha256(body).hexdigest().encode()
        entry = _PREFIX + checksum + _RAW + raw_digest + _MIDDLE + body + b"}"
        atomic_write_bytes(self._path(key), entry)

    def __contains__(self, key: str) -> bool:
        return self._path(key).is_file()

    def __len__(self) -> int:
        return sum(1 for _ in self.root.glob("*/*.json")) if self.root.is_dir() else 0
