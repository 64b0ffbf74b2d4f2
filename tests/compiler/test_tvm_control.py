"""Loop and Scan lowered by rnnc (TVM's ONNX frontend has neither): against ONNX Runtime, float64
references, and the promise that the loop runs in the compiled VM and a recurrent node in the body
runs our layer kernel."""
from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto as TP
from onnx import helper, numpy_helper

import tvm
from tvm import relax

from rnnc.compiler.tvm.control import FANOUT, LEVELS
from rnnc.compiler.tvm.lower import Tuning, lower
from rnnc.compiler.tvm.sequences import sequences_to_scan_outputs
from rnnc.compiler.tvm.target import configure_threads, cpu_count, cuda_build_reason, cuda_target, host_target
from rnnc.errors import Unsupported
from rnnc.graphs.reference import float64_reference

pytestmark = pytest.mark.tvm

SMALL = Tuning(batch_tile=2, gemm_rows=4)
RTOL = ATOL = 1e-5


@pytest.fixture(autouse=True, scope="module")
def _threads():
    configure_threads(cpu_count())


def _model(nodes, inputs, outputs, inits=()):
    graph = helper.make_graph(nodes, "g", inputs, outputs, list(inits))
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)


def _vi(name, dtype=TP.FLOAT, shape=None):
    return helper.make_tensor_value_info(name, dtype, shape)


def _init(name, array):
    return numpy_helper.from_array(np.asarray(array), name)


def _build(model):
    """Our lowering, built for the host: `feeds -> outputs` running it in the Relax VM, and the module."""
    lowered = lower(model, tuning=SMALL)
    vm = relax.VirtualMachine(tvm.compile(lowered.module, tvm.target.Target(host_target())), tvm.cpu())

    def run(feeds):
        args = [tvm.runtime.tensor(np.array(feeds[i["name"]], dtype=i["dtype"], order="C")) for i in lowered.inputs]
        out = vm["main"](*args)
        got = [out.numpy()] if len(lowered.outputs) == 1 else [o.numpy() for o in out]
        return dict(zip(lowered.outputs, got))

    return run, lowered.module


def _run(model, feeds):
    run, module = _build(model)
    return run(feeds), module


def _ort(model, feeds):
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    names = [o.name for o in model.graph.output]
    return dict(zip(names, session.run(names, feeds)))


def _close(got, want, names=None):
    for name in names or want:
        assert got[name].shape == want[name].shape, (name, got[name].shape, want[name].shape)
        np.testing.assert_allclose(got[name], want[name], rtol=RTOL, atol=ATOL, err_msg=name)


def _functions(module):
    return {gv.name_hint: module[gv] for gv in module.get_global_vars()}


def _nodes(func, kind):
    found = []
    relax.analysis.post_order_visit(func.body, lambda e: found.append(e) if isinstance(e, kind) else None)
    return found


def _runs_in_vm(module):
    """No extern function (a Python callback is one) anywhere, and a loop function calling itself."""
    funcs = {k: f for k, f in _functions(module).items() if isinstance(f, relax.Function)}
    for name, func in funcs.items():
        assert not _nodes(func, relax.ExternFunc), (name, _nodes(func, relax.ExternFunc))
    recursive = [k for k, f in funcs.items()
                 if any(isinstance(c.op, tvm.ir.GlobalVar) and c.op.name_hint == k for c in _nodes(f, relax.Call))]
    assert recursive, sorted(funcs)


def _kernel_in_body(module, cell):
    """A layer PrimFunc of `cell` (ours), called (call_tir) from a function other than main."""
    funcs = _functions(module)
    kernels = {k for k, f in funcs.items() if isinstance(f, tvm.tirx.PrimFunc) and k.startswith("layer")
               and k.endswith(f"_{cell}")}
    assert kernels, sorted(funcs)
    callers = {k for k, f in funcs.items() if isinstance(f, relax.Function)
               for c in _nodes(f, relax.Call)
               if isinstance(c.op, tvm.ir.Op) and c.op.name == "relax.call_tir" and c.args[0].name_hint in kernels}
    assert callers and "main" not in callers, callers


