"""`--bind` (constant inputs, folding, If inlining), `--state` (pairs found and checked), and the bad
inputs of both: one line each, exit 2 (SPEC section 2)."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper

from rnnc.errors import UserError
from rnnc.graphs.bind import bind_inputs, fold_constants, parse_bind
from rnnc.graphs.from_onnx import model_from_onnx
from rnnc.graphs.state import parse_state, state_pairs
from rnnc.records.manifest import TensorInfo


def _branching(tmp_path: Path) -> Path:
    """y = relu(x) if sr == 16000 else -x, sr an int64 scalar input."""
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["b", 4])
    sr = helper.make_tensor_value_info("sr", TensorProto.INT64, [])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["b", 4])
    out = lambda n: helper.make_tensor_value_info(n, TensorProto.FLOAT, ["b", 4])  # noqa: E731
    then = helper.make_graph([helper.make_node("Relu", ["x"], ["t"])], "then", [], [out("t")])
    other = helper.make_graph([helper.make_node("Neg", ["x"], ["e"])], "else", [], [out("e")])
    nodes = [helper.make_node("Equal", ["sr", "k"], ["c"]),
             helper.make_node("If", ["c"], ["y"], then_branch=then, else_branch=other, name="pick")]
    graph = helper.make_graph(nodes, "g", [x, sr], [y], [numpy_helper.from_array(np.array(16000, np.int64), "k")])
    path = tmp_path / "branching.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)
    return path


def test_parse_bind() -> None:
    values = parse_bind("sr=16000, gain=0.5,flag=true")
    assert values["sr"].dtype == np.int64 and values["sr"] == 16000
    assert values["gain"] == 0.5 and values["flag"].dtype == bool
    with pytest.raises(UserError) as err:
        parse_bind("sr,x=abc,y=missing.npy")
    assert len(err.value.problems) == 3


def test_bound_branch_folds_away_and_unbound_draws_both_sides(tmp_path: Path) -> None:
    path = _branching(tmp_path)
    free = model_from_onnx(path, {"x": (2, 4)})
    sr = next(t for t in free.inputs if t.name == "sr")
    assert sr.values == (15999, 16000, 16001)  # the constant it is compared with, and neighbours
    assert "If" in {n.op_type for n in free.onnx.graph.node}
    bound = model_from_onnx(path, {"x": (2, 4)}, bind={"sr": np.array(16000)})
    assert bound.input_names == ["x"] and "If" not in {n.op_type for n in bound.onnx.graph.node}
    x = np.array([[-1.0, 2.0, -3.0, 4.0]] * 2, np.float32)
    assert np.array_equal(bound.reference64({"x": x})["y"], np.maximum(x, 0))
    other = model_from_onnx(path, {"x": (2, 4)}, bind={"sr": np.array(8000)})
    assert np.array_equal(other.reference64({"x": x})["y"], -x)


@pytest.mark.parametrize("bind, words", [
    ({"rate": np.array(1)}, "no input named 'rate'"),
    ({"sr": np.array(1.5)}, "1.5 is not an integer"),
    ({"sr": np.array([1, 2])}, "shape [2] for a scalar input"),
    ({"x": np.zeros((3,), np.float32)}, "of shape ?x4"),
])
def test_bad_bind_is_one_line(tmp_path: Path, bind: dict, words: str) -> None:
    with pytest.raises(UserError) as err:
        model_from_onnx(_branching(tmp_path), {"x": (2, 4)}, bind=bind)
    assert len(err.value.problems) == 1 and words in err.value.problems[0]


def test_fold_evaluates_constant_chains() -> None:
    w = numpy_helper.from_array(np.arange(6, dtype=np.float32).reshape(2, 3), "w")
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [3, 2])
    nodes = [helper.make_node("Transpose", ["w"], ["wt"]), helper.make_node("Add", ["x", "wt"], ["y"])]
    graph = helper.make_graph(nodes, "g", [x], [helper.make_tensor_value_info("y", TensorProto.FLOAT, [3, 2])], [w])
    folded = fold_constants(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]))
    assert [n.op_type for n in folded.graph.node] == ["Add"]
    assert {t.name for t in folded.graph.initializer} == {"wt"}


def test_bind_unknown_input_lists_the_inputs(tmp_path: Path) -> None:
    proto = onnx.load(_branching(tmp_path))
    with pytest.raises(UserError, match="the model's inputs are 'x', 'sr'"):
        bind_inputs(proto, {"nope": np.array(1)})


def _info(name, dims, dtype="float32"):
    return TensorInfo(name, dtype, tuple(dims))


def test_state_pairs_found_by_name_and_shape() -> None:
    inputs = [_info("x", ["batch", "seq", 8]), _info("h0", [1, "batch", 16]), _info("c0", [1, "batch", 16]),
              _info("state", [2, "batch", 128]), _info("sr", [], "int64")]
    outputs = [_info("y", ["batch", "seq", 4]), _info("hn", [1, "batch", 16]), _info("cn", [1, "batch", 16]),
               _info("stateN", [2, "batch", 128])]
    assert state_pairs(inputs, outputs, None) == {"h0": "hn", "c0": "cn", "state": "stateN"}
    # a name match of another shape is no pair
    assert state_pairs([_info("h", [1, 8])], [_info("hn", [1, 9])], None) == {}


def test_state_given_is_checked() -> None:
    inputs, outputs = [_info("h0", [1, "batch", 16])], [_info("logits", ["batch", 10]), _info("hn", [1, "batch", 16])]
    assert state_pairs(inputs, outputs, parse_state("h0=hn")) == {"h0": "hn"}
    with pytest.raises(UserError, match="output 'logits' is float32 \\[batch, 10\\] but input 'h0'"):
        state_pairs(inputs, outputs, {"h0": "logits"})
    with pytest.raises(UserError, match="no output named 'h_out'"):
        state_pairs(inputs, outputs, {"h0": "h_out"})
    with pytest.raises(UserError):
        parse_state("h0")


def test_cli_bad_inputs_exit_2_with_one_line(tmp_path: Path, cli) -> None:
    path = _branching(tmp_path)
    for flags, words in ((["--bind", "sr=abc"], "--bind sr"), (["--bind", "nope=1"], "no input named 'nope'"),
                         (["--state", "x=y"], "--state x=y")):
        code, out, err = cli("compile", path, "--target", "cpu", "--shapes", "x:2x4", "--out", tmp_path / "o", *flags)
        lines = [line for line in err.splitlines() if line.strip()]
        assert code == 2 and len(lines) == 1 and words in lines[0] and "Traceback" not in err, (flags, err)


def test_manifest_records_bind_and_state(tmp_path: Path, cli) -> None:
    code, out, err = cli("compile", _branching(tmp_path), "--target", "cpu", "--backends", "onnxruntime",
                         "--shapes", "x:2x4", "--bind", "sr=8000", "--out", tmp_path / "o")
    assert code == 0, err
    manifest = json.loads((tmp_path / "o" / "manifest.json").read_text())
    assert manifest["source"]["bind"] == {"sr": {"dtype": "int64", "value": 8000}}
    assert manifest["state"] == {} and [i["name"] for i in manifest["io"]["inputs"]] == ["x"]
    code, out, err = cli("verify", tmp_path / "o")
    assert code == 0, err


def test_if_whose_branches_disagree_is_refused(tmp_path: Path, cli) -> None:
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 4])
    c = helper.make_tensor_value_info("c", TensorProto.BOOL, [])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 4])
    then = helper.make_graph([helper.make_node("Relu", ["x"], ["t"])], "then", [],
                             [helper.make_tensor_value_info("t", TensorProto.FLOAT, [2, 4])])
    other = helper.make_graph([helper.make_node("ReduceSum", ["x"], ["e"], keepdims=0)], "else", [],
                              [helper.make_tensor_value_info("e", TensorProto.FLOAT, [])])
    node = helper.make_node("If", ["c"], ["y"], then_branch=then, else_branch=other, name="pick")
    path = tmp_path / "disagree.onnx"
    onnx.save(helper.make_model(helper.make_graph([node], "g", [x, c], [y]),
                                opset_imports=[helper.make_opsetid("", 17)]), path)
    code, out, err = cli("compile", path, "--target", "cpu", "--out", tmp_path / "o")
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 2 and len(lines) == 1, err
    assert "If node 'pick': output 0 is float32 [2, 4] in then_branch but float32 [] in else_branch" in lines[0]


class _PassThrough(torch.nn.Module):
    """Returns its inputs as a list: torch.onnx cannot export it, so the model has no ONNX graph."""

    def forward(self, features: torch.Tensor, h0: torch.Tensor) -> list[torch.Tensor]:
        return [features * 2, h0 + 1]


def test_state_pairs_of_a_torchscript_model_without_an_onnx_graph(tmp_path) -> None:
    path = tmp_path / "pass.ts"
    torch.jit.save(torch.jit.script(_PassThrough()), str(path))
    from rnnc.graphs import load_model, model_from_source

    model = load_model(path, {"features": (1, 1, 4), "h0": (1, 1, 3)}, state={"h0": "output_1"})
    assert model.onnx is None and model.state == {"h0": "output_1"}
    assert model.source["state"] == {"h0": "output_1"}  # what a compiled DIR rebuilds it from
    with pytest.raises(UserError, match="no output named 'hn'"):
        load_model(path, {"features": (1, 1, 4), "h0": (1, 1, 3)}, state={"h0": "hn"})
    (tmp_path / "source.ts").write_bytes(path.read_bytes())
    assert model_from_source({**model.source, "file": "source.ts"}, tmp_path).state == {"h0": "output_1"}
