"""Bring your own ONNX: files built with onnx.helper and with torch.onnx from plain nn modules (not
rnnc's exporter), run by ONNX Runtime (and TVM when its backend builds) against the float64
reference; bad files, unsupported operators and missing shapes refused in one line each."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper

from rnnc.errors import UserError
from rnnc.graphs.from_onnx import model_from_onnx, parse_shapes
from tests.graphs.test_reference import assert_close, recurrent_model, run_ort



def save(model: onnx.ModelProto, tmp_path: Path, name: str = "m.onnx") -> Path:
    path = tmp_path / name
    onnx.save(model, path)
    return path


def check_ort(model, rng_seed: int = 0) -> None:
    """model.onnx in ONNX Runtime against the float64 reference, on the model's own random inputs."""
    rng = np.random.default_rng(rng_seed)
    for batch, seq in model.shapes:
        feeds = model.random_inputs(batch, seq, rng)
        want = model.reference64(feeds)
        assert_close(run_ort(model.onnx, feeds), [want[n] for n in model.output_names])


# -- --shapes ------------------------------------------------------------------------------------

def test_parse_shapes() -> None:
    assert parse_shapes("tokens:1x64") == {"tokens": (1, 64)}
    assert parse_shapes("a:2X3x4, b:7") == {"a": (2, 3, 4), "b": (7,)}
    assert parse_shapes("ns:x:1x2") == {"ns:x": (1, 2)}


@pytest.mark.parametrize("text", ["tokens", "tokens:", "tokens:1xa", "tokens:0x4", ":1x2", "a:1,a:2", ""])
def test_parse_shapes_refuses_bad_text(text: str) -> None:
    with pytest.raises(UserError) as err:
        parse_shapes(text)
    assert len(err.value.problems) == 1 and "--shapes" in err.value.problems[0]


# -- every attribute, through model_from_onnx, in ONNX Runtime -------------------------------------

ATTRIBUTE_CASES = [
    ("LSTM", dict(layout=1, direction="bidirectional", initial=True, peepholes=True, lengths=[5, 5, 5])),
    ("GRU", dict(layout=1, direction="reverse", linear_before_reset=1)),
    ("RNN", dict(layout=1, activations=["Relu"], initial=True)),
    ("LSTM", dict(lengths=[5, 5, 5], peepholes=True, clip=0.5, input_forget=1, direction="bidirectional")),
    ("GRU", dict(lengths=[5, 5, 5], initial=True, direction="bidirectional", linear_before_reset=0)),
    ("RNN", dict(lengths=[5, 5, 5], direction="reverse", clip=1.0)),
    # ONNX Runtime's defaults for these differ from the operators' (0 instead of 1): rnnc spells them out
    ("RNN", dict(activations=["ThresholdedRelu"])),
    ("GRU", dict(activations=["Affine", "Tanh"])),
    ("LSTM", dict(activations=["Sigmoid", "ScaledTanh", "Elu"], activation_alpha=[0.8], activation_beta=[1.3],
                  layout=1)),
]


@pytest.mark.parametrize("op, kw", ATTRIBUTE_CASES, ids=[f"{c[0]}-{i}" for i, c in enumerate(ATTRIBUTE_CASES)])
def test_hand_built_graphs_run_in_onnxruntime(op: str, kw: dict, tmp_path: Path) -> None:
    proto, _ = recurrent_model(op, symbolic=True, **kw)
    shapes = {"X": (3, 5, 4) if kw.get("layout") else (5, 3, 4)}
    model = model_from_onnx(save(proto, tmp_path), shapes)
    assert all(n.op_type != "Transpose" or kw.get("layout") for n in model.onnx.graph.node)
    assert not any(a.name == "layout" and a.i for n in model.onnx.graph.node for a in n.attribute)
    assert model.input_names[0] == "X" and set(model.inputs[0].dims[:2]) == {"batch", "seq"}
    check_ort(model)


