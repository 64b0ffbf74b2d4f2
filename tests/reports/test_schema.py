"""Reading reports: every malformed input is one UserError line, never a traceback."""
from __future__ import annotations

import json

import pytest

from rnnc.errors import UserError
from rnnc.records import report as records
from rnnc.reports import schema
from tests.reports.synth import standard


def test_a_valid_report_round_trips(tmp_path):
    path = tmp_path / "r.json"
    records.write_atomic(path, standard())
    assert schema.load(path)["rows"][0]["backend"] == "torch"
    assert [p.name for p in tmp_path.iterdir()] == ["r.json"]  # no temporary left behind


@pytest.mark.parametrize("text, message", [
    (None, "no such report file"),
    ("{", "not valid JSON"),
    ("[]", "not a JSON object"),
    ('{"format": "other"}', "not an rnnc bench report"),
    ('{"format": "rnnc-bench-report", "version": 99}', "version 99"),
])
def test_bad_files(tmp_path, text, message):
    path = tmp_path / "r.json"
    if text is not None:
        path.write_text(text)
    with pytest.raises(UserError, match=message):
        schema.load(path)


def test_structural_problems_are_named():
    r = standard()
    del r["rows"][0]["median_ms"]
    r["rows"][1]["status"] = "weird"
    r["rows"][2] = {**r["rows"][2], "status": "skipped"}
    r["rows"][2].pop("reason", None)
    r["rows"][3]["model"] = "ghost"
    problems = records.validate_report(r)
    assert any("rows[0]: a row that ran needs median_ms" in p for p in problems)
    assert any("rows[1]: status: Input should be 'ok', 'skipped' or 'failed'" in p for p in problems)
    assert any("rows[2]: a row that did not run needs a reason" in p for p in problems)
    assert any("rows[3]: model 'ghost'" in p for p in problems)


def pytest_benchmark_json(scale: float = 1.0, data: bool = True, calibration: bool = True) -> dict:
    benches = []
    for backend, t in (("torch", 0.001), ("onnxruntime", 0.0004)):
        values = [t * scale * (1 + 0.01 * (i % 5)) for i in range(20)]
        stats = {"min": min(values), "max": max(values), "mean": sum(values) / 20, "stddev": 1e-5,
                 "median": sorted(values)[10], "iqr": t * scale * 0.02, "q1": t * scale * 1.01,
                 "q3": t * scale * 1.03, "rounds": 20}
        if data:
            stats["data"] = values
        benches.append({"fullname": f"bench/test_suite.py::test_row[{backend}]", "stats": stats,
                        "extra_info": {"model": "m", "backend": backend, "batch_size": 1, "seq_len": 8,
                                       "fingerprint": "abc"}})
    if calibration:
        benches.append({"fullname": "bench/test_suite.py::test_calibration", "stats": {
            "min": 0.005, "max": 0.005, "mean": 0.005, "stddev": 0, "median": 0.005, "iqr": 0, "q1": 0.005,
            "q3": 0.005, "data": [0.005] * 10}, "extra_info": {"kind": "calibration", "workload": "matmul"}})
    return {"machine_info": {"cpu": {"brand_raw": "x"}}, "commit_info": {"id": "123"}, "benchmarks": benches,
            "version": "5.1.0"}


def test_pytest_benchmark_json_becomes_rows(tmp_path):
    path = tmp_path / "pb.json"
    path.write_text(json.dumps(pytest_benchmark_json()))
    r = schema.load(path)
    assert r["kind"] == "pytest-benchmark"
    assert [(x["backend"], x["batch_size"], x["seq_len"]) for x in r["rows"]] == [("torch", 1, 8), ("onnxruntime", 1, 8)]
    assert r["rows"][0]["samples_ms"][0] == pytest.approx(1.0)
    assert r["calibration"]["samples_ms"] == [5.0] * 10


def test_malformed_pytest_benchmark_json(tmp_path):
    path = tmp_path / "pb.json"
    path.write_text(json.dumps({"benchmarks": [{"fullname": "x", "stats": {}}]}))
    with pytest.raises(UserError, match="benchmark 'x' is malformed"):
        schema.load(path)
