"""Rendering: report.md, a self-contained report.html and one PNG per model."""
from __future__ import annotations

import json

import pytest

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


def test_render_stream_and_generation_rows(tmp_path):
    """Stream rows show chunks/s, RTF and the bind floor; generative ones steps, ms/step and
    steps/s; each kind has its plot beside the throughput one, linked in report.md."""
    from tests.reports.synth import generation, report, row, stream_row

    rows = [stream_row(b, batch, chunk, ms * chunk, chunk_ms=10.0 if chunk == 4 else None)
            for b, ms in (("torch", 0.5), ("onnxruntime", 0.2)) for batch in (1, 2) for chunk in (4, 16)]
    rows.append({"model": "m", "backend": "tvm", "batch_size": 1, "seq_len": 4, "status": "skipped",
                 "reason": "not compiled", "mode": "stream"})
    rows += [generation(row(b, batch, 8, ms * batch, model="gen"), 12, first_step_ms=0.3 if b == "tvm" else None)
             for b, ms in (("onnxruntime", 1.2), ("tvm", 0.9)) for batch in (1, 4)]
    r = report(rows)
    path = tmp_path / "report.json"
    path.write_text(json.dumps(r))
    written = sorted(p.name for p in render(path))
    assert written == ["plot-gen-steps.png", "plot-gen.png", "plot-m-stream.png", "plot-m.png", "report.html",
                       "report.md"]
    md = (tmp_path / "report.md").read_text()
    m_part, gen_part = md.split("## gen")
    assert "| backend | batch | chunk | median ms |" in m_part and "| chunks/s | RTF | bind ms |" in m_part
    assert "RTF, the real-time factor, is median ms / 10 ms" in m_part and "SKIPPED" in m_part
    assert "![m: latency per chunk, streamed](plot-m-stream.png)" in m_part and "ms/step" not in m_part
    assert "| steps | ms/step | steps/s | first step ms |" in gen_part and "chunks/s" not in gen_part
    assert "each call generates 12 steps" in gen_part
    assert "![gen: ms per generated step](plot-gen-steps.png)" in gen_part
    lines = gen_part.splitlines()
    header = [c.strip() for c in next(x for x in lines if "| median ms |" in x).strip("|").split("|")]
    cells = {x.split("|")[1].strip() + x.split("|")[2].strip(): dict(zip(header, (c.strip() for c in
             x.strip("|").split("|")))) for x in lines if x.startswith(("| tvm", "| onnxruntime"))}
    tvm = cells["tvm4"]
    assert float(tvm["ms/step"]) == pytest.approx(float(tvm["median ms"]) / 12, rel=1e-3)
    assert tvm["steps"] == "12" and tvm["first step ms"] == "0.3" and cells["onnxruntime1"]["first step ms"] == "-"
    for png in ("plot-m-stream.png", "plot-gen-steps.png"):
        assert (tmp_path / png).read_bytes()[:4] == b"\x89PNG"
    assert (tmp_path / "report.html").read_text().count("data:image/png;base64,") == 4


def test_a_plain_report_renders_as_before(tmp_path):
    (tmp_path / "r.json").write_text(json.dumps(standard()))
    render(tmp_path / "r.json")
    md = (tmp_path / "report.md").read_text()
    assert "chunks/s" not in md and "ms/step" not in md and "Streamed" not in md
    assert not list(tmp_path.glob("plot-*-st*.png"))