# -- (1) a Loop with a trip count, a carried state, an outer weight and a scan output ---------------

B, H = 3, 8


def _tanh_loop(cond: bool, body_cond: bool | None = None):
    """h <- tanh(h @ W + u), u a graph input (an outer Var passed into the body), W an outer
    initializer (our dense kernel); scans h; the batch is symbolic. With `body_cond` (default:
    `cond`), the body's cond_out is `it < stop`, with `cond` the Loop also has a cond input."""
    body_cond = cond if body_cond is None else body_cond
    rng = np.random.default_rng(1)
    w = rng.uniform(-.6, .6, (H, H)).astype(np.float32)
    cond_nodes = [helper.make_node("Identity", ["c_in"], ["c_out"])]
    if body_cond:
        cond_nodes = [helper.make_node("Less", ["it", "stop"], ["c_out"])]
    body = helper.make_graph(
        [helper.make_node("MatMul", ["h", "W"], ["hw"]), helper.make_node("Add", ["hw", "u"], ["pre"]),
         helper.make_node("Tanh", ["pre"], ["h2"]), *cond_nodes, helper.make_node("Identity", ["h2"], ["h_scan"])],
        "body", [_vi("it", TP.INT64, []), _vi("c_in", TP.BOOL, []), _vi("h", TP.FLOAT, ["B", H])],
        [_vi("c_out", TP.BOOL, []), _vi("h2", TP.FLOAT, ["B", H]), _vi("h_scan", TP.FLOAT, ["B", H])])
    inputs = [_vi("M", TP.INT64, []), _vi("h0", TP.FLOAT, ["B", H]), _vi("u", TP.FLOAT, ["B", H])]
    inits = [_init("W", w)]
    if body_cond:
        inputs.append(_vi("stop", TP.INT64, []))
    if cond:
        inits.append(_init("c0", np.array(True)))
    loop = helper.make_node("Loop", ["M", "c0" if cond else "", "h0"], ["h_final", "hs"], name="tanh_loop", body=body)
    return _model([loop], inputs, [_vi("h_final"), _vi("hs")], inits), w


def _tanh_reference(w, feeds):
    """float64."""
    h, rows = feeds["h0"].astype(np.float64), []
    for it in range(int(feeds["M"])):
        h = np.tanh(h @ w.astype(np.float64) + feeds["u"])
        rows.append(h)
        if "stop" in feeds and not it < feeds["stop"]:
            break
    return {"h_final": h, "hs": np.array(rows).reshape(len(rows), *h.shape)}


def test_loop_with_trip_count_outer_weight_and_scan_output():
    """Trip counts 5, 0 and 1 and two batch sizes through one build, each twice: no state is left
    behind in the executable (the scan buffers are written in place)."""
    model, w = _tanh_loop(cond=False)
    run, module = _build(model)
    rng = np.random.default_rng(2)
    for trips, batch in ((5, 3), (0, 3), (1, 2), (5, 3), (3, 1)):
        feeds = {"M": np.array(trips, np.int64), "h0": rng.standard_normal((batch, H)).astype(np.float32),
                 "u": rng.standard_normal((batch, H)).astype(np.float32)}
        got = run(feeds)
        assert got["hs"].shape == (trips, batch, H)
        # zero iterations: ONNX Runtime gives hs the shape (0, 0, 8), the symbolic batch unknown to it
        _close(got, _ort(model, feeds), ["h_final"] if trips == 0 else None)
        _close(got, _tanh_reference(w, feeds))
    _runs_in_vm(module)
    assert any(k.startswith("dense") for k in _functions(module))  # W (outer) reached our dense kernel


