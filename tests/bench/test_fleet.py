"""`rnnc bench --cluster` on a real Ray cluster of this machine (`ray_fleet`): jobs placed by
machine class, rows tagged and rendered per class, artifacts shipped, and nodes lost mid-sweep.

Tiny spec, two backends, a few samples: these check where rows come from and that none is lost
or measured twice, never how fast they are.
"""
from __future__ import annotations

import io
import json
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from rnnc import api, history, host
from rnnc.bench import Settings
from rnnc.errors import UserError
from rnnc.progress import Progress
from rnnc.records import report as schema
from rnnc.reports.tables import results_table
from tests.bench.test_sweep import QUICK
from tests.conftest import make_spec

pytestmark = pytest.mark.xdist_group("ray")
BACKENDS = ["torch", "onnxruntime"]
SLOW = Settings(warmup_s=0.0, warmup_min=1, min_count=5, min_time_s=0.4)  # ~1.5 s a shape: time to kill a node


def bench(spec, out, address, **kw):
    args = dict(cluster=address, out_dir=out, settings=QUICK, seq_lens=[2, 3], batch_sizes=[1])
    return api.bench(spec, "cpu", BACKENDS, **(args | kw))


def test_a_job_per_class_rows_tagged_with_node_and_class(ray_fleet, write_spec, tmp_path):
    out, runs = tmp_path / "out", str(tmp_path / "history.sqlite")
    report = bench(write_spec(make_spec()), out, ray_fleet.address, history=runs)
    assert report["exit_code"] == 0
    assert {(r["machine"], r["node"]) for r in report["rows"]} == {("a", "a1"), ("b", "b1")}
    assert sorted(schema.row_key(r) for r in report["rows"]) == sorted(
        ("t", b, 1, s, f"@{m}") for m in "ab" for b in BACKENDS for s in (2, 3))
    assert all(r["status"] == "ok" and r["samples_ms"] for r in report["rows"])
    on_disk = schema.load_report(out / "report.json")  # one report.json, valid, every row
    assert on_disk["finished"] and len(on_disk["rows"]) == 8
    cluster = on_disk["cluster"]
    assert cluster["nodes"]["a1"]["machine"] == "a" and cluster["nodes"]["a1"]["environment"]["cpu"]["cores"] >= 1
    assert cluster["nodes"]["b1"]["calibration"]["samples_ms"]
    assert [(j["machine"], j["node"], j["rows"], j["outcome"]) for j in cluster["jobs"]] in (
        [("a", "a1", 4, "done"), ("b", "b1", 4, "done")], [("b", "b1", 4, "done"), ("a", "a1", 4, "done")])
    for machine in "ab":  # compiled on a node of the class, shipped back beside the report
        assert cluster["classes"][machine]["models"]["t"]["dir"] == f"{machine}/t"
        assert (out / machine / "t" / "manifest.json").is_file()
    md = (out / "report.md").read_text()
    assert "### t on a" in md and "### t on b" in md and (out / "plot-t-classes.png").is_file()
    assert "machine  node" in results_table(report)
    [run] = history.load(runs)  # recorded with each row's class: the gate compares like with like
    assert run.threads == "all" and sorted(r.key for r in run.rows) == sorted(schema.row_key(r) for r in report["rows"])


def test_on_picks_classes_and_lists_them_when_none_matches(ray_fleet, write_spec, tmp_path):
    report = bench(write_spec(make_spec()), tmp_path / "out", ray_fleet.address, on=["class=b"], seq_lens=[2])
    assert {r["machine"] for r in report["rows"]} == {"b"} and len(report["rows"]) == 2
    with pytest.raises(UserError) as err:
        bench(write_spec(make_spec()), tmp_path / "none", ray_fleet.address, on=["cpu=*EPYC*,gpu=H100"])
    message = str(err.value)
    assert message.startswith("--on cpu=*EPYC*,gpu=H100: no machine class of the cluster matches; it has: a (cpu=")
    assert "; b (cpu=" in message and "1 node)" in message and not (tmp_path / "none").exists()


def test_a_compiled_dir_is_shipped_as_it_is_and_recorded_in_the_report(ray_fleet, write_spec, tmp_path):
    built = tmp_path / "built"
    api.compile(write_spec(make_spec()), "cpu", BACKENDS, out=built)
    out = tmp_path / "out"
    report = bench(built, out, ray_fleet.address, on=["class=a"], seq_lens=None, batch_sizes=None)
    assert report["exit_code"] == 0 and len(report["rows"]) == 2  # the DIR's one shape, two backends
    on_disk = schema.load_report(out / "report.json")  # valid: every row's model is in its models
    assert on_disk["models"]["t"]["dir"] == str(built) and set(on_disk["models"]["t"]["backends"]) >= set(BACKENDS)
    assert on_disk["cluster"]["classes"]["a"]["models"]["t"]["dir"] == str(built)
    assert not (out / "a").exists()  # nothing compiled on the node, nothing shipped back


