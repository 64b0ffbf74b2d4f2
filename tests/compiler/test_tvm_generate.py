"""The fused generation (`rnnc.compiler.tvm.generate`, `fused`): every step of one_to_many or of an
encoder-decoder's decoder in one PrimFunc, against the float64 reference of the spec model, with
no Loop left in the library, and through the whole pipeline against ONNX Runtime."""
from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
import yaml

import tvm
from tvm import relax

from rnnc import api
from rnnc.compiler.tvm import fused
from rnnc.compiler.tvm.spec import Tuning
from rnnc.compiler.tvm.target import configure_threads, cpu_count, host_target
from rnnc.graphs.from_spec import model_from_spec
from rnnc.graphs.spec import parse_spec

pytestmark = pytest.mark.tvm

SMALL = Tuning(batch_tile=2, gemm_rows=4)  # few row-tile variants: quick builds
TOL = 1e-5  # normwise, float32 against float64
SEQ = 4
CELLS = [("rnn", "tanh"), ("rnn", "relu"), ("lstm", None), ("gru", None)]
# the head of a features generator, by cell: every activation the feedback goes through
FEATURE_HEADS = {"rnn": "tanh", "lstm": "sigmoid", "gru": "softmax"}


@pytest.fixture(autouse=True, scope="module")
def _threads():
    configure_threads(cpu_count())


def _rnn(cell: str, act: str | None, hidden: int, **more) -> dict:
    return {"cell": cell, "hidden_size": hidden, **({"nonlinearity": act} if act else {}), **more}


def _one_to_many(cell: str, act: str | None, tokens: bool, state: bool, layers: int) -> dict:
    head = "softmax" if tokens else ("leaky_relu" if act == "relu" else FEATURE_HEADS[cell])
    units = 11 if tokens else 3
    inp = {"type": "tokens", "vocab_size": units, "embedding_dim": 5} if tokens else {"type": "features", "features": 3}
    return {"name": "g", "input": inp, "rnn": _rnn(cell, act, 20, num_layers=layers, state=state),
            "output": {"mode": "one_to_many", "steps": 6, "dense": {"units": units, "activation": head}},
            "seed": 3}


def _translator(enc: dict, dec: dict) -> dict:
    return {"name": "t", "input": {"type": "tokens", "vocab_size": 13, "embedding_dim": 4}, "rnn": enc,
            "output": {"mode": "encoder_decoder"}, "seed": 5,
            "decoder": {"vocab_size": 9, "embedding_dim": 3, "max_steps": 7, "start_token": 2, **dec}}


def _build(data: dict, tuning: Tuning = SMALL, **override):
    """The model, its fused module (GenSpec fields overridden) and a runner of that module's `main`."""
    model = model_from_spec(parse_spec(data))
    if override:
        original = fused.gen_spec
        with pytest.MonkeyPatch.context() as mp:
            mp.setattr(fused, "gen_spec", lambda spec, t: dataclasses.replace(original(spec, t), **override))
            lowered = fused.fused_module(model, tuning)
    else:
        lowered = fused.fused_module(model, tuning)
    vm = relax.VirtualMachine(tvm.compile(lowered.module, tvm.target.Target(host_target())), tvm.cpu())

    def run(arrays: dict) -> dict:
        out = vm["main"](*[tvm.runtime.tensor(np.ascontiguousarray(arrays[t.name])) for t in model.inputs])
        out = [out] if len(lowered.outputs) == 1 else list(out)
        return {n: o.numpy() for n, o in zip(lowered.outputs, out)}

    return model, lowered, run


def _check(model, run, batches=(1, 3)) -> None:
    assert [t.name for t in model.outputs]
    for batch in batches:
        arrays = model.random_inputs(batch, SEQ, np.random.default_rng(batch))
        want, got = model.reference64(arrays), run(arrays)
        assert list(got) == [t.name for t in model.outputs]
        for name, ref in want.items():
            assert got[name].shape == ref.shape, name
            if name == "generated":
                np.testing.assert_array_equal(got[name], ref, err_msg=f"batch {batch}")
            else:
                err = np.linalg.norm(got[name] - ref) / np.linalg.norm(ref)
                assert err < TOL, f"{name}, batch {batch}: normwise error {err:.2e}"


@pytest.mark.parametrize("layers", [1, 2])
@pytest.mark.parametrize("state", [False, True], ids=["stateless", "state"])
@pytest.mark.parametrize("tokens", [True, False], ids=["tokens", "features"])
@pytest.mark.parametrize("cell,act", CELLS, ids=["rnn-tanh", "rnn-relu", "lstm", "gru"])
def test_one_to_many(cell, act, tokens, state, layers):
    model, _, run = _build(_one_to_many(cell, act, tokens, state, layers))
    _check(model, run)


@pytest.mark.parametrize("enc,dec", [
    (_rnn("lstm", None, 10), _rnn("lstm", None, 10)),
    (_rnn("gru", None, 10), _rnn("lstm", None, 10, num_layers=2)),  # an LSTM decoder from c = 0
    (_rnn("lstm", None, 5, num_layers=2, bidirectional=True), _rnn("lstm", None, 10, num_layers=2)),
    (_rnn("lstm", None, 10), _rnn("rnn", "tanh", 10)),
    (_rnn("rnn", "relu", 10, bidirectional=True), _rnn("gru", None, 20)),
], ids=["lstm-lstm", "gru-lstm2", "bilstm2-lstm2", "lstm-rnn", "birnn-gru"])
def test_encoder_decoder(enc, dec):
    model, _, run = _build(_translator(enc, dec))
    _check(model, run)


