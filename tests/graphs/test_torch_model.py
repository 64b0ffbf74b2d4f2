"""Parameter counts against the closed-form formulas of each cell and bias mode."""
from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch

from rnnc.graphs.spec import parse_spec
from rnnc.graphs.torch_model import build_torch_model, parameter_count
from tests.conftest import make_spec

GATES = {"rnn": 1, "lstm": 4, "gru": 3}
BIASES = {True: 2, "single": 1, False: 0}


def expected_params(cell: str, bias, inp: int, hidden: int, layers: int, directions: int) -> int:
    total = 0
    for layer in range(layers):
        size = inp if layer == 0 else hidden * directions
        total += directions * GATES[cell] * (hidden * (size + hidden) + BIASES[bias] * hidden)
    return total


@pytest.mark.parametrize("cell, bias, layers, bidirectional",
                         list(itertools.product(["rnn", "lstm", "gru"], [True, "single", False], [1, 3], [False, True])))
def test_parameter_count_matches_formula(cell, bias, layers, bidirectional) -> None:
    spec = parse_spec(make_spec(input={"type": "tokens", "vocab_size": 11, "embedding_dim": 6},
                                rnn={"cell": cell, "hidden_size": 7, "num_layers": layers,
                                     "bidirectional": bidirectional, "bias": bias},
                                output={"mode": "many_to_one", "dense": {"units": 3}}))
    d = 2 if bidirectional else 1
    want = 11 * 6 + expected_params(cell, bias, 6, 7, layers, d) + (7 * d * 3 + 3)
    assert parameter_count(build_torch_model(spec)) == want


def test_keras_example_has_164106_parameters() -> None:
    spec = parse_spec({"name": "keras", "input": {"type": "tokens", "vocab_size": 1000, "embedding_dim": 64},
                       "rnn": {"cell": "lstm", "hidden_size": 128, "bias": "single"},
                       "output": {"mode": "many_to_one", "dense": {"units": 10, "activation": "softmax"}}})
    assert parameter_count(build_torch_model(spec)) == 64_000 + 98_816 + 1_290 == 164_106


def test_weights_follow_the_seed() -> None:
    a, b, c = (build_torch_model(parse_spec(make_spec(seed=s))) for s in (1, 1, 2))
    wa, wb, wc = (m.rnn.weight_hh_l0.detach().numpy() for m in (a, b, c))
    assert np.array_equal(wa, wb) and not np.array_equal(wa, wc)


def test_gates_do_not_saturate() -> None:
    """Pre-activations of a wide input stay in the gates' sensitive range."""
    spec = parse_spec(make_spec(input={"type": "features", "features": 1024},
                                rnn={"cell": "lstm", "hidden_size": 16}))
    m = build_torch_model(spec)
    x = torch.randn(64, 1024)
    pre = (x @ m.rnn.weight_ih_l0.T + m.rnn.bias_ih_l0 + m.rnn.bias_hh_l0).detach()
    assert 0.3 < float(pre.std()) < 1.0
