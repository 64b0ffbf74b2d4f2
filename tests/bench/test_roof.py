"""The machine's roof: a sane, fast measure; cache sizes from sysfs, lscpu or the fallback; and
each row's figures against it, exactly from its work and its median."""
from __future__ import annotations

import time

import pytest

from rnnc.bench import roof
from rnnc.bench.roof import Caches, Roof, caches, measure, with_roof
from rnnc.graphs.work import Work
from rnnc.records.report import Row

MiB = 2**20


def test_the_measure_is_sane_and_fast():
    started = time.perf_counter()
    r = measure(1)
    took = time.perf_counter() - started
    assert r.threads == 1 and r.method and r.cache_source in ("sysfs", "lscpu", "fallback")
    assert r.sgemm_gflops > 0 and r.memory_gbps > 0 and r.l2_gbps > 0
    assert r.memory_gbps < r.l2_gbps  # data in L2 comes faster than from memory
    assert r.l3_gbps is None or r.l3_gbps > 0
    assert r.l2_bytes > 0 and r.memory_buffer_bytes >= 64 * MiB
    assert took < 3.0 and r.measure_s <= took + 0.001  # well under a second on an idle machine; a loaded one gets slack
    assert Roof.from_json(r.to_json()) == r


def test_measured_is_kept_per_thread_count():
    assert roof.measured(1) is roof.measured(1)


def test_cache_sizes_from_sysfs(tmp_path):
    for index, (level, kind, size, cpus) in enumerate(((1, "Data", "48K", "0"), (2, "Unified", "2048K", "0-1"),
                                                       (3, "Unified", "107520K", "0-3,8"))):
        d = tmp_path / f"index{index}"
        d.mkdir()
        for name, value in (("level", level), ("type", kind), ("size", size), ("shared_cpu_list", cpus)):
            (d / name).write_text(f"{value}\n")
    assert caches(tmp_path) == Caches(2 * MiB, 2, 105 * MiB, "sysfs")


def test_cache_sizes_from_lscpu_then_the_fallback(tmp_path):
    text = "NAME  ONE-SIZE\nL1d      49152\nL2     1048576\nL3    33554432\n"
    assert caches(tmp_path / "none", lambda: text) == Caches(MiB, 1, 32 * MiB, "lscpu")
    assert caches(tmp_path / "none", lambda: "") == Caches(roof.FALLBACK_L2, 1, roof.FALLBACK_L3, "fallback")


MACHINE = Roof(threads=2, sgemm_gflops=200.0, memory_gbps=10.0, l2_gbps=100.0, l3_gbps=40.0, l2_bytes=4 * MiB,
               l3_bytes=32 * MiB, memory_buffer_bytes=64 * MiB, cache_source="sysfs", method="test", measure_s=0.2)
OK = dict(model="m", batch_size=16, seq_len=10, status="ok", samples_ms=[2.0, 2.0], median_ms=2.0, iqr_ms=0.0,
          p90_ms=2.0, p99_ms=2.0, sequences_per_s=8000.0, tokens_per_s=80000.0)


def test_the_level_r_is_read_from():
    assert MACHINE.level(4 * MiB) == ("L2", 100.0)
    assert MACHINE.level(4 * MiB + 1) == ("L3", 40.0)
    assert MACHINE.level(33 * MiB) == ("memory", 10.0)
    no_l3 = Roof(**{**MACHINE.to_json(), "l3_gbps": None})
    assert no_l3.level(5 * MiB) == ("memory", 10.0)
    assert Roof.from_json(None) is None and Roof.from_json({"threads": 2}) is None


def test_a_row_against_the_roof():
    work = Work(flops=300_000_000, r_weights=1_000_000, r_reads=10_000_000)  # 1e6 weights, 10 steps
    row = with_roof(Row(backend="onnxruntime", **OK), work, MACHINE)
    assert row.gflops == pytest.approx(150.0) and row.roof_fraction == pytest.approx(0.75)
    assert row.r_bytes_per_step == 4_000_000 and row.bw_level == "L2"  # 3.8 MiB of fp32 fits the 4 MiB of L2
    assert row.bw_fraction == pytest.approx(40e6 / 100e9 / 2e-3, rel=1e-3)  # 40 MB at 100 GB/s over 2 ms
    int8 = with_roof(Row(backend="tvm:int8", **OK), work, MACHINE)
    assert int8.r_bytes_per_step == 1_000_000 and int8.bw_fraction == pytest.approx(10e6 / 100e9 / 2e-3, rel=1e-3)
    half = with_roof(Row(backend="torch", precision="fp16", **OK), work, MACHINE)  # a float16 spec
    assert half.r_bytes_per_step == 2_000_000
    big = with_roof(Row(backend="torch", **OK), Work(300_000_000, 10 * MiB, 100 * MiB), MACHINE)
    assert big.bw_level == "memory" and big.bw_fraction == pytest.approx(400 * MiB / 10e9 / 2e-3, rel=1e-3)


def test_rows_without_a_work_or_a_roof_stay_as_they_were():
    row = Row(backend="torch", **OK)
    assert with_roof(row, None, MACHINE) == row and with_roof(row, Work(1, 1, 1), None) == row
    skipped = Row(model="m", backend="tvm", batch_size=1, seq_len=2, status="skipped", reason="no")
    assert with_roof(skipped, Work(1, 1, 1), MACHINE) == skipped


def test_a_bench_records_the_roof_and_each_rows_figures(write_spec, tmp_path):
    from rnnc.bench import run_bench
    from rnnc.graphs.work import model_work
    from rnnc.records import report as schema
    from tests.bench.test_sweep import QUICK
    from tests.conftest import make_spec

    spec = make_spec(rnn={"cell": "gru", "hidden_size": 8, "num_layers": 2})
    report = run_bench(write_spec(spec), "cpu", ["torch", "onnxruntime"], [4], [1, 16], tmp_path / "out",
                       settings=QUICK, threads=1)
    machine = Roof.from_json(report["environment"]["roof"])
    assert machine is not None and machine.threads == 1
    from rnnc.graphs import load_model

    model = load_model(write_spec(spec))
    for r in report["rows"]:
        work = model_work(model.onnx, model.inputs, r["batch_size"], r["seq_len"])
        assert r["gflops"] == pytest.approx(work.flops / r["median_ms"] / 1e6, rel=1e-3)
        assert r["roof_fraction"] == pytest.approx(r["gflops"] / machine.sgemm_gflops, rel=1e-2)
        assert r["r_bytes_per_step"] == 4 * 2 * 3 * 8 * 8 and r["bw_level"] == "L2" and r["bw_fraction"] > 0
    assert schema.load_report(tmp_path / "out" / "report.json")["rows"] == report["rows"]
