"""The layout shuffles and dense chains our kernels take over, found on the ONNX graph before import.

A rewrite of the graph (a copy; the user's is untouched), so that TVM's own ONNX frontend converts
what is left and our converters (`frontend`) see one node per kernel:

- `Transpose(perm=[1,0,2]) -> LSTM/GRU/RNN`: the kernel reads X batch-major itself;
- `Y -> Squeeze(axes=[1])` (torch.onnx's Y[:, 0]), `Y -> Transpose([0,2,1,3]) -> Reshape([0,0,-1])`
  (the next layer's input) and `Y -> Transpose([2,0,1,3]) -> Reshape([0,0,-1])` (batch-major
  output): the kernel writes Y there;
- `Y_h -> Transpose([1,0,2]) -> Reshape([0,-1])` (h_n of a many-to-one model): likewise;
- `MatMul(x, W) -> Add(b) [-> Sigmoid/Tanh/Relu/LeakyRelu]` with constant 2-D float32 W (CPU): one
  `RnncDense` node, our register-tiled dense kernel;
- `Conv [-> BatchNormalization] [-> Relu/Clip/LeakyRelu]` (1-D or 2-D, group 1, constant float32
  W and B, inference BN with constant parameters folded into W and B) (CPU): one `RnncConv` node,
  im2col + the register-tiled GEMM (`conv`).

What a recurrent kernel writes is recorded on its node as `rnnc_x`, `rnnc_y`, `rnnc_yh`, `rnnc_yc`
(layout names of `spec.Y_LAYOUTS` / `YH_LAYOUTS`; "" where nothing reads the output). Subgraphs
(If, Loop, Scan bodies) are rewritten the same way; a value a subgraph reads from outside counts
as read there, so nothing it needs is absorbed.
"""
from __future__ import annotations

import numpy as np
import onnx
from onnx import helper, numpy_helper

from rnnc.graphs.walk import outer_reads, subgraphs

RECURRENT = ("LSTM", "GRU", "RNN")
DENSE = "RnncDense"
DENSE_ACTIVATIONS = ("Sigmoid", "Tanh", "Relu", "LeakyRelu")
CONV = "RnncConv"
CONV_ACTIVATIONS = ("Relu", "Clip", "LeakyRelu")


def absorb(proto: onnx.ModelProto, dense: bool = True, layouts: bool = True, conv: bool = True) -> onnx.ModelProto:
    """A copy of `proto` with the patterns above rewritten; `dense=False` keeps every MatMul,
    `layouts=False` every layout shuffle, `conv=False` every Conv and BatchNormalization
    (`bench/fusions.py` measures what each one pays)."""
    out = onnx.ModelProto()
    out.CopyFrom(proto)
    constants = {t.name: numpy_helper.to_array(t) for t in out.graph.initializer}
    _Graph(out.graph, constants, dense, layouts, conv).rewrite()
    return out


