"""Conv [-> BatchNormalization] [-> Relu/Clip/LeakyRelu] through `RnncConv` (im2col + our GEMM),
against float64 references; the batch symbolic, the spatial sizes static."""
from __future__ import annotations

import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper

from rnnc.compiler.tvm.absorb import CONV, absorb
from tests.compiler.test_tvm_lower import _check

pytestmark = pytest.mark.tvm


def _model(rank, cin, cout, k, size, *, conv_attrs=None, bias=True, bn=False, act=None, opset=17, seed=0,
           auto_pad=None):
    rng = np.random.default_rng(seed)
    ks = [k] * rank if isinstance(k, int) else list(k)
    inits = [numpy_helper.from_array(rng.uniform(-.5, .5, (cout, cin, *ks)).astype(np.float32), "W")]
    conv_in = ["X", "W"]
    if bias:
        inits.append(numpy_helper.from_array(rng.uniform(-.5, .5, cout).astype(np.float32), "B"))
        conv_in.append("B")
    attrs = dict(conv_attrs or {})
    if auto_pad:
        attrs["auto_pad"] = auto_pad
    nodes = [helper.make_node("Conv", conv_in, ["c"], name="conv", **attrs)]
    last = "c"
    if bn:
        for name, value in (("s", rng.uniform(.5, 1.5, cout)), ("bb", rng.uniform(-.5, .5, cout)),
                            ("m", rng.uniform(-.5, .5, cout)), ("v", rng.uniform(.2, 2, cout))):
            inits.append(numpy_helper.from_array(value.astype(np.float32), name))
        nodes.append(helper.make_node("BatchNormalization", ["c", "s", "bb", "m", "v"], ["n"], epsilon=1e-3))
        last = "n"
    if act == "Clip":
        inits += [numpy_helper.from_array(np.array(0, np.float32), "lo"), numpy_helper.from_array(np.array(.3, np.float32), "hi")]
        nodes.append(helper.make_node("Clip", [last, "lo", "hi"], ["y"]))
    elif act == "ClipMax":
        inits.append(numpy_helper.from_array(np.array(.2, np.float32), "hi"))
        nodes.append(helper.make_node("Clip", [last, "", "hi"], ["y"]))
    elif act == "LeakyRelu":
        nodes.append(helper.make_node("LeakyRelu", [last], ["y"], alpha=0.2))
    elif act:
        nodes.append(helper.make_node(act, [last], ["y"]))
    else:
        nodes.append(helper.make_node("Identity", [last], ["y"]))
    x = helper.make_tensor_value_info("X", TensorProto.FLOAT, ["N", cin, *([size] * rank if isinstance(size, int) else size)])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, None)
    graph = helper.make_graph(nodes, "g", [x], [y], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)], ir_version=8)


def _feeds(model, batch, seed=1):
    dims = [d.dim_value for d in model.graph.input[0].type.tensor_type.shape.dim[1:]]
    return {"X": np.random.default_rng(seed).standard_normal((batch, *dims))}


def _fused(model):
    return [n.op_type for n in absorb(model).graph.node]


CASES = [
    # rank, cin, cout, k, size, conv attrs, bias, bn, act
    (2, 1, 8, 3, (12, 10), {"pads": [1, 1, 1, 1]}, True, True, "Relu"),
    (2, 3, 20, (3, 2), (9, 11), {"pads": [2, 0, 1, 1], "strides": [2, 3]}, True, False, None),
    (2, 4, 16, 3, (10, 10), {"pads": [2, 2, 2, 2], "dilations": [2, 1]}, False, True, "Clip"),
    (2, 2, 5, (5, 3), (13, 7), {"pads": [2, 1, 2, 1], "strides": [2, 1], "dilations": [1, 2]}, True, True, "LeakyRelu"),
    (2, 8, 33, 1, (4, 6), {}, True, False, "ClipMax"),
    (1, 6, 16, 3, 15, {"pads": [1, 1]}, True, True, "Relu"),
    (1, 5, 7, 4, 17, {"pads": [0, 3], "strides": [3], "dilations": [2]}, False, False, "Clip"),
    (1, 3, 32, 5, 9, {}, True, True, None),
    (1, 4, 90, 3, 8, {"pads": [1, 1]}, True, False, "Relu"),  # 4-block panels, then 2 blocks, one padded
    (2, 2, 80, 1, (3, 4), {}, True, False, None),  # 4-block panels, then 1 whole block
]


@pytest.mark.parametrize("case", CASES, ids=lambda c: f"{c[0]}d-c{c[1]}-o{c[2]}-{c[8] or 'none'}{'-bn' if c[7] else ''}")
def test_conv_against_float64(case):
    rank, cin, cout, k, size, attrs, bias, bn, act = case
    model = _model(rank, cin, cout, k, size, conv_attrs=attrs, bias=bias, bn=bn, act=act)
    ops = _fused(model)
    assert ops[0] == CONV and "BatchNormalization" not in ops and not {"Relu", "Clip", "LeakyRelu"} & set(ops)
    for batch in (1, 3):  # one module, the batch symbolic
        _check(model, _feeds(model, batch))


@pytest.mark.parametrize("mode", ["SAME_UPPER", "SAME_LOWER", "VALID"])
def test_auto_pad(mode):
    model = _model(2, 2, 6, (3, 4), (7, 9), conv_attrs={"strides": [2, 2]}, auto_pad=mode, bn=True, act="Relu")
    assert _fused(model)[0] == CONV
    _check(model, _feeds(model, 2))


def test_clip_with_opset_6_attributes():
    model = _model(2, 2, 4, 3, (6, 6), conv_attrs={"pads": [1, 1, 1, 1]}, opset=10)
    node = model.graph.node[-1]
    node.op_type = "Clip"
    node.attribute.extend([helper.make_attribute("min", -0.1), helper.make_attribute("max", 0.25)])
    assert _fused(model) == [CONV]
    _check(model, _feeds(model, 2))


def test_bn_read_elsewhere_is_not_folded_and_conv_kept_where_it_does_not_fit():
    model = _model(2, 2, 4, 3, (6, 6), bn=True, act="Relu")
    model.graph.output.append(helper.make_tensor_value_info("c", TensorProto.FLOAT, None))  # the Conv output read
    ops = _fused(model)
    assert ops == [CONV, "BatchNormalization", "Relu"]
    _check(model, _feeds(model, 2))
    grouped = _model(2, 4, 4, 3, (6, 6), conv_attrs={"group": 2})
    grouped.graph.initializer[0].CopyFrom(numpy_helper.from_array(
        np.random.default_rng(3).uniform(-.5, .5, (4, 2, 3, 3)).astype(np.float32), "W"))
    assert _fused(grouped)[0] == "Conv"
    _check(grouped, _feeds(grouped, 2))


def test_symbolic_spatial_size_falls_back_to_upstream():
    model = _model(2, 3, 8, 3, (6, 6), conv_attrs={"pads": [1, 1, 1, 1]}, bn=True, act="Clip")
    dims = model.graph.input[0].type.tensor_type.shape.dim
    dims[3].ClearField("dim_value")
    dims[3].dim_param = "W"
    assert _fused(model)[0] == CONV
    _check(model, {"X": np.random.default_rng(2).standard_normal((2, 3, 6, 7))})