@pytest.mark.parametrize("m,stop", [(50, 6), (4, 10)])
def test_loop_with_cond_computed_in_the_body(m, stop):
    """cond_out stops the loop (trip count known only at run time), or M does first."""
    model, w = _tanh_loop(cond=True)
    rng = np.random.default_rng(3)
    feeds = {"M": np.array(m, np.int64), "h0": rng.standard_normal((B, H)).astype(np.float32),
             "u": rng.standard_normal((B, H)).astype(np.float32), "stop": np.array(stop, np.int64)}
    want = _tanh_reference(w, feeds)
    assert len(want["hs"]) == min(m, stop + 1)
    got, _ = _run(model, feeds)
    _close(got, _ort(model, feeds))
    _close(got, want)


def test_loop_without_cond_input_still_reads_cond_out():
    """ONNX Runtime stops a Loop that has no cond input when the body's cond_out turns false (the
    operator page calls that value ignored); rnnc does as ONNX Runtime, which its checks run against."""
    model, w = _tanh_loop(cond=False, body_cond=True)
    rng = np.random.default_rng(4)
    feeds = {"M": np.array(9, np.int64), "h0": rng.standard_normal((B, H)).astype(np.float32),
             "u": rng.standard_normal((B, H)).astype(np.float32), "stop": np.array(2, np.int64)}
    got, _ = _run(model, feeds)
    want = _ort(model, feeds)
    assert want["hs"].shape[0] == 3
    _close(got, want)
    _close(got, _tanh_reference(w, feeds))


def test_deep_loop_does_not_exhaust_the_stack():
    """Far more iterations than plain recursion survives (a few thousand on 8 MiB of C++ stack)."""
    assert FANOUT ** LEVELS > 20000
    body = helper.make_graph(
        [helper.make_node("Add", ["s", "one"], ["s2"]), helper.make_node("Identity", ["c_in"], ["c_out"]),
         helper.make_node("Identity", ["s2"], ["s_scan"])],
        "body", [_vi("it", TP.INT64, []), _vi("c_in", TP.BOOL, []), _vi("s", TP.FLOAT, [1])],
        [_vi("c_out", TP.BOOL, []), _vi("s2", TP.FLOAT, [1]), _vi("s_scan", TP.FLOAT, [1])])
    loop = helper.make_node("Loop", ["M", "", "s0"], ["s_final", "ss"], name="count", body=body)
    model = _model([loop], [_vi("M", TP.INT64, []), _vi("s0", TP.FLOAT, [1])], [_vi("s_final"), _vi("ss")],
                   [_init("one", np.ones(1, np.float32))])
    m = 20000
    got, _ = _run(model, {"M": np.array(m, np.int64), "s0": np.zeros(1, np.float32)})
    np.testing.assert_array_equal(got["s_final"], [m])
    np.testing.assert_array_equal(got["ss"][:, 0], np.arange(1, m + 1))


