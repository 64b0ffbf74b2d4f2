"""The regression gate on synthetic reports: passes noise, fails real slowdowns, refuses mismatches."""
from __future__ import annotations

import json

import pytest

from rnnc.errors import UserError
from rnnc.records.report import validate_report
from rnnc.reports import gate, schema
from tests.reports.synth import report, row, standard
from tests.reports.test_schema import pytest_benchmark_json


def write(tmp_path, name, data):
    path = tmp_path / name
    path.write_text(json.dumps(data))
    return path


def test_same_distribution_passes(tmp_path):
    base, new = write(tmp_path, "b.json", standard(seed=1)), write(tmp_path, "n.json", standard(seed=2))
    code, table = gate(new, base, 0.10, mode="plain")
    assert code == 0, table
    assert "gate passed" in table and table.count("\nm ") == 8  # every row listed


def test_a_quarter_slower_backend_fails_only_its_rows(tmp_path):
    base = write(tmp_path, "b.json", standard(seed=1))
    new = write(tmp_path, "n.json", standard({"onnxruntime": 1.25}, seed=2))
    code, table = gate(new, base, 0.10, mode="plain")
    assert code == 1
    lines = [line for line in table.splitlines() if line.startswith("m ")]
    assert all(("FAIL" in line) == ("onnxruntime" in line) for line in lines), table
    assert "gate FAILED: 4 of 8 rows" in table


def test_a_slowdown_under_the_threshold_passes(tmp_path):
    base = write(tmp_path, "b.json", standard(seed=1))
    new = write(tmp_path, "n.json", standard({"onnxruntime": 1.05}, seed=2))
    assert gate(new, base, 0.10, mode="plain")[0] == 0


def test_normalize_divides_out_a_slower_machine(tmp_path):
    base = write(tmp_path, "b.json", standard(seed=1, calibration_ms=5.0))
    slow_machine = standard({"torch": 1.5, "onnxruntime": 1.5}, seed=2, calibration_ms=7.5)
    new = write(tmp_path, "n.json", slow_machine)
    assert gate(new, base, 0.10, mode="plain")[0] == 1
    code, table = gate(new, base, 0.10, mode="normalized")
    assert code == 0 and "calibration-normalised" in table


def test_rows_that_break_fail_and_missing_rows_do_not(tmp_path):
    new = standard(seed=2)
    new["rows"][0] = {**{k: new["rows"][0][k] for k in ("model", "backend", "batch_size", "seq_len")},
                      "status": "failed", "reason": "boom"}
    del new["rows"][1]
    changes = gate_changes(standard(seed=1), new)
    verdicts = {(c.key[1], c.key[2], c.key[3]): c.verdict for c in changes}
    assert verdicts[("torch", 1, 8)] == "BROKEN" and verdicts[("torch", 1, 32)] == "missing"
    assert gate(write(tmp_path, "n.json", new), write(tmp_path, "b.json", standard(seed=1)), 0.1, mode="plain")[0] == 1


def test_new_rows_and_too_few_samples_are_reported_not_judged():
    base = report([row("torch", 1, 8, 1.0, n=3)])
    new = report([row("torch", 1, 8, 3.0, n=3), row("onnxruntime", 1, 8, 1.0)])
    verdicts = [c.verdict for c in gate_changes(base, new)]
    assert verdicts == ["?", "new"]


def gate_changes(base, new):
    from rnnc.reports.gate import compare_reports

    return compare_reports(base, new, 0.10, mode="plain")


@pytest.mark.parametrize("change, message", [
    (lambda r: r["models"]["m"].update(fingerprint="zzz"), "different specs"),
    (lambda r: r.update(target="cuda"), "different targets"),
    (lambda r: [x.update(model="other") for x in r["rows"]] and r.update(models={"other": r["models"]["m"]}),
     "no model in common"),
])
def test_mismatched_reports_are_bad_input(tmp_path, change, message):
    new = standard(seed=2)
    change(new)
    with pytest.raises(UserError, match=message):
        gate(write(tmp_path, "n.json", new), write(tmp_path, "b.json", standard(seed=1)), 0.1, mode="plain")


