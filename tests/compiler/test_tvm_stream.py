"""The fused kernel's sequence mode (`rnnc.compiler.tvm.generate`, `fused.streams`): a stateful spec
model (`rnn.state`, many_to_many / many_to_one) runs every step of a chunk in one PrimFunc, seq and
batch symbolic, against the float64 reference of the spec model; a stream in chunks equals one call;
through the whole pipeline against ONNX Runtime, and the layered path kept behind an option."""
from __future__ import annotations

import json

import numpy as np
import pytest
import yaml

from rnnc import api
from rnnc.compiler.tvm.spec import Tuning
from rnnc.graphs.from_spec import model_from_spec
from rnnc.graphs.spec import parse_spec
from tests.compiler.test_tvm_generate import CELLS, TOL, _agree, _build

pytestmark = pytest.mark.tvm

HEADS = ["none", "softmax", "sigmoid", "tanh", "relu", "leaky_relu"]
HIDDEN = 20  # not a multiple of 16: the padded units are exercised


def _stream(cell: str, act: str | None, tokens: bool, mode: str, head: str | None, layers: int,
            hidden: int = HIDDEN) -> dict:
    inp = {"type": "tokens", "vocab_size": 11, "embedding_dim": 5} if tokens else {"type": "features", "features": 3}
    rnn = {"cell": cell, "hidden_size": hidden, "num_layers": layers, "state": True,
           **({"nonlinearity": act} if act else {})}
    output = {"mode": mode, **({"dense": {"units": 7, "activation": head}} if head else {})}
    return {"name": "s", "input": inp, "rnn": rnn, "output": output, "seed": 4}


def _check(model, run, batches=(1, 3), seqs=(1, 7)) -> None:
    for batch in batches:
        for seq in seqs:
            arrays = model.random_inputs(batch, seq, np.random.default_rng(10 * batch + seq))
            want, got = model.reference64(arrays), run(arrays)
            assert list(got) == [t.name for t in model.outputs]
            for name, ref in want.items():
                assert got[name].shape == ref.shape, name
                err = np.linalg.norm(got[name] - ref) / np.linalg.norm(ref)
                assert err < TOL, f"{name}, batch {batch}, seq {seq}: normwise error {err:.2e}"


@pytest.mark.parametrize("layers", [1, 2])
@pytest.mark.parametrize("head", [False, True], ids=["nohead", "head"])
@pytest.mark.parametrize("mode", ["many_to_many", "many_to_one"])
@pytest.mark.parametrize("tokens", [True, False], ids=["tokens", "features"])
@pytest.mark.parametrize("cell,act", CELLS, ids=["rnn-tanh", "rnn-relu", "lstm", "gru"])
def test_sequence_mode(cell, act, tokens, mode, head, layers):
    index = CELLS.index((cell, act)) * 4 + tokens * 2 + (mode == "many_to_one") + layers  # every activation
    model, lowered, run = _build(_stream(cell, act, tokens, mode, HEADS[index % len(HEADS)] if head else None, layers))
    assert lowered.layers[-1]["kind"] == "stream"
    _check(model, run)


def test_columns_split_and_unfolded():
    """Each step's column tiles split across the cores (forced at this size), and an embedding
    table gathered and multiplied (not folded)."""
    for data in (_stream("lstm", None, True, "many_to_many", "softmax", 2, hidden=40),
                 _stream("gru", None, False, "many_to_one", "tanh", 2, hidden=40),
                 _stream("rnn", "tanh", False, "many_to_many", None, 1, hidden=40)):
        model, _, run = _build(data, columns_below=3, serial_below=0)
        _check(model, run, batches=(1, 2, 3, 4))
    model, _, run = _build(_stream("lstm", None, True, "many_to_one", "relu", 2), Tuning(4, 4), folded=False)
    _check(model, run, batches=(1, 5, 7))