def test_if_and_a_nested_loop_in_the_body():
    """An If in the body (no dataflow block there), and an inner Loop reading a value of the outer
    body (passed down one level) and M2, a graph input (passed down two levels)."""
    inner = helper.make_graph(
        [helper.make_node("Add", ["t", "s"], ["t2"]), helper.make_node("Identity", ["ci"], ["co"])],
        "inner", [_vi("j", TP.INT64, []), _vi("ci", TP.BOOL, []), _vi("t", TP.FLOAT, [2])],
        [_vi("co", TP.BOOL, []), _vi("t2", TP.FLOAT, [2])])
    then = helper.make_graph([helper.make_node("Mul", ["s", "half"], ["a"])], "then", [], [_vi("a", TP.FLOAT, [2])])
    other = helper.make_graph([helper.make_node("Add", ["s", "half"], ["b"])], "else", [], [_vi("b", TP.FLOAT, [2])])
    body = helper.make_graph(
        [helper.make_node("Less", ["it", "two"], ["early"]),
         helper.make_node("If", ["early"], ["p"], then_branch=then, else_branch=other),
         helper.make_node("Loop", ["M2", "", "p"], ["q"], name="inner", body=inner),
         helper.make_node("Mul", ["q", "tenth"], ["s2"]), helper.make_node("Identity", ["c_in"], ["c_out"]),
         helper.make_node("Identity", ["s2"], ["s_scan"])],
        "outer", [_vi("it", TP.INT64, []), _vi("c_in", TP.BOOL, []), _vi("s", TP.FLOAT, [2])],
        [_vi("c_out", TP.BOOL, []), _vi("s2", TP.FLOAT, [2]), _vi("s_scan", TP.FLOAT, [2])])
    loop = helper.make_node("Loop", ["M", "", "s0"], ["s_final", "ss"], name="outer", body=body)
    inits = [_init("half", np.full(2, .5, np.float32)), _init("tenth", np.full(2, .1, np.float32)),
             _init("two", np.array(2, np.int64))]
    model = _model([loop], [_vi("M", TP.INT64, []), _vi("M2", TP.INT64, []), _vi("s0", TP.FLOAT, [2])],
                   [_vi("s_final"), _vi("ss")], inits)
    feeds = {"M": np.array(4, np.int64), "M2": np.array(3, np.int64), "s0": np.array([1., -2.], np.float32)}
    got, module = _run(model, feeds)
    _close(got, _ort(model, feeds))
    s, rows = feeds["s0"].astype(np.float64), []
    for it in range(4):
        p = s * .5 if it < 2 else s + .5
        s = (p + 3 * s) * .1  # the inner loop adds s three times
        rows.append(s)
    _close(got, {"s_final": s, "ss": np.array(rows)})
    _runs_in_vm(module)


# -- (2) a greedy generation loop: LSTM in the body, token fed back through an embedding -----------

V, E, HL, BG = 7, 5, 8, 2


def _greedy():
    rng = np.random.default_rng(11)
    f = lambda *s: rng.uniform(-.9, .9, s).astype(np.float32)  # noqa: E731
    inits = [_init("Emb", f(V, E)), _init("W", f(1, 4 * HL, E)), _init("R", f(1, 4 * HL, HL)),
             _init("Bias", f(1, 8 * HL)), _init("Wo", f(V, HL) * 3), _init("bo", f(V)),
             _init("axes0", np.array([0], np.int64)), _init("first", np.array(0, np.int64))]
    body = helper.make_graph(
        [helper.make_node("Gather", ["Emb", "tok"], ["emb"], axis=0),
         helper.make_node("Unsqueeze", ["emb", "axes0"], ["x"]),
         helper.make_node("LSTM", ["x", "W", "R", "Bias", "", "h", "c"], ["Y", "Yh", "Yc"], name="cell",
                          hidden_size=HL),
         helper.make_node("Squeeze", ["Yh", "axes0"], ["hs"]),
         helper.make_node("Gemm", ["hs", "Wo", "bo"], ["logits"], transB=1),
         helper.make_node("ArgMax", ["logits"], ["tok2"], axis=1, keepdims=0),
         helper.make_node("Gather", ["tok2", "first"], ["lead"], axis=0),
         helper.make_node("Equal", ["lead", "eos"], ["done"]), helper.make_node("Not", ["done"], ["c_out"]),
         helper.make_node("Identity", ["tok2"], ["tok_scan"])],
        "step", [_vi("it", TP.INT64, []), _vi("c_in", TP.BOOL, []), _vi("tok", TP.INT64, [BG]),
                 _vi("h", TP.FLOAT, [1, BG, HL]), _vi("c", TP.FLOAT, [1, BG, HL])],
        [_vi("c_out", TP.BOOL, []), _vi("tok2", TP.INT64, [BG]), _vi("Yh", TP.FLOAT, [1, BG, HL]),
         _vi("Yc", TP.FLOAT, [1, BG, HL]), _vi("tok_scan", TP.INT64, [BG])])
    loop = helper.make_node("Loop", ["M", "go", "tok0", "h0", "c0"], ["tok_final", "h_final", "c_final", "tokens"],
                            name="generate", body=body)
    inputs = [_vi("M", TP.INT64, []), _vi("go", TP.BOOL, []), _vi("tok0", TP.INT64, [BG]),
              _vi("h0", TP.FLOAT, [1, BG, HL]), _vi("c0", TP.FLOAT, [1, BG, HL]), _vi("eos", TP.INT64, [])]
    outputs = [_vi("tok_final", TP.INT64), _vi("h_final"), _vi("c_final"), _vi("tokens", TP.INT64)]
    return _model([loop], inputs, outputs, inits)