def test_pytest_benchmark_json_is_gated_too(tmp_path):
    base = write(tmp_path, "b.json", pytest_benchmark_json())
    assert gate(write(tmp_path, "same.json", pytest_benchmark_json()), base, 0.1, mode="plain")[0] == 0
    assert gate(write(tmp_path, "slow.json", pytest_benchmark_json(1.3)), base, 0.1, mode="plain")[0] == 1
    no_data = write(tmp_path, "nodata.json", pytest_benchmark_json(1.3, data=False))
    code, table = gate(no_data, write(tmp_path, "b2.json", pytest_benchmark_json(data=False)), 0.1, mode="plain")
    assert code == 1 and "judged on quartiles" in table


def test_an_rnnc_report_against_a_pytest_benchmark_baseline_is_refused(tmp_path):
    with pytest.raises(UserError, match="different schema"):
        gate(write(tmp_path, "n.json", standard()), write(tmp_path, "b.json", pytest_benchmark_json()), 0.1, mode="plain")


def test_cli_gate_exit_codes(cli, tmp_path):
    base = write(tmp_path, "b.json", standard(seed=1))
    slow = write(tmp_path, "n.json", standard({"torch": 1.3}, seed=2))
    code, out, err = cli("gate", slow, "--baseline", base, "--max-regression", "10%")
    assert code == 1 and "FAIL" in out
    code, out, err = cli("gate", slow, "--baseline", base, "--max-regression", "50%")
    assert code == 0
    code, out, err = cli("gate", tmp_path / "missing.json", "--baseline", base)
    assert code == 2 and err.count("\n") == 1 and "Traceback" not in err
    (tmp_path / "corrupt.json").write_text("{nope")
    code, out, err = cli("gate", tmp_path / "corrupt.json", "--baseline", base)
    assert code == 2 and err.count("\n") == 1


def test_schema_keys_match_rows():
    r = standard()
    assert validate_report(r) == []
    assert schema.row_key(r["rows"][0]) == ("m", "torch", 1, 8)


def test_reports_with_different_thread_counts_are_refused(tmp_path):
    new = standard(seed=2)
    new["settings"]["threads"] = 1
    with pytest.raises(UserError, match="different thread counts: 1 against default"):
        gate(write(tmp_path, "n.json", new), write(tmp_path, "b.json", standard(seed=1)), 0.1, mode="plain")


def test_reports_without_a_common_row_are_refused(cli, tmp_path):
    base = report([row("torch", 1, 8, 1.0)])
    new = report([row("torch", 1, 16, 1.0)])
    code, out, err = cli("gate", write(tmp_path, "n.json", new), "--baseline", write(tmp_path, "b.json", base))
    assert code == 2 and "nothing to compare" in err and err.count("\n") == 1


def test_cli_mismatched_specs_are_one_line_exit_2(cli, tmp_path):
    new = standard(seed=2)
    new["models"]["m"]["fingerprint"] = "other"
    code, out, err = cli("gate", write(tmp_path, "n.json", new), "--baseline", write(tmp_path, "b.json", standard()))
    assert code == 2 and err.startswith("error: reports of different specs") and err.count("\n") == 1


def test_common_mode_gate_passes_shared_drift_and_fails_one_backend(tmp_path):
    def four(scale, seed):
        return report([row(b, 1, 8, base * scale.get(b, 1.0) * scale.get("all", 1.0), seed=seed)
                       for b, base in (("torch", 1.0), ("torchscript", 0.9), ("onnxruntime", 0.4), ("tvm", 0.3))])

    base = write(tmp_path, "b.json", four({}, 1))
    drifted = write(tmp_path, "d.json", four({"all": 1.2}, 2))
    assert gate(drifted, base, 0.10, mode="plain")[0] == 1
    code, table = gate(drifted, base, 0.10, mode="common")
    drifts = {float(line.split("common drift ")[1].rstrip("%")) for line in table.splitlines() if "common drift" in line}
    assert code == 0 and len(drifts) == 1 and abs(drifts.pop() - 20) < 2
    slowed = write(tmp_path, "s.json", four({"all": 1.2, "tvm": 1.25}, 3))
    code, table = gate(slowed, base, 0.10, mode="common")
    assert code == 1 and [line.split()[1] for line in table.splitlines() if "FAIL" in line.split()] == ["tvm"]
    with pytest.raises(UserError, match="unknown mode"):
        gate(slowed, base, 0.10, mode="normalized_common")


