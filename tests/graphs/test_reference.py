"""rnnc's float64 recurrent reference: every attribute against ONNX Runtime, ragged batches against
each sequence run alone, a hand-computed cell, and a loud refusal of what it does not implement.

`recurrent_model` builds single-node graphs with onnx.helper (no rnnc exporter involved); the
other graph tests import it.
"""
from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper
from onnx.reference import ReferenceEvaluator

from rnnc.graphs import reference

GATES = {"LSTM": 4, "GRU": 3, "RNN": 1}
N_ACT = {"LSTM": 3, "GRU": 2, "RNN": 1}
TOL = 1e-5  # normwise, float32 ONNX Runtime against float64


def recurrent_model(op: str, *, seq: int = 5, batch: int = 3, size: int = 4, hidden: int = 3, layout: int = 0,
                    lengths: list[int] | None = None, initial: bool = False, peepholes: bool = False,
                    symbolic: bool = False, seed: int = 0, opset: int = 14, **attrs):
    """A graph of one `op` node (W, R, B, P initializers; X, sequence_lens, initial_h/c inputs) and
    inputs for it. `symbolic` names the batch and sequence dims instead of fixing them."""
    rng = np.random.default_rng(seed)
    d = 2 if attrs.get("direction") == "bidirectional" else 1
    g, scale = GATES[op], 1.0 / np.sqrt(hidden)
    weights = {"W": (d, g * hidden, size), "R": (d, g * hidden, hidden), "B": (d, 2 * g * hidden)}
    if peepholes:
        weights["P"] = (d, 3 * hidden)
    inits = [numpy_helper.from_array((scale * rng.standard_normal(s)).astype(np.float32), n)
             for n, s in weights.items()]
    S, B = ("seq", "batch") if symbolic else (seq, batch)
    x_dims = [S, B, size] if layout == 0 else [B, S, size]
    h_dims = [d, B, hidden] if layout == 0 else [B, d, hidden]
    x_shape = [seq, batch, size] if layout == 0 else [batch, seq, size]
    h_shape = [d, batch, hidden] if layout == 0 else [batch, d, hidden]
    ins = [helper.make_tensor_value_info("X", TensorProto.FLOAT, x_dims)]
    feeds = {"X": rng.standard_normal(x_shape).astype(np.float32)}
    names = ["X", "W", "R", "B", "", "", "", "P" if peepholes else ""]
    if lengths is not None:
        ins.append(helper.make_tensor_value_info("sequence_lens", TensorProto.INT32, [B]))
        feeds["sequence_lens"] = np.array(lengths, dtype=np.int32)
        names[4] = "sequence_lens"
    if initial:
        for k, name in ((5, "initial_h"), (6, "initial_c"))[: 2 if op == "LSTM" else 1]:
            ins.append(helper.make_tensor_value_info(name, TensorProto.FLOAT, h_dims))
            feeds[name] = rng.standard_normal(h_shape).astype(np.float32)
            names[k] = name
    while not names[-1]:
        names.pop()
    outs = ["Y", "Y_h"] + (["Y_c"] if op == "LSTM" else [])
    node = helper.make_node(op, names, outs, name=f"{op.lower()}0", hidden_size=hidden, **attrs,
                            **({"layout": layout} if layout else {}))
    y_dims = [S, d, B, hidden] if layout == 0 else [B, S, d, hidden]
    outputs = [helper.make_tensor_value_info("Y", TensorProto.FLOAT, y_dims)] + [
        helper.make_tensor_value_info(n, TensorProto.FLOAT, h_dims) for n in outs[1:]]
    graph = helper.make_graph([node], f"{op.lower()}_case", ins, outputs, inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)], ir_version=8)
    onnx.checker.check_model(model, full_check=True)
    return model, feeds


def run_reference(model: onnx.ModelProto, feeds: dict) -> list[np.ndarray]:
    """Our recurrent operators inside onnx.reference, on float64 weights and inputs."""
    feeds = {k: v.astype(np.float64) if v.dtype == np.float32 else v for k, v in feeds.items()}
    return ReferenceEvaluator(reference.to_float64(model), new_ops=reference.NEW_OPS).run(None, feeds)


