"""The records rnnc writes and reads back: frozen, validated when built, versioned on disk.

`manifest`: what `compile` writes in DIR/manifest.json (per backend: status, artifacts,
verification). `report`: the rows of `bench`'s report.json and the document around them.

Each file carries a format version; loading an older file maps it forward one version at a time
(pyperf's way), so that a DIR compiled or a report measured by an earlier rnnc still loads. A file
of a newer or unknown format is a `UserError`, never a traceback.
"""
from __future__ import annotations

from rnnc.records.manifest import (MANIFEST, BackendRecord, Errors, Manifest, ShapeErrors, TensorInfo,
                                   Verification, read_manifest, write_manifest)
from rnnc.records.report import Row, RowKey, load_report, new_report, row_key, validate_report, write_atomic

__all__ = ["MANIFEST", "BackendRecord", "Errors", "Manifest", "Row", "RowKey", "ShapeErrors", "TensorInfo",
           "Verification", "load_report", "new_report", "read_manifest", "row_key", "validate_report",
           "write_atomic", "write_manifest"]
