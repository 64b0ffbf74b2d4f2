"""A fleet report (`rnnc bench --cluster`): a table per machine class, a plot comparing them,
and a gate that compares each class's rows with the same class's only."""
from __future__ import annotations

import json

import pytest

from rnnc.errors import UserError
from rnnc.records.report import validate_report
from rnnc.reports import gate, render
from rnnc.reports.tables import results_table
from tests.reports.synth import report, row

CLASSES = {"a": ("Intel-Xeon", "avx2-avx512", "a1"), "b": ("AMD-EPYC", "avx2", "b1")}


def fleet(scale: dict[tuple[str, str], float] | None = None, seed: int = 0) -> dict:
    """torch and onnxruntime at batch 1, seq 8 and 32, on classes a and b (b 1.5x slower)."""
    scale = scale or {}
    rows = [dict(row(b, 1, seq, base * seq / 8 * (1.5 if m == "b" else 1.0) * scale.get((m, b), 1.0), seed=seed),
                 machine=m, node=CLASSES[m][2])
            for m in CLASSES for b, base in (("torch", 1.0), ("onnxruntime", 0.4)) for seq in (8, 32)]
    r = report(rows)
    r["settings"]["threads"] = "all"
    r["cluster"] = {"address": "auto", "on": [], "jobs": [],
                    "classes": {m: {"cpu": c, "isa": i, "gpu": "none", "nodes": [n], "models": {}}
                                for m, (c, i, n) in CLASSES.items()},
                    "nodes": {n: {"id": n * 8, "machine": m, "calibration": {"samples_ms": [5.0] * 10},
                                  "environment": {"cpu": {"model": c, "cores": 8, "isa": i.split("-")}}}
                              for m, (c, i, n) in CLASSES.items()}}
    return r


def test_one_table_per_class_and_a_plot_comparing_them(tmp_path):
    data = fleet()
    assert validate_report(data) == []  # the same (model, backend, shape) once per class
    (tmp_path / "report.json").write_text(json.dumps(data))
    written = {p.name for p in render(tmp_path / "report.json")}
    assert {"plot-m-a.png", "plot-m-b.png", "plot-m-classes.png"} <= written
    md = (tmp_path / "report.md").read_text()
    assert md.count("| backend | batch | seq | median ms |") == 2
    a, b = md.index("### m on a"), md.index("### m on b")
    assert "rows measured on a1" in md[a:b] and "rows measured on b1" in md[b:]
    assert "|  | a | b |" in md and "| CPU | Intel-Xeon | AMD-EPYC |" in md  # the environment, a column per class
    assert "![m: throughput per machine class](plot-m-classes.png)" in md
    text = results_table(data)
    assert text.splitlines()[0].split()[:4] == ["model", "machine", "node", "backend"]
    assert "1.00x" in text and "2.50x" in text  # speed-up over torch within each class


def test_the_gate_compares_each_class_with_itself(tmp_path):
    base, new = tmp_path / "base.json", tmp_path / "new.json"
    base.write_text(json.dumps(fleet(seed=1)))
    new.write_text(json.dumps(fleet({("b", "onnxruntime"): 1.5}, seed=2)))
    code, table = gate(new, base, 0.10, "plain")
    assert code == 1
    failed = [line for line in table.splitlines() if "FAIL" in line and line.startswith("m ")]
    assert failed and all("onnxruntime @b" in line for line in failed)
    one = report([row(b, 1, 8, 1.0) for b in ("torch", "onnxruntime")])
    one["settings"]["threads"] = "all"
    (tmp_path / "one.json").write_text(json.dumps(one))
    with pytest.raises(UserError, match="no timed row in common"):  # a fleet's rows against one machine's
        gate(new, tmp_path / "one.json", 0.10, "plain")
