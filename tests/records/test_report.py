"""report.json: rows validated when built, version 1 reports upgraded on load."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
from pydantic import ValidationError

from rnnc.records.report import VERSION, Row, load_report, validate_report
from rnnc.reports import schema

BASELINE = Path(__file__).resolve().parent.parent.parent / "baselines" / "suite-cpu" / "report.json"


def test_a_version_1_report_loads_upgraded():
    report = load_report(BASELINE)
    assert report["version"] == VERSION == 5
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


OK = dict(model="m", backend="torch", batch_size=1, seq_len=2, status="ok", samples_ms=[1.0, 1.1],
          median_ms=1.05, iqr_ms=0.05, p90_ms=1.1, p99_ms=1.1, sequences_per_s=950.0, tokens_per_s=1900.0)


def test_stream_and_generation_keys_are_checked():
    row = Row(**OK, mode="stream", chunks_per_s=952.4, chunk_ms=10.0, rtf=0.105, bind_ms=0.01, chunk_calls=30)
    assert row.key == ("m", "torch", 1, 2, "stream") and row.to_json()["rtf"] == 0.105
    assert Row(**OK, steps=8, ms_per_step=0.13, steps_per_s=7619.0).key == ("m", "torch", 1, 2)
    for bad, words in ((dict(mode="stream"), "needs chunks_per_s"),
                       (dict(chunks_per_s=952.4), "only on a stream row"),
                       (dict(mode="stream", chunks_per_s=952.4, rtf=0.1), "rtf and chunk_ms go together"),
                       (dict(steps=8), "needs ms_per_step, steps_per_s"),
                       (dict(ms_per_step=0.1), "only on a row with steps"),
                       (dict(mode="plain"), "mode")):
        with pytest.raises(ValidationError, match=words):
            Row(**OK, **bad)
    skipped = Row(model="m", backend="tvm", batch_size=1, seq_len=2, status="skipped", reason="no", mode="stream")
    assert skipped.key[-1] == "stream"


def test_a_version_2_report_loads_and_keys_stay_unique(tmp_path):
    from tests.reports.synth import report, row, stream_row

    plain = report([row("torch", 1, 4, 1.0)])
    plain["version"] = 2
    (tmp_path / "v2.json").write_text(json.dumps(plain))
    assert load_report(tmp_path / "v2.json")["version"] == VERSION
    both = report([row("torch", 1, 4, 1.0), stream_row("torch", 1, 4, 1.0)])  # another kind: another key
    assert validate_report(both) == []
    twice = report([row("torch", 1, 4, 1.0), row("torch", 1, 4, 1.2)])
    assert validate_report(twice) == ["rows[1]: a second row of torch batch 1 seq 4 of model 'm': a row's key "
                                      "must be unique"]
