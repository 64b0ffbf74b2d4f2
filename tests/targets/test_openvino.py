"""The openvino backend end to end: spec models compiled at fp32, fp16 and bf16, each verified
against float64, and each really run at the precision its name says (OpenVINO's CPU plugin would
otherwise run bf16 silently on this kind of CPU)."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import yaml

from rnnc import api, targets
from rnnc.errors import Unsupported, UserError
from rnnc.graphs.model import Model
from rnnc.targets import openvino as backend
from rnnc.verify import tolerance
from tests.conftest import make_spec

LOWER = ("openvino:fp16", "openvino:bf16")
NAMES = ("openvino", *LOWER)
TOKENS = {"type": "tokens", "vocab_size": 30, "embedding_dim": 6}

MODELS = {
    "lstm-features": make_spec(rnn={"cell": "lstm", "hidden_size": 16}),
    "gru-tokens-bi": make_spec(input=TOKENS, rnn={"cell": "gru", "hidden_size": 12, "num_layers": 2,
                                                  "bidirectional": True},
                               output={"mode": "many_to_one", "dense": {"units": 4, "activation": "softmax"}}),
    "rnn-relu": make_spec(rnn={"cell": "rnn", "hidden_size": 16, "nonlinearity": "relu", "bias": "single"},
                          output={"mode": "many_to_many", "dense": {"units": 3, "activation": "tanh"}}),
    "lstm-state": make_spec(rnn={"cell": "lstm", "hidden_size": 16, "num_layers": 2, "state": True}),
    "gru-generator": make_spec(input=TOKENS, rnn={"cell": "gru", "hidden_size": 16},
                               output={"mode": "one_to_many", "steps": 6,
                                       "dense": {"units": 30, "activation": "softmax"}}),
}


def _lacking(entry: str) -> str | None:
    """Why this CPU cannot run `entry` at its precision (OpenVINO's capabilities), or None. An
    AMD Zen 5 lists BF16 but no FP16; a Sapphire Rapids lists both."""
    try:
        backend._check_capability(targets.precision_of(entry))
    except Unsupported as err:
        return str(err)
    return None


def _compile(tmp: Path, spec: dict, backends=NAMES):
    path = tmp / "spec.yaml"
    path.write_text(yaml.safe_dump(spec))
    return api.compile(path, "cpu", list(backends), tmp / "out", threads=1)


@pytest.fixture(scope="module", params=sorted(MODELS))
def compiled(request, tmp_path_factory):
    return request.param, *_compile(tmp_path_factory.mktemp(request.param), MODELS[request.param])


def test_every_precision_verifies_and_runs_what_its_name_says(compiled):
    name, manifest, out = compiled
    errors = {}
    for entry in NAMES:
        record = manifest.backends[entry]
        precision = targets.precision_of(entry)
        if _lacking(entry):  # refused at build with the reason, never run as f32 under its name
            assert record.status == "skipped" and record.reason == _lacking(entry), (name, entry, record)
            continue
        assert record.status == "ok", (name, entry, record.reason)
        assert record.precision == precision
        assert all((out / a).is_file() for a in record.artifacts)
        assert set(backend.IR) < set(record.artifacts) and backend.record_path(precision) in record.artifacts
        saved = json.loads((out / backend.record_path(precision)).read_text())
        assert saved["precision"] == precision and saved["config"]["INFERENCE_PRECISION_HINT"] == saved[
            "inference_precision_hint"]
        check = record.verification
        assert check.passed and check.tolerance == tolerance("float32", precision), (entry, check)
        errors[entry] = check.rel_err
    assert errors["openvino"] <= 1e-5, errors  # f32, not the plugin's bf16 default
    for entry in (e for e in LOWER if e in errors):  # the hint was honoured: less exact than f32, within tolerance
        assert errors[entry] > 10 * errors["openvino"] and errors[entry] > 5e-5, errors


def test_the_compiled_model_reports_the_precision_and_threads_asked_for(compiled):
    _, manifest, out = compiled
    for entry, element in zip(NAMES, ("f32", "f16", "bf16")):
        if _lacking(entry):
            with pytest.raises(Unsupported, match="would run as f32"):
                targets.load(entry, out, manifest, "cpu", 1)
            continue
        runner = targets.load(entry, out, manifest, "cpu", 1)
        assert runner.compiled.get_property("INFERENCE_PRECISION_HINT").get_type_name() == element
        assert runner.compiled.get_property("INFERENCE_NUM_THREADS") == 1
        assert runner.compiled.get_property("NUM_STREAMS") == 1


def test_one_runner_runs_any_batch_and_sequence(compiled):
    name, manifest, out = compiled
    model = api.open_dir(out)[1]
    runner = api.load(out, "openvino", threads=1)
    for batch, seq in ((1, 1), (3, 7), (2, 20), (1, 4)):
        x = model.random_inputs(batch, seq, np.random.default_rng(batch * 31 + seq))
        got, want = runner(**x), model.reference64(x)
        assert set(got) == set(want) == set(runner.output_names)
        for key, info in zip(runner.output_names, manifest.io.outputs):
            assert got[key].dtype == np.dtype(info.dtype) and got[key].shape == want[key].shape, (name, key)
            if got[key].dtype.kind == "f":
                err = np.abs(got[key] - want[key]).max() / max(np.abs(want[key]).max(), 1e-30)
                assert err <= 1e-5, (name, key, batch, seq, err)
        if "generated" in got:  # token ids stay int64, each the argmax of its step's probabilities
            np.testing.assert_array_equal(got["generated"], got["output"].argmax(-1))


def test_a_stream_in_chunks_is_one_call_on_the_whole_sequence(tmp_path):
    manifest, out = _compile(tmp_path, MODELS["lstm-state"], ("openvino",))
    runner = api.load(out, "openvino", threads=1)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, 12, 5)).astype(np.float32)
    zeros = np.zeros((2, 2, 16), np.float32)
    whole = runner(features=x, h0=zeros, c0=zeros)
    h, c, parts = zeros, zeros, []
    for chunk in np.split(x, 3, axis=1):
        step = runner(features=chunk, h0=h, c0=c)
        h, c = step["h_n"], step["c_n"]
        parts.append(step["output"])
    np.testing.assert_allclose(np.concatenate(parts, axis=1), whole["output"], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(h, whole["h_n"], rtol=1e-5, atol=1e-6)


def test_each_call_runs_on_its_own_inputs_when_binds_interleave(tmp_path):
    _, out = _compile(tmp_path, MODELS["lstm-features"], ("openvino",))
    runner = api.load(out, "openvino", threads=1)
    rng = np.random.default_rng(1)
    a, b = (rng.standard_normal((2, 3, 5)).astype(np.float32) for _ in range(2))
    call_a, call_b = runner.bind(features=a), runner.bind(features=b)
    out_b, out_a = call_b()["output"], call_a()["output"]
    np.testing.assert_array_equal(out_a, runner(features=a)["output"])
    np.testing.assert_array_equal(out_b, runner(features=b)["output"])
    assert not np.array_equal(out_a, out_b)
    first = call_a()
    first["output"][:] = 0  # the caller owns what it got: the next call is not touched
    assert np.abs(call_a()["output"]).max() > 0


def test_a_precision_it_does_not_have_is_one_user_error(tmp_path, cli):
    with pytest.raises(UserError) as err:
        targets.parse_backends("onnxruntime,openvino:int8")
    assert "'int8'" in str(err.value) and "openvino:bf16" in str(err.value)
    assert len(str(err.value).splitlines()) == 1
    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump(make_spec()))
    with pytest.raises(UserError):
        api.compile(path, "cpu", ["openvino:int8"], tmp_path / "out")
    code, _, stderr = cli("compile", path, "--target", "cpu", "--backends", "openvino:int8", "--out", tmp_path / "cli")
    assert code == 2 and len(stderr.strip().splitlines()) == 1 and "int8" in stderr, stderr
    assert not (tmp_path / "cli").exists()


def test_cuda_is_refused_with_a_reason():
    reason = backend.runnable("cuda")
    assert reason and "CPU plugin" in reason
    assert backend.available("cpu") is None and backend.runnable("cpu") is None


def test_a_spec_in_float16_is_skipped_with_the_reason(tmp_path):
    manifest, _ = _compile(tmp_path, make_spec(dtype="float16"), ("torch", "openvino"))
    record = manifest.backends["openvino"]
    assert record.status == "skipped" and "float32" in record.reason


def test_an_op_openvino_cannot_convert_is_skipped_naming_it(tmp_path):
    from onnx import TensorProto, helper

    node = helper.make_node("NoSuchOp", ["features"], ["output"], domain="example.custom")
    graph = helper.make_graph([node], "g", [helper.make_tensor_value_info("features", TensorProto.FLOAT,
                                                                          ["batch", "seq", 4])],
                              [helper.make_tensor_value_info("output", TensorProto.FLOAT, ["batch", "seq", 4])])
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17),
                                                    helper.make_opsetid("example.custom", 1)])
    model = Model(name="x", inputs=[], outputs=[], onnx=proto, reference64=lambda a: a, shapes=[(1, 1)],
                  source={})
    with pytest.raises(Unsupported) as err:
        backend.build(model, tmp_path, "cpu", {}, "fp32")
    message = str(err.value)
    assert "NoSuchOp" in message and "\n" not in message and "Traceback" not in message, message
