"""`rnnc summary` of imported models: a layer per recurrent node and per weighted node around it,
each initializer counted once, the total every float initializer of the graph (subgraphs too)."""
from __future__ import annotations

import io
import warnings
from pathlib import Path

import numpy as np
import onnx
import torch
from onnx import TensorProto, helper, numpy_helper

from rnnc.graphs.from_torchscript import model_from_torchscript
from rnnc.graphs.model import Model
from rnnc.graphs.summary import render, summarize


class ConvBiLSTM(torch.nn.Module):
    """Token ids -> embedding -> Conv1d (-> BatchNorm) -> ReLU -> bidirectional LSTM -> Linear."""

    def __init__(self, norm: bool = False) -> None:
        super().__init__()
        self.embedding = torch.nn.Embedding(30, 8)
        self.conv = torch.nn.Conv1d(8, 16, 3, padding=1)
        self.norm = torch.nn.BatchNorm1d(16) if norm else torch.nn.Identity()
        self.rnn = torch.nn.LSTM(16, 12, batch_first=True, bidirectional=True)
        self.head = torch.nn.Linear(24, 5)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.norm(self.conv(self.embedding(tokens).transpose(1, 2))))
        return self.head(self.rnn(x.transpose(1, 2))[0])


def exported(module: torch.nn.Module, **options) -> Model:
    buffer = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(module.eval(), (torch.randint(0, 30, (2, 7)),), buffer, dynamo=False, opset_version=17,
                          input_names=["tokens"], output_names=["output"],
                          dynamic_axes={"tokens": {0: "batch", 1: "seq"}}, **options)
    proto = onnx.load_model_from_string(buffer.getvalue())
    return Model(name="m", inputs=[], outputs=[], onnx=proto, reference64=None, shapes=[], source={})


def float_initializers(graph: onnx.GraphProto) -> int:
    total = sum(int(np.prod(t.dims)) for t in graph.initializer if t.data_type == TensorProto.FLOAT)
    for node in graph.node:
        for attr in node.attribute:
            total += sum(float_initializers(g) for g in [*attr.graphs, *([attr.g] if attr.HasField("g") else [])])
    return total


def test_conv_bilstm_total_is_the_parameter_count() -> None:
    torch.manual_seed(0)
    module = ConvBiLSTM()
    model = exported(module)
    rows = summarize(model)
    assert sum(r.params for r in rows) == sum(p.numel() for p in module.parameters()) == 3_645
    by_kind = {r.kind: r for r in rows}
    lstm = by_kind["Bidirectional LSTM(12)"]
    assert lstm.params == 2 * 4 * 12 * (16 + 12 + 2) and "batch" in lstm.output_shape
    assert by_kind["Embedding(30, 8)"].params == 240
    assert by_kind["Embedding(30, 8)"].output_shape == "(batch, seq, 8)"
    assert by_kind["Conv1d(16, kernel 3)"].params == 16 * 8 * 3 + 16
    assert by_kind["Dense(5)"].params == 24 * 5 + 5  # MatMul and the Add of its bias: one layer
    assert by_kind["Dense(5)"].output_shape == "(batch, ?, 5)"  # the Conv's length is no name inference keeps
    assert "Bidirectional LSTM(12)" in render(model, rows)


def test_batchnorm_running_statistics_count_as_parameters() -> None:
    """Exported unfused (training=PRESERVE of an eval module), BatchNorm reads its scale, bias, running
    mean and running variance: all four count, as Keras counts moving statistics (non-trainable
    params). The total is then torch's parameters plus the float buffers. (torch's eval export
    folds BatchNorm into the Conv instead: the graph then holds no BatchNorm and 2C fewer values.)"""
    torch.manual_seed(0)
    module = ConvBiLSTM(norm=True)
    with torch.no_grad():  # distinct values, so that the exporter shares no initializer between them
        for t in (module.norm.weight, module.norm.bias, module.norm.running_mean):
            t.normal_()
        module.norm.running_var.uniform_(0.5, 2.0)
    model = exported(module, training=torch.onnx.TrainingMode.PRESERVE)
    rows = summarize(model)
    buffers = sum(b.numel() for b in module.buffers() if b.is_floating_point())
    assert buffers == 32
    assert sum(r.params for r in rows) == sum(p.numel() for p in module.parameters()) + buffers
    assert sum(r.params for r in rows) == float_initializers(model.onnx.graph)
    assert [r.params for r in rows if r.kind == "BatchNorm(16)"] == [4 * 16]


