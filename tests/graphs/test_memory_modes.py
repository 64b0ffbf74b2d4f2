"""The modes with memory (SPEC section 1): rnn.state, one_to_many, encoder_decoder. Their rules,
one line each; the torch module, its script and the ONNX graph (on ONNX Runtime) computing the same."""
from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest
import torch

from rnnc.errors import UserError
from rnnc.graphs.from_spec import model_from_spec
from rnnc.graphs.limits import parameter_count as closed_form
from rnnc.graphs.spec import parse_spec
from rnnc.graphs.torch_model import parameter_count
from tests.conftest import make_spec

TOKENS = {"type": "tokens", "vocab_size": 11, "embedding_dim": 4}
FEATURES = {"type": "features", "features": 3}


def generator(cell: str = "lstm", tokens: bool = True, **rnn: object) -> dict:
    head = {"units": 11, "activation": "softmax"} if tokens else {"units": 3, "activation": "tanh"}
    return make_spec(input=TOKENS if tokens else FEATURES, rnn={"cell": cell, "hidden_size": 8, **rnn},
                     output={"mode": "one_to_many", "steps": 5, "dense": head})


def translator(cell: str = "lstm", dec_cell: str = "lstm", tokens: bool = True, **rnn: object) -> dict:
    width = 8 * (2 if rnn.get("bidirectional") else 1)
    return make_spec(input=TOKENS if tokens else FEATURES, rnn={"cell": cell, "hidden_size": 8, **rnn},
                     output={"mode": "encoder_decoder"},
                     decoder={"cell": dec_cell, "hidden_size": width, "vocab_size": 9, "embedding_dim": 3,
                              "max_steps": 6, "start_token": 1})


def problems(data: dict) -> list[str]:
    with pytest.raises(UserError) as info:
        parse_spec(data)
    return info.value.problems


@pytest.mark.parametrize("data, expected", [
    (make_spec(rnn={"cell": "lstm", "hidden_size": 8, "bidirectional": True, "state": True}),
     "rnn.state: a bidirectional network cannot stream"),
    (make_spec(rnn={"cell": "lstm", "hidden_size": 8, "state": "yes"}), "rnn.state: must be true or false"),
    ({**generator(), "output": {"mode": "one_to_many", "steps": 5, "dense": {"units": 10, "activation": "softmax"}}},
     "output.dense.units: must equal input.vocab_size = 11"),
    ({**generator(), "output": {"mode": "one_to_many", "steps": 5, "dense": {"units": 11}}},
     "output.dense.activation: must be softmax for token generation"),
    ({**generator(tokens=False), "output": {"mode": "one_to_many", "steps": 5, "dense": {"units": 4}}},
     "output.dense.units: must equal input.features = 3"),
    ({**generator(), "output": {"mode": "one_to_many", "steps": 5}}, "output.dense: required for mode one_to_many"),
    ({**generator(), "output": {"mode": "one_to_many", "dense": {"units": 11, "activation": "softmax"}}},
     "output.steps: required for mode one_to_many"),
    ({**generator(), "output": {"mode": "one_to_many", "steps": 0, "dense": {"units": 11, "activation": "softmax"}}},
     "output.steps: must be >= 1, got 0"),
    (generator(bidirectional=True), "rnn.bidirectional: one_to_many generates one step at a time"),
    (make_spec(output={"mode": "many_to_many", "steps": 4}), "output.steps: only for mode one_to_many"),
    ({**translator(), "decoder": {**translator()["decoder"], "hidden_size": 9}},
     "decoder.hidden_size: must equal rnn.hidden_size x directions = 8"),
    ({**translator(bidirectional=True), "decoder": {**translator()["decoder"], "hidden_size": 8}},
     "decoder.hidden_size: must equal rnn.hidden_size x directions = 16"),
    ({**translator(), "decoder": {**translator()["decoder"], "start_token": 9}},
     "decoder.start_token: must be in [0, decoder.vocab_size) = [0, 9), got 9"),
    ({**translator(), "decoder": {**translator()["decoder"], "start_token": -1}}, "decoder.start_token: must be in"),
    ({**translator(), "output": {"mode": "encoder_decoder", "dense": {"units": 9}}},
     "output.dense: an encoder-decoder has no head"),
    (translator(state=True), "rnn.state: an encoder-decoder starts its decoder"),
    (make_spec(output={"mode": "encoder_decoder"}), "decoder: required for mode encoder_decoder"),
    ({**make_spec(), "decoder": translator()["decoder"]}, "decoder: only for mode encoder_decoder"),
    ({**translator(), "decoder": {**translator()["decoder"], "max_steps": 0}}, "decoder.max_steps: must be >= 1"),
    ({**translator(), "decoder": {**translator()["decoder"], "cell": "gru", "nonlinearity": "relu"}},
     "decoder.nonlinearity: only cell rnn takes a nonlinearity"),
])
def test_each_rule_is_one_line_naming_its_field(data: dict, expected: str) -> None:
    found = problems(data)
    assert len(found) == 1, found
    assert found[0].startswith(expected), found


def test_every_rule_at_once_with_the_field_errors() -> None:
    data = translator(bidirectional=True, state=True)
    data["decoder"] = {**data["decoder"], "hidden_size": 8, "start_token": 99, "embedding_dim": 0}
    data["output"] = {"mode": "encoder_decoder", "dense": {"units": 3}}
    fields = sorted(p.split(":")[0] for p in problems(data))
    assert fields == ["decoder.embedding_dim", "decoder.hidden_size", "decoder.start_token", "output.dense",
                      "rnn.state", "rnn.state"]