@pytest.mark.parametrize("op", ["LSTM", "GRU", "RNN"])
def test_hidden_size_may_be_left_out(op: str, tmp_path: Path) -> None:
    """Optional in ONNX (it is R's last dim), required by ONNX Runtime: rnnc writes it."""
    proto, _ = recurrent_model(op, symbolic=True, layout=1)
    node = proto.graph.node[0]
    kept = [a for a in node.attribute if a.name != "hidden_size"]
    del node.attribute[:]
    node.attribute.extend(kept)
    check_ort(model_from_onnx(save(proto, tmp_path), {"X": (2, 3, 4)}))


def test_ragged_batches_equal_each_sequence_alone(tmp_path: Path) -> None:
    proto, _ = recurrent_model("GRU", symbolic=True, lengths=[1], direction="bidirectional", linear_before_reset=1)
    model = model_from_onnx(save(proto, tmp_path), {"X": (6, 4, 4)})
    assert model.inputs[1].name == "sequence_lens" and model.inputs[1].dims == ("batch",)
    feeds = model.random_inputs(4, 6, np.random.default_rng(1))
    lengths = feeds["sequence_lens"]
    assert lengths.min() >= 1 and lengths.max() <= 6 and len(set(lengths.tolist())) > 1
    whole_ort, whole_ref = run_ort(model.onnx, feeds), model.reference64(feeds)
    for b, n in enumerate(lengths):
        alone = {"X": feeds["X"][:n, b:b + 1], "sequence_lens": lengths[b:b + 1]}
        part_ort, part_ref = run_ort(model.onnx, alone), model.reference64(alone)
        refs = [whole_ref["Y"], whole_ref["Y_h"]], [part_ref["Y"], part_ref["Y_h"]]
        for whole, part in ((whole_ort, part_ort), refs):
            np.testing.assert_allclose(whole[0][:n, :, b], part[0][:, :, 0], rtol=1e-5, atol=1e-6)
            assert not np.any(whole[0][n:, :, b])
            np.testing.assert_allclose(whole[1][:, b], part[1][:, 0], rtol=1e-5, atol=1e-6)


def test_static_model_needs_no_shapes(tmp_path: Path) -> None:
    proto, _ = recurrent_model("LSTM", seq=4, batch=2, layout=1)
    model = model_from_onnx(save(proto, tmp_path), None)
    assert model.shapes == [(2, 4)] and model.inputs[0].dims == (2, 4, 4)
    check_ort(model)


# -- torch.onnx from plain nn modules --------------------------------------------------------------