@pytest.mark.parametrize("data", [
    _stream("lstm", None, True, "many_to_many", "softmax", 2),
    _stream("gru", None, False, "many_to_one", None, 1),
], ids=["lstm2-tokens-m2m", "gru-features-m2o"])
def test_a_stream_in_chunks_is_one_call(data):
    model, _, run = _build(data)
    steps = 130
    arrays = model.random_inputs(2, steps, np.random.default_rng(0))
    x = model.inputs[0].name
    whole = run(arrays)
    for chunk in (1, 7, 64):
        state = {k: arrays[k] for k in model.state}
        outs = []
        for start in range(0, steps, chunk):
            got = run({x: arrays[x][:, start:start + chunk], **state})
            outs.append(got["output"])
            state = {k: got[v] for k, v in model.state.items()}
        output = np.concatenate(outs, axis=1) if data["output"]["mode"] == "many_to_many" else outs[-1]
        pairs = [("output", output, whole["output"])] + [(v, state[k], whole[v]) for k, v in model.state.items()]
        for name, value, ref in pairs:
            err = np.linalg.norm(value - ref) / np.linalg.norm(ref)
            assert err < TOL, f"chunk {chunk}, {name}: normwise error {err:.2e}"


@pytest.mark.parametrize("data", [
    _stream("lstm", None, True, "many_to_many", "softmax", 2),
    _stream("gru", None, False, "many_to_one", "sigmoid", 1),
], ids=["lstm2-tokens-m2m", "gru-features-m2o"])
def test_pipeline_agrees_with_onnxruntime(tmp_path, data):
    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump({**data, "shapes": {"batch_sizes": [1, 3], "seq_lens": [1, 7]}}))
    manifest, out = api.compile(path, "cpu", ["tvm", "onnxruntime"], out=tmp_path / "out")
    assert {k: v.status for k, v in manifest.backends.items()} == {"tvm": "ok", "onnxruntime": "ok"}
    record = json.loads((out / "tvm" / "tvm.json").read_text())
    assert record["generation"] == "fused-stream" and record["layers"][-1]["name"] == "generate"
    tvm_run, ort_run = api.load(out, "tvm"), api.load(out, "onnxruntime")
    assert tvm_run.output_names == ort_run.output_names
    model = model_from_spec(parse_spec(data))
    for batch in (1, 3):
        for seq in (1, 7):
            arrays = model.random_inputs(batch, seq, np.random.default_rng(10 * batch + seq))
            _agree(tvm_run(**arrays), ort_run(**arrays))


def test_layered_option_keeps_the_layer_kernels(tmp_path):
    path = tmp_path / "spec.yaml"
    data = _stream("lstm", None, False, "many_to_many", None, 2)
    path.write_text(yaml.safe_dump({**data, "shapes": {"batch_sizes": [2], "seq_lens": [5]}}))
    runs = {}
    for how, record in (("fused", "fused-stream"), ("layered", "layered")):
        manifest, out = api.compile(path, "cpu", ["tvm"], out=tmp_path / how, options={"generation": how})
        assert manifest.backends["tvm"].status == "ok"
        assert json.loads((out / "tvm" / "tvm.json").read_text())["generation"] == record
        runs[how] = api.load(out, "tvm")
    arrays = model_from_spec(parse_spec(data)).random_inputs(2, 5, np.random.default_rng(0))
    _agree(runs["fused"](**arrays), runs["layered"](**arrays))


def test_default_by_size():
    """Absent an option, the fused chunk kernel where R stays in row tiles (measured to win there),
    the layer kernels for the big layers whose columns they split across the cores."""
    from rnnc.compiler.tvm.fused import stream_by_default, streams

    small, big = (parse_spec(_stream("lstm", None, False, "many_to_many", None, 1, hidden=h)) for h in (128, 512))
    assert streams(small) and streams(big)
    assert stream_by_default(small) and not stream_by_default(big)
    assert stream_by_default(parse_spec(_stream("gru", None, True, "many_to_one", "tanh", 2, hidden=200)))
    assert not streams(parse_spec({**_stream("gru", None, True, "many_to_one", None, 1),
                                   "rnn": {"cell": "gru", "hidden_size": 8}}))