def test_greedy_generation_loop_with_an_lstm_in_the_body():
    model = _greedy()
    rng = np.random.default_rng(12)
    feeds = {"M": np.array(12, np.int64), "go": np.array(True), "tok0": np.array([1, 4], np.int64),
             "h0": rng.standard_normal((1, BG, HL)).astype(np.float32),
             "c0": rng.standard_normal((1, BG, HL)).astype(np.float32), "eos": np.array(-1, np.int64)}
    lead = _ort(model, feeds)["tokens"][:, 0]
    k = max(j for j in range(len(lead)) if lead[j] not in lead[:j])  # eos = the last new token: stops at step k
    reference = float64_reference(model)
    run, module = _build(model)
    for eos, go, trips in ((-1, True, 12), (lead[k], True, k + 1), (-1, False, 0)):
        feeds.update(eos=np.array(eos, np.int64), go=np.array(go))
        got = run(feeds)
        assert got["tokens"].shape == (trips, BG)
        _close(got, _ort(model, feeds))
        _close(got, reference(feeds))  # zero iterations too: tokens [0, BG], from the body's declared row
    _kernel_in_body(module, "lstm")
    _runs_in_vm(module)


# -- (3) and (4): Scan ---------------------------------------------------------------------------

T, I = 6, 4


def test_scan_over_time_with_a_gru_in_the_body():
    rng = np.random.default_rng(21)
    f = lambda *s: rng.uniform(-.6, .6, s).astype(np.float32)  # noqa: E731
    inits = [_init("W", f(1, 3 * H, I)), _init("R", f(1, 3 * H, H)), _init("Bias", f(1, 6 * H)),
             _init("axes0", np.array([0], np.int64))]
    body = helper.make_graph(
        [helper.make_node("Unsqueeze", ["x", "axes0"], ["xu"]),
         helper.make_node("GRU", ["xu", "W", "R", "Bias", "", "h"], ["", "h2"], name="cell", hidden_size=H),
         helper.make_node("Squeeze", ["h2", "axes0"], ["y"])],
        "step", [_vi("h", TP.FLOAT, [1, B, H]), _vi("x", TP.FLOAT, [B, I])],
        [_vi("h2", TP.FLOAT, [1, B, H]), _vi("y", TP.FLOAT, [B, H])])
    scan = helper.make_node("Scan", ["h0", "X"], ["h_final", "ys"], name="over_time", body=body, num_scan_inputs=1)
    model = _model([scan], [_vi("h0", TP.FLOAT, [1, B, H]), _vi("X", TP.FLOAT, [T, B, I])],
                   [_vi("h_final"), _vi("ys")], inits)
    feeds = {"h0": rng.standard_normal((1, B, H)).astype(np.float32),
             "X": rng.standard_normal((T, B, I)).astype(np.float32)}
    got, module = _run(model, feeds)
    assert got["ys"].shape == (T, B, H)
    _close(got, _ort(model, feeds))
    _close(got, float64_reference(model)(feeds))
    _kernel_in_body(module, "gru")
    _runs_in_vm(module)


