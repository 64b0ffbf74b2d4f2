"""The Python API of SPEC section 2 and the DIR of SPEC section 3."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from onnx import numpy_helper

import rnnc
from rnnc import api
from rnnc.pipeline import exit_code
from rnnc.errors import ArtifactChanged, UserError
from rnnc.records.digests import digest_dir
from rnnc.records.manifest import read_manifest, write_manifest
from tests.conftest import make_spec

CPU = ["torch", "torchscript", "onnxruntime"]


@pytest.fixture
def compiled(write_spec, tmp_path):
    spec = make_spec(input={"type": "tokens", "vocab_size": 30, "embedding_dim": 4},
                     rnn={"cell": "gru", "hidden_size": 5, "num_layers": 2, "bidirectional": True},
                     output={"mode": "many_to_one", "dense": {"units": 3, "activation": "softmax"}})
    manifest, out_dir = api.compile(write_spec(spec), "cpu", CPU, tmp_path / "out")
    assert exit_code(manifest) == 0
    return out_dir


def test_manifest_holds_the_contract_fields(compiled) -> None:
    m = json.loads((compiled / "manifest.json").read_text())
    assert m["target"] == "cpu" and m["spec"]["rnn"]["num_layers"] == 2 and m["spec"]["seed"] == 0
    assert {"rnnc", "torch", "onnx", "onnxruntime", "numpy"} <= set(m["versions"])
    for name in CPU:
        b = m["backends"][name]
        assert b["status"] == "ok" and b["reason"] is None and b["artifacts"]
        assert b["shapes"] == [[2, 3]]
        assert {"max_abs_err", "rel_err", "passed"} <= set(b["verification"])
        assert all((compiled / a).exists() for a in b["artifacts"])


def test_onnx_artifact_uses_onnx_recurrent_nodes_with_dynamic_axes(compiled) -> None:
    model = onnx.load(str(compiled / "model.onnx"))
    onnx.checker.check_model(model, full_check=True)
    assert model.opset_import[0].version >= 17
    assert [n.op_type for n in model.graph.node].count("GRU") == 2
    gru = next(n for n in model.graph.node if n.op_type == "GRU")
    attrs = {a.name: onnx.helper.get_attribute_value(a) for a in gru.attribute}
    assert attrs["linear_before_reset"] == 1 and attrs["direction"] == b"bidirectional"
    dims = [d.dim_param or d.dim_value for d in model.graph.input[0].type.tensor_type.shape.dim]
    assert model.graph.input[0].name == "tokens" and dims == ["batch", "seq"]
    assert model.graph.output[0].name == "output"


def test_torchscript_artifact_loads_with_torch_jit(compiled) -> None:
    module = torch.jit.load(str(compiled / "model.ts"))
    assert module(torch.zeros(2, 9, dtype=torch.int64)).shape == (2, 3)


@pytest.mark.parametrize("backend", CPU)
def test_load_runs_any_batch_and_length(compiled, backend) -> None:
    runner = rnnc.load(compiled, backend=backend)
    assert runner.input_names == ["tokens"] and runner.output_names == ["output"]
    _, model = api.open_dir(compiled)
    for batch, seq in [(1, 1), (3, 37), (2, 256)]:
        x = np.random.default_rng(seq).integers(0, 30, (batch, seq))
        got = runner(tokens=x)["output"]
        ref = model.reference64({"tokens": x})["output"]
        assert got.shape == (batch, 3)
        assert np.max(np.abs(got - ref)) / np.max(np.abs(ref)) <= 1e-5


def test_verify_dir_passes_on_untouched_artifacts(compiled) -> None:
    manifest = api.verify(compiled)
    assert exit_code(manifest) == 0 and set(manifest.backends) == set(CPU)


def _digests_rewritten(directory: Path) -> None:
    """The manifest's digests made to match the changed files: what only a deliberate edit does."""
    manifest = read_manifest(directory)
    write_manifest(directory, manifest.model_copy(update={"files": digest_dir(directory)}))


def test_verify_dir_catches_an_artifact_changed_after_compile(compiled) -> None:
    model = onnx.load(str(compiled / "model.onnx"))
    init = next(i for i in model.graph.initializer if i.name == "l1.R")
    value = numpy_helper.to_array(init).copy()
    value[0] += 0.05  # every recurrent weight of one direction: a change no draw of inputs can hide
    init.CopyFrom(numpy_helper.from_array(value, "l1.R"))
    onnx.save(model, str(compiled / "model.onnx"))
    with pytest.raises(ArtifactChanged, match="model.onnx: changed since compile"):  # its digest, before any load
        api.verify(compiled)
    _digests_rewritten(compiled)  # the manifest changed too: the check against float64 still catches it
    manifest = api.verify(compiled)
    assert exit_code(manifest) == 1
    assert manifest.backends["onnxruntime"].status == "failed"
    assert manifest.backends["torch"].status == "ok"


def test_verify_dir_catches_changed_torch_weights(compiled) -> None:
    state = torch.load(compiled / "torch_state.pt")
    state["dense.bias"][0] += 0.01  # one logit: softmax ignores a shift of all
    torch.save(state, compiled / "torch_state.pt")
    with pytest.raises(ArtifactChanged, match="torch_state.pt"):
        api.verify(compiled, backends=["torch"])
    _digests_rewritten(compiled)
    manifest = api.verify(compiled, backends=["torch"])
    assert exit_code(manifest) == 1 and "not equivalent" in manifest.backends["torch"].reason


def test_load_names_what_is_missing(compiled, tmp_path) -> None:
    with pytest.raises(UserError, match="not a compiled model directory"):
        rnnc.load(tmp_path)
    with pytest.raises(UserError, match="unknown backend"):
        rnnc.load(compiled, backend="tensorrt")


@pytest.mark.parametrize("dtype, tolerance", [("float16", 1e-2), ("bfloat16", 4e-2)])
def test_half_precision_runs_where_supported_and_says_why_not_elsewhere(dtype, tolerance, write_spec, tmp_path):
    spec = make_spec(dtype=dtype, rnn={"cell": "gru", "hidden_size": 8, "bidirectional": True})
    manifest, _ = api.compile(write_spec(spec), "cpu", CPU, tmp_path / "out")
    for name in ("torch", "torchscript"):
        v = manifest.backends[name].verification
        assert v.passed and v.tolerance == tolerance
        assert 1e-6 < v.rel_err <= tolerance  # truly computed in half precision, not float32
    ort = manifest.backends["onnxruntime"]
    assert ort.status == "skipped" and f"spec's {dtype} runs on torch" in ort.reason