def run_ort(model: onnx.ModelProto, feeds: dict) -> list[np.ndarray]:
    options = ort.SessionOptions()
    options.log_severity_level = 3
    session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    return session.run(None, feeds)


def assert_close(got: list[np.ndarray], want: list[np.ndarray], tol: float = TOL) -> None:
    for k, (a, b) in enumerate(zip(got, want)):
        assert a.shape == b.shape, f"output {k}: shape {a.shape} != {b.shape}"
        err = float(np.max(np.abs(a - b))) / max(float(np.max(np.abs(b))), 1e-30)
        assert err <= tol, f"output {k}: normwise error {err:.3g} > {tol:g}"


def _acts(op: str, first: str) -> list[str]:
    return [first] + ["Tanh"] * (N_ACT[op] - 1)


# ONNX Runtime takes every one of these as the operator pages define them (Affine, ThresholdedRelu
# and ScaledTanh with their values spelled out: ORT's defaults for them differ, see test_from_onnx).
CASES = [
    ("forward", {}),
    ("reverse", dict(direction="reverse")),
    ("bidirectional", dict(direction="bidirectional")),
    ("ragged-initial", dict(direction="bidirectional", lengths=[5, 2, 1], initial=True)),
    ("ragged-reverse", dict(direction="reverse", lengths=[3, 5, 1], initial=True)),
    ("clip", dict(clip=0.4, direction="bidirectional")),
    ("no-bias-defaults", dict(seed=3)),
] + [
    (f"act-{a}", dict(activations=a, activation_alpha=[0.7], activation_beta=[0.3]))
    for a in ("Affine", "ScaledTanh", "HardSigmoid")
] + [
    (f"act-{a}", dict(activations=a)) for a in ("Relu", "Tanh", "Sigmoid", "LeakyRelu", "HardSigmoid", "Elu",
                                                 "Softsign", "Softplus")
] + [
    ("act-ThresholdedRelu", dict(activations="ThresholdedRelu", activation_alpha=[0.2])),
]


@pytest.mark.parametrize("op", sorted(GATES))
@pytest.mark.parametrize("name, kw", CASES, ids=[c[0] for c in CASES])
def test_matches_onnxruntime(op: str, name: str, kw: dict) -> None:
    kw = dict(kw)
    if "activations" in kw:
        kw["activations"] = _acts(op, kw["activations"])
    model, feeds = recurrent_model(op, **kw)
    assert_close(run_ort(model, feeds), run_reference(model, feeds))


@pytest.mark.parametrize("kw", [
    dict(peepholes=True, initial=True),
    dict(peepholes=True, input_forget=1),
    dict(peepholes=True, input_forget=1, clip=0.5, direction="bidirectional", lengths=[2, 5, 4]),
    dict(activations=["HardSigmoid", "LeakyRelu", "Affine", "Relu", "Elu", "ScaledTanh"],
         activation_alpha=[0.3, 0.2, 0.9, 0.5, 0.6], activation_beta=[0.4, 0.1, 0.7], direction="bidirectional"),
], ids=["peepholes", "input-forget", "everything", "alpha-beta-order"])
def test_lstm_attributes_match_onnxruntime(kw: dict) -> None:
    model, feeds = recurrent_model("LSTM", **kw)
    assert_close(run_ort(model, feeds), run_reference(model, feeds))


@pytest.mark.parametrize("lbr", [0, 1])
def test_gru_linear_before_reset_matches_onnxruntime(lbr: int) -> None:
    model, feeds = recurrent_model("GRU", linear_before_reset=lbr, direction="bidirectional", lengths=[1, 5, 3])
    assert_close(run_ort(model, feeds), run_reference(model, feeds))
    other, _ = recurrent_model("GRU", linear_before_reset=1 - lbr, direction="bidirectional", lengths=[1, 5, 3])
    assert not np.allclose(run_reference(other, feeds)[0], run_reference(model, feeds)[0])


