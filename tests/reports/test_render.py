"""Rendering: report.md, a self-contained report.html and one PNG per model."""
from __future__ import annotations

import json

from rnnc.reports import render
from tests.reports.synth import standard


def test_render_writes_markdown_html_and_plots(tmp_path):
    path = tmp_path / "report.json"
    r = standard()
    r["rows"].append({"model": "m", "backend": "tvm", "batch_size": 1, "seq_len": 8, "status": "skipped",
                      "reason": "apache-tvm is not installed"})
    path.write_text(json.dumps(r))
    written = render(path)
    names = sorted(p.name for p in written)
    assert names == ["plot-m.png", "report.html", "report.md"]
    md = (tmp_path / "report.md").read_text()
    assert "| backend | batch | seq | median ms |" in md and "![m: throughput" in md
    assert "SKIPPED" in md and "apache-tvm is not installed" in md
    assert "2.50x" in md  # onnxruntime is 0.4 of torch: 2.5x speed-up
    html = (tmp_path / "report.html").read_text()
    assert "data:image/png;base64," in html and 'src="plot-' not in html  # self-contained
    assert (tmp_path / "plot-m.png").read_bytes()[:4] == b"\x89PNG"


def test_render_with_baseline_shows_changes(tmp_path):
    (tmp_path / "b.json").write_text(json.dumps(standard(seed=1)))
    (tmp_path / "n.json").write_text(json.dumps(standard({"onnxruntime": 1.25}, seed=2)))
    out = tmp_path / "out"
    render(tmp_path / "n.json", tmp_path / "b.json", out)
    md = (out / "report.md").read_text()
    assert "| base ms | change | 95% CI | verdict |" in md and "FAIL" in md and "| baseline |" in md
    assert 'class="FAIL"' in (out / "report.html").read_text()


def test_test_only_extra_work_is_announced(tmp_path):
    r = standard()
    r["test_extra_work"] = {"onnxruntime": 0.25}
    (tmp_path / "r.json").write_text(json.dumps(r))
    render(tmp_path / "r.json")
    assert "TEST-ONLY extra work" in (tmp_path / "report.md").read_text()


def test_cli_report(cli, tmp_path):
    (tmp_path / "r.json").write_text(json.dumps(standard()))
    code, out, _ = cli("report", tmp_path / "r.json")
    assert code == 0 and "report.html" in out
    code, _, err = cli("report", tmp_path / "nope.json")
    assert code == 2 and err.count("\n") == 1