def _kill_after_first_rows(fleet, out: Path, run) -> tuple[dict, str, list[dict]]:
    """Run `run()` in a thread; as soon as report.json holds a row, kill the node it came from.
    Returns the report, the node killed and the rows the file held when it was killed."""
    result: dict = {}
    thread = threading.Thread(target=lambda: result.update(report=run()))
    thread.start()
    killed, before = None, []
    while thread.is_alive():
        try:
            rows = json.loads((out / "report.json").read_text())["rows"]
        except (OSError, ValueError, KeyError):
            rows = []
        if rows and killed is None:
            killed, before = rows[0]["node"], rows
            fleet.kill(killed)
        time.sleep(0.02)
    thread.join()
    assert killed is not None, "the sweep ended before any row came back"
    return result["report"], killed, before


def test_a_lost_node_loses_no_row_and_its_job_reruns_on_another_node_of_the_class(ray_fleet, write_spec, tmp_path):
    ray_fleet.add("f1", "f")
    ray_fleet.add("f2", "f")
    out = tmp_path / "out"
    said = io.StringIO()
    report, killed, before = _kill_after_first_rows(ray_fleet, out, lambda: bench(
        write_spec(make_spec()), out, ray_fleet.address, on=["class=f"], settings=SLOW, seq_lens=[2, 3, 4, 5],
        progress=Progress(said)))
    ray_fleet.kill("f2" if killed == "f1" else "f1")
    [line] = [x for x in said.getvalue().splitlines() if " lost (" in x]  # the user is told, once
    assert line.startswith(f"t on f: node {killed} lost (") and line.endswith(
        "missing rerun on another node of the class"), line
    other = "f2" if killed == "f1" else "f1"
    assert report["exit_code"] == 0 and schema.validate_report(report) == []  # each key once
    rows = {schema.row_key(r): r for r in report["rows"]}
    assert len(rows) == 8 and all(r["status"] == "ok" for r in rows.values())
    for r in before:  # the rows finished before the loss, kept as they were
        assert rows[schema.row_key(r)] == r and r["node"] == killed
    assert {r["node"] for r in rows.values()} == {killed, other}
    first, second = report["cluster"]["jobs"]
    assert f"), {first['rows']} rows kept; the {8 - first['rows']} missing rerun" in line, line
    assert (first["node"], first["attempt"], second["node"], second["attempt"]) == (killed, 1, other, 2)
    assert first["outcome"].startswith("lost: ") and second["outcome"] == "done"
    assert first["rows"] + second["rows"] == 8 and second["rows"] == 8 - first["rows"]  # none measured twice
    assert sum(r["node"] == other for r in rows.values()) == second["rows"]


def test_rows_of_a_class_with_no_node_left_are_failed_with_the_reason(ray_fleet, write_spec, tmp_path):
    ray_fleet.add("g1", "g")
    out = tmp_path / "out"
    report, killed, before = _kill_after_first_rows(ray_fleet, out, lambda: bench(
        write_spec(make_spec()), out, ray_fleet.address, on=["class=g"], settings=SLOW, seq_lens=[2, 3, 4, 5]))
    assert killed == "g1" and report["exit_code"] == 1
    done = [r for r in report["rows"] if r["status"] == "ok"]
    failed = [r for r in report["rows"] if r["status"] == "failed"]
    assert len(done) >= len(before) and len(done) + len(failed) == 8 and failed
    assert all("no node of class g is left" in r["reason"] and r["machine"] == "g" for r in failed)
    assert schema.load_report(out / "report.json")["finished"]


def test_the_driver_plans_a_sweep_without_loading_any_runtime(write_spec, tmp_path):
    """A fleet's driver measures nothing: torch, onnx and the backends' runtimes (seconds to
    import, on a machine whose cores the jobs need) load only in the jobs."""
    spec = write_spec(make_spec())
    script = f"""
import sys
from pathlib import Path
from rnnc import host, targets
from rnnc.bench import Settings, fleet, sweep
backends = targets.parse_backends("all")
plans = fleet._plans(fleet.resolve_sources(Path({str(spec)!r})), "cpu", None, None, {{}}, None)
sweep.start_report(Path({str(tmp_path / "report.json")!r}), False, "cpu", Settings(), False, None, "all", None, None,
                   fleet=True)
assert plans and host.machine_class().name
print(sorted(m for m in ("torch", "onnx", "tvm", "onnxruntime", "openvino") if m in sys.modules))
"""
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    gpu_driver = any(Path(p).exists() for p in host.GPU_DRIVER_FILES)  # there torch names the GPU of the class
    assert out.stdout.strip() == ("['torch']" if gpu_driver else "[]")
