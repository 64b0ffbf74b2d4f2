"""`rnnc bench --stream`: the state really carried from chunk to chunk, on real runtimes; the
stream rows' keys; resume; refusals; and the rows of generative models.

Timing settings are cut to a few samples: these tests check what is carried and written, never
how fast.
"""
from __future__ import annotations

import json

from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest

from rnnc import api, targets
from rnnc.bench import Settings, measure, run_bench, stream, sweep
from rnnc.errors import UserError
from rnnc.graphs.from_onnx import model_from_onnx
from rnnc.pipeline import open_dir
from rnnc.records import report as schema
from rnnc.targets.base import Runner
from tests.bench.models import SHAPES, stateful_lstm, stateless
from tests.conftest import make_spec

QUICK = Settings(warmup_s=0.0, warmup_min=2, min_count=5, min_time_s=0.0, min_sample_s=0.0, settle_s=0.0,
                 burst_s=0.0)


def _compiled(tmp_path: Path, backends: list[str]) -> Path:
    out = tmp_path / "dir"
    manifest, _ = api.compile(stateful_lstm(tmp_path), "cpu", backends, out, SHAPES)
    assert all(manifest.backends[b].status == "ok" for b in backends), manifest.backends
    return out


class Recording(Runner):
    """A real runner whose calls are recorded: the state each call got and the state it gave.
    A bind that is never called (the bind floor) records nothing."""

    def __init__(self, inner: Runner, pairs: dict[str, str]) -> None:
        super().__init__(inner.inputs, inner.output_names)
        self.inner, self.pairs, self.calls = inner, pairs, []

    def bind(self, **arrays: Any):
        call = self.inner.bind(**arrays)
        given = {k: np.array(arrays[k]) for k in self.pairs}

        def recorded():
            out = call()
            self.calls.append((given, {k: np.array(out[o]) for k, o in self.pairs.items()}))
            return out

        return recorded


def _recorded_bench(tmp_path: Path, backend: str, monkeypatch: pytest.MonkeyPatch, **kw: Any):
    directory = _compiled(tmp_path, [backend])
    module, recorders = targets.backend(backend), []
    real = module.load

    def load(*args: Any, **kwargs: Any) -> Runner:
        recorders.append(Recording(real(*args, **kwargs), {"h0": "hn", "c0": "cn"}))
        return recorders[-1]

    monkeypatch.setattr(module, "load", load)
    report = run_bench(directory, "cpu", [backend], seq_lens=[3], batch_sizes=[2], out_dir=tmp_path / "out",
                       settings=QUICK, stream=True, threads=1, **kw)
    return report, recorders


def _assert_carried(calls: list, row: dict[str, Any]) -> None:
    """Every call got exactly the state the call before gave, the first the zero state, and the
    state moved: a stream that restarted, or reused one state, fails here."""
    assert len(calls) == row["chunk_calls"] >= QUICK.warmup_min + len(row["samples_ms"])
    first_in, _ = calls[0]
    assert all(not v.any() for v in first_in.values())
    for (_, given_back), (got, _) in zip(calls, calls[1:]):
        for k in ("h0", "c0"):
            assert np.array_equal(got[k], given_back[k])
    assert len({calls[i][1]["c0"].tobytes() for i in range(len(calls))}) == len(calls)  # never the same state


def test_the_bench_carries_the_state_through_onnxruntime(tmp_path, monkeypatch):
    report, recorders = _recorded_bench(tmp_path, "onnxruntime", monkeypatch, chunk_ms=20.0, check=True)
    assert report["exit_code"] == 0
    [row] = report["rows"]
    assert row["mode"] == "stream" and row["seq_len"] == 3 and row["check"]["passed"]
    assert row["chunks_per_s"] == pytest.approx(1000 / row["median_ms"], rel=1e-3)
    assert row["chunk_ms"] == 20.0 and row["rtf"] == pytest.approx(row["median_ms"] / 20.0, rel=1e-3)
    assert 0 < row["bind_ms"] and "state_resets" not in row and "steps" not in row
    assert schema.row_key(row) == ("lstm_stream", "onnxruntime", 2, 3, "stream")
    [recorder] = recorders
    _assert_carried(recorder.calls, row)
    on_disk = schema.load_report(tmp_path / "out" / "report.json")
    assert on_disk["rows"] == report["rows"] and on_disk["settings"]["stream"] is True


@pytest.mark.tvm
def test_the_bench_carries_the_state_through_tvm(tmp_path, monkeypatch):
    report, recorders = _recorded_bench(tmp_path, "tvm", monkeypatch)
    [row] = report["rows"]
    assert row["status"] == "ok" and row["mode"] == "stream" and "rtf" not in row and row["bind_ms"] > 0
    _assert_carried(recorders[0].calls, row)


