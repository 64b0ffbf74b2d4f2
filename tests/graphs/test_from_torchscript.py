"""Bring your own TorchScript: saved ScriptModules of nn.RNN/LSTM/GRU, Embedding, Linear and
activations; the float64 reference against the eager module, the exported ONNX in ONNX Runtime."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from rnnc import api
from rnnc.errors import UserError
from rnnc.graphs.from_torchscript import model_from_torchscript, module_message
from rnnc.pipeline import compile_model, exit_code
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


def test_a_graph_the_onnx_import_refuses(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The export works but `from_onnx` refuses its graph (an operator no reference implements):
    imported without ONNX, the refusal as the reason."""
    import rnnc.graphs.from_torchscript as from_torchscript

    def refuse(proto, label):
        raise UserError(f"{label}: unsupported operator CumSum (node '/CumSum'): no float64 reference")

    monkeypatch.setattr(from_torchscript, "check_proto", refuse)
    path = script(Encoder(), tmp_path / "e.pt")
    model = model_from_torchscript(path, {"features": (3, 1, 3)})
    assert model.onnx is None
    assert model.extra["no_onnx"] == ("the exported graph is not one rnnc lowers: unsupported operator CumSum "
                                      "(node '/CumSum'): no float64 reference")
    assert model.inputs[0].dims == ("seq", "batch", 3)  # time-major GRU: batch_first=False
    assert [t.dims for t in model.outputs] == [("batch", 2), (1, "batch", 4)]


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


# -- --bind ---------------------------------------------------------------------------------------

class SampleRate(torch.nn.Module):
    """Branches on a Python int (a configuration argument): only a bound value makes one graph."""

    def __init__(self) -> None:
        super().__init__()
        self.wide = torch.nn.LSTM(3, 4, batch_first=True)
        self.narrow = torch.nn.GRU(3, 4, batch_first=True)

    def forward(self, x: torch.Tensor, sample_rate: int, gain: float = 1.0) -> torch.Tensor:
        if sample_rate == 16000:
            y = self.wide(x)[0]
        else:
            y = self.narrow(x)[0]
        return y * gain


@pytest.mark.parametrize("rate, kept, gone", [(16000, "LSTM", "GRU"), (8000, "GRU", "LSTM")])
def test_bind_an_int_that_a_branch_depends_on(rate: int, kept: str, gone: str, tmp_path: Path) -> None:
    torch.manual_seed(0)
    eager = SampleRate().eval()
    path = tmp_path / "sr.pt"
    torch.jit.save(torch.jit.script(eager), str(path))
    bind = {"sample_rate": np.array(rate), "gain": np.array(0.5)}
    model = model_from_torchscript(path, {"x": (2, 5, 3)}, bind=bind)
    assert model.input_names == ["x"]  # sample_rate and gain are no input any more
    ops = {n.op_type for n in model.onnx.graph.node}
    assert kept in ops and gone not in ops and "If" not in ops  # the branch folded away
    assert json.loads(json.dumps(model.source["bind"])) == model.source["bind"]
    assert model.source["bind"]["sample_rate"] == {"dtype": "int64", "shape": [], "value": rate}

    feeds = model.random_inputs(3, 4, np.random.default_rng(0))
    ref = model.reference64(feeds)
    with torch.inference_mode():
        want = eager.double()(torch.from_numpy(feeds["x"]).double(), rate, 0.5)
    np.testing.assert_allclose(ref["output"], want.numpy(), rtol=1e-10, atol=1e-12)
    assert_close(run_ort(model.onnx, feeds), [ref["output"]])

    out = tmp_path / "out"
    manifest = compile_model(model, "cpu", ["torch", "torchscript", "onnxruntime"], out)
    statuses = {k: b.status for k, b in manifest.backends.items()}
    assert statuses == {"torch": "skipped", "torchscript": "ok", "onnxruntime": "ok"}, manifest.backends
    artifact = torch.jit.load(str(out / "model.ts"))
    assert [a.name for a in artifact.forward.schema.arguments[1:]] == ["x"]  # takes the free input only
    with torch.inference_mode():
        got = artifact(torch.from_numpy(feeds["x"]))
    np.testing.assert_allclose(got.numpy(), ref["output"], rtol=1e-4, atol=1e-5)
    rebuilt = api.verify(out, "cpu", ["torchscript", "onnxruntime"])  # the reference rebound from the manifest
    assert {b.status for b in rebuilt.backends.values()} == {"ok"}, rebuilt.backends