@pytest.mark.parametrize("head", ["none", "relu"])
def test_features_heads(head):
    data = _one_to_many("lstm", None, False, True, 1)
    data["output"]["dense"]["activation"] = head
    model, _, run = _build(data)
    _check(model, run)


def test_unfolded_embedding_and_wide_tiles():
    """A table too big to fold (layer 0 then gathers the embedding and multiplies), and row tiles
    wider than the batch's remainders: 7 rows as items of 3, 2, 1 ... with tile 4."""
    model, _, run = _build(_one_to_many("lstm", None, True, True, 2), Tuning(4, 4), folded=False)
    _check(model, run, batches=(1, 5, 7))


def test_columns_split_across_cores():
    """Small batches with each step's column tiles split across the cores and a barrier per layer
    (forced at this size: a barrier does not pay below SERIAL_BELOW); a layer of one column tile
    keeps to row tiles."""
    for data in (_one_to_many("gru", None, True, True, 2), _one_to_many("lstm", None, False, False, 1),
                 _translator(_rnn("lstm", None, 10, bidirectional=True), _rnn("lstm", None, 20, num_layers=2)),
                 _translator(_rnn("gru", None, 10), _rnn("lstm", None, 10))):  # one column tile: rows
        model, _, run = _build(data, columns_below=3, serial_below=0)
        _check(model, run, batches=(1, 2, 3, 4))


def _calls(func) -> list:
    found = []
    relax.analysis.post_order_visit(func.body, lambda e: found.append(e) if isinstance(e, relax.Call) else None)
    return found


def test_no_loop_left():
    """One call of the generation PrimFunc in `main`, and no Relax function that calls itself (the
    ONNX Loop's lowering is recursive)."""
    for data in (_one_to_many("lstm", None, True, True, 1), _translator(_rnn("gru", None, 10), _rnn("lstm", None, 10))):
        _, lowered, _ = _build(data)
        mod = lowered.module
        relax_funcs = {gv.name_hint: f for gv, f in mod.functions_items() if isinstance(f, relax.Function)}
        assert set(relax_funcs) <= {"main", "encode"}
        for name, func in relax_funcs.items():
            callees = [c.op.name_hint for c in _calls(func) if isinstance(c.op, relax.GlobalVar)]
            assert name not in callees
        tir_calls = [c for c in _calls(relax_funcs["main"]) if c.op.same_as(tvm.ir.Op.get("relax.call_tir"))]
        assert [c.args[0].name_hint for c in tir_calls] == ["generate"]
        assert lowered.layers[-1]["name"] == "generate"


@pytest.mark.parametrize("data", [
    _one_to_many("lstm", None, True, True, 2),
    _translator(_rnn("lstm", None, 5, num_layers=2, bidirectional=True), _rnn("gru", None, 10)),
], ids=["one_to_many", "encoder_decoder"])
def test_pipeline_agrees_with_onnxruntime(tmp_path, data):
    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump({**data, "shapes": {"batch_sizes": [1, 3], "seq_lens": [SEQ]}}))
    manifest, out = api.compile(path, "cpu", ["tvm", "onnxruntime"], out=tmp_path / "out")
    assert {k: v.status for k, v in manifest.backends.items()} == {"tvm": "ok", "onnxruntime": "ok"}
    record = json.loads((out / "tvm" / "tvm.json").read_text())
    assert record["generation"] == "fused" and record["layers"][-1]["name"] == "generate"
    tvm_run, ort_run = api.load(out, "tvm"), api.load(out, "onnxruntime")
    assert tvm_run.output_names == ort_run.output_names
    model = model_from_spec(parse_spec(data))
    for batch in (1, 3):
        arrays = model.random_inputs(batch, SEQ, np.random.default_rng(10 + batch))
        _agree(tvm_run(**arrays), ort_run(**arrays))


def test_loop_option_keeps_the_loop(tmp_path):
    """`generation: loop` builds the ONNX Loop as before (as on CUDA): the same outputs."""
    path = tmp_path / "spec.yaml"
    data = _one_to_many("gru", None, True, True, 1)
    path.write_text(yaml.safe_dump({**data, "shapes": {"batch_sizes": [2], "seq_lens": [SEQ]}}))
    runs = {}
    for how in ("fused", "loop"):
        manifest, out = api.compile(path, "cpu", ["tvm"], out=tmp_path / how, options={"generation": how})
        assert manifest.backends["tvm"].status == "ok"
        assert json.loads((out / "tvm" / "tvm.json").read_text())["generation"] == how
        runs[how] = api.load(out, "tvm")
    arrays = model_from_spec(parse_spec(data)).random_inputs(2, SEQ, np.random.default_rng(0))
    _agree(runs["fused"](**arrays), runs["loop"](**arrays))


def _agree(got: dict, want: dict) -> None:
    assert list(got) == list(want)
    for name in want:
        if name == "generated":
            np.testing.assert_array_equal(got[name], want[name])
        else:
            np.testing.assert_allclose(got[name], want[name], rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("units,head", [(90, "softmax"), (83, "tanh")])
def test_a_head_wider_than_one_panel(units, head):
    """A vocabulary of several 16-wide blocks: the head's 4-block panels and the narrower rest
    (`gemm.column_parts`), the padded block's logits never the argmax."""
    inp = {"type": "tokens", "vocab_size": units, "embedding_dim": 5} if head == "softmax" else \
        {"type": "features", "features": units}
    data = {"name": "g", "input": inp, "rnn": _rnn("lstm", None, 20),
            "output": {"mode": "one_to_many", "steps": 6, "dense": {"units": units, "activation": head}}, "seed": 3}
    model, _, run = _build(data)
    _check(model, run)
