"""ONNX graphs as third parties write them, through our lowering, against float64 references."""
from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import tvm  # noqa: E402 - a hard dependency of rnnc: never skipped

from rnnc.compiler.tvm.lower import Tuning, lower  # noqa: E402
from rnnc.compiler.tvm.target import configure_threads, cpu_count, host_target  # noqa: E402
from rnnc.errors import Unsupported  # noqa: E402
from rnnc.graphs.reference import float64_reference  # noqa: E402
from tests.compiler.test_tvm_kernels import TOL  # noqa: E402

pytestmark = pytest.mark.tvm

I, H = 5, 12


def _graph(op, attrs, *, layout=0, with_h0=False, extra_inputs=(), outputs=("Y", "Y_h"), seed=0):
    rng = np.random.default_rng(seed)
    G = {"LSTM": 4, "GRU": 3, "RNN": 1}[op]
    D = 2 if attrs.get("direction") == "bidirectional" else 1
    W, R, B = rng.uniform(-.4, .4, (D, G * H, I)), rng.uniform(-.4, .4, (D, G * H, H)), rng.uniform(-.4, .4, (D, 2 * G * H))
    inits = [numpy_helper.from_array(a.astype(np.float32), n) for a, n in ((W, "W"), (R, "R"), (B, "B"))]
    xdims = ["B", "T", I] if layout else ["T", "B", I]
    inputs = [helper.make_tensor_value_info("X", TensorProto.FLOAT, xdims)]
    node_in = ["X", "W", "R", "B", "", ""]
    if with_h0:
        inputs.append(helper.make_tensor_value_info("h0", TensorProto.FLOAT, ["B", D, H] if layout else [D, "B", H]))
        node_in[5] = "h0"
    node_in += list(extra_inputs)
    node = helper.make_node(op, node_in, list(outputs), hidden_size=H, layout=layout, **attrs)
    outs = [helper.make_tensor_value_info(o, TensorProto.FLOAT, None) for o in outputs if o]
    graph = helper.make_graph([node], "g", inputs, outs, inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    return model


SMALL = Tuning(batch_tile=2, gemm_rows=4)  # the graph logic under test, not the tiles: build fast


@pytest.fixture(autouse=True, scope="module")
def _threads():
    configure_threads(cpu_count())


def _run(model, feeds):
    lowered = lower(model, tuning=SMALL)
    vm = tvm.relax.VirtualMachine(tvm.compile(lowered.module, tvm.target.Target(host_target())), tvm.cpu())
    args = [tvm.runtime.tensor(np.ascontiguousarray(feeds[i["name"]], dtype=i["dtype"])) for i in lowered.inputs]
    out = vm["main"](*args)
    return [out.numpy()] if len(lowered.outputs) == 1 else [o.numpy() for o in out]


def _check(model, feeds):
    """Every graph output of the lowered model against `rnnc.graphs.reference` evaluating the graph in float64."""
    want = float64_reference(model)(feeds)
    got = _run(model, feeds)
    assert len(got) == len(model.graph.output)
    for value, g in zip(model.graph.output, got):
        _close(g, want[value.name])
    return got


def _close(got, want):
    assert got.shape == want.shape, (got.shape, want.shape)
    assert np.abs(got - want).max() / np.abs(want).max() <= TOL


def test_layout1_bidirectional_lstm_with_initial_state():
    model = _graph("LSTM", {"direction": "bidirectional"}, layout=1, with_h0=True, outputs=("Y", "Y_h", "Y_c"))
    rng = np.random.default_rng(5)
    X, h0 = rng.standard_normal((3, 4, I)), rng.standard_normal((3, 2, H))  # [B, T, I], [B, D, H]
    _check(model, {"X": X, "h0": h0})


def test_reverse_gru_with_clip_and_only_y_h():
    model = _graph("GRU", {"direction": "reverse", "linear_before_reset": 1, "clip": 0.5}, outputs=("", "Y_h"))
    X = np.random.default_rng(6).standard_normal((6, 2, I)) * 3
    _check(model, {"X": X})


def test_rnn_with_relu_activations():
    model = _graph("RNN", {"direction": "bidirectional", "activations": ["Relu", "Relu"]}, outputs=("Y",))
    X = np.random.default_rng(7).standard_normal((4, 3, I))
    _check(model, {"X": X})


@pytest.mark.parametrize("op,attrs,extra,words", [
    ("LSTM", {"input_forget": 1}, (), "input_forget"),
    ("LSTM", {"activations": ["HardSigmoid", "Tanh", "Tanh"]}, (), "activations"),
    ("RNN", {"activations": ["Tanh"], "activation_alpha": [1.0]}, (), "activation_alpha"),
])
def test_unsupported_attributes_are_named(op, attrs, extra, words):
    model = _graph(op, attrs, extra_inputs=extra)
    with pytest.raises(Unsupported, match=words):
        lower(model)


def test_sequence_lens_as_a_graph_input():
    model = _graph("LSTM", {"direction": "bidirectional"}, outputs=("Y", "Y_h"))
    model.graph.node[0].input[4] = "lens"
    model.graph.input.append(helper.make_tensor_value_info("lens", TensorProto.INT32, ["B"]))
    X, lens = np.random.default_rng(13).standard_normal((5, 3, I)), np.array([5, 2, 0], np.int32)
    _check(model, {"X": X, "lens": lens})
    with pytest.raises(Unsupported, match="sequence_lens on cuda"):
        lower(model, "cuda")


def test_unknown_operator_is_named():
    """An op TVM's frontend lacks (DFT), also inside an If branch, is named with its node."""
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 8, 1])
    c = helper.make_tensor_value_info("c", TensorProto.BOOL, [])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, None)
    branch = helper.make_graph([helper.make_node("DFT", ["x"], ["z"], name="spectrum")], "b", [],
                               [helper.make_tensor_value_info("z", TensorProto.FLOAT, None)])
    other = helper.make_graph([helper.make_node("Identity", ["x"], ["w"])], "o", [],
                              [helper.make_tensor_value_info("w", TensorProto.FLOAT, None)])
    node = helper.make_node("If", ["c"], ["y"], then_branch=branch, else_branch=other)
    model = helper.make_model(helper.make_graph([node], "g", [x, c], [y]),
                              opset_imports=[helper.make_opsetid("", 17)])
    with pytest.raises(Unsupported, match="DFT .*'spectrum'"):
        lower(model)


