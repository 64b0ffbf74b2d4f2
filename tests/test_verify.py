"""`verify.compare`: worst absolute and normwise relative error over named outputs, and its problems."""
from __future__ import annotations

import numpy as np
import pytest

from rnnc.records.manifest import Errors
from rnnc.verify import compare


def _errors(outputs: dict, reference: dict) -> tuple[float, float, list[str]]:
    e = compare(outputs, reference)
    assert isinstance(e, Errors) and all(isinstance(p, str) for p in e.problems)
    return e.max_abs_err, e.rel_err, list(e.problems)


REF = np.array([[1.0, -4.0], [2.0, 0.5]])


def test_exact_match_has_no_error() -> None:
    assert _errors({"output": REF.copy()}, {"output": REF}) == (0.0, 0.0, [])


def test_a_known_perturbation_gives_exact_errors() -> None:
    got = REF.copy()
    got[1, 0] += 0.25  # exact in binary: |err| 0.25, max|ref| 4
    got[0, 1] -= 0.125
    abs_err, rel_err, problems = _errors({"output": got}, {"output": REF})
    assert (abs_err, rel_err, problems) == (0.25, 0.0625, [])


def test_the_worst_output_counts() -> None:
    a_ref, b_ref = np.array([8.0, 1.0]), np.array([0.5, -0.25])
    outputs = {"a": a_ref + [1.0, 0.0], "b": b_ref + [0.0, 0.25]}  # a: abs 1, rel 1/8; b: abs 0.25, rel 1/2
    assert _errors(outputs, {"a": a_ref, "b": b_ref}) == (1.0, 0.5, [])


def test_a_missing_output_is_a_problem_naming_it() -> None:
    _, _, problems = _errors({"output": REF}, {"output": REF, "h_n": REF})
    assert len(problems) == 1 and "'h_n'" in problems[0] and "missing" in problems[0]


def test_a_shape_mismatch_names_the_output_and_both_shapes() -> None:
    _, _, problems = _errors({"output": np.zeros((2, 3))}, {"output": np.zeros((3, 2))})
    assert len(problems) == 1
    assert "'output'" in problems[0] and "[2, 3]" in problems[0] and "[3, 2]" in problems[0]


def test_non_finite_values_are_counted() -> None:
    got = REF.copy()
    got[0, 0], got[1, 1], got[1, 0] = np.nan, np.inf, -np.inf
    _, _, problems = _errors({"output": got}, {"output": REF})
    assert len(problems) == 1 and "'output'" in problems[0] and "3 non-finite" in problems[0]


def test_a_zero_reference_gives_the_absolute_error() -> None:
    with np.errstate(all="raise"):  # no division by zero anywhere
        abs_err, rel_err, problems = _errors({"output": np.array([0.0, -0.5, 0.25])}, {"output": np.zeros(3)})
    assert (abs_err, rel_err, problems) == (0.5, 0.5, [])


def test_an_empty_output_has_no_error() -> None:
    empty = np.zeros((0, 4))
    assert _errors({"output": empty}, {"output": empty.copy()}) == (0.0, 0.0, [])


def test_float32_output_against_float64_reference() -> None:
    ref = np.array([1.0, 2.0, 1.0 / 3.0])
    got = ref.astype(np.float32)
    abs_err, rel_err, problems = _errors({"output": got}, {"output": ref})
    want = float(np.max(np.abs(got.astype(np.float64) - ref)))
    assert problems == [] and abs_err == want > 0 and rel_err == want / 2.0
    assert rel_err < 1e-7  # float32 rounding only


def test_errors_are_plain_floats() -> None:
    abs_err, rel_err, _ = _errors({"output": np.float32(3.0) * np.ones(2)}, {"output": np.full(2, 2.0)})
    assert type(abs_err) is float and type(rel_err) is float and (abs_err, rel_err) == (1.0, 0.5)


