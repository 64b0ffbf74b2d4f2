"""Bring your own TorchScript: saved ScriptModules of nn.RNN/LSTM/GRU, Embedding, Linear and
activations; the float64 reference against the eager module, the exported ONNX in ONNX Runtime."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from rnnc.errors import UserError
from rnnc.graphs.from_torchscript import model_from_torchscript
from tests.graphs.test_reference import assert_close, run_ort


class Tagger(torch.nn.Module):
    """Tokens -> embedding -> bidirectional LSTM -> Linear -> softmax, every step."""

    def __init__(self) -> None:
        super().__init__()
        self.embedding = torch.nn.Embedding(40, 6)
        self.rnn = torch.nn.LSTM(6, 5, num_layers=2, batch_first=True, bidirectional=True)
        self.dense = torch.nn.Linear(10, 4)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        y, _ = self.rnn(self.embedding(tokens))
        return torch.softmax(self.dense(y), dim=-1)


class Encoder(torch.nn.Module):
    """Features -> GRU (time-major) -> ReLU head on the final state; returns the state too."""

    def __init__(self, cell: str = "gru") -> None:
        super().__init__()
        rnn = {"gru": torch.nn.GRU, "rnn": torch.nn.RNN}[cell]
        self.rnn = rnn(3, 4, bidirectional=False)
        self.head = torch.nn.Linear(4, 2)

    def forward(self, features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        y, h = self.rnn(features)
        return torch.relu(self.head(h[-1])), h


class TwoInputs(torch.nn.Module):
    """Token ids and a float feature per step, concatenated before a plain RNN."""

    def __init__(self) -> None:
        super().__init__()
        self.embedding = torch.nn.Embedding(12, 3)
        self.rnn = torch.nn.RNN(4, 5, batch_first=True, nonlinearity="relu")

    def forward(self, ids: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        x = torch.cat([self.embedding(ids), weight], dim=-1)
        return torch.tanh(self.rnn(x)[0])


def script(module: torch.nn.Module, path: Path) -> Path:
    torch.manual_seed(0)
    torch.jit.save(torch.jit.script(module.eval()), str(path))
    return path


def check(model, eager: torch.nn.Module, batch: int = 3, seq: int = 5) -> None:
    feeds = model.random_inputs(batch, seq, np.random.default_rng(0))
    ref = model.reference64(feeds)
    assert all(v.dtype == np.float64 for v in ref.values())
    assert_close(run_ort(model.onnx, feeds), [ref[n] for n in model.output_names])
    args = [torch.from_numpy(feeds[t.name]) if t.dtype == "int64" else torch.from_numpy(feeds[t.name]).double()
            for t in model.inputs]
    with torch.inference_mode():
        want = eager.double()(*args)
    want = [want] if isinstance(want, torch.Tensor) else list(want)
    for name, w in zip(model.output_names, want):
        np.testing.assert_allclose(ref[name], w.numpy(), rtol=1e-10, atol=1e-12)


def test_tokens_lstm(tmp_path: Path) -> None:
    torch.manual_seed(0)
    eager = Tagger().eval()
    path = tmp_path / "tagger.pt"
    torch.jit.save(torch.jit.script(eager), str(path))
    model = model_from_torchscript(path, {"tokens": (2, 7)})
    assert model.name == "tagger" and model.torch_module is None
    assert [(t.name, t.dtype, t.dims, t.high) for t in model.inputs] == [("tokens", "int64", ("batch", "seq"), 40)]
    assert model.outputs[0].dims == ("batch", "seq", 4) and model.shapes == [(2, 7)]
    assert model.source == {"kind": "torchscript", "file": "source.ts", "name": "tagger", "shapes": {"tokens": [2, 7]}}
    assert "LSTM" in {n.op_type for n in model.onnx.graph.node}
    check(model, eager)


@pytest.mark.parametrize("cell", ["gru", "rnn"])
def test_time_major_features_with_tuple_output(cell: str, tmp_path: Path) -> None:
    torch.manual_seed(0)
    eager = Encoder(cell).eval()
    path = tmp_path / "enc.ts"
    torch.jit.save(torch.jit.script(eager), str(path))
    model = model_from_torchscript(path, {"features": (6, 2, 3)})
    assert model.inputs[0].dims == ("seq", "batch", 3) and model.inputs[0].dtype == "float32"
    assert model.output_names == ["output_0", "output_1"]
    check(model, eager)


def test_token_and_float_inputs(tmp_path: Path) -> None:
    torch.manual_seed(0)
    eager = TwoInputs().eval()
    path = tmp_path / "two.pt"
    torch.jit.save(torch.jit.script(eager), str(path))
    model = model_from_torchscript(path, {"ids": (2, 4), "weight": (2, 4, 1)})
    assert [(t.name, t.dtype, t.high) for t in model.inputs] == [("ids", "int64", 12), ("weight", "float32", None)]
    check(model, eager)


def test_shapes_are_required_by_argument_name(tmp_path: Path) -> None:
    path = script(TwoInputs(), tmp_path / "two.pt")
    with pytest.raises(UserError) as err:
        model_from_torchscript(path, {"ids": (2, 4)})
    assert err.value.problems == ["input 'weight' has no shape in TorchScript; give --shapes weight:1x16x8"]
    with pytest.raises(UserError) as err:
        model_from_torchscript(path, {"ids": (2, 4), "weight": (2, 4, 1), "x": (1,)})
    assert err.value.problems == ["--shapes: 'x' is not an argument of forward(ids, weight)"]


def test_not_a_torchscript_file(tmp_path: Path) -> None:
    for name, data in (("junk.pt", b"not a zip archive"), ("state.pt", None)):
        path = tmp_path / name
        if data is None:
            torch.save({"w": torch.zeros(2)}, path)  # a checkpoint, not a ScriptModule
        else:
            path.write_bytes(data)
        with pytest.raises(UserError) as err:
            model_from_torchscript(path, {"x": (1, 2)})
        assert len(err.value.problems) == 1 and err.value.problems[0].startswith(f"{path}: not a TorchScript file")


def test_operator_we_do_not_lower(tmp_path: Path) -> None:
    class Sorts(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.rnn = torch.nn.GRU(3, 4)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return torch.cumsum(self.rnn(x)[0], dim=0)

    path = script(Sorts(), tmp_path / "s.pt")
    with pytest.raises(UserError) as err:
        model_from_torchscript(path, {"x": (3, 1, 3)})
    assert any("unsupported operator CumSum" in p for p in err.value.problems)


def test_compile_through_the_cli(tmp_path: Path, cli) -> None:
    path = script(Tagger(), tmp_path / "tagger.pt")
    out = tmp_path / "out"
    code, stdout, err = cli("compile", path, "--target", "cpu", "--backends", "torchscript,onnxruntime",
                            "--shapes", "tokens:2x5", "--out", out)
    assert code == 0, err + stdout
    manifest = json.loads((out / "manifest.json").read_text())
    assert {b["status"] for b in manifest["backends"].values()} == {"ok"}
    assert (out / "source.ts").is_file() and (out / "model.ts").is_file()
    code, stdout, err = cli("verify", out, "--target", "cpu")
    assert code == 0, err + stdout


class WithState(torch.nn.Module):
    """Returns (y, (h, c)) as nn.LSTM does, and takes an argument with a default."""

    def __init__(self) -> None:
        super().__init__()
        self.rnn = torch.nn.LSTM(3, 4, batch_first=True)

    def forward(self, x: torch.Tensor, scale: float = 2.0) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
        y, (h, c) = self.rnn(x)
        return y * scale, (h, c)


def test_nested_outputs_and_default_arguments(tmp_path: Path) -> None:
    torch.manual_seed(0)
    eager = WithState().eval()
    path = tmp_path / "state.pt"
    torch.jit.save(torch.jit.script(eager), str(path))
    model = model_from_torchscript(path, {"x": (2, 5, 3)})
    assert model.input_names == ["x"] and model.output_names == ["output_0", "output_1", "output_2"]
    feeds = model.random_inputs(3, 4, np.random.default_rng(0))
    ref = model.reference64(feeds)
    assert_close(run_ort(model.onnx, feeds), [ref[n] for n in model.output_names])
    with torch.inference_mode():
        y, (h, c) = eager.double()(torch.from_numpy(feeds["x"]).double())
    for name, want in zip(model.output_names, (y, h, c)):
        np.testing.assert_allclose(ref[name], want.numpy(), rtol=1e-10, atol=1e-12)


def test_nested_outputs_through_the_torchscript_backend(tmp_path: Path, cli) -> None:
    path = script(WithState(), tmp_path / "state.pt")
    code, stdout, err = cli("compile", path, "--target", "cpu", "--backends", "torchscript", "--shapes", "x:2x5x3",
                            "--out", tmp_path / "out")
    assert code == 0, err + stdout


def test_traced_module(tmp_path: Path) -> None:
    """A trace keeps float32 constants (nn.LSTM's zero state): `.double()` cannot run it, so the
    reference is the exported graph in float64, still checked here against the eager module."""
    torch.manual_seed(0)
    eager = Tagger().eval()
    path = tmp_path / "traced.pt"
    torch.jit.save(torch.jit.trace(eager, torch.randint(0, 40, (2, 5))), str(path))
    model = model_from_torchscript(path, {"tokens": (3, 6)})
    assert "exported graph" in model.extra["reference"]
    check(model, eager, batch=4, seq=7)
