"""bench/onnx_node_tests.py end to end on three of ONNX's node cases, through rnnc's real CLI.

Only the onnxruntime backend (no TVM build), and only ONNX's add, relu and lstm case modules
generated, so that the test does not pay the 20 s of generating the whole suite. The commands run
in the script's worker processes (each imports torch and onnxruntime once), hence slow all the same.
"""
from __future__ import annotations

import importlib
import json
import os
import signal
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "bench" / "onnx_node_tests.py"
CASES = ["test_add", "test_relu", "test_lstm_defaults"]


def _load_script():
    """The script as a module, importable by name: its 'spawn' workers unpickle its functions by it."""
    if str(SCRIPT.parent) not in sys.path:
        sys.path.append(str(SCRIPT.parent))
    return importlib.import_module(SCRIPT.stem)


@pytest.mark.slow
def test_three_cases_tally_and_results(tmp_path: Path) -> None:
    t = _load_script()
    data = tmp_path / "node"
    t.generate_node_data(data, modules=["add", "relu", "lstm"])
    cases = t.select_cases(data, match="^(" + "|".join(CASES) + ")$")
    assert [c.name for c, _ in cases] == sorted(CASES)
    assert dict((c.name, ops) for c, ops in cases)["test_lstm_defaults"] == ["LSTM"]

    opts = t.Options(backends=("onnxruntime",), out=tmp_path / "out", timeout_s=300)
    records = t.run_all(cases, opts, jobs=2, progress=False)
    t.write_results(opts, records)
    (opts.out / "summary.md").write_text(t.summary_md(records, opts))

    by_case = {r.case: r for r in records}
    assert sorted(by_case) == sorted(CASES) and len(records) == len(CASES)
    for r in records:
        assert r.outcome in t.OUTCOMES
        assert r.outcome == t.PASSED or r.reason, f"{r.case}: {r.outcome} without a reason"
    # A recurrent model is what rnnc is for: ONNX's own LSTM case must pass on onnxruntime.
    lstm = by_case["test_lstm_defaults"]
    assert lstm.outcome == t.PASSED, lstm.reason
    assert lstm.max_abs_err is not None and lstm.max_abs_err < 1e-3

    # Every case streamed to results.jsonl; --resume runs only what a cut-short run did not finish.
    jsonl = opts.out / "results.jsonl"
    lines = jsonl.read_text().splitlines()
    assert len(lines) == len(CASES)
    assert t.run_all(cases, opts, progress=False, resume=True) == records  # nothing left to run
    jsonl.write_text("\n".join(lines[:2]) + "\n" + lines[2][:20])  # as a kill mid-write leaves it
    again = t.run_all(cases, opts, progress=False, resume=True)
    assert [(r.case, r.outcome) for r in again] == [(r.case, r.outcome) for r in records]
    assert len(jsonl.read_text().splitlines()) == len(CASES)  # the two kept and the rerun case

    doc = json.loads((opts.out / "results.json").read_text())
    assert len(doc["records"]) == len(CASES) and not doc["partial"]
    assert {r["case"] for r in doc["records"]} == set(CASES)
    passed = sum(r.outcome == t.PASSED for r in records)
    assert doc["totals"]["onnxruntime"].get("passed", 0) == passed
    assert sum(doc["totals"]["onnxruntime"].values()) == len(CASES)

    table = t.table(records, opts.backends)
    assert table.splitlines()[2].split()[:3] == ["onnxruntime", "3", str(passed)]
    summary = (opts.out / "summary.md").read_text()
    for r in records:
        if r.outcome != t.PASSED:
            assert r.case in summary  # every failure is named, with its reason


def test_compare_follows_onnx_backend_tolerances() -> None:
    """rtol 1e-3 / atol 1e-7, NaN equal to NaN, exact integers, shapes and dtypes must match."""
    import numpy as np  # a hard dependency: never skipped
    t = _load_script()
    x = np.array([1.0, np.nan, -np.inf, 0.0], np.float32)
    assert t.compare("y", x, x, t.RTOL, t.ATOL)[0] == ""
    assert t.compare("y", x * (1 + 5e-4), x, t.RTOL, t.ATOL)[0] == ""
    why, err = t.compare("y", x + np.float32([0, 0, 0, 1e-6]), x, t.RTOL, t.ATOL)
    assert "1/4 values differ" in why and err == pytest.approx(1e-6)
    assert "NaN" in t.compare("y", np.zeros(4, np.float32), x, t.RTOL, t.ATOL)[0]
    assert "shape" in t.compare("y", x[:3], x, t.RTOL, t.ATOL)[0]
    assert "dtype" in t.compare("y", x.astype(np.float64), x, t.RTOL, t.ATOL)[0]
    assert t.compare("i", np.array([1, 2]), np.array([1, 3]), t.RTOL, t.ATOL)[0]


def test_normalise_groups_repeated_reasons() -> None:
    t = _load_script()
    a = t.normalise("input 'x': element type INT8 not supported; input 'y': element type INT8 not supported")
    b = t.normalise("input 'a': element type INT8 not supported")
    assert a == b == "input '…': element type INT8 not supported"
    assert t.normalise("output 'y': 3/60 values differ, max abs err 1.2e-05") == \
        t.normalise("output 'z': 1/4 values differ, max abs err 0.5")
    assert t.normalise("run exit 1: ValueError: /tmp/a/b.npz: bad") == "run exit N: ValueError: PATH: bad"


def test_in_process_ends_as_the_subprocess_would() -> None:
    """Same argv, same exit code and text, whether `python -m rnnc` or `rnnc.cli.main` in a process."""
    t = _load_script()
    for argv in (["--version"], ["run", "nowhere", "--backend", "nope", "--inputs", "x.npz"], ["compile"]):
        code, out, err = t.in_process(argv)
        assert (code, out, err) == t.Subprocess().call(argv, 120), argv
        assert code == (0 if argv == ["--version"] else 2) and (out if code == 0 else err).strip()
    code, _, err = t.in_process(["--definitely-not-a-flag"])
    assert code == 2 and err.startswith("error:")


def test_worker_survives_timeouts_and_crashes(tmp_path: Path) -> None:
    """A timeout and a native crash are one command's result; the next command gets a fresh worker."""
    t = _load_script()
    w = t.Worker(log=tmp_path / "workers.log")
    try:
        assert w.call(["--version"], 0.001) == (None, "", "")  # the worker is still starting: timed out
        assert w.call(["--version"], 120)[0] == 0
        pid = w.proc.pid
        os.kill(pid, signal.SIGSEGV)  # as a crash in a native library would end it
        w.proc.join()
        code, out, err = w.call(["--version"], 120)
        assert code == -signal.SIGSEGV and "SIGSEGV" in err
        assert w.call(["--version"], 120) == (0, t.in_process(["--version"])[1], "")
        assert w.proc.pid != pid
    finally:
        w.stop()
