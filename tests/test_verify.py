"""`verify.compare`: worst absolute and normwise relative error over named outputs, and its problems."""
from __future__ import annotations

import numpy as np

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