def test_layers_inside_if_branches() -> None:
    """An If whose branches hold dense layers, one reading its own initializer, one an initializer of
    the outer graph that the outer LSTM does not read; a weight shared by both counts once."""
    rng = np.random.default_rng(0)

    def const(name: str, *shape: int) -> onnx.TensorProto:
        return numpy_helper.from_array(rng.standard_normal(shape).astype(np.float32), name)

    def branch(name: str, weight: str, inits: list[onnx.TensorProto]) -> onnx.GraphProto:
        nodes = [helper.make_node("MatMul", ["h", weight], [f"{name}_mm"], name="proj"),
                 helper.make_node("Add", [f"{name}_mm", "shared_bias"], [f"{name}_out"], name="bias")]
        out = helper.make_tensor_value_info(f"{name}_out", TensorProto.FLOAT, None)
        return helper.make_graph(nodes, name, [], [out], initializer=inits)

    outer = [const("W", 1, 16, 3), const("R", 1, 16, 4), const("else_w", 4, 6), const("shared_bias", 6)]
    nodes = [
        helper.make_node("LSTM", ["x", "W", "R"], ["y", "h3"], name="lstm", hidden_size=4),
        helper.make_node("Squeeze", ["h3"], ["h"], name="squeeze"),
        helper.make_node("If", ["flag"], ["out"], name="choose",
                         then_branch=branch("then", "then_w", [const("then_w", 4, 6)]),
                         else_branch=branch("else", "else_w", [])),
    ]
    graph = helper.make_graph(
        nodes, "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["seq", "batch", 3]),
         helper.make_tensor_value_info("flag", TensorProto.BOOL, [])],
        [helper.make_tensor_value_info("out", TensorProto.FLOAT, None)], initializer=outer)
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model = Model(name="if", inputs=[], outputs=[], onnx=proto, reference64=None, shapes=[], source={})
    rows = summarize(model)
    assert [(r.name, r.kind, r.params) for r in rows] == [
        ("lstm", "LSTM(4)", 16 * 3 + 16 * 4),
        ("then/proj", "Dense(6)", 4 * 6 + 6),  # the shared bias counted here, with the first reader
        ("else/proj", "Dense(6)", 4 * 6),
    ]
    assert sum(r.params for r in rows) == float_initializers(proto.graph)


def test_torchscript_import(tmp_path: Path) -> None:
    """Through the TorchScript importer: the graph that every backend gets, every weight counted."""
    torch.manual_seed(0)
    module = ConvBiLSTM().eval()
    module.conv = torch.nn.Identity()  # Conv aside, so that any ONNX importer takes the graph
    module.rnn = torch.nn.LSTM(8, 12, batch_first=True, bidirectional=True)
    path = tmp_path / "m.pt"
    torch.jit.save(torch.jit.script(module), str(path))
    model = model_from_torchscript(path, {"tokens": (2, 7)})
    rows = summarize(model)
    assert sum(r.params for r in rows) == sum(p.numel() for p in module.parameters())
    assert any(r.kind == "Bidirectional LSTM(12)" for r in rows)


def test_torchscript_without_onnx(tmp_path: Path) -> None:
    """No ONNX graph (forward keeps state): one row per submodule that holds weights."""
    class Carries(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.rnn = torch.nn.GRU(3, 4, batch_first=True, bidirectional=True)
            self.head = torch.nn.Linear(8, 2)
            self.register_buffer("h", torch.zeros(2, 2, 4))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            y, self.h = self.rnn(x, self.h)
            return self.head(y)

    module = Carries().eval()
    path = tmp_path / "c.pt"
    torch.jit.save(torch.jit.script(module), str(path))
    model = model_from_torchscript(path, {"x": (2, 5, 3)})
    assert model.onnx is None
    rows = summarize(model)
    assert [(r.name, r.kind) for r in rows] == [("(forward)", "Carries"), ("rnn", "Bidirectional GRU(4)"),
                                               ("head", "Dense(2)")]
    assert sum(r.params for r in rows) == sum(p.numel() for p in module.parameters()) + 16  # + self.h
