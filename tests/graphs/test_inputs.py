"""`check_inputs`, the one boundary every runner puts the user's arrays through."""
from __future__ import annotations

import numpy as np
import pytest

from rnnc.errors import UserError
from rnnc.graphs.inputs import check_inputs
from rnnc.records.manifest import TensorInfo

TOKENS = TensorInfo("tokens", "int64", ("batch", "seq"), high=10)
LENGTHS = TensorInfo("lengths", "int32", ("batch",))
FEATURES = TensorInfo("x", "float32", ("batch", "seq", 4))


def refused(inputs, arrays) -> str:
    with pytest.raises(UserError) as err:
        check_inputs(inputs, arrays)
    assert len(err.value.problems) == 1
    return err.value.problems[0]


def test_good_arrays_come_back_converted_and_contiguous():
    out = check_inputs([FEATURES], {"x": np.ones((3, 2, 4))[:, ::-1]})  # float64, not contiguous
    assert out["x"].dtype == np.float32 and out["x"].flags.c_contiguous
    out = check_inputs([TOKENS, LENGTHS], {"tokens": np.array([[1, 9]], np.uint8), "lengths": [2]})
    assert out["tokens"].dtype == np.int64 and out["lengths"].dtype == np.int32


def test_names():
    assert "missing ['lengths']" in refused([TOKENS, LENGTHS], {"tokens": np.zeros((1, 1), int)})
    assert "unknown ['extra']" in refused([TOKENS], {"tokens": np.zeros((1, 1), int), "extra": 1})


def test_axes_shared_between_inputs_must_agree():
    message = refused([TOKENS, LENGTHS], {"tokens": np.zeros((2, 3), int), "lengths": np.ones(3)})
    assert "'lengths': batch is 3" in message and "2 in input 'tokens'" in message


def test_values_and_kinds():
    assert "values that fit int32, got 4294967296" in refused([LENGTHS], {"lengths": np.array([2**32])})
    assert "expected integer ids" in refused([TOKENS], {"tokens": np.zeros((1, 1), bool)})
    assert "expected float32 numbers, got an array of bool" in refused([FEATURES], {"x": np.zeros((1, 1, 4), bool)})
    assert "expected float32 numbers, got an array of object" in refused([FEATURES], {"x": np.array([None])})
    assert "expected rank 3" in refused([FEATURES], {"x": 1.0})