def test_a_free_scalar_argument_asks_for_bind(tmp_path: Path) -> None:
    path = script(SampleRate(), tmp_path / "sr.pt")
    with pytest.raises(UserError) as err:
        model_from_torchscript(path, {"x": (2, 5, 3)})
    assert err.value.problems == [f"{path}: forward argument 'sample_rate' is an int, not a tensor: "
                                  "fix it with --bind sample_rate=VALUE"]


@pytest.mark.parametrize("bind, problem", [
    ({"rate": np.array(16000)}, "--bind: 'rate' is not an argument of forward(x, sample_rate, gain)"),
    ({"sample_rate": np.array(16000.0)}, "--bind sample_rate: forward takes an int, got a float (16000.0)"),
    ({"sample_rate": np.array([16000, 8000])}, "--bind sample_rate: forward takes one int, got an array of shape (2,)"),
    ({"sample_rate": np.array(True)}, "--bind sample_rate: forward takes an int, got a bool (True)"),
])
def test_bind_errors_are_one_line_each(bind: dict, problem: str, tmp_path: Path) -> None:
    path = script(SampleRate(), tmp_path / "sr.pt")
    with pytest.raises(UserError) as err:
        model_from_torchscript(path, {"x": (2, 5, 3)}, bind=bind)
    assert err.value.problems == [problem]