class Net(torch.nn.Module):
    def __init__(self, cell: str, tokens: bool, batch_first: bool, bidirectional: bool, layers: int, **kw) -> None:
        super().__init__()
        self.tokens, self.batch_first = tokens, batch_first
        self.embedding = torch.nn.Embedding(30, 6) if tokens else None
        rnn = {"lstm": torch.nn.LSTM, "gru": torch.nn.GRU, "rnn": torch.nn.RNN}[cell]
        self.rnn = rnn(6, 5, num_layers=layers, batch_first=batch_first, bidirectional=bidirectional, **kw)
        self.head = torch.nn.Linear(5 * (2 if bidirectional else 1), 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.embedding is not None:
            x = self.embedding(x)
        y = self.rnn(x)[0]
        return torch.tanh(self.head(y))


def torch_onnx(net: torch.nn.Module, path: Path, tokens: bool, batch_first: bool) -> None:
    batch, seq = (0, 1) if batch_first else (1, 0)
    shape = [0, 0] if tokens else [0, 0, 6]
    shape[batch], shape[seq] = 2, 3
    x = torch.randint(0, 30, shape) if tokens else torch.randn(shape)
    name = "tokens" if tokens else "features"
    axes = {name: {batch: "B", seq: "T"}, "output": {batch: "B", seq: "T"}}
    torch.onnx.export(net.eval(), (x,), str(path), dynamo=False, input_names=[name], output_names=["output"],
                      dynamic_axes=axes, opset_version=17)


TORCH_CASES = [
    ("lstm", True, True, True, 2, {}),
    ("gru", False, False, True, 1, {}),
    ("rnn", False, True, False, 2, {"nonlinearity": "relu"}),
    ("lstm", False, False, False, 1, {"bias": False}),
    ("gru", True, True, False, 1, {}),
]


@pytest.mark.parametrize("cell, tokens, batch_first, bidirectional, layers, kw", TORCH_CASES)
def test_torch_onnx_exports(cell, tokens, batch_first, bidirectional, layers, kw, tmp_path: Path) -> None:
    torch.manual_seed(0)
    net = Net(cell, tokens, batch_first, bidirectional, layers, **kw)
    path = tmp_path / "net.onnx"
    torch_onnx(net, path, tokens, batch_first)
    name = "tokens" if tokens else "features"
    shape = (4, 7) if batch_first else (7, 4)
    model = model_from_onnx(path, {name: shape + (() if tokens else (6,))})
    assert model.shapes == [(4, 7)]
    assert model.inputs[0].dims[:2] == (("batch", "seq") if batch_first else ("seq", "batch"))
    assert model.inputs[0].high == (30 if tokens else None)
    assert {n.op_type for n in model.onnx.graph.node} >= {cell.upper()}
    check_ort(model)
    # the reference against an independent oracle: the module itself in float64
    feeds = model.random_inputs(3, 5, np.random.default_rng(2))
    x = torch.from_numpy(feeds[name])
    with torch.inference_mode():
        want = net.double()(x if tokens else x.double()).numpy()
    np.testing.assert_allclose(model.reference64(feeds)["output"], want, rtol=1e-10, atol=1e-12)


# -- refusals ------------------------------------------------------------------------------------

def _one_line(err: pytest.ExceptionInfo) -> str:
    assert len(err.value.problems) == 1, err.value.problems
    assert "\n" not in err.value.problems[0]
    return err.value.problems[0]


def test_not_onnx_truncated_and_empty_files(tmp_path: Path) -> None:
    proto, _ = recurrent_model("LSTM")
    data = proto.SerializeToString()
    (tmp_path / "text.onnx").write_text("name: my-model\nrnn: {cell: lstm}\n")
    (tmp_path / "cut.onnx").write_bytes(data[: len(data) // 2])
    (tmp_path / "cut2.onnx").write_bytes(data[: len(data) - 7])
    (tmp_path / "empty.onnx").write_bytes(b"")
    for name in ("text.onnx", "cut.onnx", "cut2.onnx", "empty.onnx"):
        with pytest.raises(UserError) as err:
            model_from_onnx(tmp_path / name, None)
        assert _one_line(err).startswith(str(tmp_path / name))


def test_unsupported_operators_listed_with_their_nodes(tmp_path: Path) -> None:
    """Only what no float64 reference runs is refused at import: each op type one line, its nodes
    named (a custom domain's op, an op no reference implements)."""
    proto, _ = recurrent_model("LSTM", seq=3, batch=2)
    g = proto.graph
    g.node.extend([
        helper.make_node("FusedGemm", ["Y_h"], ["f1"], name="first_fused", domain="com.microsoft"),
        helper.make_node("FusedGemm", ["Y_h"], ["f2"], name="second_fused", domain="com.microsoft"),
    ])
    proto.opset_import.append(helper.make_opsetid("com.microsoft", 1))
    for name in ("f1", "f2"):
        g.output.append(helper.make_tensor_value_info(name, TensorProto.FLOAT, [1, 2, 4]))
    onnx.save(proto, tmp_path / "m.onnx")
    with pytest.raises(UserError) as err:
        model_from_onnx(tmp_path / "m.onnx", None)
    assert len(err.value.problems) == 1
    assert "com.microsoft.FusedGemm (nodes 'first_fused', 'second_fused')" in err.value.problems[0]
    assert "no float64 reference" in err.value.problems[0]


def test_each_backend_decides_what_it_takes(tmp_path: Path, cli) -> None:
    """An op ORT runs and TVM's frontend lacks (DFT): the import takes it, ORT runs and verifies it,
    TVM is skipped naming the op and its node; exit 0 (something ran)."""
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 8, 1])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 8, 2])
    graph = helper.make_graph([helper.make_node("DFT", ["x"], ["y"], name="spectrum")], "g", [x], [y])
    path = save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), tmp_path)
    code, out, err = cli("compile", path, "--target", "cpu", "--backends", "onnxruntime,tvm",
                         "--out", tmp_path / "out")
    assert code == 0, (out, err)
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert manifest["backends"]["onnxruntime"]["status"] == "ok"
    tvm = manifest["backends"]["tvm"]
    assert tvm["status"] == "skipped" and "DFT" in tvm["reason"] and "'spectrum'" in tvm["reason"]


