"""Issue 10's corpus through `rnnc compile` as a user runs it: ONNX Runtime and TVM, each verified
against the float64 reference (rel_err <= 1e-5 in float32), state chained, Ifs bound and unbound,
Loop and Scan run inside the TVM artifact, float16 on ORT with TVM skipped naming the op."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from rnnc import api
from rnnc.cli import main
from tests.corpus import build

pytestmark = [pytest.mark.tvm, pytest.mark.slow]

FLOAT32 = ["crnn", "deepspeech2", "kws_stream", "if_scalar", "lstm_in_if", "generate_loop", "scan_gru"]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("corpus")


def _compile(corpus: Path, name: str, out: Path, bound: bool = False):
    case = build(name, corpus)
    manifest, _ = api.compile(case.path, "cpu", ["onnxruntime", "tvm"], out, case.shapes or None,
                              bind=case.bind if bound else None)
    return case, manifest


@pytest.mark.parametrize("name", FLOAT32)
def test_compiles_and_verifies_on_onnxruntime_and_tvm(corpus: Path, tmp_path: Path, name: str) -> None:
    case, manifest = _compile(corpus, name, tmp_path / name)
    for backend in ("onnxruntime", "tvm"):
        record = manifest.backends[backend]
        assert record.status == "ok", (backend, record.reason)
        assert record.verification.rel_err <= 1e-5, (backend, record.verification)
    assert manifest.state == case.state  # found by name and shape, none declared
    layers = json.loads((tmp_path / name / "tvm" / "tvm.json").read_text())["layers"]
    if {"LSTM", "GRU", "RNN"} & case.ops:
        assert any(layer["name"].startswith("layer") for layer in layers), "no recurrent kernel of ours"


def test_if_scalar_bound_folds_the_branch(corpus: Path, tmp_path: Path) -> None:
    _, manifest = _compile(corpus, "if_scalar", tmp_path / "bound", bound=True)
    assert all(b.status == "ok" for b in manifest.backends.values()), manifest.backends
    assert [t.name for t in manifest.io.inputs] == ["features"]  # the artifacts no longer take sr
    import onnx

    graph = onnx.load(tmp_path / "bound" / "model.onnx").graph
    assert "If" not in {n.op_type for n in graph.node}
    assert manifest.source["bind"] == {"sr": {"dtype": "int64", "value": 16000}}
    assert main(["verify", str(tmp_path / "bound")]) == 0  # rebuilt with the bound value


def test_streaming_chain_of_calls(corpus: Path, tmp_path: Path) -> None:
    _, manifest = _compile(corpus, "kws_stream", tmp_path / "kws")
    chained = api.verify(tmp_path / "kws", chain=200)
    for backend in ("onnxruntime", "tvm"):
        v = chained.backends[backend].verification
        assert v.chain == 200 and v.passed and v.rel_err <= 1e-4, (backend, v)


def test_float16_runs_on_onnxruntime_and_tvm_names_the_op(corpus: Path, tmp_path: Path) -> None:
    _, manifest = _compile(corpus, "float16", tmp_path / "fp16")
    assert manifest.dtype == "float16"
    ort = manifest.backends["onnxruntime"]
    assert ort.status == "ok" and ort.verification.tolerance == pytest.approx(1e-2), ort
    assert ort.verification.rel_err <= 1e-2
    tvm = manifest.backends["tvm"]
    assert tvm.status == "ok" or ("GRU node" in tvm.reason and "float16" in tvm.reason), tvm.reason
