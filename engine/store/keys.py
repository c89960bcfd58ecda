"""Identifiers the store keeps instead of identifying text (issue 14): neutral display names and keyed
hashes (HMAC-SHA256 with a random per-workspace salt) of file base names and manifest patient ids."""
from __future__ import annotations

import hashlib
import hmac

__all__ = ["KeysMixin", "basename", "neutral_name"]


def neutral_name(image_id: int) -> str:
    """The display name an image is stored under: `image-000042` (never the file's own name)."""
    return f"image-{int(image_id):06d}"


def basename(name: str) -> str:
    """The last component of a POSIX or Windows path (a display name, a ZIP member, a CSV cell)."""
    text = str(name).strip().replace("\\", "/")
    return text.rsplit("/", 1)[-1]


class KeysMixin:
    """Keyed hashes with the workspace salt (mixed into engine.store.Store; the salt is the `meta`
    table's 'salt' row, written by the first migration)."""

    _salt: bytes | None = None

    def name_key(self, name: str) -> str:
        """Keyed hash (HMAC-SHA256, this workspace's salt) of a file's base name (folders and a
        Windows or POSIX path are dropped, so "a/b/SMITH.dcm" and "SMITH.dcm" match). Stored instead
        of the name; a label CSV's names are matched through it."""
        base = basename(name)
        return "n" + hmac.new(self._salt_bytes(), b"name\0" + base.encode(), hashlib.sha256).hexdigest()[:20]

    def _patient_key(self, patient_id: str) -> str:
        """Keyed hash of a manifest's patient id (kept so patient-level splits survive an export)."""
        return "p" + hmac.new(self._salt_bytes(), patient_id.encode(), hashlib.sha256).hexdigest()[:16]

    def _salt_bytes(self) -> bytes:
        if self._salt is None:
            row = self._conn().execute("SELECT value FROM meta WHERE key='salt'").fetchone()
            self._salt = bytes.fromhex(row[0])
        return self._salt
