"""report.json: rows validated when built, version 1 reports upgraded on load."""
from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from rnnc.records.report import VERSION, Row, load_report
from rnnc.reports import schema

BASELINE = Path(__file__).resolve().parent.parent.parent / "baselines" / "suite-cpu" / "report.json"


def test_a_version_1_report_loads_upgraded():
    report = load_report(BASELINE)
    assert report["version"] == VERSION == 2
    assert report["rows"] and {r["precision"] for r in report["rows"]} == {"fp32"}
    assert schema.load(BASELINE)["rows"] == report["rows"]  # the renderer and the gate read it the same


def test_a_row_is_checked_when_built():
    ok = dict(model="m", backend="torch", batch_size=1, seq_len=2, status="ok", samples_ms=[1.0, 1.1],
              median_ms=1.05, iqr_ms=0.05, p90_ms=1.1, p99_ms=1.1, sequences_per_s=950.0, tokens_per_s=1900.0)
    row = Row(**ok)
    assert row.key == ("m", "torch", 1, 2) and row.to_json()["precision"] == "fp32"
    assert "reason" not in row.to_json()  # absent fields are left out of the file
    with pytest.raises(ValidationError, match="needs median_ms"):
        Row(**{**ok, "median_ms": None})
    with pytest.raises(ValidationError, match="positive"):
        Row(**{**ok, "samples_ms": [1.0, -1.0]})
    with pytest.raises(ValidationError, match="needs a reason"):
        Row(model="m", backend="tvm", batch_size=1, seq_len=2, status="skipped")
    with pytest.raises(ValidationError):
        row.status = "failed"  # type: ignore[misc]
