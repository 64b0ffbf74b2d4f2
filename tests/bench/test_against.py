"""`rnnc bench NEW --against OLD`: both builds measured in one run, two reports, the gate's A/B mode.

Timing settings are cut to a few samples; the slowdown is the TEST-ONLY `extra_work` (a busy-wait
of 3x each call's own time on one side only), far past any noise, so the verdicts cannot flake.
"""
from __future__ import annotations

import dataclasses
import json

import pytest

from rnnc.bench import Settings, run_bench
from rnnc.errors import UserError
from rnnc.pipeline import compile_model
from rnnc.graphs import load_model
from rnnc.records import report as schema
from rnnc.reports import gate
from tests.conftest import make_spec

QUICK = Settings(warmup_s=0.0, warmup_min=1, min_count=8, min_time_s=0.0, min_sample_s=0.0, settle_s=0.0,
                 burst_s=0.0)
BACKENDS = ["torch", "onnxruntime"]


@pytest.fixture
def two_builds(write_spec, tmp_path):
    spec = write_spec(make_spec())
    dirs = []
    for name in ("old", "new"):
        model = load_model(spec)
        model.shapes = [(1, 4)]
        compile_model(model, "cpu", BACKENDS, tmp_path / name)
        dirs.append(tmp_path / name)
    return dirs


def ab(new, old, out, **kw):
    kw.setdefault("settings", QUICK)
    return run_bench(new, "cpu", BACKENDS, [4], [1], out, False, False, against=old, **kw)


def test_both_halves_written_with_one_run_id(two_builds, tmp_path):
    old, new = two_builds
    report = ab(new, old, tmp_path / "ab")
    assert report["exit_code"] == 0 and len(report["written"]) == 2
    mine = schema.load_report(tmp_path / "ab" / "report.json")
    theirs = schema.load_report(tmp_path / "ab" / "against" / "report.json")
    assert mine["ab"]["run"] == theirs["ab"]["run"] and (mine["ab"]["role"], theirs["ab"]["role"]) == ("new", "against")
    assert [schema.row_key(r) for r in mine["rows"]] == [schema.row_key(r) for r in theirs["rows"]]
    assert all(r["status"] == "ok" and len(r["samples_ms"]) >= 8 for r in mine["rows"] + theirs["rows"])
    assert theirs["models"]["t"]["dir"] == str(old) and theirs["calibration"] == mine["calibration"]
    code, table = gate(tmp_path / "ab" / "report.json", None, 2.0)  # its baseline found from the report
    assert code == 0 and table.startswith("gate mode: ab")


def test_ab_gate_fails_the_slowed_side_naming_its_rows(two_builds, tmp_path):
    old, new = two_builds
    # only the new side is slowed; 40 samples a side, so that a neighbour's load (CI's other test
    # worker on the same two cores) cannot widen the ratio's interval down past the threshold
    ab(new, old, tmp_path / "ab", extra_work={"onnxruntime": 3.0}, settings=dataclasses.replace(QUICK, min_count=40))
    code, table = gate(tmp_path / "ab" / "report.json", None, 0.5)
    failed = [line.split()[1] for line in table.splitlines() if " FAIL " in line]
    assert code == 1 and failed == ["onnxruntime"] and "onnxruntime b1 s4" in table.splitlines()[-1]


def test_a_baseline_from_another_run_is_not_judged_as_ab(two_builds, tmp_path):
    old, new = two_builds
    ab(new, old, tmp_path / "one")
    run_bench(new, "cpu", BACKENDS, [4], [1], tmp_path / "plain", False, False, settings=QUICK)
    code, table = gate(tmp_path / "plain" / "report.json", tmp_path / "one" / "against" / "report.json", 2.0)
    assert table.startswith("gate mode: common")
    with pytest.raises(UserError, match="not measured in the same A/B run"):
        gate(tmp_path / "plain" / "report.json", tmp_path / "one" / "against" / "report.json", 2.0, "ab")
    with pytest.raises(UserError, match="give --baseline"):
        gate(tmp_path / "plain" / "report.json", None, 0.1)


def test_against_an_earlier_bench_folder(two_builds, tmp_path):
    old, new = two_builds
    run_bench(old, "cpu", BACKENDS, [4], [1], tmp_path / "earlier", False, False, settings=QUICK)
    earlier = json.loads((tmp_path / "earlier" / "report.json").read_text())
    assert earlier["models"]["t"]["dir"]
    assert ab(new, tmp_path / "earlier", tmp_path / "ab")["exit_code"] == 0
    folder = tmp_path / "builds"
    folder.mkdir()
    old.rename(folder / "anything")  # a folder of compiled DIRs, matched by model name
    assert ab(new, folder, tmp_path / "ab2")["exit_code"] == 0


def test_refusals(two_builds, write_spec, tmp_path):
    old, new = two_builds
    with pytest.raises(UserError, match="not a compiled DIR"):
        (tmp_path / "empty").mkdir()
        ab(new, tmp_path / "empty", tmp_path / "x")
    with pytest.raises(UserError, match="two builds of model 't'"):
        ab(new, tmp_path, tmp_path / "x")
    with pytest.raises(UserError, match="--resume with --against"):
        run_bench(new, "cpu", BACKENDS, [4], [1], tmp_path / "y", True, False, settings=QUICK, against=old)
    other = write_spec(make_spec(rnn={"cell": "gru", "hidden_size": 5}), "gru.yaml")
    model = load_model(other)
    model.shapes = [(1, 4)]
    compile_model(model, "cpu", BACKENDS, tmp_path / "gru")
    with pytest.raises(UserError, match="differs from the one benched"):
        ab(new, tmp_path / "gru", tmp_path / "z")


def test_cli_bench_against_then_gate(two_builds, tmp_path, cli):
    old, new = two_builds
    code, out, err = cli("bench", str(new), "--against", str(old), "--out", str(tmp_path / "ab"), "--seq-lens", "4",
                         "--batch-sizes", "1", "--backends", "torch,onnxruntime", "--threads", "1")
    assert code == 0 and "against/report.json" in out
    code, out, err = cli("gate", str(tmp_path / "ab" / "report.json"), "--max-regression", "200%")
    assert code == 0 and out.startswith("gate mode: ab") and "gate passed" in out
