"""The roofline figures in the rendered report (`rnnc.bench.roof`): the machine's figures in the
environment, GFLOP/s, % of the roof and R's bandwidth share per row; an old report without them
renders and gates as before."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

from rnnc.reports import render
from rnnc.reports.tables import results_table
from tests.reports.synth import report, row

BASELINE = Path(__file__).resolve().parent.parent.parent / "baselines" / "suite-cpu" / "report.json"  # version 1
ROOF = {"threads": 2, "sgemm_gflops": 200.0, "memory_gbps": 10.0, "l2_gbps": 100.0, "l3_gbps": 40.0,
        "l2_bytes": 4 * 2**20, "l3_bytes": 32 * 2**20, "memory_buffer_bytes": 64 * 2**20, "cache_source": "sysfs",
        "method": "test", "measure_s": 0.2}


def roofed(backend: str, batch: int, gflops: float) -> dict:
    r = row(backend, batch, 8, 1.0)
    return dict(r, gflops=gflops, roof_fraction=gflops / 200.0, r_bytes_per_step=65536, bw_fraction=0.031,
                bw_level="L2")


def test_the_roof_and_each_rows_figures_are_shown(tmp_path):
    r = report([roofed("torch", 1, 10.0), roofed("onnxruntime", 1, 30.0), roofed("torch", 16, 120.0),
                roofed("onnxruntime", 16, 170.0), {"model": "m", "backend": "tvm", "batch_size": 16, "seq_len": 8,
                                                   "status": "skipped", "reason": "not compiled"}])
    r["environment"]["roof"] = ROOF
    (tmp_path / "report.json").write_text(json.dumps(r))
    render(tmp_path / "report.json")
    md = (tmp_path / "report.md").read_text()
    assert "| sgemm roof | 200 GFLOP/s (2 threads, measured in 0.2 s) |" in md
    assert "| L2 bandwidth | 100 GB/s (L2 of the cores used: 4.0 MB) |" in md
    assert "| L3 bandwidth | 40 GB/s (L3 32.0 MB) |" in md and "| memory bandwidth | 10 GB/s (reading 64.0 MB) |" in md
    assert "| GFLOP/s | % roof | R/step | R bw |" in md
    assert "| 170 | 85.0% | 64.0 KB | 3.1% L2 |" in md and "SKIPPED" in md
    assert "At batch 16 and up the aim is 80% of the roof: 1 of 2 rows reach it (best 85.0%, onnxruntime" in md
    html = (tmp_path / "report.html").read_text()
    assert "<th>GFLOP/s</th><th>% roof</th><th>R/step</th><th>R bw</th>" in html and "3.1% L2" in html
    terminal = results_table(r)
    assert "GFLOP/s" in terminal and "% roof" in terminal and "85.0%" in terminal


def old_report(tmp_path: Path) -> Path:
    """The version 1 baseline cut to one model, as the first landing wrote it."""
    data = json.loads(BASELINE.read_text())
    assert data["version"] == 1
    name = "sentiment-lstm"
    data["models"] = {name: data["models"][name]}
    data["rows"] = [r for r in data["rows"] if r["model"] == name]
    (tmp_path / "old.json").write_text(json.dumps(data))
    return tmp_path / "old.json"


def test_an_old_report_renders_and_gates_as_before(tmp_path, cli):
    old = old_report(tmp_path)
    shutil.copy(old, tmp_path / "report.json")
    render(tmp_path / "report.json")
    md = (tmp_path / "report.md").read_text()
    assert "GFLOP/s" not in md and "% roof" not in md and "Against the machine" not in md
    assert "| sgemm roof | - |" in md  # the environment says it was not measured
    code, out, _ = cli("gate", tmp_path / "report.json", "--baseline", old)
    assert code == 0, out
    new = json.loads(old.read_text())  # the same rows, as a newer bench writes them
    new["version"], new["environment"]["roof"] = 4, ROOF
    new["rows"] = [dict(x, gflops=1.0, roof_fraction=0.005, r_bytes_per_step=4096, bw_fraction=0.01, bw_level="L2")
                   if x["status"] == "ok" else x for x in new["rows"]]
    (tmp_path / "new.json").write_text(json.dumps(new))
    code, out, _ = cli("gate", tmp_path / "new.json", "--baseline", old)
    assert code == 0, out
    render(tmp_path / "new.json", old, tmp_path / "against")
    assert "| GFLOP/s | % roof | R/step | R bw |" in (tmp_path / "against" / "report.md").read_text()
