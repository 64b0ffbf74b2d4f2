"""ONNX graph -> one Relax IRModule: recurrent nodes to our TIR kernels, the ops around them to Relax.

The walk is one pass over the (topologically sorted) ONNX nodes, after a planning pass that finds
the layout shuffles our kernels can absorb:

- `Transpose(perm=[1,0,2]) -> LSTM/GRU/RNN`: the kernel reads X batch-major itself;
- `Y -> Transpose([0,2,1,3]) -> Reshape([0,0,-1])` (the next layer's input) and
  `Y -> Transpose([2,0,1,3]) -> Reshape([0,0,-1])` (batch-major output): the kernel writes Y there;
- `Y_h -> Transpose([1,0,2]) -> Reshape([0,-1])` (h_n of a many-to-one model): likewise;
- `MatMul(x, W) -> Add(b) [-> Sigmoid/Tanh/Relu/LeakyRelu]` with constant W, b: one dense kernel.

Everything else maps one node to one Relax op (`ops.py`, legalised by TVM); an op or attribute not
handled raises `Unsupported` naming it, so nothing is silently ignored (STYLE.md, on ONNX's reference).

The target kind picks the layer kernels, `kernels` (llvm) or `cuda`; the walk is the same for both,
and a layer's call passes its arguments in the order of `spec.signature`, which both kernels declare.

Recurrent attributes taken: direction (forward, reverse, bidirectional), layout 0/1, hidden_size,
activations Sigmoid/Tanh/Relu (the same for both directions), clip, initial_h, initial_c, LSTM
peepholes P, GRU linear_before_reset 0 and 1, sequence_lens (CPU). Refused with the reason:
input_forget=1, activation_alpha/beta (activations with parameters), W/R/B/P computed at run time,
sequence_lens on CUDA.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import onnx
from onnx import numpy_helper

from rnnc.compiler.tvm import cuda, dense, kernels
from rnnc.compiler.tvm.ops import CONVERTERS as _CONVERTERS
from rnnc.compiler.tvm.ops import attrs as _attrs
from rnnc.compiler.tvm.spec import ACTIVATIONS, LayerSpec, Tuning, signature
from rnnc.errors import Unsupported

__all__ = ["Lowered", "Tuning", "lower"]

RECURRENT = {"LSTM": "lstm", "GRU": "gru", "RNN": "rnn"}
_DTYPES = {onnx.TensorProto.FLOAT: "float32", onnx.TensorProto.INT64: "int64", onnx.TensorProto.INT32: "int32"}
_DENSE_ACT = {"Sigmoid": "Sigmoid", "Tanh": "Tanh", "Relu": "Relu", "LeakyRelu": "LeakyRelu"}
# the layer kernels per target kind: each module has `layer_primfunc(spec, name)` and `pack(spec, W, R, B, P)`
_KERNELS = {"llvm": kernels, "cuda": cuda}


@dataclass
class Lowered:
    """The module to build, and what the build records about it."""

    module: Any  # tvm.IRModule
    inputs: list[dict[str, Any]]
    outputs: list[str]
    layers: list[dict[str, Any]] = field(default_factory=list)


def lower(proto: onnx.ModelProto, target_kind: str = "llvm", tuning: Tuning | None = None) -> Lowered:
    """The Relax module of an ONNX model, whose `main` takes the graph inputs in order; `target_kind`
    is "llvm" or "cuda"."""
    if target_kind not in _KERNELS:
        raise ValueError(f"target kind {target_kind!r}: expected one of {', '.join(_KERNELS)}")
    return _Lowering(proto, tuning or Tuning(), target_kind).run()


class _Lowering:
    def __init__(self, proto: onnx.ModelProto, tuning: Tuning, target_kind: str) -> None:
        self.graph = proto.graph
        self.opset = next((o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")), 17)
        self.tuning = tuning
        self.target_kind = target_kind
        self.kernels = _KERNELS[target_kind]
        self.consts = {t.name: numpy_helper.to_array(t) for t in self.graph.initializer}
        # one list of node objects for the whole lowering: the plans key on their identity
        self.nodes = list(self.graph.node)
        self.absorbed: set[int] = set()  # id() of nodes a kernel takes over
        for node in self.nodes:  # Constant nodes are initializers by another name
            if node.op_type == "Constant" and node.domain in ("", "ai.onnx"):
                attr = next(iter(node.attribute), None)
                if attr is None or attr.name != "value":
                    raise Unsupported(f"Constant node {node.name!r}: only the `value` form is taken")
                self.consts[node.output[0]] = numpy_helper.to_array(attr.t)
                self.absorbed.add(id(node))
        self.consumers: dict[str, list[onnx.NodeProto]] = {}
        for node in self.nodes:
            for name in node.input:
                if name:
                    self.consumers.setdefault(name, []).append(node)
        self.graph_outputs = {o.name for o in self.graph.output}
        self.plans: dict[int, dict[str, Any]] = {}
        self.values: dict[str, Any] = {}
        self.dims: dict[str, Any] = {}
        self.layers: list[dict[str, Any]] = []

    # -- planning -------------------------------------------------------------------------------

    def _only_consumer(self, name: str) -> onnx.NodeProto | None:
        users = self.consumers.get(name, [])
        if len(users) == 1 and name not in self.graph_outputs:
            return users[0]
        return None

    def _perm(self, node: onnx.NodeProto | None, perm: list[int]) -> bool:
        return node is not None and node.op_type == "Transpose" and list(_attrs(node).get("perm", [])) == perm

    def _reshape_to(self, node: onnx.NodeProto | None, shape: list[int]) -> bool:
        if node is None or node.op_type != "Reshape" or node.input[1] not in self.consts:
            return False
        return [int(v) for v in self.consts[node.input[1]]] == shape and not _attrs(node).get("allowzero", 0)

    def _chain(self, name: str, perm: list[int], shape: list[int]) -> tuple[str, list[onnx.NodeProto]] | None:
        """`name -> Transpose(perm) -> Reshape(shape)`, each the only consumer: the final value."""
        t = self._only_consumer(name)
        if not self._perm(t, perm):
            return None
        r = self._only_consumer(t.output[0])
        if not self._reshape_to(r, shape):
            return None
        return r.output[0], [t, r]

    def _plan(self) -> None:
        for node in self.nodes:
            if node.op_type in RECURRENT:
                self._plan_recurrent(node)
            elif node.op_type == "MatMul" and self.target_kind == "llvm":
                self._plan_dense(node)

    def _plan_recurrent(self, node: onnx.NodeProto) -> None:
        layout = int(_attrs(node).get("layout", 0))
        plan: dict[str, Any] = {"x": node.input[0], "x_layout": "bti" if layout else "tbi"}
        if not layout:
            src = next((n for n in self.nodes if node.input[0] in n.output), None)
            if self._perm(src, [1, 0, 2]) and self._only_consumer(node.input[0]) is node:
                plan.update(x=src.input[0], x_layout="bti")
                self.absorbed.add(id(src))
        outs = list(node.output) + [""] * (3 - len(node.output))
        y, yh, yc = outs[:3]
        plan["y"] = plan["yh"] = plan["yc"] = None
        if y and (self.consumers.get(y) or y in self.graph_outputs):
            plan["y"] = (y, "btd_h" if layout else "tdbh")
            sq = self._only_consumer(y)
            one_dir = _attrs(node).get("direction", b"forward") in (b"forward", b"reverse", "forward", "reverse")
            if not layout and one_dir and sq is not None and sq.op_type == "Squeeze" and self._squeeze_axes(sq) == [1]:
                plan["y"] = (sq.output[0], "tbdh")  # torch.onnx's Y[:, 0]: [T, B, H]
                self.absorbed.add(id(sq))
            elif not layout:
                for perm, kind in (([0, 2, 1, 3], "tbdh"), ([2, 0, 1, 3], "btdh")):
                    if found := self._chain(y, perm, [0, 0, -1]):
                        plan["y"] = (found[0], kind)
                        self.absorbed.update(id(n) for n in found[1])
        if yh and (self.consumers.get(yh) or yh in self.graph_outputs):
            plan["yh"] = (yh, "bd_h" if layout else "dbh")
            if not layout and (found := self._chain(yh, [1, 0, 2], [0, -1])):
                plan["yh"] = (found[0], "bdh")
                self.absorbed.update(id(n) for n in found[1])
        if node.op_type == "LSTM" and yc and (self.consumers.get(yc) or yc in self.graph_outputs):
            plan["yc"] = (yc, "bd_h" if layout else "dbh")
        self.plans[id(node)] = plan

    def _squeeze_axes(self, node: onnx.NodeProto) -> list[int] | None:
        if len(node.input) > 1 and node.input[1]:
            axes = self.consts.get(node.input[1])
            return None if axes is None else [int(v) for v in np.asarray(axes).reshape(-1)]
        axes = _attrs(node).get("axes")
        return None if axes is None else [int(v) for v in axes]

    def _plan_dense(self, node: onnx.NodeProto) -> None:
        w = self.consts.get(node.input[1])
        if w is None or w.ndim != 2 or w.dtype != np.float32:
            return
        plan: dict[str, Any] = {"w": w, "bias": None, "act": None, "alpha": 0.0, "out": node.output[0]}
        add = self._only_consumer(node.output[0])
        if add is not None and add.op_type == "Add":
            other = add.input[1] if add.input[0] == node.output[0] else add.input[0]
            b = self.consts.get(other)
            if b is not None and b.dtype == np.float32 and b.size == w.shape[1] and b.ndim <= 2 and b.shape[-1] == w.shape[1]:
                plan.update(bias=b.reshape(-1), out=add.output[0])
                self.absorbed.add(id(add))
                act = self._only_consumer(add.output[0])
                if act is not None and act.op_type in _DENSE_ACT:
                    plan.update(act=act.op_type, alpha=float(_attrs(act).get("alpha", 0.01)), out=act.output[0])
                    self.absorbed.add(id(act))
        self.plans[id(node)] = plan

    # -- the walk -------------------------------------------------------------------------------

    def run(self) -> Lowered:
        from tvm import relax

        self._plan()
        self.bb = relax.BlockBuilder()
        params, inputs = [], []
        initializers = set(self.consts)
        for value in self.graph.input:
            if value.name in initializers:
                continue
            dtype, shape = self._value_type(value)
            var = relax.Var(value.name, relax.TensorType(shape, dtype))
            params.append(var)
            inputs.append({"name": value.name, "dtype": dtype})
            self.values[value.name] = var
        with self.bb.function("main", params):
            with self.bb.dataflow():
                for node in self.nodes:
                    if id(node) not in self.absorbed:
                        self._convert(node)
                outs = [self._value(o.name) for o in self.graph.output]
                result = self.bb.emit_output(outs[0] if len(outs) == 1 else relax.Tuple(outs))
            self.bb.emit_func_output(result)
        return Lowered(self.bb.get(), inputs, [o.name for o in self.graph.output], self.layers)

    def _value_type(self, value: onnx.ValueInfoProto) -> tuple[str, list[Any]]:
        from tvm import tirx

        tt = value.type.tensor_type
        if tt.elem_type not in _DTYPES:
            raise Unsupported(f"input {value.name!r}: element type {onnx.TensorProto.DataType.Name(tt.elem_type)} "
                              "(the tvm backend takes float32 and int64/int32 ids)")
        shape = []
        for i, d in enumerate(tt.shape.dim):
            if d.HasField("dim_value"):
                shape.append(int(d.dim_value))
            else:
                name = re.sub(r"\W", "_", d.dim_param or f"{value.name}_{i}")
                shape.append(self.dims.setdefault(name, tirx.Var(name, "int64")))
        return _DTYPES[tt.elem_type], shape

    def _value(self, name: str) -> Any:
        from tvm import relax

        if name in self.values:
            return self.values[name]
        if name in self.consts:
            arr = self.consts[name]
            if arr.dtype == np.float64:
                arr = arr.astype(np.float32)
            self.values[name] = relax.const(arr)
            return self.values[name]
        raise Unsupported(f"value {name!r} is used before it is computed (graph not topologically sorted?)")

    def _emit(self, expr: Any) -> Any:
        return self.bb.emit(expr)

    def _convert(self, node: onnx.NodeProto) -> None:
        if node.domain not in ("", "ai.onnx"):
            raise Unsupported(f"node {node.name or node.op_type}: operator domain {node.domain!r}")
        if node.op_type in RECURRENT:
            return self._recurrent(node)
        if node.op_type == "MatMul" and id(node) in self.plans:
            return self._dense(node)
        convert = _CONVERTERS.get(node.op_type)
        if convert is None:
            raise Unsupported(f"ONNX operator {node.op_type} (node {node.name!r}); the tvm backend takes "
                              f"{', '.join(sorted(set(_CONVERTERS) | set(RECURRENT)))}")
        outs = convert(self, node, _attrs(node))
        for name, value in zip(node.output, outs if isinstance(outs, (list, tuple)) else [outs]):
            if name:
                self.values[name] = value

    def _shape(self, expr: Any) -> list[Any]:
        return list(expr.ty.shape.values)

    # -- recurrent nodes ------------------------------------------------------------------------

    def _recurrent(self, node: onnx.NodeProto) -> None:
        from tvm import relax

        a = _attrs(node)
        cell = RECURRENT[node.op_type]
        what = f"{node.op_type} node {node.name!r}"
        for key in ("activation_alpha", "activation_beta"):
            if key in a:
                raise Unsupported(f"{what}: attribute {key} (activations with parameters)")
        if a.get("input_forget", 0):
            raise Unsupported(f"{what}: input_forget=1 (coupled input and forget gates)")
        ins = list(node.input) + [""] * (8 - len(node.input))
        if ins[4] and self.target_kind != "llvm":
            raise Unsupported(f"{what}: sequence_lens on {self.target_kind} (the CPU kernels take it)")
        for k, label in ((1, "W"), (2, "R"), (3, "B"), (7, "P")):
            if ins[k] and ins[k] not in self.consts:
                raise Unsupported(f"{what}: {label} is computed at run time; the tvm backend packs weights at build time")
        w, r = self.consts[ins[1]].astype(np.float64), self.consts[ins[2]].astype(np.float64)
        b = self.consts[ins[3]].astype(np.float64) if ins[3] else None
        direction = a.get("direction", b"forward")
        direction = direction.decode() if isinstance(direction, bytes) else direction
        dirs = {"forward": ("forward",), "reverse": ("reverse",), "bidirectional": ("forward", "reverse")}.get(direction)
        if dirs is None:
            raise Unsupported(f"{what}: direction {direction!r}")
        hidden = int(a.get("hidden_size", r.shape[-1]))
        acts = tuple(x.decode() if isinstance(x, bytes) else x for x in a.get("activations", []))
        if acts:
            per = len(acts) // len(dirs)
            if any(x not in ACTIVATIONS for x in acts):
                raise Unsupported(f"{what}: activations {list(acts)} (the tvm backend takes {', '.join(ACTIVATIONS)})")
            if len(dirs) == 2 and acts[:per] != acts[per:]:
                raise Unsupported(f"{what}: different activations per direction {list(acts)}")
        plan = self.plans[id(node)]
        x = self._value(plan["x"])
        xshape = self._shape(x)
        if len(xshape) != 3 or x.ty.dtype != "float32":
            raise Unsupported(f"{what}: X must be a float32 tensor of rank 3, got {x.ty}")
        if plan["x_layout"] == "tbi":
            seq, batch, isz = xshape
        else:
            batch, seq, isz = xshape
        h0 = self._state(ins[5], int(a.get("layout", 0))) if ins[5] else None
        c0 = self._state(ins[6], int(a.get("layout", 0))) if cell == "lstm" and ins[6] else None
        spec = LayerSpec(
            cell=cell, input_size=int(w.shape[-1]), hidden=hidden, directions=dirs, x_layout=plan["x_layout"],
            y_layout=plan["y"][1] if plan["y"] else None, yh_layout=plan["yh"][1] if plan["yh"] else None,
            yc_layout=plan["yc"][1] if plan["yc"] else None, activations=acts,
            clip=float(a["clip"]) if "clip" in a else None, initial_h=h0 is not None, initial_c=c0 is not None,
            peepholes=cell == "lstm" and bool(ins[7]), linear_before_reset=bool(a.get("linear_before_reset", 0)),
            seq_lens=bool(ins[4]),
            batch_tile=self.tuning.batch_tile, gemm_rows=self.tuning.gemm_rows,
        )
        values = {"X": x, "H0": h0, "C0": c0}
        packed = self.kernels.pack(spec, w, r, b, self.consts[ins[7]] if spec.peepholes else None)
        values.update((k, relax.const(v)) for k, v in packed.items())
        if spec.seq_lens:
            lens = self._value(ins[4])
            values["Lens"] = lens if lens.ty.dtype == "int32" else self._emit(relax.op.astype(lens, "int32"))
        params = signature(spec, self.target_kind)
        outs = [p for p in params if p.output]
        if not outs:
            return
        name = f"layer{len(self.layers)}_{cell}"
        gvar = self.bb.add_func(self.kernels.layer_primfunc(spec, name), name)
        self.layers.append({"name": name, "node": node.name, **vars(spec)})
        dims = {"seq": seq, "batch": batch}
        sinfo = [relax.TensorType([dims.get(s, s) for s in p.shape], p.dtype) for p in outs]
        args = [values[p.name] for p in params if not p.output]
        call = self._emit(relax.call_tir(gvar, args, sinfo if len(sinfo) > 1 else sinfo[0]))
        targets = {"Y": plan["y"], "Yh": plan["yh"], "Yc": plan["yc"]}
        if len(outs) == 1:
            self.values[targets[outs[0].name][0]] = call
        else:
            for i, p in enumerate(outs):
                self.values[targets[p.name][0]] = self._emit(relax.TupleGetItem(call, i))

    def _state(self, name: str, layout: int) -> Any:
        from tvm import relax

        value = self._value(name)
        if layout:  # [B, D, H] -> [D, B, H]
            value = self._emit(relax.op.permute_dims(value, [1, 0, 2]))
        return value

    # -- dense ----------------------------------------------------------------------------------

    def _dense(self, node: onnx.NodeProto) -> None:
        from tvm import relax

        plan = self.plans[id(node)]
        x = self._value(node.input[0])
        shape = self._shape(x)
        w = plan["w"]
        k, n = w.shape
        if x.ty.dtype != "float32" or not shape or _int(shape[-1]) != k:
            raise Unsupported(f"MatMul node {node.name!r}: input {x.ty} does not match weight {list(w.shape)}")
        rows = 1
        for s in shape[:-1]:
            rows = rows * s
        flat = self._emit(relax.op.reshape(x, (rows, k))) if len(shape) != 2 else x
        name = f"dense{len(self.layers)}"
        spec = dense.DenseSpec(k, n, plan["act"], plan["alpha"], self.tuning.gemm_rows)
        gvar = self.bb.add_func(dense.dense_primfunc(spec, name), name)
        self.layers.append({"name": name, "node": node.name, **vars(spec)})
        wp, bias = dense.pack_dense(spec, w, plan["bias"])
        y = self._emit(relax.call_tir(gvar, [flat, relax.const(wp), relax.const(bias)],
                                      relax.TensorType((rows, n), "float32")))
        if len(shape) != 2:
            y = self._emit(relax.op.reshape(y, (*shape[:-1], n)))
        self.values[plan["out"]] = y


def _int(v: Any) -> int | None:
    try:
        return int(v)
    except (TypeError, ValueError):
        return None
