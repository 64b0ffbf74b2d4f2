"""`rnnc bench` end to end on a tiny spec: rows, resume, --check, exit codes, bad input.

Timing settings are cut to a few samples: these tests check what is written, never how fast.
"""
from __future__ import annotations


import numpy as np
import pytest

from rnnc.bench import Settings, measure, run_bench
from rnnc.errors import UserError
from rnnc.records import report as schema
from tests.conftest import make_spec

QUICK = Settings(warmup_s=0.0, warmup_min=1, min_count=5, min_time_s=0.0, min_sample_s=0.0, settle_s=0.0,
                 burst_s=0.0)
BACKENDS = ["torch", "onnxruntime"]


def bench(source, out, **kw):
    args = dict(target="cpu", backends=BACKENDS, seq_lens=[2, 5], batch_sizes=[1, 3], out_dir=out,
                resume=False, check=False, settings=QUICK)
    args.update(kw)
    return run_bench(source, **args)


def test_rows_for_every_backend_and_shape(write_spec, tmp_path):
    report = bench(write_spec(make_spec()), tmp_path / "out", check=True)
    assert report["exit_code"] == 0
    keys = [schema.row_key(r) for r in report["rows"]]
    assert keys == [("t", b, n, s) for b in BACKENDS for n in (1, 3) for s in (2, 5)]
    for r in report["rows"]:
        assert r["status"] == "ok" and len(r["samples_ms"]) >= 5 and r["check"]["passed"]
        assert r["tokens_per_s"] == pytest.approx(r["sequences_per_s"] * r["seq_len"], rel=1e-4)
        for key in ("median_ms", "iqr_ms", "p90_ms", "p99_ms", "cv", "loops"):
            assert key in r
    on_disk = schema.load_report(tmp_path / "out" / "report.json")
    assert on_disk["finished"] and on_disk["rows"] == [dict(r) for r in report["rows"]]
    assert on_disk["calibration"]["samples_ms"] and on_disk["environment"]["cpu"]["cores"] >= 1
    model = on_disk["models"]["t"]
    assert model["backends"]["onnxruntime"]["artifact_bytes"] > 0 and "build_time_s" in model["backends"]["torch"]
    assert (tmp_path / "out" / "manifest.json").is_file()  # a spec is compiled into --out


def test_resume_runs_only_missing_rows(write_spec, tmp_path, monkeypatch):
    spec, out = write_spec(make_spec()), tmp_path / "out"
    calls = []
    real = measure.measure_interleaved

    def interrupted(funcs, settings, calibration=None, clock=None):
        calls.append(sorted(funcs))
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(funcs, settings, calibration)

    monkeypatch.setattr(measure, "measure_interleaved", interrupted)
    with pytest.raises(KeyboardInterrupt):
        bench(spec, out, seq_lens=[2], batch_sizes=[1, 3])
    partial = schema.load_report(out / "report.json")  # valid, with the first shape's rows
    assert not partial["finished"] and [r["batch_size"] for r in partial["rows"]] == [1, 1]

    calls.clear()
    done = bench(spec, out, seq_lens=[2], batch_sizes=[1, 3], resume=True)
    assert calls == [sorted(BACKENDS)]  # one shape left, both backends
    assert [r for r in done["rows"] if r["batch_size"] == 1] == partial["rows"]  # kept as they were
    assert len(done["rows"]) == 4 and done["finished"]


def test_check_fails_a_wrong_backend(write_spec, tmp_path, monkeypatch):
    from rnnc.targets import onnxruntime

    real = onnxruntime.SessionRunner._prepare
    spec = write_spec(make_spec(shapes={"batch_sizes": [1], "seq_lens": [3]}))
    from rnnc import api

    api.compile(spec, "cpu", BACKENDS, tmp_path / "dir")  # compiled before the bug, verified clean
    def off_by_a_little(self, arrays):
        call = real(self, arrays)
        return lambda: {k: v + 1e-3 for k, v in call().items()}

    monkeypatch.setattr(onnxruntime.SessionRunner, "_prepare", off_by_a_little)
    report = bench(tmp_path / "dir", tmp_path / "out", seq_lens=None, batch_sizes=None, check=True)
    ort = [r for r in report["rows"] if r["backend"] == "onnxruntime"]
    assert report["exit_code"] == 1
    assert ort[0]["status"] == "failed" and "--check: rel_err" in ort[0]["reason"] and "median_ms" not in ort[0]
    assert ort[0]["check"]["passed"] is False and report["rows"][0]["check"]["passed"]


def test_a_compiled_dir_is_benched_without_recompiling(write_spec, tmp_path, monkeypatch):
    from rnnc import api
    from rnnc import pipeline

    spec = write_spec(make_spec(shapes={"batch_sizes": [2], "seq_lens": [3, 4]}))
    api.compile(spec, "cpu", BACKENDS, tmp_path / "dir")
    monkeypatch.setattr(pipeline, "compile_model", lambda *a, **k: pytest.fail("recompiled"))
    report = bench(tmp_path / "dir", None, seq_lens=None, batch_sizes=None, backends=["onnxruntime"])
    assert [(r["batch_size"], r["seq_len"]) for r in report["rows"]] == [(2, 3), (2, 4)]
    assert (tmp_path / "dir" / "report.json").is_file()  # default --out: the DIR itself