def test_verify_is_normwise_over_every_shape() -> None:
    """rel_err = the worst output's largest error over all shapes / its largest |reference| over
    all shapes; each shape keeps its own errors in per_shape. A runner off by a fixed 1e-6 passes
    even where one shape's outputs are small, and one off by 1e-3 fails."""
    from rnnc.graphs.from_spec import model_from_spec
    from rnnc.graphs.spec import parse_spec
    from rnnc.targets.base import Runner
    from rnnc.verify import verify
    from tests.conftest import make_spec

    model = model_from_spec(parse_spec(make_spec()))

    class Off(Runner):
        def __init__(self, delta: float) -> None:
            super().__init__(model.inputs, model.output_names)
            self.delta = delta

        def _prepare(self, arrays):
            return lambda: {k: v + self.delta for k, v in model.reference64(arrays).items()}

    results = verify(model, {"close": Off(1e-7), "far": Off(1e-3)}, [(1, 1), (3, 5)], seed=3)
    close = results["close"]
    scale = max(1e-7 / s.rel_err for s in close.per_shape)  # max|ref| of each shape, the largest
    assert close.passed and close.rel_err == pytest.approx(1e-7 / scale, rel=1e-6)
    assert close.rel_err <= max(s.rel_err for s in close.per_shape)
    assert not results["far"].passed


# -- chains of calls with the state carried ------------------------------------------------------

def _stateful_rnn(tmp_path):
    """An ONNX RNN taking its state as input `h0` and giving the next one as `hn`."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    w, r = rng.uniform(-0.4, 0.4, (1, 6, 3)), rng.uniform(-0.4, 0.4, (1, 6, 6))
    inits = [numpy_helper.from_array(a.astype(np.float32), n) for a, n in ((w, "W"), (r, "R"))]
    inputs = [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["seq", "batch", 3]),
              helper.make_tensor_value_info("h0", TensorProto.FLOAT, [1, "batch", 6])]
    outputs = [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["seq", 1, "batch", 6]),
               helper.make_tensor_value_info("hn", TensorProto.FLOAT, [1, "batch", 6])]
    node = helper.make_node("RNN", ["x", "W", "R", "", "", "h0"], ["y", "hn"], hidden_size=6)
    path = tmp_path / "stateful.onnx"
    onnx.save(helper.make_model(helper.make_graph([node], "g", inputs, outputs, inits),
                                opset_imports=[helper.make_opsetid("", 17)]), path)
    return path


def test_a_chain_catches_drift_one_call_does_not(tmp_path) -> None:
    """A runner whose state drifts by 1e-7 more each call passes one call and fails a chain of 300:
    the chain carries each side's own state, so the drift is seen."""
    from rnnc.graphs.from_onnx import model_from_onnx
    from rnnc.targets.base import Runner
    from rnnc.verify import verify, verify_chain

    model = model_from_onnx(_stateful_rnn(tmp_path), {"x": (4, 2, 3), "h0": (1, 2, 6)})
    assert model.state == {"h0": "hn"}

    class Drifting(Runner):
        calls = 0

        def _prepare(self, arrays):
            def call():
                Drifting.calls += 1
                out = {k: np.asarray(v, np.float32) for k, v in model.reference64(arrays).items()}
                out["hn"] = out["hn"] + np.float32(1e-7 * Drifting.calls)
                return out
            return call

    runner = Drifting(model.inputs, model.output_names)
    assert verify(model, {"drifting": runner}, model.shapes, seed=1)["drifting"].passed
    chained = verify_chain(model, {"drifting": runner}, 300, seed=1)["drifting"]
    assert chained.chain == 300 and not chained.passed and chained.rel_err > 1e-5


def test_chain_needs_state_pairs(tmp_path) -> None:
    from rnnc.errors import UserError
    from rnnc.graphs.from_onnx import model_from_onnx
    from rnnc.verify import verify_chain

    model = model_from_onnx(_stateful_rnn(tmp_path), {"x": (4, 2, 3), "h0": (1, 2, 6)})
    model.state = {}
    with pytest.raises(UserError, match="no state pairs"):
        verify_chain(model, {}, 10)


def test_an_output_of_the_wrong_kind_is_a_problem() -> None:
    """1.0 where the reference says True is not equal: flags, integers and reals are told apart
    (a float32 output against a float64 reference is the precision under test, not a problem)."""
    mask = np.array([True, False])
    _, _, problems = _errors({"z": mask.astype(np.float32)}, {"z": mask})
    assert problems == ["output 'z' is float32, expected bool"]
    assert _errors({"y": REF.astype(np.float32)}, {"y": REF})[2] == []
    assert _errors({"t": np.array([1, 2], np.int32)}, {"t": np.array([1, 2], np.int64)})[2] == []