def test_common_mode_still_fails_a_run_slower_everywhere_past_the_drift_allowance(tmp_path):
    def four(scale, seed):
        return report([row(b, 1, 8, base * scale, seed=seed)
                       for b, base in (("torch", 1.0), ("torchscript", 0.9), ("onnxruntime", 0.4), ("tvm", 0.3))])

    base = write(tmp_path, "b.json", four(1.0, 1))
    assert gate(write(tmp_path, "d.json", four(1.25, 2)), base, 0.10)[0] == 0  # within the machine's drift
    code, table = gate(write(tmp_path, "s.json", four(2.0, 3)), base, 0.10)  # the default mode: common
    assert table.startswith("gate mode: common") and code == 1
    assert sum("every backend of this shape slower together" in line for line in table.splitlines()) == 4


def test_mode_flags(tmp_path, cli):
    base, new = write(tmp_path, "b.json", standard(seed=1)), write(tmp_path, "n.json", standard(seed=2))
    code, out, err = cli("gate", new, "--baseline", base, "--mode", "plain")
    assert code == 0 and out.startswith("gate mode: plain")
    code, out, err = cli("gate", new, "--baseline", base, "--normalize")
    assert code == 0 and out.startswith("gate mode: normalized")
    code, out, err = cli("gate", new, "--baseline", base, "--mode", "plain", "--common-mode")
    assert code == 2 and "alternatives" in err
    code, out, err = cli("gate", new, "--baseline", base, "--mode", "bogus")
    assert code == 2 and "unknown mode 'bogus'" in err and err.count("\n") == 1
    code, out, err = cli("gate", new)
    assert code == 2 and "give --baseline" in err


# -- stream rows ---------------------------------------------------------------------------------

def test_stream_rows_are_gated_like_any_row(tmp_path):
    """A rerun passes in the default (common) mode, one backend a quarter slower per chunk fails
    its rows only, and the table names the rows as streamed."""
    from tests.reports.synth import streamed

    base = write(tmp_path, "b.json", streamed(seed=1))
    assert gate(write(tmp_path, "same.json", streamed({"torch": 1.1, "onnxruntime": 1.1, "tvm": 1.1}, seed=2)),
                base, 0.10)[0] == 0  # shared drift divides out
    code, table = gate(write(tmp_path, "n.json", streamed({"tvm": 1.25}, seed=2)), base, 0.10)
    lines = [line for line in table.splitlines() if line.startswith("m ")]
    assert code == 1 and len(lines) == 12 and all("(stream)" in line for line in lines)
    assert all(("FAIL" in line) == ("tvm" in line) for line in lines), table
    assert "gate FAILED: 4 of 12 rows regressed past 10% (tvm (stream) b1 s4" in table


def test_a_streamed_report_against_a_plain_baseline_is_refused(tmp_path, cli):
    from tests.reports.synth import streamed

    code, _, err = cli("gate", write(tmp_path, "n.json", streamed()), "--baseline",
                       write(tmp_path, "b.json", standard()))
    assert code == 2 and err.count("\n") == 1
    assert "reports of different kinds: a --stream report against a plain baseline" in err


def test_common_mode_groups_a_shape_of_one_kind():
    """A plain and a stream row of one shape are not backends of one shape's drift group."""
    from rnnc.reports.gate import compare_reports
    from tests.reports.synth import stream_row

    rows = [row(b, 1, 4, 1.0 * i) for i, b in enumerate(("torch", "onnxruntime", "tvm"), 1)]
    base = report(rows + [stream_row("torch", 1, 4, 2.0)])
    new = report([row(b, 1, 4, 1.0 * i, seed=3) for i, b in enumerate(("torch", "onnxruntime", "tvm"), 1)]
                 + [stream_row("torch", 1, 4, 4.0, seed=3)])
    changes = {c.key: c for c in compare_reports(base, new, 0.10, "common")}
    assert changes[("m", "torch", 1, 4, "stream")].verdict == "FAIL"  # twice slower, judged on its own
    assert "fewer than 3 backends" in changes[("m", "torch", 1, 4, "stream")].note
    assert all(changes[("m", b, 1, 4)].verdict == "same" for b in ("torch", "onnxruntime", "tvm"))