def test_missing_shape_asked_for_by_name(tmp_path: Path, cli) -> None:
    proto, _ = recurrent_model("RNN", symbolic=True)
    path = save(proto, tmp_path)
    with pytest.raises(UserError) as err:
        model_from_onnx(path, None)
    assert _one_line(err) == "input 'X' has a symbolic dim ([seq, batch, 4]); give --shapes X:16x1x4"
    code, out, err = cli("compile", path, "--target", "cpu", "--out", tmp_path / "out")
    assert code == 2 and "give --shapes X:" in err and len(err.strip().splitlines()) == 1


@pytest.mark.parametrize("shapes, message", [
    ({"tokens": (1, 2)}, "no input named 'tokens'"),
    ({"X": (5, 3)}, "2 sizes for an input of rank 3"),
    ({"X": (5, 3, 9)}, "axis 2 is 4 in the model, not 9"),
])
def test_bad_shapes(shapes: dict, message: str, tmp_path: Path) -> None:
    proto, _ = recurrent_model("GRU", symbolic=True)
    with pytest.raises(UserError) as err:
        model_from_onnx(save(proto, tmp_path), shapes)
    assert message in _one_line(err)


def test_weights_computed_at_run_time_are_the_backends_decision(tmp_path: Path) -> None:
    """W as a graph input: the reference and ORT take it; TVM, which packs weights at build time,
    says so in its build."""
    proto, _ = recurrent_model("RNN")
    w = next(t for t in proto.graph.initializer if t.name == "W")
    proto.graph.input.append(helper.make_tensor_value_info("W", TensorProto.FLOAT, list(w.dims)))
    proto.graph.initializer.remove(w)
    model = model_from_onnx(save(proto, tmp_path), None)
    assert "W" in model.input_names
    check_ort(model)
    from rnnc.compiler.tvm.lower import lower
    from rnnc.errors import Unsupported

    with pytest.raises(Unsupported, match="W is computed at run time"):
        lower(model.onnx)


def test_refuses_attributes_the_reference_does_not_implement(tmp_path: Path) -> None:
    proto, _ = recurrent_model("LSTM", direction="bidirectional", activations=["Sigmoid", "Tanh", "Tanh"])
    with pytest.raises(UserError) as err:
        model_from_onnx(save(proto, tmp_path), None)
    assert "LSTM node 'lstm0'" in _one_line(err) and "6 activations" in _one_line(err)


def test_opset_6_is_upgraded(tmp_path: Path) -> None:
    proto, feeds = recurrent_model("GRU", opset=14)
    proto.opset_import[0].version = 6
    proto.graph.node[0].attribute.append(helper.make_attribute("output_sequence", 1))
    proto.ir_version = 3
    for t in proto.graph.initializer:  # IR 3: initializers are graph inputs too
        proto.graph.input.append(helper.make_tensor_value_info(t.name, TensorProto.FLOAT, list(t.dims)))
    model = model_from_onnx(save(proto, tmp_path), None)
    assert model.onnx.opset_import[0].version == 7
    check_ort(model)


# -- the pipeline: compile, verify from the copied source, run -------------------------------------

