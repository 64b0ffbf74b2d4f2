"""TVM's own ONNX frontend, with our kernels plugged in where it has none or ours pay.

`tvm.relax.frontend.onnx` converts the ordinary operators (164 in TVM 0.27, `If` among them); it
lacks LSTM, GRU, RNN, Loop and Scan. `Importer` is its importer with those added: the recurrent
nodes become calls of our TIR layer kernels (`kernels` on the CPU, `cuda` on the GPU), wherever
they sit, If branches and loop bodies included; `RnncDense` nodes (see `absorb`) our dense kernel;
`RnncConv` nodes im2col + our GEMM (`conv`; upstream's Conv where spatial sizes are symbolic);
Softmax over a static last axis on the CPU our row-parallel kernel (`softmax`);
Loop and Scan a recursive Relax function (`control`), so the loop runs inside the compiled
artifact. An operator no converter takes raises `Unsupported` naming each op type and its nodes.
"""
from __future__ import annotations

import dataclasses
import warnings
from typing import Any

import numpy as np
import onnx
from tvm import relax
from tvm.ir.expr import Constant
from tvm.relax.frontend.onnx import onnx_frontend as upstream

from rnnc.compiler.tvm import conv, cuda, dense, kernels, softmax
from rnnc.compiler.tvm import target as host
from rnnc.compiler.tvm.absorb import CONV, DENSE, RECURRENT
from rnnc.compiler.tvm.spec import ACTIVATIONS, LayerSpec, Tuning, signature
from rnnc.errors import Unsupported
from rnnc.graphs.walk import all_nodes

# the layer kernels per target kind: each module has `layer_primfunc(spec, name)` and `pack(spec, W, R, B, P)`
KERNELS = {"llvm": kernels, "cuda": cuda}
CELLS = {"LSTM": "lstm", "GRU": "gru", "RNN": "rnn"}
CONTROL = ("Loop", "Scan")


