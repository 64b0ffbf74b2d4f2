"""One float64 oracle: a spec model's torch twin (`reference64`) against `reference.py` on its ONNX graph.

Both run in float64 from the same float32-rounded weights, so they agree to rounding (1e-12
normwise), and `verify` may trust either. The cases cover every pair of the factors below
(all-pairs, built greedily), not the whole product, to keep the file fast.
"""
from __future__ import annotations

import itertools

import numpy as np
import pytest

from rnnc.graphs.from_spec import model_from_spec
from rnnc.graphs.reference import float64_reference
from rnnc.graphs.spec import parse_spec
from tests.conftest import make_spec

FACTORS = {
    "cell": [("rnn", "tanh"), ("rnn", "relu"), ("lstm", None), ("gru", None)],
    "bidirectional": [False, True],
    "num_layers": [1, 2],
    "input": [{"type": "tokens", "vocab_size": 13, "embedding_dim": 4}, {"type": "features", "features": 3}],
    "mode": ["many_to_many", "many_to_one"],
    "bias": [True, "single", False],
    "dense": [None, {"units": 5, "activation": "softmax"}, {"units": 2, "activation": "none"}],
}
SHAPES = [(1, 1), (3, 7)]
RTOL = 1e-12


def _all_pairs(factors: dict[str, list]) -> list[dict]:
    """A few cases in which every pair of values of every two factors appears at least once."""
    index = [range(len(v)) for v in factors.values()]
    columns = list(itertools.combinations(range(len(index)), 2))

    def pairs(case: tuple[int, ...]) -> set[tuple[int, int, int, int]]:
        return {(a, case[a], b, case[b]) for a, b in columns}

    todo = {(a, i, b, j) for a, b in columns for i in index[a] for j in index[b]}
    cases = []
    while todo:  # the full case that covers the most pairs still missing, first one on ties
        best = max(itertools.product(*index), key=lambda case: len(pairs(case) & todo))
        todo -= pairs(best)
        cases.append({n: values[k] for (n, values), k in zip(factors.items(), best)})
    return cases


CASES = _all_pairs(FACTORS)


def _id(case: dict) -> str:
    cell, act = case["cell"]
    dense = case["dense"]
    return "-".join([cell + (f"_{act}" if act else ""), "bi" if case["bidirectional"] else "uni",
                     f"L{case['num_layers']}", case["input"]["type"], case["mode"], f"bias_{case['bias']}",
                     dense["activation"] if dense else "nohead"])


def _spec(case: dict):
    cell, act = case["cell"]
    rnn = {"cell": cell, "hidden_size": 6, "num_layers": case["num_layers"],
           "bidirectional": case["bidirectional"], "bias": case["bias"]}
    if act:
        rnn["nonlinearity"] = act
    output = {"mode": case["mode"]} | ({"dense": case["dense"]} if case["dense"] else {})
    return parse_spec(make_spec(input=case["input"], rnn=rnn, output=output, seed=3))


def test_the_cases_are_few() -> None:
    assert len(CASES) <= 16


@pytest.mark.parametrize("case", CASES, ids=[_id(c) for c in CASES])
def test_torch_twin_equals_the_onnx_reference(case: dict) -> None:
    model = model_from_spec(_spec(case))
    oracle = float64_reference(model.onnx)
    rng = np.random.default_rng(CASES.index(case))
    for batch, seq in SHAPES:
        inputs = model.random_inputs(batch, seq, rng)
        twin, ref = model.reference64(inputs), oracle(inputs)
        assert set(twin) == set(ref) == {"output"}
        for name in ref:
            a, b = np.asarray(twin[name]), np.asarray(ref[name])
            assert a.dtype == b.dtype == np.float64 and a.shape == b.shape
            scale = float(np.max(np.abs(b)))
            assert scale > 0, f"{name} at {batch}x{seq} is all zeros: the comparison would prove nothing"
            rel = float(np.max(np.abs(a - b))) / scale
            assert rel <= RTOL, f"{name} at batch {batch} seq {seq}: normwise rel err {rel:.3g} > {RTOL:g}"
