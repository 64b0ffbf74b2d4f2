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
from rnnc.compiler.tvm.target import configure_threads, cpu_count, host_target
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


def _run(model, feeds):
    """Our lowering, built for the host and run in the Relax VM; also returns the module."""
    lowered = lower(model, tuning=SMALL)
    vm = relax.VirtualMachine(tvm.compile(lowered.module, tvm.target.Target(host_target())), tvm.cpu())
    args = [tvm.runtime.tensor(np.array(feeds[i["name"]], dtype=i["dtype"], order="C")) for i in lowered.inputs]
    out = vm["main"](*args)
    got = [out.numpy()] if len(lowered.outputs) == 1 else [o.numpy() for o in out]
    return dict(zip(lowered.outputs, got)), lowered.module


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


def _calls(func):
    """Every callee of a Relax function: GlobalVars, ops and extern functions."""
    found = []
    relax.analysis.post_order_visit(func.body, lambda e: found.append(e.op) if isinstance(e, relax.Call) else None)
    return found


def _runs_in_vm(module):
    """No Python (or any extern) callback anywhere, and a loop function that calls itself."""
    funcs = {k: f for k, f in _functions(module).items() if isinstance(f, relax.Function)}
    for name, func in funcs.items():
        externs = [c for c in _calls(func) if isinstance(c, relax.ExternFunc)]
        assert not externs, (name, externs)
    recursive = [k for k, f in funcs.items() if any(isinstance(c, tvm.ir.GlobalVar) and c.name_hint == k
                                                      for c in _calls(f))]
    assert recursive, sorted(funcs)
    return funcs


def _kernel_in_body(module, cell):
    """A layer PrimFunc of `cell`, called (call_tir) from a body function, not from main."""
    funcs = _functions(module)
    kernels = [k for k, f in funcs.items() if isinstance(f, tvm.tirx.PrimFunc) and k.startswith("layer")
               and k.endswith(f"_{cell}")]
    assert kernels, sorted(funcs)
    callers = [k for k, f in funcs.items() if isinstance(f, relax.Function) and any(
        isinstance(c, tvm.ir.Op) and c.name == "relax.call_tir" for c in _calls(f)) and kernels[0] in f.script()]
    assert callers and "main" not in callers, callers


# -- (1) a Loop with a trip count, a carried state, an outer weight and a scan output ---------------

B, H = 3, 8


def _tanh_loop(cond: bool):
    """h <- tanh(h @ W + u), u a graph input (an outer Var passed into the body), W an outer
    initializer (our dense kernel); scans h. With `cond`, the body's cond_out is `it < stop`."""
    rng = np.random.default_rng(1)
    w = rng.uniform(-.6, .6, (H, H)).astype(np.float32)
    cond_nodes = [helper.make_node("Identity", ["c_in"], ["c_out"])]
    if cond:
        cond_nodes = [helper.make_node("Less", ["it", "stop"], ["c_out"])]
    body = helper.make_graph(
        [helper.make_node("MatMul", ["h", "W"], ["hw"]), helper.make_node("Add", ["hw", "u"], ["pre"]),
         helper.make_node("Tanh", ["pre"], ["h2"]), *cond_nodes, helper.make_node("Identity", ["h2"], ["h_scan"])],
        "body", [_vi("it", TP.INT64, []), _vi("c_in", TP.BOOL, []), _vi("h", TP.FLOAT, [B, H])],
        [_vi("c_out", TP.BOOL, []), _vi("h2", TP.FLOAT, [B, H]), _vi("h_scan", TP.FLOAT, [B, H])])
    inputs = [_vi("M", TP.INT64, []), _vi("h0", TP.FLOAT, [B, H]), _vi("u", TP.FLOAT, [B, H])]
    inits = [_init("W", w)]
    if cond:
        inputs.append(_vi("stop", TP.INT64, []))
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
    return {"h_final": h, "hs": np.array(rows).reshape(len(rows), B, H)}


@pytest.mark.parametrize("trips", [5, 0, 1])
def test_loop_with_trip_count_outer_weight_and_scan_output(trips):
    model, w = _tanh_loop(cond=False)
    rng = np.random.default_rng(2)
    feeds = {"M": np.array(trips, np.int64), "h0": rng.standard_normal((B, H)).astype(np.float32),
             "u": rng.standard_normal((B, H)).astype(np.float32)}
    got, module = _run(model, feeds)
    _close(got, _ort(model, feeds))
    _close(got, _tanh_reference(w, feeds))
    funcs = _runs_in_vm(module)
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
