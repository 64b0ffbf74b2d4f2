"""`NAME:PRECISION` backends (SPEC section 2): named, built, verified at their own tolerance, loaded,
run and benchmarked as entries of their own; ONNX Runtime's int8 (quantize_dynamic) as the peer."""
from __future__ import annotations

import json

import numpy as np
import pytest

import rnnc
from rnnc import api, targets
from rnnc.errors import UserError
from rnnc.verify import tolerance
from tests.conftest import make_spec


def test_names_carry_a_precision():
    assert targets.parse_backends("tvm:fp32,onnxruntime:int8,openvino:bf16,tvm") == [
        "tvm", "onnxruntime:int8", "openvino:bf16"]
    assert targets.split("tvm:int8") == ("tvm", "int8") and targets.split("torch") == ("torch", "fp32")
    assert targets.parse_backends("all") == list(targets.names())  # `all` is every backend at fp32
    ordered = sorted(["tvm:int8", "onnxruntime:int8", "tvm", "torch", "onnxruntime"], key=targets.sort_key)
    assert ordered == ["torch", "onnxruntime", "onnxruntime:int8", "tvm", "tvm:int8"]


@pytest.mark.parametrize("text, words", [
    ("torch:int8", "backend 'torch' has no precision 'int8': it runs torch:fp32"),
    ("onnxruntime:int4", "has no precision 'int4'"),
    ("nosuch:int8", "unknown backend 'nosuch:int8'"),
])
def test_a_precision_a_backend_lacks_is_one_line(text, words):
    with pytest.raises(UserError, match=words):
        targets.parse_backends(text)


def test_every_backend_lists_fp32_first():
    for name in targets.names():
        assert targets.backend(name).PRECISIONS[0] == "fp32", name


def test_tolerance_per_precision():
    assert tolerance("float32") == 1e-5
    assert tolerance("float32", "int8") > tolerance("float32", "bf16") > tolerance("float32", "fp32")
    assert tolerance("bfloat16", "fp32") == tolerance("bfloat16")  # the model's own dtype still counts


@pytest.fixture(scope="module")
def lstm_dir(tmp_path_factory):
    import yaml

    root = tmp_path_factory.mktemp("precisions")
    spec = root / "spec.yaml"
    spec.write_text(yaml.safe_dump(make_spec(
        rnn={"cell": "lstm", "hidden_size": 24, "num_layers": 2, "state": True},
        shapes={"batch_sizes": [1, 3], "seq_lens": [6]})))
    manifest, out = api.compile(spec, "cpu", ["onnxruntime", "onnxruntime:int8"], root / "out")
    return manifest, out


def test_int8_is_its_own_verified_entry(lstm_dir):
    manifest, out = lstm_dir
    fp32, int8 = manifest.backends["onnxruntime"], manifest.backends["onnxruntime:int8"]
    assert fp32.status == int8.status == "ok", (fp32.reason, int8.reason)
    assert (fp32.precision, int8.precision) == ("fp32", "int8")
    assert int8.artifacts == ("model-int8.onnx",) and fp32.artifacts == ("model.onnx",)
    assert int8.verification.tolerance == tolerance("float32", "int8")
    assert fp32.verification.tolerance == 1e-5
    # quantized for real: its error is far above float32 rounding, and still small
    assert 10 * fp32.verification.rel_err < int8.verification.rel_err < 3e-2
    recorded = json.loads((out / "manifest.json").read_text())["backends"]["onnxruntime:int8"]
    assert recorded["precision"] == "int8" and recorded["verification"]["tolerance"] == int8.verification.tolerance


def test_the_int8_graph_holds_ort_quantized_lstms(lstm_dir):
    import onnx

    _, out = lstm_dir
    ops = {(n.domain, n.op_type) for n in onnx.load(str(out / "model-int8.onnx")).graph.node}
    assert ("com.microsoft", "DynamicQuantizeLSTM") in ops and ("", "LSTM") not in ops


def test_int8_loads_runs_and_chains(lstm_dir, tmp_path, cli):
    _, out = lstm_dir
    runner = rnnc.load(out, "onnxruntime:int8")
    x = np.random.default_rng(0).standard_normal((2, 5, 5)).astype(np.float32)
    h = np.zeros((2, 2, 24), np.float32)
    got = runner(features=x, h0=h, c0=h)
    ref = rnnc.load(out, "onnxruntime")(features=x, h0=h, c0=h)
    assert set(got) == set(ref)
    assert 0 < np.max(np.abs(got["output"] - ref["output"])) < 0.05 * np.max(np.abs(ref["output"]))
    chained = api.verify(out, "cpu", ["onnxruntime:int8"], chain=30)
    assert chained.backends["onnxruntime:int8"].verification.passed
    assert chained.backends["onnxruntime:int8"].verification.chain == 30
    np.savez(tmp_path / "in.npz", features=x, h0=h, c0=h)
    code, _, err = cli("run", out, "--backend", "onnxruntime:int8", "--inputs", tmp_path / "in.npz")
    assert code == 0, err
    assert (tmp_path / "in.onnxruntime-int8.out.npz").is_file()


def test_int8_benches_as_its_own_row(lstm_dir, tmp_path):
    from rnnc.bench.measure import Settings

    _, out = lstm_dir
    quick = Settings(warmup_s=0.0, warmup_min=1, min_count=5, min_time_s=0.0, min_sample_s=0.0, burst_s=0.0)
    report = api.bench(out, "cpu", ["onnxruntime", "onnxruntime:int8"], batch_sizes=[1], seq_lens=[4],
                       out_dir=tmp_path / "b", settings=quick, check=True)
    assert report["exit_code"] == 0
    rows = report["rows"]
    assert sorted(r["backend"] for r in rows) == ["onnxruntime", "onnxruntime:int8"]
    assert all(r.get("median_ms") for r in rows)
    assert all(r["check"]["passed"] for r in rows)  # each checked at its own precision's tolerance
    assert {r["backend"]: r["check"]["tolerance"] for r in rows}["onnxruntime:int8"] == tolerance("float32", "int8")


def test_ort_int8_refuses_a_gru_rather_than_run_it_float32(write_spec, tmp_path):
    manifest, _ = api.compile(write_spec(make_spec(rnn={"cell": "gru", "hidden_size": 8})), "cpu",
                              ["onnxruntime:int8"], tmp_path / "out")
    record = manifest.backends["onnxruntime:int8"]
    assert record.status == "skipped" and "no int8 GRU" in record.reason and record.precision == "int8"


def test_a_precision_not_compiled_is_one_line(lstm_dir):
    _, out = lstm_dir
    with pytest.raises(UserError, match="has no artifact"):
        rnnc.load(out, "tvm:int8")