def test_old_specs_keep_their_normalised_form_new_keys_appear_when_used() -> None:
    plain = parse_spec(make_spec()).normalised()
    assert "state" not in plain["rnn"] and "steps" not in plain["output"] and "decoder" not in plain
    assert parse_spec(generator(state=True)).normalised()["rnn"]["state"] is True
    assert parse_spec(generator()).normalised()["output"]["steps"] == 5
    decoder = parse_spec(translator(dec_cell="rnn")).normalised()["decoder"]
    assert decoder["nonlinearity"] == "tanh" and decoder["start_token"] == 1


@pytest.mark.parametrize("data", [translator(), translator("gru", "rnn", bidirectional=True, num_layers=2),
                                  translator("rnn", "gru", bias="single"), generator(num_layers=2, bias=False)])
def test_parameters_match_the_closed_form(data: dict) -> None:
    spec = parse_spec(data)
    assert closed_form(spec) == parameter_count(model_from_spec(spec).torch_module)


def _inputs(model, batch: int, seq: int, seed: int = 0) -> dict[str, np.ndarray]:
    return model.random_inputs(batch, seq, np.random.default_rng(seed))


CASES = {
    "stream lstm 2 layers": make_spec(rnn={"cell": "lstm", "hidden_size": 8, "num_layers": 2, "state": True}),
    "stream gru tokens many_to_one": make_spec(input=TOKENS, rnn={"cell": "gru", "hidden_size": 8, "state": True},
                                               output={"mode": "many_to_one", "dense": {"units": 2}}),
    "stream rnn relu": make_spec(rnn={"cell": "rnn", "hidden_size": 8, "nonlinearity": "relu", "state": True}),
    "generate tokens lstm": generator(),
    "generate tokens gru 2 layers, state": generator("gru", num_layers=2, state=True),
    "generate features rnn": generator("rnn", tokens=False),
    "generate features lstm, state": generator("lstm", tokens=False, state=True),
    "translate lstm->lstm": translator(),
    "translate bi-gru 2 layers->lstm (zero c)": translator("gru", "lstm", bidirectional=True, num_layers=2),
    "translate features rnn->gru": translator("rnn", "gru", tokens=False),
}


@pytest.mark.parametrize("case", list(CASES))
def test_torch_script_and_onnx_compute_the_same(case: str) -> None:
    model = model_from_spec(parse_spec(CASES[case]))
    inputs = _inputs(model, 3, 4)
    want = model.reference64(inputs)
    assert list(want) == model.output_names
    scripted = torch.jit.script(model.torch_module)
    with torch.inference_mode():
        args = [torch.from_numpy(inputs[n]) for n in model.input_names]
        eager, script = model.torch_module(*args), scripted(*args)
    eager, script = (o if isinstance(o, list) else [o] for o in (eager, script))
    session = ort.InferenceSession(model.onnx.SerializeToString(), providers=["CPUExecutionProvider"])
    assert [o.name for o in session.get_outputs()] == model.output_names
    onnx_out = session.run(None, inputs)
    for name, e, s, o in zip(model.output_names, eager, script, onnx_out):
        ref = want[name]
        assert e.shape == s.shape == o.shape == ref.shape, name
        if name == "generated":
            assert o.dtype == np.int64 and np.array_equal(o, ref) and np.array_equal(e.numpy(), ref)
        else:
            scale = np.abs(ref).max()
            for got in (e.numpy(), s.numpy(), o):
                assert np.abs(got - ref).max() <= 1e-5 * scale, name


def test_teacher_forcing_follows_the_given_tokens() -> None:
    model = model_from_spec(parse_spec(generator()))
    inputs = _inputs(model, 2, 5)
    free = model.reference64(inputs)
    assert np.array_equal(model.teacher64(inputs, free["generated"])["output"], free["output"])
    other = (free["generated"] + 1) % 11
    forced = model.teacher64(inputs, other)
    assert np.array_equal(forced["output"][:, 0], free["output"][:, 0])  # step 1 reads the given input
    assert not np.allclose(forced["output"][:, 1:], free["output"][:, 1:])


def test_state_pairs_and_io_by_mode() -> None:
    model = model_from_spec(parse_spec(generator("lstm", state=True)))
    assert model.state == {"h0": "h_n", "c0": "c_n"}
    assert [(t.name, t.dims) for t in model.inputs] == [("tokens", ("batch",)), ("h0", (1, "batch", 8)),
                                                       ("c0", (1, "batch", 8))]
    assert model.output_names == ["output", "generated", "h_n", "c_n"]
    assert model.shapes == [(2, 5)]  # one_to_many: the shapes' seq is the steps generated
    translate = model_from_spec(parse_spec(translator()))
    assert translate.state == {} and translate.output_names == ["output", "generated"]
    assert [t.dims for t in translate.outputs] == [("batch", 6, 9), ("batch", 6)]


@pytest.mark.parametrize("case", list(CASES))
def test_summary_shows_every_layer_and_the_closed_form_total(case: str) -> None:
    from rnnc.graphs.summary import render, summarize

    model = model_from_spec(parse_spec(CASES[case]))
    rows = summarize(model)
    assert sum(r.params for r in rows) == closed_form(model.spec) == parameter_count(model.torch_module)
    names = [r.name for r in rows]
    spec = model.spec
    if spec.decoder is not None:
        assert names[-1] == "projection" and "decoder_embedding" in names
        assert sum(n.startswith("decoder_") and n != "decoder_embedding" for n in names) == spec.decoder.num_layers
        assert rows[-1].output_shape == f"(batch, {spec.steps}, {spec.decoder.vocab_size})"
    if spec.mode == "one_to_many":
        assert rows[-1].output_shape == f"(batch, {spec.steps}, {spec.output.dense.units})"
    assert f"Total params: {closed_form(spec):,}" in render(model, rows)
