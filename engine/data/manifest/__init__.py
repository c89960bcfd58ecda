"""Manifest CSVs: the one labeled-data format every engine function consumes.

A manifest is a CSV with

* ``path``: the image file, relative to the CSV's folder or absolute;
* ``patient_id`` (optional): splits and few-shot draws are patient-level when present;
* ``split`` (optional): e.g. ``train`` / ``test``; ``test`` rows form the fixed test set;
* one column per finding: ``1`` present, ``0`` absent, blank unknown.

Beside it, optionally, ``boxes.csv`` (``path, finding, x, y, w, h`` in pixels of the original image)
and ``masks.csv`` (``path, finding, mask_path``), with paths relative to the same folder.

`load_manifest` validates everything and raises one `ManifestError` listing *all* problems, so a
user fixes a file in one pass instead of one error at a time.

Layout of this package: ``model`` (Manifest, ManifestError, column names), ``table`` (CSV encodings
and separators), ``load`` (`load_manifest`), ``regions`` (boxes.csv / masks.csv) and ``write``
(`write_manifest`). Import the public names from ``engine.data.manifest``.
"""
from __future__ import annotations

from engine.data.manifest.load import load_manifest
from engine.data.manifest.model import BOX_COLUMNS, MASK_COLUMNS, MAX_LISTED, RESERVED, Manifest, ManifestError
from engine.data.manifest.regions import load_regions
from engine.data.manifest.table import DELIMITERS, decode_table, sniff_delimiter
from engine.data.manifest.write import manifest_csv_text, relative_paths, write_manifest

__all__ = ["BOX_COLUMNS", "DELIMITERS", "MASK_COLUMNS", "MAX_LISTED", "RESERVED", "Manifest", "ManifestError",
           "decode_table", "load_manifest", "load_regions", "manifest_csv_text", "relative_paths", "sniff_delimiter",
           "write_manifest"]
