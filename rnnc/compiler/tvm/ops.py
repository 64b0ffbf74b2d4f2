"""The ordinary ONNX ops around the recurrent nodes: one converter each, to Relax ops TVM legalises.

A converter takes the lowering (`lw`: values, constants, the block builder), the node and its
attributes, and returns the node's output value(s). Adding an op means adding a function here.
"""
from __future__ import annotations

from typing import Any, Callable

import numpy as np
import onnx

from rnnc.errors import Unsupported


def attrs(node: onnx.NodeProto) -> dict[str, Any]:
    return {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}


Converter = Callable[[Any, onnx.NodeProto, dict[str, Any]], Any]
CONVERTERS: dict[str, Converter] = {}


def _op(*names: str) -> Callable[[Converter], Converter]:
    def register(f: Converter) -> Converter:
        for n in names:
            CONVERTERS[n] = f
        return f

    return register


def _const_ints(lw: Any, node: onnx.NodeProto, idx: int, what: str) -> list[int] | None:
    if len(node.input) <= idx or not node.input[idx]:
        return None
    if node.input[idx] not in lw.consts:
        raise Unsupported(f"{node.op_type} node {node.name!r}: {what} computed at run time")
    return [int(v) for v in np.asarray(lw.consts[node.input[idx]]).reshape(-1)]


@_op("Identity")
def _identity(lw: Any, node: onnx.NodeProto, a: dict) -> Any:
    return lw._value(node.input[0])


@_op("Gather")
def _gather(lw: Any, node: onnx.NodeProto, a: dict) -> Any:
    from tvm import relax

    # "wrap": ONNX's negative ids count from the end, and an id out of range must not read wild memory
    x, ids = lw._value(node.input[0]), lw._value(node.input[1])
    return lw._emit(relax.op.take(x, ids, axis=int(a.get("axis", 0)), mode="wrap"))


@_op("Transpose")
def _transpose(lw: Any, node: onnx.NodeProto, a: dict) -> Any:
    from tvm import relax

    perm = a.get("perm")
    return lw._emit(relax.op.permute_dims(lw._value(node.input[0]), list(perm) if perm is not None else None))


@_op("Reshape")
def _reshape(lw: Any, node: onnx.NodeProto, a: dict) -> Any:
    from tvm import relax

    x = lw._value(node.input[0])
    target = _const_ints(lw, node, 1, "the shape")
    shape = lw._shape(x)
    out: list[Any] = []
    for i, v in enumerate(target):
        if v == 0 and not a.get("allowzero", 0):
            out.append(shape[i])
        else:
            out.append(v)
    if -1 in out:
        total = 1
        for s in shape:
            total = total * s
        known = 1
        for v in out:
            if not (isinstance(v, int) and v == -1):
                known = known * v
        out[out.index(-1)] = total // known
    return lw._emit(relax.op.reshape(x, out))


@_op("Squeeze", "Unsqueeze")
def _squeeze(lw: Any, node: onnx.NodeProto, a: dict) -> Any:
    from tvm import relax

    axes = _const_ints(lw, node, 1, "axes") if lw.opset >= 13 else a.get("axes")
    x = lw._value(node.input[0])
    if node.op_type == "Squeeze":
        return lw._emit(relax.op.squeeze(x, list(axes) if axes else None))
    out = x
    rank = len(lw._shape(x)) + len(axes)
    for ax in sorted(ax % rank for ax in axes):
        out = lw._emit(relax.op.expand_dims(out, ax))
    return out


@_op("Concat")
def _concat(lw: Any, node: onnx.NodeProto, a: dict) -> Any:
    from tvm import relax

    return lw._emit(relax.op.concat([lw._value(i) for i in node.input], axis=int(a["axis"])))


@_op("Slice")
def _slice(lw: Any, node: onnx.NodeProto, a: dict) -> Any:
    from tvm import relax

    if lw.opset < 10:
        raise Unsupported(f"Slice node {node.name!r}: opset {lw.opset} (attribute form)")
    starts, ends = _const_ints(lw, node, 1, "starts"), _const_ints(lw, node, 2, "ends")
    axes = _const_ints(lw, node, 3, "axes") or list(range(len(starts)))
    steps = _const_ints(lw, node, 4, "steps") or [1] * len(starts)
    big = 2**62
    ends = [min(e, big) if e > 0 else max(e, -big) for e in ends]
    return lw._emit(relax.op.strided_slice(lw._value(node.input[0]), axes, starts, ends, steps))


@_op("MatMul")
def _matmul(lw: Any, node: onnx.NodeProto, a: dict) -> Any:
    from tvm import relax

    return lw._emit(relax.op.matmul(lw._value(node.input[0]), lw._value(node.input[1])))


@_op("Gemm")
def _gemm(lw: Any, node: onnx.NodeProto, a: dict) -> Any:
    from tvm import relax

    x, w = lw._value(node.input[0]), lw._value(node.input[1])
    if a.get("transA", 0):
        x = lw._emit(relax.op.permute_dims(x, [1, 0]))
    if a.get("transB", 0):
        w = lw._emit(relax.op.permute_dims(w, [1, 0]))
    y = lw._emit(relax.op.matmul(x, w))
    if float(a.get("alpha", 1.0)) != 1.0:
        y = lw._emit(relax.op.multiply(y, relax.const(np.float32(a["alpha"]))))
    if len(node.input) > 2 and node.input[2]:
        c = lw._value(node.input[2])
        if float(a.get("beta", 1.0)) != 1.0:
            c = lw._emit(relax.op.multiply(c, relax.const(np.float32(a["beta"]))))
        y = lw._emit(relax.op.add(y, c))
    return y


@_op("Add", "Sub", "Mul", "Div")
def _binary(lw: Any, node: onnx.NodeProto, a: dict) -> Any:
    from tvm import relax

    f = {"Add": relax.op.add, "Sub": relax.op.subtract, "Mul": relax.op.multiply, "Div": relax.op.divide}[node.op_type]
    return lw._emit(f(lw._value(node.input[0]), lw._value(node.input[1])))


@_op("Sigmoid", "Tanh", "Relu")
def _unary(lw: Any, node: onnx.NodeProto, a: dict) -> Any:
    from tvm import relax

    f = {"Sigmoid": relax.op.sigmoid, "Tanh": relax.op.tanh, "Relu": relax.op.nn.relu}[node.op_type]
    return lw._emit(f(lw._value(node.input[0])))


@_op("LeakyRelu")
def _leaky(lw: Any, node: onnx.NodeProto, a: dict) -> Any:
    from tvm import relax

    return lw._emit(relax.op.nn.leakyrelu(lw._value(node.input[0]), float(a.get("alpha", 0.01))))


@_op("Softmax", "LogSoftmax")
def _softmax(lw: Any, node: onnx.NodeProto, a: dict) -> Any:
    from tvm import relax

    x = lw._value(node.input[0])
    rank = len(lw._shape(x))
    axis = int(a.get("axis", -1 if lw.opset >= 13 else 1))
    if lw.opset < 13 and axis % rank != rank - 1:
        raise Unsupported(f"{node.op_type} node {node.name!r}: opset {lw.opset} flattening softmax over axis {axis}")
    f = relax.op.nn.softmax if node.op_type == "Softmax" else relax.op.nn.log_softmax
    return lw._emit(f(x, axis=axis))