@pytest.mark.parametrize("out_axis,out_dir", [(0, 0), (1, 1), (-1, 0)])
def test_scan_with_reversed_inputs_along_other_axes(out_axis, out_dir):
    """scan_input_axes=[1, 0], scan_input_directions=[1, 0]: X [B, T, I] read backwards along axis 1,
    Z [T, B, I] forwards (B and T symbolic); the outputs stacked along `out_axis`, reversed with
    `out_dir`. onnx.reference implements neither (it raises), so the float64 reference is numpy."""
    body = helper.make_graph(
        [helper.make_node("Mul", ["s", "half"], ["sh"]), helper.make_node("Add", ["sh", "x"], ["sx"]),
         helper.make_node("Add", ["sx", "z"], ["s2"]), helper.make_node("Tanh", ["s2"], ["y"])],
        "step", [_vi("s", TP.FLOAT, ["B", I]), _vi("x", TP.FLOAT, ["B", I]), _vi("z", TP.FLOAT, ["B", I])],
        [_vi("s2", TP.FLOAT, ["B", I]), _vi("y", TP.FLOAT, ["B", I])])
    scan = helper.make_node("Scan", ["s0", "X", "Z"], ["s_final", "ys"], name="backwards", body=body,
                            num_scan_inputs=2, scan_input_axes=[1, 0], scan_input_directions=[1, 0],
                            scan_output_axes=[out_axis], scan_output_directions=[out_dir])
    model = _model([scan], [_vi("s0", TP.FLOAT, ["B", I]), _vi("X", TP.FLOAT, ["B", "T", I]),
                            _vi("Z", TP.FLOAT, ["T", "B", I])],
                   [_vi("s_final"), _vi("ys")], [_init("half", np.full(I, .5, np.float32))])
    run, _ = _build(model)
    rng = np.random.default_rng(31)
    for b, t in ((B, T), (1, 2 * T + 1)):
        feeds = {k: rng.standard_normal(s).astype(np.float32) for k, s in (("s0", (b, I)), ("X", (b, t, I)),
                                                                          ("Z", (t, b, I)))}
        got = run(feeds)
        _close(got, _ort(model, feeds))
        s, rows = feeds["s0"].astype(np.float64), []
        for k in range(t):
            s = s * .5 + feeds["X"][:, t - 1 - k] + feeds["Z"][k]
            rows.append(np.tanh(s))
        ys = np.moveaxis(np.array(rows)[::-1 if out_dir else 1], 0, out_axis)
        _close(got, {"s_final": s, "ys": ys})


@pytest.mark.skipif(cuda_build_reason() is not None, reason=str(cuda_build_reason()))
def test_cuda_build():
    """The same functions for the CUDA target, our CUDA layer kernel in the body, built (nvcc) here;
    running them needs a device (not checked here)."""
    lowered = lower(_greedy(), "cuda", SMALL)
    _kernel_in_body(lowered.module, "lstm")
    _runs_in_vm(lowered.module)
    tvm.compile(lowered.module, tvm.target.Target(cuda_target()))


# -- what is refused -------------------------------------------------------------------------------

def _carrying(nodes, x0_type, init=(), cond="", m="M"):
    body = helper.make_graph(nodes + [helper.make_node("Identity", ["c_in"], ["c_out"])], "body",
                             [_vi("it", TP.INT64, []), _vi("c_in", TP.BOOL, []), _vi("x", TP.FLOAT, None)],
                             [_vi("c_out", TP.BOOL, []), _vi("x2", TP.FLOAT, None)])
    loop = helper.make_node("Loop", [m, cond, "x0"], ["x_final"], name="bad", body=body)
    return _model(list(init) + [loop], [_vi("M", TP.INT64, []), x0_type], [_vi("x_final")])