def test_a_stream_is_the_chain_of_its_calls(tmp_path):
    """The carried state after N chunks is what N chained calls of the float64 reference give,
    and not what a stream that restarted at the last chunk would hold."""
    directory = _compiled(tmp_path, ["onnxruntime"])
    _, model = open_dir(directory)
    pool = stream.chunks(model, 2, 3, seed=0, count=3)
    start = stream.zero_state(model, 2, 3)
    s = stream.Stream(api.load(directory, "onnxruntime", threads=1), pool, model.state, start)
    s.timer()(4)
    s.timer()(3)  # two samples of one stream: nothing restarts between them
    assert s.calls == 7 and s.resets == 0
    state = dict(start)
    for k in range(7):
        out = model.reference64({**pool[k % 3], **state})
        state = {i: out[o] for i, o in model.state.items()}
    restarted = model.reference64({**pool[6 % 3], **start})
    for i, o in model.state.items():
        np.testing.assert_allclose(s.state[i], state[i], rtol=1e-4, atol=1e-5)
        assert not np.allclose(s.state[i], restarted[o], atol=1e-3)
        assert s.state[i].dtype == np.float32


def test_a_state_gone_non_finite_restarts_at_zeros(tmp_path):
    directory = _compiled(tmp_path, ["onnxruntime"])
    _, model = open_dir(directory)
    start = stream.zero_state(model, 2, 3)
    s = stream.Stream(api.load(directory, "onnxruntime", threads=1), stream.chunks(model, 2, 3, 0), model.state,
                      start)
    s.timer()(2)
    s.state = {k: np.full_like(v, np.nan) for k, v in s.state.items()}
    s.timer()(1)
    assert s.resets == 1 and all(np.isfinite(v).all() for v in s.state.values())
    fields = stream.row_fields(0.5, "cv 12% > 10%", stream.Options(chunk_ms=4e6), s, None, 0.1, None)
    assert fields["state_resets"] == 1 and fields["chunk_calls"] == 3 and fields["rtf"] == 1.25e-07
    assert fields["warning"] == "cv 12% > 10%; the state went non-finite and restarted at zeros 1 times"


def test_resume_keeps_stream_rows_and_refuses_another_kind(tmp_path, monkeypatch):
    directory, out = _compiled(tmp_path, ["onnxruntime"]), tmp_path / "out"
    real, calls = measure.measure_interleaved, []

    def interrupted(funcs, settings, calibration=None):
        calls.append(sorted(funcs))
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(funcs, settings, calibration)

    monkeypatch.setattr(measure, "measure_interleaved", interrupted)
    args = dict(target="cpu", backends=["onnxruntime"], seq_lens=[2, 4], batch_sizes=[1], out_dir=out,
                settings=QUICK, stream=True)
    with pytest.raises(KeyboardInterrupt):
        run_bench(directory, **args)
    partial = schema.load_report(out / "report.json")
    assert [(r["seq_len"], r["mode"]) for r in partial["rows"]] == [(2, "stream")]
    calls.clear()
    done = run_bench(directory, resume=True, **args)
    assert calls == [["onnxruntime", "onnxruntime (bind)"]]  # only the missing chunk length
    assert done["rows"][0] == partial["rows"][0] and [r["seq_len"] for r in done["rows"]] == [2, 4]
    for flags in (dict(stream=False), dict(chunk_ms=5.0, seq_lens=[2])):
        with pytest.raises(UserError, match="--resume of a report measured with --stream, now"):
            run_bench(directory, resume=True, **{**args, **flags})


@pytest.mark.parametrize("kw, words", [
    (dict(chunk_ms=10.0), "--chunk-ms: only with --stream"),
    (dict(stream=True, chunk_ms=0.0), "--chunk-ms: must be a number of milliseconds > 0"),
    (dict(stream=True, chunk_ms=5.0, seq_lens=[2, 4]), "fits one chunk length, but the sweep has 2, 4"),
])
def test_bad_stream_flags(tmp_path, kw, words):
    with pytest.raises(UserError, match=words):
        run_bench(stateful_lstm(tmp_path), "cpu", ["onnxruntime"], out_dir=tmp_path / "out", settings=QUICK,
                  shapes=SHAPES, **kw)


def test_a_model_without_state_is_refused_before_compiling(tmp_path, write_spec, monkeypatch):
    from rnnc import pipeline

    monkeypatch.setattr(pipeline, "compile_model", lambda *a, **k: pytest.fail("compiled"))
    for source, name in ((write_spec(make_spec()), "'t'"), (stateless(tmp_path), "'stateless'")):
        with pytest.raises(UserError) as err:
            run_bench(source, "cpu", ["onnxruntime"], out_dir=tmp_path / "out", settings=QUICK, stream=True,
                      shapes={"x": (1, 2, 3)} if source.suffix == ".onnx" else None)
        [line] = err.value.problems
        assert line.startswith(f"--stream: model {name} from {source} has no state pairs")


# -- generative models -------------------------------------------------------------------------

