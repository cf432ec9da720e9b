"""A content-addressed, crash-safe cache of per-case, per-region feature vectors.

The key hashes everything the value depends on (image and mask bytes, spacing, region, extractor
settings, pyradiomics version); entries are written to a temporary file and renamed into place,
so a killed run leaves either a whole entry or none, and a rerun redoes only what is missing.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path


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


class FeatureCache:
    """Feature vectors stored as one JSON file per key under ``root/features/``."""

    def __init__(self, root: str | Path):
        self.root = Path(root) / "features"

    def _path(self, key: str) -> Path:
        return self.root / key[:2] / f"{key}.json"

    def get(self, key: str) -> dict | None:
        """The stored entry, or None when absent or unreadable (then it is recomputed)."""
        try:
            with open(self._path(key), encoding="utf-8") as fh:
                return json.load(fh)
        except (FileNotFoundError, json.JSONDecodeError, UnicodeDecodeError):
            return None

    def put(self, key: str, value: dict) -> None:
        atomic_write_text(self._path(key), json.dumps(value))

    def __contains__(self, key: str) -> bool:
        return self._path(key).is_file()

    def __len__(self) -> int:
        return sum(1 for _ in self.root.glob("*/*.json")) if self.root.is_dir() else 0
