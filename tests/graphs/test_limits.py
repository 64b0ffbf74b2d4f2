"""Spec limits: the closed-form parameter count against torch, and refusals that name the field."""
from __future__ import annotations

import itertools
import os

import pytest
import yaml

from rnnc import host
from rnnc.cli import main
from rnnc.errors import UserError
from rnnc.graphs import limits
from rnnc.graphs.limits import allocated_parameters, binary_size, check_limits, parameter_count
from rnnc.graphs.spec import parse_spec
from rnnc.graphs import torch_model
from rnnc.graphs.torch_model import build_torch_model
from tests.conftest import make_spec

GiB = 2**30
TOKENS = {"type": "tokens", "vocab_size": 11, "embedding_dim": 6}
FEATURES = {"type": "features", "features": 5}


def _spec(cell="lstm", bias=True, layers=1, bidirectional=False, inp=FEATURES, dense=None, hidden=7, **rnn):
    output = {"mode": "many_to_one"} | ({"dense": dense} if dense else {})
    return parse_spec(make_spec(input=inp, rnn={"cell": cell, "hidden_size": hidden, "num_layers": layers,
                                                "bidirectional": bidirectional, "bias": bias, **rnn},
                                output=output))


@pytest.mark.parametrize("cell, bias, layers, bidirectional, inp, dense", list(itertools.product(
    ["rnn", "lstm", "gru"], [True, "single", False], [1, 3], [False, True], [TOKENS, FEATURES],
    [None, {"units": 3}])))
def test_closed_form_is_what_torch_allocates(cell, bias, layers, bidirectional, inp, dense) -> None:
    spec = _spec(cell, bias, layers, bidirectional, inp, dense)
    module = build_torch_model(spec)
    assert parameter_count(spec) == torch_model.parameter_count(module)  # frozen zero biases excluded
    assert allocated_parameters(spec) == sum(p.numel() for p in module.parameters())


def test_keras_example() -> None:
    spec = parse_spec({"name": "keras", "input": {"type": "tokens", "vocab_size": 1000, "embedding_dim": 64},
                       "rnn": {"cell": "lstm", "hidden_size": 128, "bias": "single"},
                       "output": {"mode": "many_to_one", "dense": {"units": 10, "activation": "softmax"}}})
    assert parameter_count(spec) == 164_106
    assert allocated_parameters(spec) == 164_106 + 4 * 128  # the frozen recurrent biases


def test_a_normal_spec_passes() -> None:
    check_limits(_spec(inp=TOKENS, dense={"units": 3}))  # on this machine, whatever its memory
    check_limits(parse_spec(make_spec()), memory=4 * GiB)


def test_huge_hidden_size_is_refused_with_the_estimate() -> None:
    spec = _spec(hidden=100_000_000)
    params = 4 * 10**8 * (10**8 + 5) + 8 * 10**8
    assert parameter_count(spec) == params
    with pytest.raises(UserError) as err:
        check_limits(spec, memory=16 * GiB)
    (line,) = err.value.problems
    needed = limits.BYTES_PER_PARAMETER * params + limits.FIXED_BYTES
    assert line == (f"rnn.hidden_size: this model has 4.0e+16 parameters and needs about {needed:.1e} bytes "
                    f"({binary_size(needed)}) to compile; this machine has 16.0 GiB")
    assert binary_size(needed).endswith(" EiB")


def test_huge_hidden_size_is_refused_on_this_machine() -> None:
    with pytest.raises(UserError, match=r"^rnn\.hidden_size: this model has 4\.0e\+16 parameters"):
        check_limits(_spec(hidden=100_000_000))


def test_huge_vocabulary_names_vocab_size() -> None:
    spec = _spec(inp={"type": "tokens", "vocab_size": 10**10, "embedding_dim": 64})
    with pytest.raises(UserError) as err:
        check_limits(spec, memory=16 * GiB)
    (line,) = err.value.problems
    assert line.startswith("input.vocab_size: this model has 6.4e+11 parameters and needs about ")
    assert line.endswith(" TiB) to compile; this machine has 16.0 GiB")


@pytest.mark.parametrize("field, overrides", [
    ("input.embedding_dim", dict(inp={"type": "tokens", "vocab_size": 10, "embedding_dim": 10**10})),
    ("input.features", dict(inp={"type": "features", "features": 10**10})),
    ("rnn.num_layers", dict(layers=10**9)),
    ("output.dense.units", dict(dense={"units": 10**10})),
])
def test_the_dominant_field_is_named(field, overrides) -> None:
    with pytest.raises(UserError, match=rf"^{field.replace('.', '[.]')}: this model has "):
        check_limits(_spec(**overrides), memory=16 * GiB)


def test_unknown_memory_refuses_only_what_no_onnx_file_holds() -> None:
    check_limits(_spec(hidden=10_000), memory=0)  # 4.0e8 parameters, 1.5 GiB of weights: fits one file
    with pytest.raises(UserError, match="one ONNX file can hold"):
        check_limits(_spec(hidden=100_000_000), memory=0)


def test_sizes_beyond_a_float_still_print() -> None:
    with pytest.raises(UserError, match=r"^rnn\.hidden_size: this model has 4\.0e\+400 parameters .* YiB\)"):
        check_limits(_spec(hidden=10**200), memory=16 * GiB)
    assert binary_size(25_275_990_016) == "23.5 GiB" and binary_size(512) == "512 B"


def test_cli_compile_refuses_with_one_error_line(tmp_path, capsys, monkeypatch) -> None:
    monkeypatch.setattr(host, "memory_bytes", lambda: 16 * GiB)
    path = tmp_path / "huge.yaml"
    path.write_text(yaml.safe_dump(make_spec(rnn={"cell": "lstm", "hidden_size": 100_000_000})))
    code = main(["compile", str(path), "--target", "cpu", "--out", str(tmp_path / "out")])
    out, err = capsys.readouterr()
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1
    assert lines[0].startswith("error: rnn.hidden_size: this model has 4.0e+16 parameters")
    assert lines[0].endswith("this machine has 16.0 GiB") and "Traceback" not in err + out
    assert not (tmp_path / "out").exists()


def test_memory_bytes_is_the_physical_memory_at_most() -> None:
    memory = host.memory_bytes()
    assert isinstance(memory, int) and memory > 0
    try:
        assert memory <= os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (AttributeError, ValueError):
        pass


def test_weights_past_one_onnx_file_are_refused_on_any_machine():
    # hidden 12000: 4 * 12000 * (40 + 12000) + biases, about 578M parameters, 2.2 GiB of float32
    spec = parse_spec({"name": "big", "input": {"type": "features", "features": 40},
                       "rnn": {"cell": "lstm", "hidden_size": 12000}})
    with pytest.raises(UserError) as err:
        check_limits(spec, memory=2**50)
    assert len(err.value.problems) == 1
    assert err.value.problems[0].startswith("rnn.hidden_size: this model has 5.8e+08 parameters, 2.2 GiB")
    assert "one ONNX file can hold" in err.value.problems[0]