def test_a_folder_of_specs(write_spec, tmp_path):
    write_spec(make_spec(name="one"), "one.yaml")
    write_spec(make_spec(name="two", rnn={"cell": "gru", "hidden_size": 4}), "two.yaml")
    report = bench(tmp_path, tmp_path / "out", backends=["onnxruntime"], seq_lens=[2], batch_sizes=[1])
    assert [r["model"] for r in report["rows"]] == ["one", "two"]
    assert (tmp_path / "out" / "one" / "manifest.json").is_file()


def test_nothing_can_run_is_exit_3(write_spec, tmp_path):
    report = bench(write_spec(make_spec()), tmp_path / "out", target="cuda", seq_lens=[2], batch_sizes=[1])
    assert report["exit_code"] == 3
    assert all(r["status"] == "skipped" and r["reason"] for r in report["rows"])


@pytest.mark.parametrize("kw, message", [
    (dict(seq_lens=[0]), "--seq-lens"),
    (dict(batch_sizes=[]), "--batch-sizes"),
    (dict(backends=["nope"]), "unknown backend 'nope'"),
    (dict(target="tpu"), "--target"),
])
def test_bad_input(write_spec, tmp_path, kw, message):
    with pytest.raises(UserError, match=message):
        bench(write_spec(make_spec()), tmp_path / "out", **kw)


def test_bad_sources(tmp_path):
    with pytest.raises(UserError, match="no such file"):
        bench(tmp_path / "missing.yaml", tmp_path / "out")
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="neither a compiled DIR"):
        bench(tmp_path / "empty", tmp_path / "out")


def test_resume_refuses_a_changed_spec(write_spec, tmp_path):
    out = tmp_path / "out"
    bench(write_spec(make_spec()), out, seq_lens=[2], batch_sizes=[1], backends=["onnxruntime"])
    changed = write_spec(make_spec(rnn={"cell": "lstm", "hidden_size": 9}))
    with pytest.raises(UserError, match="differs from the one already in the report"):
        bench(changed, out, seq_lens=[2], batch_sizes=[1], backends=["onnxruntime"], resume=True)


def test_extra_work_is_recorded(write_spec, tmp_path):
    report = bench(write_spec(make_spec()), tmp_path / "out", seq_lens=[2], batch_sizes=[1],
                   extra_work={"onnxruntime": 0.25})
    assert report["test_extra_work"] == {"onnxruntime": 0.25}
    assert [r.get("test_extra_work") for r in report["rows"]] == [None, 0.25]


def test_cli_bench(cli, write_spec, tmp_path):
    spec = write_spec(make_spec())
    code, out, err = cli("bench", spec, "--seq-lens", "0")
    assert code == 2 and err.count("\n") == 1
    code, out, err = cli("bench", spec, "--backends", "nope")
    assert code == 2 and err.count("\n") == 1 and "Traceback" not in err
    code, out, err = cli("bench", tmp_path / "nothing.yaml")
    assert code == 2 and err.count("\n") == 1


def test_inputs_are_the_same_in_every_run(write_spec, tmp_path, monkeypatch):
    seen = []
    from rnnc.graphs.model import Model

    real = Model.random_inputs
    monkeypatch.setattr(Model, "random_inputs", lambda self, b, s, rng: seen.append(real(self, b, s, rng)) or seen[-1])
    spec = write_spec(make_spec())
    for out in ("a", "b"):
        bench(spec, tmp_path / out, seq_lens=[2], batch_sizes=[1], backends=["onnxruntime"])
    arrays = [x["features"] for x in seen if x["features"].shape == (1, 2, 5)]
    assert len(arrays) == 4  # per run: compile's verification (fresh inputs), then the bench (seeded)
    assert np.array_equal(arrays[1], arrays[3]) and not np.array_equal(arrays[0], arrays[2])


def test_threads_are_limited_recorded_and_put_back(write_spec, tmp_path):
    import torch

    before = torch.get_num_threads()
    report = bench(write_spec(make_spec()), tmp_path / "out", seq_lens=[2], batch_sizes=[1], threads=1)
    assert report["settings"]["threads"] == 1 and report["environment"]["threads"]["torch_intra_op"] == 1
    assert torch.get_num_threads() == before
    with pytest.raises(UserError, match="threads=1 with threads=None"):
        bench(write_spec(make_spec()), tmp_path / "out", seq_lens=[2], batch_sizes=[1, 3], resume=True, threads=None)


def test_onnxruntime_sessions_get_the_thread_count(write_spec, tmp_path):
    from rnnc import api
    from rnnc.targets import onnxruntime

    api.compile(write_spec(make_spec()), "cpu", ["onnxruntime"], tmp_path / "dir")
    manifest, _ = api.open_dir(tmp_path / "dir")
    runner = onnxruntime.load(tmp_path / "dir", manifest, "cpu", 1, "fp32")
    assert runner.session.get_session_options().intra_op_num_threads == 1
    assert set(runner(features=np.zeros((1, 2, 5), np.float32))) == {"output"}


def test_the_default_is_every_core_for_every_runtime(write_spec, tmp_path):
    from rnnc.bench.threads import DEFAULT

    report = bench(write_spec(make_spec()), tmp_path / "out", seq_lens=[2], batch_sizes=[1])
    assert report["settings"]["threads"] == DEFAULT == report["environment"]["cpu"]["cores"]