def test_compile_verify_and_run_a_hand_built_file(tmp_path: Path, cli) -> None:
    proto, _ = recurrent_model("LSTM", symbolic=True, layout=1, direction="bidirectional", peepholes=True)
    path = save(proto, tmp_path, "hand-built.onnx")
    out = tmp_path / "out"
    code, stdout, err = cli("compile", path, "--target", "cpu", "--backends", "onnxruntime", "--shapes",
                            "X:2x3x4", "--out", out)
    assert code == 0, err
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["source"] == {"kind": "onnx", "file": "source.onnx", "name": "hand-built", "shapes": {"X": [2, 3, 4]}}
    assert manifest["backends"]["onnxruntime"]["status"] == "ok"
    onnx.checker.check_model(onnx.load(out / "model.onnx"), full_check=True)
    code, stdout, err = cli("verify", out, "--target", "cpu")
    assert code == 0, err
    x = np.random.default_rng(0).standard_normal((5, 2, 4)).astype(np.float32)  # any batch and length
    np.savez(tmp_path / "in.npz", X=x)
    code, stdout, err = cli("run", out, "--backend", "onnxruntime", "--inputs", tmp_path / "in.npz",
                            "--out", tmp_path / "o.npz")
    assert code == 0, err
    got = np.load(tmp_path / "o.npz")
    want = model_from_onnx(path, {"X": (2, 3, 4)}).reference64({"X": x})
    for name in ("Y", "Y_h", "Y_c"):
        assert_close([got[name]], [want[name]])


@pytest.mark.parametrize("case", ["torch-lstm", "layout1-lstm-attributes", "gru-reverse-initial"])
def test_tvm_backend_against_the_reference(case: str, tmp_path: Path) -> None:
    from rnnc import pipeline

    if case == "torch-lstm":
        torch.manual_seed(0)
        torch_onnx(Net("lstm", True, True, True, 1), tmp_path / "m.onnx", True, True)
        model = model_from_onnx(tmp_path / "m.onnx", {"tokens": (2, 5)})
    elif case == "layout1-lstm-attributes":
        proto, _ = recurrent_model("LSTM", symbolic=True, layout=1, clip=0.7, initial=True,
                                   activations=["Sigmoid", "Relu", "Tanh"])
        model = model_from_onnx(save(proto, tmp_path), {"X": (2, 3, 4)})
    else:
        proto, _ = recurrent_model("GRU", symbolic=True, direction="reverse", initial=True, linear_before_reset=1)
        model = model_from_onnx(save(proto, tmp_path), {"X": (3, 2, 4)})
    manifest = pipeline.compile_model(model, "cpu", ["tvm"], tmp_path / "out")
    record = manifest.backends["tvm"]
    assert record.status == "ok", record.reason  # tvm takes every one of these; a skip is a regression


def test_bench_and_gate_accept_a_compiled_hand_built_file(tmp_path: Path, cli) -> None:
    proto, _ = recurrent_model("GRU", symbolic=True, layout=1, lengths=[1], linear_before_reset=1)
    path = save(proto, tmp_path, "ragged.onnx")
    code, _, err = cli("compile", path, "--target", "cpu", "--backends", "onnxruntime", "--shapes", "X:2x3x4",
                       "--out", tmp_path / "dir")
    assert code == 0, err
    code, _, err = cli("bench", tmp_path / "dir", "--target", "cpu", "--seq-lens", "2", "--batch-sizes", "1",
                       "--backends", "onnxruntime", "--out", tmp_path / "bench")
    assert code == 0, err
    rows = json.loads((tmp_path / "bench" / "report.json").read_text())["rows"]
    assert [(r["backend"], r["batch_size"], r["seq_len"]) for r in rows] == [("onnxruntime", 1, 2)]
    assert rows[0]["median_ms"] > 0
    report = tmp_path / "bench" / "report.json"
    code, _, err = cli("gate", report, "--baseline", report)
    assert code == 0, err