@pytest.mark.parametrize("op", sorted(GATES))
def test_layout_1_is_layout_0_transposed(op: str) -> None:
    kw = dict(direction="bidirectional", lengths=[4, 1, 5], initial=True)
    batch_major, feeds = recurrent_model(op, layout=1, **kw)
    time_major, _ = recurrent_model(op, layout=0, **kw)
    tm = {k: (v.transpose(1, 0, 2) if v.ndim == 3 else v) for k, v in feeds.items()}
    got, want = run_reference(batch_major, feeds), run_reference(time_major, tm)
    np.testing.assert_allclose(got[0], want[0].transpose(2, 0, 1, 3), rtol=0, atol=1e-12)
    for g, w in zip(got[1:], want[1:]):
        np.testing.assert_allclose(g, w.transpose(1, 0, 2), rtol=0, atol=1e-12)


@pytest.mark.parametrize("op", sorted(GATES))
@pytest.mark.parametrize("direction", ["forward", "reverse", "bidirectional"])
def test_ragged_batch_equals_each_sequence_alone(op: str, direction: str) -> None:
    """Y past a sequence's length is zero, Y_h / Y_c the state at its last step; the reverse
    direction starts at that last step. Checked on our reference and on ONNX Runtime."""
    lengths = [5, 2, 4, 1]
    model, feeds = recurrent_model(op, batch=4, lengths=lengths, initial=True, direction=direction, seed=7)
    for run in (run_reference, run_ort):
        whole = run(model, feeds)
        for b, n in enumerate(lengths):
            alone, alone_feeds = recurrent_model(op, seq=n, batch=1, lengths=[n], initial=True,
                                                 direction=direction, seed=7)
            alone_feeds = {"X": feeds["X"][:n, b:b + 1], "sequence_lens": np.array([n], np.int32),
                           **{k: v[:, b:b + 1] for k, v in feeds.items() if k.startswith("initial")}}
            part = run(alone, alone_feeds)
            np.testing.assert_allclose(whole[0][:n, :, b], part[0][:, :, 0], rtol=1e-5, atol=1e-6)
            assert not np.any(whole[0][n:, :, b]), "outputs past the sequence's length must be zero"
            for w, p in zip(whole[1:], part[1:]):
                np.testing.assert_allclose(w[:, b], p[:, 0], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("op", sorted(GATES))
def test_zero_length(op: str) -> None:
    """An empty sequence gives zeros, as in ONNX Runtime; with an initial state its final state is
    not defined by the operator pages, and the reference refuses rather than guess."""
    model, feeds = recurrent_model(op, lengths=[0, 5, 2], direction="bidirectional")
    ours = run_reference(model, feeds)
    assert not np.any(ours[0][:, :, 0]) and not np.any(ours[1][:, 0])
    assert_close(run_ort(model, feeds), ours)
    model, feeds = recurrent_model(op, lengths=[0, 5, 2], initial=True)
    with pytest.raises(NotImplementedError, match="sequence_lens 0 with initial_h"):
        run_reference(model, feeds)


def test_hand_computed_cells() -> None:
    """One unit, one input, weights chosen so each step can be followed on paper."""
    x = np.array([[[1.0]], [[-2.0]], [[0.5]]])  # [S=3, B=1, I=1]
    attrs = reference.parse_attributes(helper.make_node("RNN", ["X", "W", "R", "B"], ["Y"], activations=["Relu"]))
    y, y_h = reference.recurrent(attrs, x, [[[2.0]]], [[[0.5]]], [[0.1, 0.2]])
    # H1 = relu(2*1 + 0.3) = 2.3; H2 = relu(-4 + 1.15 + 0.3) = 0; H3 = relu(1 + 0 + 0.3) = 1.3
    np.testing.assert_allclose(y[:, 0, 0, 0], [2.3, 0.0, 1.3], atol=1e-12)
    assert y_h[0, 0, 0] == pytest.approx(1.3)

    attrs = reference.parse_attributes(helper.make_node("LSTM", ["X", "W", "R"], ["Y"], clip=0.5, input_forget=1))
    y, y_h, y_c = reference.recurrent(attrs, x[:1], np.ones((1, 4, 1)), np.zeros((1, 4, 1)))
    s = 1 / (1 + np.exp(-0.5))  # every gate's pre-activation 1.0 is clipped to 0.5
    c = (1 - s) * 0 + s * np.tanh(0.5)
    assert y_c[0, 0, 0] == pytest.approx(c)
    assert y_h[0, 0, 0] == pytest.approx(s * np.tanh(c))  # h(C) itself is not clipped


def test_replaces_onnx_reference_operators_that_ignore_attributes() -> None:
    """onnx.reference's own LSTM ignores clip and sequence_lens; ours does not, and agrees with ORT."""
    model, feeds = recurrent_model("LSTM", clip=0.2, lengths=[5, 1, 3])
    theirs = ReferenceEvaluator(model).run(None, feeds)
    ours = run_reference(model, feeds)
    assert not np.allclose(theirs[0], ours[0], atol=1e-3)
    assert_close(run_ort(model, feeds), ours)


@pytest.mark.parametrize("node, message", [
    (helper.make_node("LSTM", ["X", "W", "R"], ["Y"], output_sequence=1), "output_sequence"),
    (helper.make_node("GRU", ["X", "W", "R"], ["Y"], activations=["Sigmoid", "Gelu"]), "'Gelu'"),
    (helper.make_node("RNN", ["X", "W", "R"], ["Y"], direction="sideways"), "sideways"),
    (helper.make_node("RNN", ["X", "W", "R"], ["Y"], layout=2), "layout=2"),
    (helper.make_node("LSTM", ["X", "W", "R"], ["Y"], direction="bidirectional",
                      activations=["Sigmoid", "Tanh", "Tanh"]), "takes 6 activations"),
    (helper.make_node("RNN", ["X", "W", "R"], ["Y"], activations=["ScaledTanh"]), "needs activation_alpha"),
    (helper.make_node("GRU", ["X", "W", "R"], ["Y"], activations=["Relu", "LeakyRelu"],
                      activation_alpha=[0.5, 0.2]), "ambiguous"),
    (helper.make_node("LSTM", ["X", "W", "R"], ["Y"], clip=-1.0), "clip"),
    (helper.make_node("Scan", ["X"], ["Y"]), "no recurrent reference"),
])
def test_refuses_what_it_does_not_implement(node: onnx.NodeProto, message: str) -> None:
    with pytest.raises(NotImplementedError, match=message):
        reference.parse_attributes(node)


def test_alpha_beta_read_in_order_of_use() -> None:
    node = helper.make_node("LSTM", ["X", "W", "R"], ["Y"], activations=["HardSigmoid", "Relu", "LeakyRelu"],
                            activation_alpha=[0.3, 0.2], activation_beta=[0.4])
    explicit = reference.parse_attributes(node).explicit
    assert [e[0] for e in explicit] == ["HardSigmoid", "Relu", "LeakyRelu"]
    np.testing.assert_allclose([e[1:] for e in explicit], [(0.3, 0.4), (0.0, 0.0), (0.2, 0.0)], rtol=1e-6)
    node = helper.make_node("RNN", ["X", "W", "R"], ["Y"], activations=["ThresholdedRelu"])
    assert reference.parse_attributes(node).explicit == (("ThresholdedRelu", 1.0, 0.0),)  # ONNX's default


def test_shape_mismatch_raises() -> None:
    attrs = reference.parse_attributes(helper.make_node("GRU", ["X", "W", "R"], ["Y"], hidden_size=4))
    with pytest.raises(ValueError, match="hidden_size=4"):
        reference.recurrent(attrs, np.zeros((2, 1, 3)), np.zeros((1, 9, 3)), np.zeros((1, 9, 3)))


# -- Loop: cond absent means true, scan outputs stacked on a new axis 0 ----------------------------

def _loop_model(body_shape: list, with_cond: bool = False) -> onnx.ModelProto:
    """h <- tanh(h @ W + u) for M iterations (no cond input unless `with_cond`), h and a scan
    output of h * 2, each [B, H] per iteration; the body declares them with `body_shape`."""
    rng = np.random.default_rng(7)
    w = rng.uniform(-.7, .7, (4, 4)).astype(np.float32)
    f, i64, b = TensorProto.FLOAT, TensorProto.INT64, TensorProto.BOOL
    body = helper.make_graph(
        [helper.make_node("MatMul", ["h", "W"], ["hw"]), helper.make_node("Add", ["hw", "u"], ["pre"]),
         helper.make_node("Tanh", ["pre"], ["h2"]), helper.make_node("Add", ["h2", "h2"], ["row"]),
         helper.make_node("Identity", ["c_in"], ["c_out"])],
        "body", [helper.make_tensor_value_info("it", i64, []), helper.make_tensor_value_info("c_in", b, []),
                 helper.make_tensor_value_info("h", f, body_shape)],
        [helper.make_tensor_value_info("c_out", b, []), helper.make_tensor_value_info("h2", f, body_shape),
         helper.make_tensor_value_info("row", f, body_shape)])
    loop = helper.make_node("Loop", ["M", "go" if with_cond else "", "h0"], ["h_final", "rows"], name="tanh",
                            body=body)
    inputs = [helper.make_tensor_value_info("M", i64, []), helper.make_tensor_value_info("h0", f, ["B", 4]),
              helper.make_tensor_value_info("u", f, ["B", 4])]
    if with_cond:
        inputs.append(helper.make_tensor_value_info("go", b, []))
    graph = helper.make_graph([loop], "loop", inputs, [helper.make_tensor_value_info("h_final", f, ["B", 4]),
                                                      helper.make_tensor_value_info("rows", f, ["N", "B", 4])],
                              [numpy_helper.from_array(w, "W")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    onnx.checker.check_model(model, full_check=True)
    return model


def _loop_numpy(model: onnx.ModelProto, feeds: dict) -> list[np.ndarray]:
    w = numpy_helper.to_array(model.graph.initializer[0]).astype(np.float64)
    h, rows = feeds["h0"].astype(np.float64), []
    for _ in range(int(feeds["M"]) if feeds.get("go", True) else 0):
        h = np.tanh(h @ w + feeds["u"].astype(np.float64))
        rows.append(2 * h)
    return [h, np.array(rows).reshape(len(rows), *h.shape)]


@pytest.mark.parametrize("trips", [4, 1])
def test_loop_without_cond_runs_and_stacks_rows_on_a_new_axis(trips: int) -> None:
    """No cond input is true (onnx.reference's own Loop runs no iteration), and a [B, H] row per
    iteration stacks to [n, B, H] (its np.vstack gives [n * B, H])."""
    model = _loop_model(["B", 4])
    rng = np.random.default_rng(8)
    feeds = {"M": np.array(trips, np.int64), "h0": rng.standard_normal((3, 4)).astype(np.float32),
             "u": rng.standard_normal((3, 4)).astype(np.float32)}
    got = reference.float64_reference(model)(feeds)
    want = _loop_numpy(model, feeds)
    assert got["rows"].shape == (trips, 3, 4) and got["rows"].dtype == np.float64
    np.testing.assert_allclose(got["h_final"], want[0], rtol=1e-12)
    np.testing.assert_allclose(got["rows"], want[1], rtol=1e-12)
    assert_close([got["h_final"], got["rows"]], run_ort(model, feeds))
    with pytest.raises(ValueError):  # what this replaces: no iteration, then np.vstack of no rows
        ReferenceEvaluator(model).run(None, feeds)
    theirs = ReferenceEvaluator(_loop_model(["B", 4], with_cond=True)).run(None, {**feeds, "go": np.array(True)})
    assert theirs[1].shape == (trips * 3, 4)


def test_loop_of_zero_iterations_has_rows_of_the_declared_shape() -> None:
    """Zero iterations: [0, *row] where the body fixes the row's dims, a clear refusal where not."""
    rng = np.random.default_rng(9)
    feeds = {"M": np.array(0, np.int64), "h0": rng.standard_normal((3, 4)).astype(np.float32),
             "u": rng.standard_normal((3, 4)).astype(np.float32)}
    got = reference.float64_reference(_loop_model([3, 4]))(feeds)
    assert got["rows"].shape == (0, 3, 4) and got["rows"].dtype == np.float64
    np.testing.assert_array_equal(got["h_final"], feeds["h0"])
    stopped = reference.float64_reference(_loop_model([3, 4], with_cond=True))(
        {**feeds, "M": np.array(5, np.int64), "go": np.array(False)})
    assert stopped["rows"].shape == (0, 3, 4)
    with pytest.raises(NotImplementedError, match="zero iterations.*'row'"):
        reference.float64_reference(_loop_model(["B", 4]))(feeds)


def test_generate_loop_matches_onnxruntime_with_our_lstm_in_the_body(tmp_path, monkeypatch) -> None:
    """The corpus' scripted greedy decoder: an LSTM in the Loop body, tokens and logits collected in
    loop-carried sequences (SequenceInsert, ConcatFromSequence after the loop)."""
    from tests.corpus import build

    case = build("generate_loop", tmp_path)
    model = onnx.load(case.path)
    calls: list[str] = []
    ours = reference.recurrent

    def counted(attrs, *args, **kwargs):
        calls.append(attrs.cell.op)
        return ours(attrs, *args, **kwargs)

    monkeypatch.setattr(reference, "recurrent", counted)
    run = reference.float64_reference(model)
    rng = np.random.default_rng(10)
    total = 0
    for steps, batch in ((6, 2), (1, 3), (7, 1)):
        feeds = {"start_token": rng.integers(0, 12, batch), "steps": np.array(steps, np.int64),
                 "h0": rng.standard_normal((1, batch, 16)).astype(np.float32),
                 "c0": rng.standard_normal((1, batch, 16)).astype(np.float32)}
        got = run(feeds)
        want = run_ort(model, feeds)
        assert got["logits"].dtype == np.float64 and got["logits"].shape == (batch, steps, 12)
        np.testing.assert_array_equal(got["generated"], want[0])
        np.testing.assert_allclose(got["logits"], want[1], rtol=1e-5, atol=1e-5)
        total += steps
    assert calls == ["LSTM"] * total  # the body's LSTM ran ours, once per step


def test_scan_with_input_and_output_axes_and_directions_matches_onnxruntime() -> None:
    """onnx.reference's own Scan refuses non-default axes and directions; ours takes them all."""
    import onnxruntime as ort
    from onnx import TensorProto, helper

    from rnnc.graphs.reference import float64_reference

    body = helper.make_graph(
        [helper.make_node("Add", ["s", "x_t"], ["s_next"]), helper.make_node("Mul", ["s_next", "x_t"], ["y_t"])],
        "body", [helper.make_tensor_value_info("s", TensorProto.FLOAT, [2, 3]),
                 helper.make_tensor_value_info("x_t", TensorProto.FLOAT, [2, 3])],
        [helper.make_tensor_value_info("s_next", TensorProto.FLOAT, [2, 3]),
         helper.make_tensor_value_info("y_t", TensorProto.FLOAT, [2, 3])])
    node = helper.make_node("Scan", ["s0", "x"], ["s_last", "y"], body=body, num_scan_inputs=1,
                            scan_input_axes=[1], scan_input_directions=[1], scan_output_axes=[-1],
                            scan_output_directions=[1])
    graph = helper.make_graph([node], "g", [helper.make_tensor_value_info("s0", TensorProto.FLOAT, [2, 3]),
                                            helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 5, 3])],
                              [helper.make_tensor_value_info("s_last", TensorProto.FLOAT, [2, 3]),
                               helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 3, 5])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    rng = np.random.default_rng(3)
    feeds = {"s0": rng.standard_normal((2, 3)).astype(np.float32), "x": rng.standard_normal((2, 5, 3)).astype(np.float32)}
    want = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, feeds)
    got = float64_reference(model)(feeds)
    np.testing.assert_allclose(got["s_last"], want[0], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(got["y"], want[1], rtol=1e-5, atol=1e-6)