def test_ordinary_ops_around_the_cell():
    """Slice, Concat, Squeeze, Gemm and Softmax go through Relax; checked against numpy."""
    rng = np.random.default_rng(2)
    w, c = rng.standard_normal((6, 3)).astype(np.float32), rng.standard_normal(3).astype(np.float32)
    nodes = [
        helper.make_node("Slice", ["x", "s0", "s1", "ax"], ["a"]),
        helper.make_node("Concat", ["a", "a"], ["b"], axis=1),
        helper.make_node("Unsqueeze", ["b", "ax"], ["b1"]),
        helper.make_node("Squeeze", ["b1", "ax"], ["b2"]),
        helper.make_node("Gemm", ["b2", "w", "c"], ["g"], alpha=0.5),
        helper.make_node("Softmax", ["g"], ["y"], axis=-1),
    ]
    inits = [numpy_helper.from_array(v, n) for v, n in (
        (np.array([1], np.int64), "s0"), (np.array([4], np.int64), "s1"), (np.array([1], np.int64), "ax"), (w, "w"), (c, "c"))]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 5])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 3])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx.checker.check_model(model)
    x = rng.standard_normal((4, 5))
    a = x[:, 1:4]
    z = 0.5 * (np.concatenate([a, a], 1) @ w) + c
    want = np.exp(z - z.max(1, keepdims=True))
    _close(_run(model, {"x": x})[0], want / want.sum(1, keepdims=True))


def test_torch_style_squeeze_and_constant_nodes():
    """torch.onnx writes Y[:, 0] as Squeeze(axes=[1]) and small tensors as Constant nodes."""
    model = _graph("GRU", {"linear_before_reset": 1}, outputs=("Y",))
    g = model.graph
    h0 = np.random.default_rng(8).standard_normal((1, 1, H)).astype(np.float32)
    g.node.insert(0, helper.make_node("Constant", [], ["axes"], value=numpy_helper.from_array(np.array([1], np.int64))))
    g.node.insert(0, helper.make_node("Constant", [], ["h0c"], value=numpy_helper.from_array(h0)))
    g.node[2].input[5] = "h0c"
    g.node[2].output[0] = "Y4"
    g.node.append(helper.make_node("Squeeze", ["Y4", "axes"], ["Y"]))
    X = np.random.default_rng(9).standard_normal((5, 1, I))
    lowered = lower(model, tuning=SMALL)
    _check(model, {"X": X})
    assert lowered.layers[0]["y_layout"] == "tbdh"  # the Squeeze went into the kernel's store


def test_lstm_peepholes_from_an_initializer():
    model = _graph("LSTM", {"direction": "reverse"}, extra_inputs=("", "P"), outputs=("Y", "Y_h", "Y_c"))
    P = np.random.default_rng(10).uniform(-1, 1, (1, 3 * H))
    model.graph.initializer.append(numpy_helper.from_array(P.astype(np.float32), "P"))
    X = np.random.default_rng(11).standard_normal((4, 2, I))
    _check(model, {"X": X})


def test_gru_default_linear_before_reset_0():
    """ONNX's default GRU applies r before the recurrent product: two phases per step."""
    model = _graph("GRU", {"direction": "bidirectional"}, outputs=("Y", "Y_h"))
    X = np.random.default_rng(12).standard_normal((5, 3, I))
    _check(model, {"X": X})


def test_cuda_lowering_calls_the_cuda_kernels():
    """The target kind picks the layer kernels; the call passes the CUDA signature's arguments."""
    model = _graph("LSTM", {"direction": "bidirectional"}, extra_inputs=("", "P"), outputs=("Y", "Y_h", "Y_c"))
    P = np.random.default_rng(14).uniform(-1, 1, (2, 3 * H))
    model.graph.initializer.append(numpy_helper.from_array(P.astype(np.float32), "P"))
    lowered = lower(model, "cuda", SMALL)
    func = lowered.module["layer0_lstm"]
    assert func.attrs["tirx.is_scheduled"]
    assert [v.name for v in func.params] == ["X", "W", "R", "Bias", "P", "Y", "Yh", "Yc"]
    with pytest.raises(ValueError, match="target kind"):
        lower(model, "vulkan")