@pytest.mark.parametrize("spec, steps", [
    (SimpleNamespace(output=SimpleNamespace(mode="one_to_many", steps=16)), 16),
    (SimpleNamespace(output=SimpleNamespace(mode="encoder_decoder"), decoder=SimpleNamespace(max_steps=32)), 32),
    (SimpleNamespace(output=SimpleNamespace(mode="many_to_many")), None),
    (SimpleNamespace(output=SimpleNamespace(mode="one_to_many")), None),  # before the field exists
    (SimpleNamespace(), None),
])
def test_generation_steps_from_the_spec(spec, steps, tmp_path):
    model = model_from_onnx(stateless(tmp_path), {"x": (1, 2, 3)})
    assert stream.generation_steps(model) is None
    model.spec = spec
    assert stream.generation_steps(model) == steps


def test_generation_steps_from_a_compiled_dirs_spec(tmp_path):
    model = model_from_onnx(stateless(tmp_path), {"x": (1, 2, 3)})
    model.source = {**model.source, "spec": {"output": {"mode": "encoder_decoder"}, "decoder": {"max_steps": 7}}}
    assert stream.generation_steps(model) == 7


class OneStep(Runner):
    """A real runner that also offers a one-step generation (here: the same call, for the test)."""

    def __init__(self, inner: Runner) -> None:
        super().__init__(inner.inputs, inner.output_names)
        self.inner = inner

    def bind(self, **arrays: Any):
        return self.inner.bind(**arrays)

    def bind_first_step(self, **arrays: Any):
        return self.inner.bind(**arrays)


def test_rows_of_a_generative_model(tmp_path):
    """Every row gets steps, ms_per_step and steps_per_s; first_step_ms only from a runner that can
    run one step, never estimated."""
    directory = _compiled(tmp_path, ["onnxruntime"])
    _, model = open_dir(directory)
    model.spec = SimpleNamespace(output=SimpleNamespace(mode="one_to_many", steps=4))
    plain = api.load(directory, "onnxruntime", threads=1)
    report = schema.new_report("cpu", {}, {})
    for streamed in (None, stream.Options(chunk_ms=10.0)):
        rows = sweep._measure_shape(model, {"onnxruntime": plain, "one-step": OneStep(plain)}, 2, 3, QUICK, False,
                                    {}, 0, measure.calibration_workload(), report, streamed)
        by = {r.backend: r for r in rows}
        for r in rows:
            assert r.status == "ok" and r.steps == 4 and r.ms_per_step == pytest.approx(r.median_ms / 4, rel=1e-3)
            assert r.steps_per_s == pytest.approx(4000 / r.median_ms, rel=1e-3)
            assert (r.mode == "stream") == (streamed is not None)
        assert by["onnxruntime"].first_step_ms is None and "first_step_ms" not in by["onnxruntime"].to_json()
        assert by["one-step"].first_step_ms > 0


def test_a_spec_with_state_streams_on_every_backend_checked(write_spec, tmp_path):
    spec = write_spec(make_spec(rnn={"cell": "gru", "hidden_size": 6, "state": True},
                                shapes={"batch_sizes": [2], "seq_lens": [4]}))
    report = run_bench(spec, "cpu", ["torch", "onnxruntime"], out_dir=tmp_path / "out", settings=QUICK,
                       stream=True, check=True, threads=1)
    assert report["exit_code"] == 0
    for r in report["rows"]:
        assert r["mode"] == "stream" and r["check"]["passed"] and r["chunk_calls"] > len(r["samples_ms"])


def test_a_generative_spec_has_step_rows(write_spec, tmp_path):
    spec = write_spec(make_spec(output={"mode": "one_to_many", "steps": 6, "dense": {"units": 5, "activation": "tanh"}},
                                shapes={"batch_sizes": [1], "seq_lens": [1]}))
    report = run_bench(spec, "cpu", ["onnxruntime"], out_dir=tmp_path / "out", settings=QUICK, threads=1)
    [r] = report["rows"]
    assert r["steps"] == 6 and r["ms_per_step"] == pytest.approx(r["median_ms"] / 6, rel=1e-3)
    assert "mode" not in r
    # the first step: the same spec generating one step, compiled once beside the report
    twin = json.loads((tmp_path / "out" / "t-first-step" / "manifest.json").read_text())
    assert twin["spec"]["output"]["steps"] == 1 and twin["backends"]["onnxruntime"]["verification"]["passed"]
    assert 0 < r["first_step_ms"]


def test_a_one_step_model_rows_are_its_steps_whatever_seq_lens_say(write_spec, tmp_path):
    """one_to_many takes one step and generates `steps`: a row's seq_len is the steps, never a
    --seq-lens value that its input does not have (nor duplicated rows, one per seq_len)."""
    spec = write_spec(make_spec(output={"mode": "one_to_many", "steps": 6, "dense": {"units": 5, "activation": "tanh"}},
                                shapes={"batch_sizes": [1], "seq_lens": [3, 9]}))
    for source in (spec, tmp_path / "out"):  # the spec, then the DIR it compiled
        report = run_bench(source, "cpu", ["onnxruntime"], seq_lens=[16, 64], out_dir=tmp_path / "out",
                           settings=QUICK, threads=1)
        assert [(r["batch_size"], r["seq_len"], r["steps"]) for r in report["rows"]] == [(1, 6, 6)]