def test_bind_a_tensor_argument(tmp_path: Path) -> None:
    class Biased(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.rnn = torch.nn.GRU(3, 4, batch_first=True)

        def forward(self, x: torch.Tensor, offset: torch.Tensor) -> torch.Tensor:
            return self.rnn(x)[0] + offset

    torch.manual_seed(0)
    eager = Biased().eval()
    path = tmp_path / "b.pt"
    torch.jit.save(torch.jit.script(eager), str(path))
    offset = np.arange(4, dtype=np.float64) / 4
    model = model_from_torchscript(path, {"x": (2, 5, 3)}, bind={"offset": offset})
    assert model.input_names == ["x"]
    feeds = model.random_inputs(2, 3, np.random.default_rng(1))
    with torch.inference_mode():
        want = eager.double()(torch.from_numpy(feeds["x"]).double(), torch.from_numpy(offset))
    np.testing.assert_allclose(model.reference64(feeds)["output"], want.numpy(), rtol=1e-10, atol=1e-12)
    manifest = compile_model(model, "cpu", ["torchscript", "onnxruntime"], tmp_path / "out")
    assert {b.status for b in manifest.backends.values()} == {"ok"}, manifest.backends


# -- no ONNX graph --------------------------------------------------------------------------------

class Unexportable(torch.nn.Module):
    """aten::cummax has no ONNX symbolic: torch.onnx refuses the module."""

    def __init__(self) -> None:
        super().__init__()
        self.rnn = torch.nn.GRU(3, 4, batch_first=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cummax(self.rnn(x)[0], dim=1)[0]


def test_export_failure_leaves_torchscript_only(tmp_path: Path, capfd: pytest.CaptureFixture[str]) -> None:
    torch.manual_seed(0)
    eager = Unexportable().eval()
    path = tmp_path / "u.pt"
    torch.jit.save(torch.jit.script(eager), str(path))
    out = tmp_path / "out"
    manifest, _ = api.compile(path, target="cpu", backends=["torch", "torchscript", "onnxruntime"], out=out,
                              shapes={"x": (2, 5, 3)})
    assert "Torch IR graph" not in capfd.readouterr().out  # the exporter's graph dump is silenced
    backends = manifest.backends
    assert backends["torchscript"].status == "ok", backends["torchscript"]
    assert backends["torchscript"].verification.passed
    assert backends["torch"].status == "skipped"
    assert backends["onnxruntime"].status == "skipped"
    assert backends["onnxruntime"].reason.startswith("no ONNX graph: torch.onnx cannot export it")
    assert "aten::cummax" in backends["onnxruntime"].reason and "\n" not in backends["onnxruntime"].reason
    assert exit_code(manifest) == 0 and not (out / "model.onnx").exists()
    assert [(t.name, t.dims) for t in manifest.io.inputs] == [("x", ("batch", "seq", 3))]
    assert [(t.name, t.dims) for t in manifest.io.outputs] == [("output", ("batch", "seq", 4))]

    model = model_from_torchscript(path, {"x": (2, 5, 3)})
    feeds = model.random_inputs(3, 6, np.random.default_rng(0))
    with torch.inference_mode():
        want = eager.double()(torch.from_numpy(feeds["x"]).double())
    np.testing.assert_allclose(model.reference64(feeds)["output"], want.numpy(), rtol=1e-10, atol=1e-12)


def test_export_failure_through_the_cli(tmp_path: Path, cli) -> None:
    path = script(Unexportable(), tmp_path / "u.pt")
    code, stdout, err = cli("compile", path, "--target", "cpu", "--backends", "torchscript,onnxruntime",
                            "--shapes", "x:2x5x3", "--out", tmp_path / "out")
    assert code == 0, err + stdout
    assert "no ONNX graph" in stdout and "Torch IR graph" not in stdout
    code, stdout, err = cli("verify", tmp_path / "out", "--target", "cpu")
    assert code == 0, err + stdout


class Carries(torch.nn.Module):
    """Keeps its recurrent state in a buffer between calls."""

    def __init__(self, in_place: bool) -> None:
        super().__init__()
        self.in_place = in_place
        self.rnn = torch.nn.GRU(3, 4, batch_first=True)
        self.register_buffer("h", torch.zeros(1, 2, 4))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y, h = self.rnn(x, self.h)
        if self.in_place:
            self.h.copy_(h)
        else:
            self.h = h
        return y


@pytest.mark.parametrize("in_place", [False, True])
def test_state_in_attributes_refuses_onnx(in_place: bool, tmp_path: Path) -> None:
    """torch.onnx exports such a module, the state frozen to a constant: a graph that would answer
    every call like the first. rnnc refuses that graph and says why."""
    path = script(Carries(in_place), tmp_path / "c.pt")
    model = model_from_torchscript(path, {"x": (2, 5, 3)})
    assert model.onnx is None and "self.h" in model.extra["no_onnx"], model.extra
    assert model.inputs[0].dims == (2, 5, 3)  # the state holds batch 2: no other batch runs
    manifest = compile_model(model, "cpu", ["torchscript", "onnxruntime"], tmp_path / "out")
    assert manifest.backends["torchscript"].status == "ok", manifest.backends["torchscript"]
    assert manifest.backends["onnxruntime"].reason.startswith("no ONNX graph: forward updates self.h")
    assert exit_code(manifest) == 0


def test_batchnorm_keeps_its_onnx_graph(tmp_path: Path) -> None:
    """BatchNorm's forward counts batches in place, under `if self.training`: in eval mode that
    is no state, and the module keeps its ONNX graph."""
    class Normed(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.norm = torch.nn.BatchNorm1d(3)
            self.rnn = torch.nn.GRU(3, 4, batch_first=True)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.rnn(self.norm(x.transpose(1, 2)).transpose(1, 2))[0]

    path = script(Normed(), tmp_path / "n.pt")
    model = model_from_torchscript(path, {"x": (2, 5, 3)})
    assert model.onnx is not None and "no_onnx" not in model.extra


# -- a module that raises -------------------------------------------------------------------------

class Asserts(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.rnn = torch.nn.GRU(3, 4, batch_first=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        assert x.shape[1] == 7, "expects 7 steps"
        return self.rnn(x)[0]


class Raises(Asserts):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[1] != 7:
            raise ValueError("expects 7 steps, got " + str(x.shape[1]))
        return self.rnn(x)[0]


@pytest.mark.parametrize("module, message", [(Asserts, "AssertionError: expects 7 steps"),
                                             (Raises, "ValueError: expects 7 steps, got 5")])
def test_a_module_that_raises_is_a_user_error(module: type, message: str, tmp_path: Path, cli) -> None:
    path = script(module(), tmp_path / "r.pt")
    with pytest.raises(UserError) as err:
        model_from_torchscript(path, {"x": (2, 5, 3)})
    assert err.value.problems == [f"{path}: forward raised on inputs of the --shapes given: {message}"]
    code, stdout, stderr = cli("compile", path, "--target", "cpu", "--shapes", "x:2x5x3", "--out", tmp_path / "o")
    assert code == 2 and message in stderr and "Traceback" not in stderr + stdout


def test_module_message() -> None:
    assert module_message(RuntimeError("bad size\nmore")) == "RuntimeError: bad size"
    assert module_message(ValueError("")) == "ValueError"
    scripted = torch.jit.script(Asserts().eval())
    try:
        scripted(torch.zeros(1, 2, 3))
    except Exception as err:  # noqa: BLE001 - torch.jit.Error
        assert module_message(err) == "AssertionError: expects 7 steps"