@pytest.mark.parametrize("model,words", [
    (_carrying([helper.make_node("Concat", ["x", "x"], ["x2"], axis=0)], _vi("x0", TP.FLOAT, [2])),
     "Loop node 'bad': loop-carried value 'x2' changes"),
    (_carrying([helper.make_node("Identity", ["x"], ["x2"])], _vi("x0", TP.FLOAT, [2]), m=""),
     "Loop node 'bad': neither M nor cond"),
    (_carrying([helper.make_node("SequenceInsert", ["x", "v"], ["x2"])],
               _vi("v", TP.FLOAT, [2]), init=[helper.make_node("SequenceEmpty", [], ["x0"])]),
     "Loop node 'bad': loop-carried value 'x' is a sequence"),
])
def test_unsupported_forms_name_the_node(model, words):
    with pytest.raises(Unsupported, match=words):
        lower(model, tuning=SMALL)


# -- (5) loop-carried sequences collecting one tensor per iteration (torch.onnx's list.append) ------

def _collecting(concats):
    """s <- s + x for M iterations (x [B, K] a graph input, B and K symbolic), collecting s2 (also
    the carried value) in sequence `a` and r = s2 * x (computed only for it) in sequence `b`;
    after the loop, a ConcatFromSequence of `a` and of `b` for each (axis, new_axis) of `concats`."""
    body = helper.make_graph(
        [helper.make_node("Add", ["s", "x"], ["s2"]), helper.make_node("Mul", ["s2", "x"], ["r"]),
         helper.make_node("SequenceInsert", ["seq_a", "s2"], ["seq_a2"]),
         helper.make_node("SequenceInsert", ["seq_b", "r"], ["seq_b2"]),
         helper.make_node("Identity", ["c_in"], ["c_out"])],
        "body", [_vi("it", TP.INT64, []), _vi("c_in", TP.BOOL, []), _vi("s", TP.FLOAT, ["B", "K"]),
                 helper.make_tensor_sequence_value_info("seq_a", TP.FLOAT, None),
                 helper.make_tensor_sequence_value_info("seq_b", TP.FLOAT, None)],
        [_vi("c_out", TP.BOOL, []), _vi("s2", TP.FLOAT, ["B", "K"]),
         helper.make_tensor_sequence_value_info("seq_a2", TP.FLOAT, None),
         helper.make_tensor_sequence_value_info("seq_b2", TP.FLOAT, None)])
    nodes = [helper.make_node("SequenceEmpty", [], ["empty_a"], dtype=TP.FLOAT),
             helper.make_node("SequenceEmpty", [], ["empty_b"], dtype=TP.FLOAT),
             helper.make_node("Loop", ["M", "", "s0", "empty_a", "empty_b"], ["s_final", "all_a", "all_b"],
                              name="collect", body=body)]
    outputs = [_vi("s_final")]
    for k, (axis, new_axis) in enumerate(concats):
        for seq in ("a", "b"):
            nodes.append(helper.make_node("ConcatFromSequence", [f"all_{seq}"], [f"{seq}{k}"], name=f"cat_{seq}{k}",
                                          axis=axis, new_axis=new_axis))
            outputs.append(_vi(f"{seq}{k}"))
    return _model(nodes, [_vi("M", TP.INT64, []), _vi("s0", TP.FLOAT, ["B", "K"]), _vi("x", TP.FLOAT, ["B", "K"])],
                  outputs)


CONCATS = [(0, 1), (1, 1), (2, 1), (-1, 1), (0, 0), (1, 0), (-1, 0), (-2, 0)]