class _Graph:
    def __init__(self, graph: onnx.GraphProto, constants: dict, dense: bool, layouts: bool, conv: bool = False) -> None:
        self.graph = graph
        self.dense = dense
        self.layouts = layouts
        self.conv = conv
        self.consts = dict(constants)
        self.consts.update((t.name, numpy_helper.to_array(t)) for t in graph.initializer)
        for node in graph.node:
            if node.op_type == "Constant" and node.attribute and node.attribute[0].name == "value":
                self.consts[node.output[0]] = numpy_helper.to_array(node.attribute[0].t)
        self.consumers: dict[str, list[onnx.NodeProto]] = {}
        self.producers: dict[str, onnx.NodeProto] = {}
        for node in graph.node:
            for name in node.output:
                self.producers[name] = node
            for name in list(node.input) + sorted(outer_reads(node)):
                if name:
                    self.consumers.setdefault(name, []).append(node)
        self.outputs = {o.name for o in graph.output}
        self.dropped: set[int] = set()

    def rewrite(self) -> None:
        for node in list(self.graph.node):
            for sub in subgraphs(node):
                _Graph(sub, self.consts, self.dense, self.layouts, self.conv).rewrite()
        replaced: dict[int, onnx.NodeProto] = {}
        for node in self.graph.node:
            if id(node) in self.dropped:
                continue
            if node.op_type in RECURRENT and node.domain in ("", "ai.onnx"):
                self._recurrent(node)
            elif node.op_type == "MatMul" and self.dense and node.domain in ("", "ai.onnx"):
                fused = self._dense(node)
                if fused is not None:
                    replaced[id(node)] = fused
            elif node.op_type == "Conv" and self.conv and node.domain in ("", "ai.onnx"):
                fused = self._conv(node)
                if fused is not None:
                    replaced[id(node)] = fused
        nodes = [replaced.get(id(n), n) for n in self.graph.node if id(n) not in self.dropped]
        del self.graph.node[:]
        self.graph.node.extend(nodes)

    # -- helpers --------------------------------------------------------------------------------

    def _only_consumer(self, name: str) -> onnx.NodeProto | None:
        """The one node reading `name` (nothing to absorb into when layouts are kept as they are)."""
        users = self.consumers.get(name, [])
        return users[0] if len(users) == 1 and name not in self.outputs else None

    def _absorbable(self, name: str) -> onnx.NodeProto | None:
        return self._only_consumer(name) if self.layouts else None

    def _read(self, name: str) -> bool:
        return bool(self.consumers.get(name)) or name in self.outputs

    @staticmethod
    def _attr(node: onnx.NodeProto, name: str, default=None):
        return next((helper.get_attribute_value(a) for a in node.attribute if a.name == name), default)

    def _perm(self, node: onnx.NodeProto | None, perm: list[int]) -> bool:
        return node is not None and node.op_type == "Transpose" and list(self._attr(node, "perm", [])) == perm

    def _ints(self, name: str) -> list[int] | None:
        value = self.consts.get(name)
        return None if value is None else [int(v) for v in value.reshape(-1)]

    def _reshape_to(self, node: onnx.NodeProto | None, shape: list[int]) -> bool:
        return (node is not None and node.op_type == "Reshape" and self._ints(node.input[1]) == shape
                and not self._attr(node, "allowzero", 0))

    def _chain(self, name: str, perm: list[int], shape: list[int]) -> str | None:
        """`name -> Transpose(perm) -> Reshape(shape)`, each the only reader: the last value."""
        t = self._absorbable(name)
        if not self._perm(t, perm):
            return None
        r = self._only_consumer(t.output[0])
        if not self._reshape_to(r, shape):
            return None
        self.dropped.update((id(t), id(r)))
        return r.output[0]

    def _squeeze_axes(self, node: onnx.NodeProto) -> list[int] | None:
        if len(node.input) > 1 and node.input[1]:
            return self._ints(node.input[1])
        axes = self._attr(node, "axes")
        return None if axes is None else [int(v) for v in axes]

    # -- recurrent nodes ------------------------------------------------------------------------

    def _recurrent(self, node: onnx.NodeProto) -> None:
        layout = int(self._attr(node, "layout", 0))
        direction = self._attr(node, "direction", b"forward")
        one_dir = (direction.decode() if isinstance(direction, bytes) else direction) != "bidirectional"
        x_layout = "bti" if layout else "tbi"
        src = self.producers.get(node.input[0])
        if self.layouts and not layout and self._perm(src, [1, 0, 2]) and self._only_consumer(node.input[0]) is node:
            node.input[0] = src.input[0]
            x_layout = "bti"
            self.dropped.add(id(src))
        outs = list(node.output) + [""] * (3 - len(node.output))
        layouts = ["", "", ""]
        if outs[0] and self._read(outs[0]):
            layouts[0] = "btd_h" if layout else "tdbh"
            sq = self._absorbable(outs[0])
            if not layout and one_dir and sq is not None and sq.op_type == "Squeeze" and self._squeeze_axes(sq) == [1]:
                outs[0], layouts[0] = sq.output[0], "tbdh"
                self.dropped.add(id(sq))
            elif not layout:
                for perm, kind in (([0, 2, 1, 3], "tbdh"), ([2, 0, 1, 3], "btdh")):
                    if found := self._chain(outs[0], perm, [0, 0, -1]):
                        outs[0], layouts[0] = found, kind
                        break
        else:
            outs[0] = ""
        if outs[1] and self._read(outs[1]):
            layouts[1] = "bd_h" if layout else "dbh"
            if not layout and (found := self._chain(outs[1], [1, 0, 2], [0, -1])):
                outs[1], layouts[1] = found, "bdh"
        else:
            outs[1] = ""
        if node.op_type == "LSTM" and outs[2] and self._read(outs[2]):
            layouts[2] = "bd_h" if layout else "dbh"
        else:
            outs[2] = ""
        outs = outs[:3 if node.op_type == "LSTM" else 2]
        while outs and not outs[-1]:
            outs.pop()
        del node.output[:]
        node.output.extend(outs)
        node.attribute.extend(helper.make_attribute(k, v) for k, v in
                              zip(("rnnc_x", "rnnc_y", "rnnc_yh", "rnnc_yc"), [x_layout] + layouts))

    # -- dense ----------------------------------------------------------------------------------

    def _dense(self, node: onnx.NodeProto) -> onnx.NodeProto | None:
        w = self.consts.get(node.input[1])
        if w is None or w.ndim != 2 or w.dtype.name != "float32":
            return None
        inputs, out, act, alpha = [node.input[0], node.input[1]], node.output[0], "", 0.0
        add = self._only_consumer(out)
        if add is not None and add.op_type == "Add":
            other = add.input[1] if add.input[0] == out else add.input[0]
            b = self.consts.get(other)
            if b is not None and b.dtype.name == "float32" and b.ndim <= 2 and b.size == w.shape[1] \
                    and b.shape[-1] == w.shape[1]:
                inputs.append(other)
                out = add.output[0]
                self.dropped.add(id(add))
                a = self._only_consumer(out)
                if a is not None and a.op_type in DENSE_ACTIVATIONS:
                    act, alpha, out = a.op_type, float(self._attr(a, "alpha", 0.01)), a.output[0]
                    self.dropped.add(id(a))
        return helper.make_node(DENSE, inputs, [out], name=node.name, act=act, alpha=alpha)

    # -- conv -----------------------------------------------------------------------------------

    def _conv(self, node: onnx.NodeProto) -> onnx.NodeProto | None:
        """Conv [-> BatchNormalization] [-> activation], each the only reader of the one before."""
        w = self.consts.get(node.input[1])
        if w is None or w.ndim not in (3, 4) or w.dtype.name != "float32" or int(self._attr(node, "group", 1)) != 1:
            return None
        auto_pad = self._attr(node, "auto_pad", b"NOTSET")
        auto_pad = auto_pad.decode() if isinstance(auto_pad, bytes) else str(auto_pad)
        if auto_pad not in ("NOTSET", "VALID", "SAME_UPPER", "SAME_LOWER"):
            return None
        kernel = self._attr(node, "kernel_shape")
        if kernel is not None and list(kernel) != list(w.shape[2:]):
            return None
        b = None
        if len(node.input) > 2 and node.input[2]:
            b = self.consts.get(node.input[2])
            if b is None or b.dtype.name != "float32" or b.size != w.shape[0]:
                return None
        w64 = w.astype(np.float64)
        b64 = np.zeros(w.shape[0]) if b is None else b.astype(np.float64).reshape(-1)
        out = node.output[0]
        bn = self._only_consumer(out)
        if bn is not None and (folded := self._fold_bn(bn, out, w64, b64)) is not None:
            w64, b64 = folded
            out = bn.output[0]
            self.dropped.add(id(bn))
        act, alpha, lo, hi = "", 0.01, None, None
        a = self._only_consumer(out)
        if a is not None and a.op_type in CONV_ACTIVATIONS and a.input[0] == out and a.domain in ("", "ai.onnx"):
            bounds = self._clip_bounds(a) if a.op_type == "Clip" else (None, None)
            if bounds is not False:
                act, out = a.op_type, a.output[0]
                lo, hi = bounds
                alpha = float(self._attr(a, "alpha", 0.01))
                self.dropped.add(id(a))
        wn, bn_name = self._constant(node, "w", w64.astype(np.float32)), self._constant(node, "b", b64.astype(np.float32))
        for name in node.input[1:]:  # the originals, where nothing else reads them
            if name and self.consumers.get(name) == [node] and name not in self.outputs \
                    and all(v.name != name for v in self.graph.input):
                kept = [t for t in self.graph.initializer if t.name != name]
                del self.graph.initializer[:]
                self.graph.initializer.extend(kept)
        attrs = {k: self._attr(node, k) for k in ("pads", "strides", "dilations") if self._attr(node, k) is not None}
        attrs.update(auto_pad=auto_pad, act=act, alpha=alpha)
        if lo is not None:
            attrs["clip_min"] = lo
        if hi is not None:
            attrs["clip_max"] = hi
        return helper.make_node(CONV, [node.input[0], wn, bn_name], [out], name=node.name, **attrs)

    def _fold_bn(self, bn: onnx.NodeProto, x: str, w: np.ndarray, b: np.ndarray):
        """An inference BatchNormalization of `x` with constant parameters: W and b with it folded in."""
        if bn.op_type != "BatchNormalization" or bn.domain not in ("", "ai.onnx") or len(bn.input) < 5 \
                or bn.input[0] != x or int(self._attr(bn, "training_mode", 0)) \
                or any(o and self._read(o) for o in bn.output[1:]):
            return None
        params = [self.consts.get(name) for name in bn.input[1:5]]
        if any(p is None or p.size != w.shape[0] or p.dtype.kind != "f" for p in params):
            return None
        scale, bias, mean, var = (p.astype(np.float64).reshape(-1) for p in params)
        k = scale / np.sqrt(var + float(self._attr(bn, "epsilon", 1e-5)))
        return w * k.reshape(-1, *[1] * (w.ndim - 1)), (b - mean) * k + bias

    def _clip_bounds(self, clip: onnx.NodeProto):
        """A Clip's (min, max), None where unbounded; False where one is computed at run time."""
        if len(clip.input) == 1:
            lo, hi = self._attr(clip, "min"), self._attr(clip, "max")  # opset < 11
            return (None if lo is None else float(lo)), (None if hi is None else float(hi))
        out = []
        for name in (list(clip.input[1:3]) + ["", ""])[:2]:
            if not name:
                out.append(None)
            elif (v := self.consts.get(name)) is not None and v.size == 1:
                out.append(float(v.reshape(-1)[0]))
            else:
                return False
        return tuple(out)

    def _constant(self, node: onnx.NodeProto, what: str, value: np.ndarray) -> str:
        """A new initializer of this graph holding `value`, under a name no value has."""
        taken = set(self.consts) | set(self.producers) | set(self.consumers) | {v.name for v in self.graph.input} \
            | {t.name for t in self.graph.initializer}
        base = f"{node.name or node.output[0]}_rnnc_{what}"
        name, i = base, 0
        while name in taken:
            i += 1
            name = f"{base}{i}"
        self.graph.initializer.append(numpy_helper.from_array(value, name))
        self.consts[name] = value
        return name


