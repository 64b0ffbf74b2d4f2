"""The command line as a user meets it: exit codes, one-line errors, the result table."""
from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

from tests.conftest import make_spec

BAD_SPECS = {
    "unknown key": (make_spec(rnn={"cell": "lstm", "hidden_size": 8, "layers": 2}), "rnn.layers: unknown key"),
    "wrong type": (make_spec(rnn={"cell": "lstm", "hidden_size": 8, "num_layers": "two"}), "rnn.num_layers: must be an integer"),
    "hidden size 0": (make_spec(rnn={"cell": "lstm", "hidden_size": 0}), "rnn.hidden_size: must be >= 1, got 0"),
    "unknown cell": (make_spec(rnn={"cell": "transformer", "hidden_size": 8}), "rnn.cell: must be one of"),
    "nonlinearity on lstm": (make_spec(rnn={"cell": "lstm", "hidden_size": 8, "nonlinearity": "relu"}),
                             "rnn.nonlinearity: only cell rnn"),
    "tokens without vocab": (make_spec(input={"type": "tokens", "embedding_dim": 4}), "input.vocab_size: required"),
    "unparsable yaml": ("name: [unclosed\nrnn: {", "YAML does not parse"),
}


@pytest.mark.parametrize("case", list(BAD_SPECS))
def test_bad_spec_is_one_line_and_exit_2(case, cli, write_spec) -> None:
    data, expected = BAD_SPECS[case]
    code, out, err = cli("compile", write_spec(data), "--target", "cpu")
    assert code == 2
    assert err.count("\n") == 1 and expected in err, err
    assert "Traceback" not in err and out == ""


@pytest.mark.parametrize("args, expected", [
    (["compile", "missing.yaml", "--target", "cpu"], "missing.yaml: no such file"),
    (["compile", "SPEC", "--target", "tpu"], "invalid choice: 'tpu'"),
    (["compile", "SPEC", "--target", "cpu", "--backends", "tensorrt"], "unknown backend 'tensorrt'"),
    (["verify", "SPEC", "--backends", "onnxruntime,nope"], "unknown backend 'nope'"),
    (["compile", "SPEC"], "the following arguments are required: --target"),
    (["bench", "SPEC", "--seq-lens", "0"], "--seq-lens: every value must be >= 1"),
    (["run", "DIR", "--backend", "nope", "--inputs", "x.npz"], "unknown backend 'nope'"),
    (["summary", "DIR"], "is a directory"),
])
def test_bad_flags_and_files(args, expected, cli, write_spec, tmp_path) -> None:
    spec = write_spec(make_spec())
    args = [str(spec) if a == "SPEC" else str(tmp_path) if a == "DIR" else a for a in args]
    code, out, err = cli(*args)
    assert code == 2 and expected in err and err.count("\n") == 1, err


def test_no_traceback_from_the_installed_command(tmp_path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: x\ninput: {type: tokens}\nrnn: {cell: lstm, hidden_size: 0}\n")
    proc = subprocess.run([sys.executable, "-m", "rnnc", "compile", str(bad), "--target", "cpu"],
                          capture_output=True, text=True)
    assert proc.returncode == 2
    assert proc.stderr.splitlines() == [
        "error: input.vocab_size: required",
        "error: input.embedding_dim: required",
        "error: rnn.hidden_size: must be >= 1, got 0",
    ]


def test_summary_of_the_keras_example(cli) -> None:
    code, out, _ = cli("summary", "examples/keras_sentiment.yaml")
    assert code == 0
    assert "Total params: 164,106" in out and "LSTM" in out and "98,816" in out


def test_compile_writes_the_contract_files_and_a_table(cli, write_spec, tmp_path) -> None:
    out_dir = tmp_path / "out"
    code, out, _ = cli("compile", write_spec(make_spec()), "--target", "cpu",
                       "--backends", "torch,torchscript,onnxruntime", "--out", out_dir)
    assert code == 0, out
    for name in ("manifest.json", "model.onnx", "model.ts"):
        assert (out_dir / name).is_file()
    assert out.splitlines()[1].split()[:4] == ["backend", "status", "max_abs_err", "rel_err"]
    assert sum(line.split()[1] == "ok" for line in out.splitlines()[3:6]) == 3


def test_cuda_without_a_device_skips_with_reasons(cli, write_spec, tmp_path) -> None:
    import torch

    if torch.cuda.is_available():
        pytest.skip("this test is about machines without a CUDA device; this one has one")
    code, out, _ = cli("compile", write_spec(make_spec()), "--target", "cuda",
                       "--backends", "torch,torchscript,onnxruntime", "--out", tmp_path / "out")
    assert code == 3
    assert out.count("skipped") == 3 and "no CUDA device" in out and "CUDAExecutionProvider" in out


def test_run_writes_every_output(cli, write_spec, tmp_path) -> None:
    out_dir = tmp_path / "out"
    cli("compile", write_spec(make_spec()), "--target", "cpu", "--backends", "onnxruntime", "--out", out_dir)
    np.savez(tmp_path / "in.npz", features=np.random.default_rng(0).standard_normal((3, 11, 5)).astype("f4"))
    code, out, err = cli("run", out_dir, "--backend", "onnxruntime", "--inputs", tmp_path / "in.npz",
                         "--out", tmp_path / "o.npz")
    assert code == 0, err
    with np.load(tmp_path / "o.npz") as result:
        assert list(result.files) == ["output"] and result["output"].shape == (3, 11, 8)


def test_run_refuses_inputs_of_other_names(cli, write_spec, tmp_path) -> None:
    out_dir = tmp_path / "out"
    cli("compile", write_spec(make_spec()), "--target", "cpu", "--backends", "onnxruntime", "--out", out_dir)
    np.savez(tmp_path / "in.npz", tokens=np.zeros((1, 2), dtype=np.int64))
    code, _, err = cli("run", out_dir, "--backend", "onnxruntime", "--inputs", tmp_path / "in.npz")
    assert code == 2 and "missing ['features']" in err


# -- bench --stream [--chunk-ms MS] ----------------------------------------------------------------

def test_bench_stream_writes_stream_rows(cli, tmp_path) -> None:
    from tests.bench.models import stateful_lstm

    code, out, err = cli("bench", stateful_lstm(tmp_path), "--shapes", "x:3x2x3,h0:1x2x5,c0:1x2x5",
                         "--backends", "onnxruntime", "--stream", "--chunk-ms", "10", "--seq-lens", "3",
                         "--out", tmp_path / "out", "--threads", "1")
    assert code == 0, err
    assert "onnxruntime (stream)" in out and "chunks/s" in out and "rtf" in out
    md = (tmp_path / "out" / "report.md").read_text()
    assert "| chunks/s | RTF | bind ms |" in md and "plot-lstm_stream-stream.png" in md


@pytest.mark.parametrize("flags, words", [
    (["--stream"], "--stream: model 't' from"),
    (["--chunk-ms", "10"], "--chunk-ms: only with --stream"),
    (["--stream", "--chunk-ms", "0"], "--chunk-ms: must be > 0, got '0'"),
    (["--stream", "--chunk-ms", "fast"], "--chunk-ms: expected a number, got 'fast'"),
])
def test_bench_stream_bad_flags_are_one_line_exit_2(flags, words, cli, write_spec, tmp_path) -> None:
    code, out, err = cli("bench", write_spec(make_spec()), "--out", tmp_path / "out", *flags)
    assert code == 2 and words in err and err.count("\n") == 1 and "Traceback" not in err, err
    assert not (tmp_path / "out" / "manifest.json").exists()  # refused before any compile