class Importer(upstream.ONNXGraphImporter):
    """Upstream's importer; `layers` records every kernel it called (for tvm.json)."""

    def __init__(self, target_kind: str, tuning: Tuning, precision: str = "fp32", vnni: bool = False) -> None:
        super().__init__({}, {}, keep_params_in_input=False, sanitize=True)
        self.target_kind = target_kind
        self.precision, self.vnni = precision, vnni  # the recurrent layers' weights (`quant`)
        self.kernels = KERNELS[target_kind]
        self.tuning = tuning
        self.layers: list[dict[str, Any]] = []

    def import_model(self, proto: onnx.ModelProto) -> Any:
        """The IRModule of `proto`, whose `main` takes the graph inputs in order."""
        opset = next((o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")), 17)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # upstream warns on every renamed input and symbolic dim
            try:
                return self.from_onnx(proto.graph, opset)
            except Unsupported:
                raise
            except (ValueError, AssertionError, NotImplementedError) as err:  # upstream's own refusals
                first = (str(err).strip().splitlines() or [type(err).__name__])[0][:300]
                raise Unsupported(f"TVM's ONNX frontend refused the graph: {type(err).__name__}: {first}") from err

    # -- hooks into upstream --------------------------------------------------------------------

    def _check_for_unsupported_ops(self, graph: onnx.GraphProto) -> None:
        known = set(upstream._get_convert_map()) | set(RECURRENT) | set(CONTROL) | {DENSE, CONV, "If", "Constant"}
        found: dict[str, list[str]] = {}
        for node in all_nodes(graph):
            if node.op_type not in known or node.domain not in ("", "ai.onnx", "rnnc"):
                op = node.op_type if node.domain in ("", "ai.onnx") else f"{node.domain}.{node.op_type}"
                found.setdefault(op, []).append(node.name or "?")
        if found:
            raise Unsupported("; ".join(f"ONNX operator {op} (node{'s' if len(n) > 1 else ''} "
                                        f"{', '.join(map(repr, n[:4]))}{' ...' if len(n) > 4 else ''})"
                                        for op, n in sorted(found.items())) + ": not converted by TVM's ONNX frontend")

    def _convert_operator(self, op_name: str, inputs: list, attrs: dict, opset: int) -> Any:
        if op_name in RECURRENT:
            return self._recurrent(op_name, inputs, attrs)
        if op_name == DENSE:
            return self._dense(inputs, attrs)
        if op_name == CONV:
            return self._conv(inputs, attrs, opset)
        if op_name == "Softmax" and self.target_kind == "llvm":
            y = self._softmax(inputs[0], attrs, opset)
            if y is not None:
                return y
        if op_name in CONTROL:
            from rnnc.compiler.tvm import control

            return control.convert(self, op_name, inputs, attrs)
        name = attrs.get("tvm_custom", {}).get("name") or "?"
        try:
            return super()._convert_operator(op_name, inputs, attrs, opset)
        except Unsupported:
            raise
        except Exception as err:  # noqa: BLE001 - upstream raises anything; name the node it failed on
            first = (str(err).strip().splitlines() or [type(err).__name__])[-1][:300]
            raise Unsupported(f"{op_name} node {name!r}: TVM's ONNX frontend failed: {first}") from err

    # -- recurrent nodes ------------------------------------------------------------------------

    def _recurrent(self, op: str, inputs: list, a: dict) -> Any:
        cell = CELLS[op]
        what = f"{op} node {a['tvm_custom']['name']!r}"
        for key in ("activation_alpha", "activation_beta"):
            if key in a:
                raise Unsupported(f"{what}: attribute {key} (activations with parameters)")
        if a.get("input_forget", 0):
            raise Unsupported(f"{what}: input_forget=1 (coupled input and forget gates)")
        ins = list(inputs) + [None] * (8 - len(inputs))
        if ins[4] is not None and self.target_kind != "llvm":
            raise Unsupported(f"{what}: sequence_lens on {self.target_kind} (the CPU kernels take it)")
        weights = {}
        for k, label in ((1, "W"), (2, "R"), (3, "B"), (7, "P")):
            if ins[k] is None:
                continue
            if not isinstance(ins[k], Constant):
                raise Unsupported(f"{what}: {label} is computed at run time; the tvm backend packs weights at build time")
            weights[label] = ins[k].value.numpy()
        if weights["W"].dtype != np.float32:
            raise Unsupported(f"{what}: {weights['W'].dtype} weights (the tvm recurrent kernels are float32)")
        w, r = weights["W"].astype(np.float64), weights["R"].astype(np.float64)
        b = weights["B"].astype(np.float64) if "B" in weights else None
        direction = _text(a.get("direction", b"forward"))
        dirs = {"forward": ("forward",), "reverse": ("reverse",), "bidirectional": ("forward", "reverse")}.get(direction)
        if dirs is None:
            raise Unsupported(f"{what}: direction {direction!r}")
        acts = tuple(_text(x) for x in a.get("activations", ()))
        if acts:
            per = len(acts) // len(dirs)
            if any(x not in ACTIVATIONS for x in acts):
                raise Unsupported(f"{what}: activations {list(acts)} (the tvm backend takes {', '.join(ACTIVATIONS)})")
            if len(dirs) == 2 and acts[:per] != acts[per:]:
                raise Unsupported(f"{what}: different activations per direction {list(acts)}")
        layout = int(a.get("layout", 0))
        x_layout = _text(a.get("rnnc_x", b"bti" if layout else b"tbi"))
        y, yh, yc = (_text(a.get(k, d)) or None for k, d in
                     (("rnnc_y", b"btd_h" if layout else b"tdbh"), ("rnnc_yh", b"bd_h" if layout else b"dbh"),
                      ("rnnc_yc", b"bd_h" if layout else b"dbh")))
        x = ins[0]
        if x.ty.dtype != "float32" or len(x.ty.shape.values) != 3:
            raise Unsupported(f"{what}: X is {x.ty.dtype} of rank {len(x.ty.shape.values)} "
                              "(the tvm recurrent kernels take float32 of rank 3)")
        first, second, _ = x.ty.shape.values
        seq, batch = (first, second) if x_layout == "tbi" else (second, first)
        h0 = self._state(ins[5], layout)
        c0 = self._state(ins[6], layout) if cell == "lstm" else None
        spec = LayerSpec(
            cell=cell, input_size=int(w.shape[-1]), hidden=int(a.get("hidden_size", r.shape[-1])), directions=dirs,
            x_layout=x_layout, y_layout=y, yh_layout=yh, yc_layout=yc if cell == "lstm" else None,
            activations=acts, clip=float(a["clip"]) if "clip" in a else None,
            initial_h=h0 is not None, initial_c=c0 is not None,
            peepholes=cell == "lstm" and "P" in weights, linear_before_reset=bool(a.get("linear_before_reset", 0)),
            seq_lens=ins[4] is not None, batch_tile=self.tuning.batch_tile, gemm_rows=self.tuning.gemm_rows,
            precision=self.precision, vnni=self.vnni and self.precision == "int8",
        )
        if self.target_kind == "llvm":  # the order of a step's work items, by how R sits in this host's L2
            r_bytes = spec.gates * spec.hp * spec.hp * {"fp32": 4, "bf16": 2, "int8": 1}[spec.precision]
            spec = dataclasses.replace(spec, chunks=host.step_chunks(r_bytes))
        values = {"X": x, "H0": h0, "C0": c0}
        packed = self.kernels.pack(spec, w, r, b, weights.get("P") if spec.peepholes else None)
        values.update((k, relax.const(v)) for k, v in packed.items())
        if spec.seq_lens:
            lens = ins[4]
            values["Lens"] = lens if lens.ty.dtype == "int32" else self.bb.emit(relax.op.astype(lens, "int32"))
        params = signature(spec, self.target_kind)
        outs = [p for p in params if p.output]
        results: dict[str, Any] = {}
        if outs:
            name = f"layer{len(self.layers)}_{cell}"
            gvar = self.bb.add_func(self.kernels.layer_primfunc(spec, name), name)
            self.layers.append({"name": name, "node": a["tvm_custom"]["name"], **vars(spec)})
            dims = {"seq": seq, "batch": batch}
            sinfo = [relax.TensorType([dims.get(s, s) for s in p.shape], p.dtype) for p in outs]
            args = [values[p.name] for p in params if not p.output]
            call = self.bb.emit(relax.call_tir(gvar, args, sinfo if len(sinfo) > 1 else sinfo[0]))
            if len(outs) == 1:
                results[outs[0].name] = call
            else:
                results.update((p.name, self.bb.emit(relax.TupleGetItem(call, i))) for i, p in enumerate(outs))
        unused = relax.const(np.zeros((0,), "float32"))  # an output nothing reads (absorb named it "")
        count = max(1, int(a["tvm_custom"]["num_outputs"]))  # upstream assigns a lone output the whole value
        items = [results.get(k, unused) for k in ("Y", "Yh", "Yc")[:count]]
        return items[0] if count == 1 else relax.Tuple(items)

    def _state(self, value: Any, layout: int) -> Any:
        if value is None:
            return None
        if layout:  # [B, D, H] -> [D, B, H]
            value = self.bb.emit(relax.op.permute_dims(value, [1, 0, 2]))
        return value

    # -- dense ----------------------------------------------------------------------------------

    def _dense(self, inputs: list, a: dict) -> Any:
        x, w = inputs[0], inputs[1].value.numpy()
        bias = inputs[2].value.numpy().reshape(-1) if len(inputs) > 2 and inputs[2] is not None else None
        shape = list(x.ty.shape.values)
        k, n = w.shape
        if x.ty.dtype != "float32" or not shape or _int(shape[-1]) != k:
            return self._matmul_fallback(x, inputs, a)
        rows = 1
        for s in shape[:-1]:
            rows = rows * s
        flat = self.bb.emit(relax.op.reshape(x, (rows, k))) if len(shape) != 2 else x
        name = f"dense{len(self.layers)}"
        act = _text(a.get("act", b"")) or None
        spec = dense.DenseSpec(k, n, act, float(a.get("alpha", 0.0)), self.tuning.gemm_rows)
        gvar = self.bb.add_func(dense.dense_primfunc(spec, name), name)
        self.layers.append({"name": name, "node": a["tvm_custom"]["name"], **vars(spec)})
        wp, b = dense.pack_dense(spec, w, bias)
        y = self.bb.emit(relax.call_tir(gvar, [flat, relax.const(wp), relax.const(b)],
                                        relax.TensorType((rows, n), "float32")))
        if len(shape) != 2:
            y = self.bb.emit(relax.op.reshape(y, (*shape[:-1], n)))
        return y

    def _matmul_fallback(self, x: Any, inputs: list, a: dict) -> Any:
        """A fused node whose input turned out not to fit the kernel: the plain Relax ops."""
        y = self.bb.emit(relax.op.matmul(x, inputs[1]))
        if len(inputs) > 2 and inputs[2] is not None:
            y = self.bb.emit(relax.op.add(y, inputs[2]))
        act = _text(a.get("act", b""))
        if act == "LeakyRelu":
            return self.bb.emit(relax.op.nn.leakyrelu(y, float(a.get("alpha", 0.01))))
        f = {"Sigmoid": relax.op.sigmoid, "Tanh": relax.op.tanh, "Relu": relax.op.nn.relu}.get(act)
        return self.bb.emit(f(y)) if f else y

    # -- softmax --------------------------------------------------------------------------------

    def _softmax(self, x: Any, a: dict, opset: int) -> Any:
        """Softmax over the last axis of a float32 tensor with a static last dim: our kernel
        (`softmax`), rows flattened; None (upstream's) for another axis, dtype or a symbolic dim.
        Before opset 13 the axis flattens the dims after it, which is the last axis' softmax too
        when it is the last."""
        if not hasattr(x, "ty") or getattr(x.ty, "dtype", None) != "float32" or not hasattr(x.ty, "shape"):
            return None
        shape = list(x.ty.shape.values)
        axis = int(a.get("axis", -1 if opset >= 13 else 1))
        n = _int(shape[-1]) if shape else None
        if not shape or axis % len(shape) != len(shape) - 1 or n is None:
            return None
        rows = 1
        for s in shape[:-1]:
            rows = rows * s
        flat = self.bb.emit(relax.op.reshape(x, (rows, n))) if len(shape) != 2 else x
        name = f"softmax{len(self.layers)}"
        gvar = self.bb.add_func(softmax.softmax_primfunc(n, name), name)
        self.layers.append({"name": name, "node": a.get("tvm_custom", {}).get("name", "?"), "softmax": n})
        y = self.bb.emit(relax.call_tir(gvar, [flat], relax.TensorType((rows, n), "float32")))
        return self.bb.emit(relax.op.reshape(y, shape)) if len(shape) != 2 else y

    # -- conv -----------------------------------------------------------------------------------

    def _conv(self, inputs: list, a: dict, opset: int) -> Any:
        """An `RnncConv` node: im2col + the conv GEMM (`conv`), or upstream's Conv and the
        activation where the input is not float32 with static C and spatial sizes."""
        x, w, b = inputs[0], inputs[1].value.numpy(), inputs[2].value.numpy()
        rank = w.ndim - 2
        shape = [_int(s) for s in x.ty.shape.values] if hasattr(x.ty, "shape") and hasattr(x.ty.shape, "values") else []
        auto_pad = _text(a.get("auto_pad", b"NOTSET"))
        if x.ty.dtype != "float32" or len(shape) != w.ndim or any(s is None for s in shape[1:]) or shape[1] != w.shape[1]:
            return self._conv_fallback(inputs, a, opset, auto_pad)
        sizes, ks = shape[2:], list(w.shape[2:])
        strides = list(a.get("strides", [1] * rank))
        dilations = list(a.get("dilations", [1] * rank))
        pads = list(a.get("pads", [0] * 2 * rank))
        if auto_pad == "VALID":
            pads = [0] * 2 * rank
        elif auto_pad in ("SAME_UPPER", "SAME_LOWER"):
            both = [conv.same_pads(n, k, s, d, auto_pad) for n, k, s, d in zip(sizes, ks, strides, dilations)]
            pads = [p[0] for p in both] + [p[1] for p in both]
        outs = [conv.output_size(n, k, s, d, pads[i], pads[i + rank])
                for i, (n, k, s, d) in enumerate(zip(sizes, ks, strides, dilations))]
        if min(outs) < 1:
            return self._conv_fallback(inputs, a, opset, auto_pad)
        if rank == 1:  # a 1-D conv: H = kh = 1
            sizes, ks, strides, dilations, outs = [1, *sizes], [1, *ks], [1, *strides], [1, *dilations], [1, *outs]
            pads = [0, pads[0], 0, pads[1]]
        act = _text(a.get("act", b"")) or None
        spec = conv.ConvSpec(
            rank=rank, c=shape[1], h=sizes[0], w=sizes[1], cout=int(w.shape[0]), kh=ks[0], kw=ks[1],
            sh=int(strides[0]), sw=int(strides[1]), ph=int(pads[0]), pw=int(pads[1]), dh=int(dilations[0]),
            dw=int(dilations[1]), ho=outs[0], wo=outs[1], act=act, alpha=float(a.get("alpha", 0.01)),
            lo=float(a["clip_min"]) if "clip_min" in a else None, hi=float(a["clip_max"]) if "clip_max" in a else None,
            rows=self.tuning.gemm_rows)
        n = x.ty.shape.values[0]
        name = f"conv{len(self.layers)}"
        cols = self.bb.add_func(conv.im2col_primfunc(spec, f"{name}_im2col"), f"{name}_im2col")
        gemm = self.bb.add_func(conv.conv_primfunc(spec, name), name)
        self.layers.append({"name": name, "node": a["tvm_custom"]["name"], **vars(spec)})
        col = self.bb.emit(relax.call_tir(cols, [x, relax.const(np.zeros(1, np.float32))],
                                          relax.TensorType((n * spec.p, spec.k), "float32")))
        wp, bias = conv.pack_conv(spec, w, b)
        y = self.bb.emit(relax.call_tir(gemm, [col, relax.const(wp), relax.const(bias)],
                                        relax.TensorType((n, spec.cout, spec.p), "float32")))
        return self.bb.emit(relax.op.reshape(y, (n, spec.cout, *outs[-rank:])))

    def _conv_fallback(self, inputs: list, a: dict, opset: int, auto_pad: str) -> Any:
        w = inputs[1].value.numpy()
        attrs = {k: a[k] for k in ("pads", "strides", "dilations") if k in a}
        attrs.update(kernel_shape=list(w.shape[2:]), group=1, auto_pad=auto_pad.encode(),
                     tvm_custom=a.get("tvm_custom", {}))
        y = super()._convert_operator("Conv", inputs, attrs, opset)
        act = _text(a.get("act", b""))
        if act == "Relu":
            return self.bb.emit(relax.op.nn.relu(y))
        if act == "LeakyRelu":
            return self.bb.emit(relax.op.nn.leakyrelu(y, float(a.get("alpha", 0.01))))
        if act == "Clip":
            lo, hi = float(a.get("clip_min", -np.inf)), float(a.get("clip_max", np.inf))
            return self.bb.emit(relax.op.clip(y, lo, hi))
        return y


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _int(v: Any) -> int | None:
    try:
        return int(v)
    except (TypeError, ValueError):
        return None
