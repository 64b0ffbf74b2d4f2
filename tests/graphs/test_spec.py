from __future__ import annotations

import pytest

from rnnc.errors import UserError
from rnnc.graphs.spec import parse_spec
from tests.conftest import make_spec


def problems(data: dict) -> list[str]:
    with pytest.raises(UserError) as info:
        parse_spec(data)
    return info.value.problems


def test_defaults_are_filled_in() -> None:
    spec = parse_spec({"name": "m", "input": {"type": "features", "features": 3},
                       "rnn": {"cell": "rnn", "hidden_size": 4}})
    data = spec.normalised()
    assert data["rnn"] == {"cell": "rnn", "hidden_size": 4, "num_layers": 1, "bidirectional": False,
                           "nonlinearity": "tanh", "bias": True}
    assert data["output"] == {"mode": "many_to_many", "dense": None}
    assert data["shapes"] == {"batch_sizes": [1, 8], "seq_lens": [16, 64, 256]}
    assert data["dtype"] == "float32" and data["seed"] == 0


def test_nonlinearity_is_dropped_for_gated_cells() -> None:
    assert "nonlinearity" not in parse_spec(make_spec()).normalised()["rnn"]


@pytest.mark.parametrize("change, expected", [
    ({"rnn": {"cell": "lstm", "hidden_size": 0}}, "rnn.hidden_size: must be >= 1, got 0"),
    ({"rnn": {"cell": "cnn", "hidden_size": 4}}, "rnn.cell: must be one of rnn, lstm or gru, got 'cnn'"),
    ({"rnn": {"cell": "lstm", "hidden_size": "big"}}, "rnn.hidden_size: must be an integer, got 'big'"),
    ({"rnn": {"cell": "gru", "hidden_size": 4, "nonlinearity": "relu"}},
     "rnn.nonlinearity: only cell rnn takes a nonlinearity, not cell gru"),
    ({"rnn": {"cell": "lstm", "hidden_size": 4, "hiden": 3}}, "rnn.hiden: unknown key"),
    ({"input": {"type": "tokens", "embedding_dim": 4}}, "input.vocab_size: required"),
    ({"input": {"type": "pixels"}}, "input.type: must be one of tokens, features, got 'pixels'"),
    ({"name": "Bad Name"}, "name: must match"),
    ({"rnn": {"cell": "lstm", "hidden_size": 4, "bias": "double"}}, "rnn.bias: must be one of true, false or single"),
    ({"rnn": {"cell": "lstm", "hidden_size": 4, "bidirectional": "yes"}}, "rnn.bidirectional: must be true or false"),
    ({"output": {"mode": "many_to_one", "dense": {"units": 3, "activation": "gelu"}}}, "output.dense.activation:"),
    ({"shapes": {"batch_sizes": [], "seq_lens": [3]}}, "shapes.batch_sizes: must not be empty"),
    ({"shapes": {"batch_sizes": [1], "seq_lens": [0]}}, "shapes.seq_lens.0: must be >= 1, got 0"),
    ({"extra": 1}, "extra: unknown key"),
])
def test_each_problem_names_its_field(change: dict, expected: str) -> None:
    found = problems(make_spec(**change))
    assert len(found) == 1, found
    assert found[0].startswith(expected), found


def test_every_problem_is_reported_at_once() -> None:
    found = problems(make_spec(rnn={"cell": "lstm", "hidden_size": 0, "num_layers": 0, "typo": 1}, dtype="int8"))
    assert sorted(p.split(":")[0] for p in found) == ["dtype", "rnn.hidden_size", "rnn.num_layers", "rnn.typo"]


def test_spec_must_be_a_mapping() -> None:
    with pytest.raises(UserError, match="a spec is a YAML mapping"):
        parse_spec([1, 2])