def test_collected_sequences_become_scan_outputs():
    """Both sequences become scan outputs (no sequence op is left, so `control` takes the loop), and
    each ConcatFromSequence (stacking or concatenating, any axis) is reproduced exactly: ONNX Runtime
    on the rewritten graph equals it on the original, zero-sized dims included; TVM equals both."""
    model = _collecting(CONCATS)
    rewritten = sequences_to_scan_outputs(model)
    ops = {n.op_type for n in rewritten.graph.node} | {n.op_type for n in rewritten.graph.node[0].attribute[0].g.node}
    assert not {"SequenceEmpty", "SequenceInsert", "ConcatFromSequence"} & ops, ops
    run, module = _build(model)
    rng = np.random.default_rng(41)
    for trips, b, k in ((4, 3, 2), (1, 2, 5), (3, 1, 1), (2, 3, 0), (5, 0, 2)):
        feeds = {"M": np.array(trips, np.int64), "s0": rng.standard_normal((b, k)).astype(np.float32),
                 "x": rng.standard_normal((b, k)).astype(np.float32)}
        want = _ort(model, feeds)
        got = _ort(rewritten, feeds)
        for name in want:
            assert got[name].shape == want[name].shape, (name, trips, b, k)
            np.testing.assert_array_equal(got[name], want[name], err_msg=name)
        _close(run(feeds), want)
    _runs_in_vm(module)


@pytest.mark.parametrize("change", ["read_in_body", "graph_output", "other_reader", "positioned"])
def test_sequences_outside_the_pattern_are_left_as_they_are(change):
    """A sequence read in the body, returned by the graph, read after the loop by anything else, or
    inserted at a position: unchanged, and `control` refuses it naming the sequence."""
    model = _collecting([(0, 1)])
    graph, body = model.graph, model.graph.node[2].attribute[0].g
    if change == "read_in_body":
        body.node.append(helper.make_node("SequenceLength", ["seq_a"], ["length"]))
    elif change == "graph_output":
        graph.output.append(helper.make_tensor_sequence_value_info("all_a", TP.FLOAT, None))
    elif change == "other_reader":
        graph.node.append(helper.make_node("SequenceAt", ["all_a", "M"], ["at"]))
        graph.output.append(_vi("at"))
    else:
        body.node[2].input.append("it")
    rewritten = sequences_to_scan_outputs(model)
    loop = next(n for n in rewritten.graph.node if n.op_type == "Loop")
    assert list(loop.input) == ["M", "", "s0", "empty_a"]  # b became a scan output, a stays as it was
    assert [n.input[0] for n in loop.attribute[0].g.node if n.op_type == "SequenceInsert"] == ["seq_a"]
    with pytest.raises(Unsupported, match="Loop node 'collect'.* is a sequence"):
        lower(model, tuning=SMALL)


def test_corpus_generate_loop_collects_in_scan_outputs_and_steps_in_our_lstm(tmp_path):
    """The corpus' scripted greedy decoder as torch.onnx exports it (tokens and logits appended to
    lists: SequenceEmpty, SequenceInsert in the Loop body, ConcatFromSequence(new_axis=1) after it),
    constants folded as `rnnc compile` does before lowering: TVM equals ONNX Runtime, the body's
    LSTM runs our kernel, the loop runs in the VM."""
    from rnnc.graphs.bind import fold_constants
    from tests.corpus import build

    case = build("generate_loop", tmp_path)
    model = fold_constants(onnx.load(case.path))
    run, module = _build(model)
    rng = np.random.default_rng(51)
    for steps, batch in ((6, 2), (1, 3), (7, 1), (1, 1)):  # steps in case.int_ranges; 0 fails in ORT
        assert steps in case.int_ranges["steps"]
        feeds = {"start_token": rng.integers(0, 12, batch), "steps": np.array(steps, np.int64),
                 "h0": rng.standard_normal((1, batch, 16)).astype(np.float32),
                 "c0": rng.standard_normal((1, batch, 16)).astype(np.float32)}
        got, want = run(feeds), _ort(model, feeds)
        assert got["logits"].shape == (batch, steps, 12)
        np.testing.assert_array_equal(got["generated"], want["generated"])
        _close(got, want)
    # zero steps: ONNX Runtime's ConcatFromSequence refuses the empty lists; the scan outputs are empty
    got = run({**feeds, "steps": np.array(0, np.int64)})
    assert got["generated"].shape == (1, 0) and got["logits"].shape == (1, 0, 12)
    _kernel_in_body(module, "lstm")
    _runs_in_vm(module)
