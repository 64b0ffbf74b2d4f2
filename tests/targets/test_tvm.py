"""The tvm backend end to end: spec models built, exported, loaded and checked against float64."""
from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest

from rnnc.compiler.tvm import target as host  # noqa: E402
from rnnc.errors import UserError  # noqa: E402
from rnnc.graphs.from_spec import model_from_spec  # noqa: E402
from rnnc.graphs.spec import parse_spec  # noqa: E402
from rnnc.pipeline import new_manifest  # noqa: E402
from rnnc.targets import tvm as backend  # noqa: E402

pytestmark = pytest.mark.tvm

TOL = 1e-5


def _spec(cell="lstm", hidden=12, layers=1, bi=False, mode="many_to_many", dense=None, tokens=False, **rnn):
    spec = {
        "name": "t",
        "input": {"type": "tokens", "vocab_size": 40, "embedding_dim": 6} if tokens else {"type": "features", "features": 5},
        "rnn": {"cell": cell, "hidden_size": hidden, "num_layers": layers, "bidirectional": bi, **rnn},
        "output": {"mode": mode, **({"dense": dense} if dense else {})},
        "shapes": {"batch_sizes": [2], "seq_lens": [3]},
    }
    return model_from_spec(parse_spec(spec))


def _manifest(model, target="cpu"):
    return new_manifest(model, target)


SMALL = {"batch_tile": 2, "gemm_rows": 4}  # small tiles build fastest; the default ones in one test


def _check(model, out_dir: Path, shapes=((2, 3), (1, 1), (5, 9)), tiles=SMALL):
    options = {"tune_cache": str(out_dir / "cache"), **({"tuning": tiles} if tiles else {})}
    artifacts = backend.build(model, out_dir, "cpu", options, "fp32")
    assert all((out_dir / a).is_file() for a in artifacts)
    runner = backend.load(out_dir, _manifest(model), "cpu", 2, "fp32")
    assert runner.input_names == model.input_names and runner.output_names == ["output"]
    for batch, seq in shapes:  # built for (2, 3): the others were never seen by the build
        x = model.random_inputs(batch, seq, np.random.default_rng(batch * 100 + seq))
        got, want = runner(**x)["output"], model.reference64(x)["output"]
        assert got.shape == want.shape
        err = np.abs(got - want).max() / np.abs(want).max()
        assert err <= TOL, f"relative error {err:.2e} at batch {batch}, seq {seq}"
    return runner


@pytest.mark.parametrize("kwargs", [
    dict(cell="lstm", mode="many_to_one", dense={"units": 3, "activation": "softmax"}),
    dict(cell="gru", bi=True, layers=2, mode="many_to_one", dense={"units": 4, "activation": "sigmoid"}, tokens=True),
    dict(cell="rnn", bi=True, nonlinearity="relu", dense={"units": 3, "activation": "leaky_relu"}),
    dict(cell="lstm", bi=True, layers=2, tokens=True, bias="single"),
    dict(cell="gru", hidden=20, dense={"units": 2, "activation": "tanh"}, bias=False),
])
def test_spec_models_match_float64(tmp_path, kwargs):
    _check(_spec(**kwargs), tmp_path)


def test_record_and_flat_library(tmp_path):
    model = _spec(cell="lstm", mode="many_to_one", dense={"units": 8, "activation": "relu"})
    _check(model, tmp_path, shapes=((2, 3), (7, 2)), tiles=None)  # the default tiles, 7 = 6 + 1 rows
    record = json.loads((tmp_path / backend.RECORD).read_text())
    assert record["target"] == "cpu" and record["tvm_target"]["kind"] == "llvm"
    assert record["host"]["isa"]
    assert [layer["cell"] for layer in record["layers"] if "cell" in layer] == ["lstm"]
    # many-to-one: the kernel writes h_n batch-major itself and skips Y entirely
    assert record["layers"][0]["yh_layout"] == "bdh" and record["layers"][0]["y_layout"] is None


def test_runs_where_another_isa_is_refused(tmp_path, monkeypatch):
    model = _spec()
    backend.build(model, tmp_path, "cpu", {"tune_cache": str(tmp_path / "cache"), "tuning": SMALL}, "fp32")
    path = tmp_path / backend.RECORD
    record = json.loads(path.read_text())
    record["host"]["isa"] = record["host"]["isa"] + ["avx512fp64imaginary"]
    path.write_text(json.dumps(record))
    with pytest.raises(UserError, match="avx512fp64imaginary.*lacks"):
        backend.load(tmp_path, _manifest(model), "cpu", 1, "fp32")
    record["target"] = "cuda"
    path.write_text(json.dumps(record))
    with pytest.raises(UserError, match="built for cuda"):
        backend.load(tmp_path, _manifest(model), "cpu", 1, "fp32")


def test_the_thread_count_is_passed_not_written_to_the_environment():
    before = dict(os.environ)
    assert host.configure_threads(1) == 1
    assert host.configure_threads(host.cpu_count()) == host.cpu_count()
    assert dict(os.environ) == before  # library code reads and writes no environment variable


def test_tuning_is_cached_and_reused(tmp_path):
    model = _spec(hidden=8)
    options = {"tune_s": 0.01, "tune_cache": str(tmp_path / "cache")}
    backend.build(model, tmp_path / "a", "cpu", options, "fp32")
    first = json.loads((tmp_path / "a" / backend.RECORD).read_text())["tuning"]
    assert first["source"] == "search" and len(list((tmp_path / "cache").iterdir())) == 1
    backend.build(model, tmp_path / "b", "cpu", options, "fp32")
    second = json.loads((tmp_path / "b" / backend.RECORD).read_text())["tuning"]
    assert second["source"] == "cache" and second["key"] == first["key"]
    assert {k: second[k] for k in ("batch_tile", "gemm_rows")} == {k: first[k] for k in ("batch_tile", "gemm_rows")}


def test_cuda_without_a_device_is_built_not_verified(tmp_path):
    if why := host.cuda_build_reason():  # CI has nvcc and TVM's CUDA codegen: there this runs
        pytest.skip(f"no CUDA build on this machine ({why}): nothing to cross-compile with")
    reason = backend.runnable("cuda")
    model = _spec(cell="gru", mode="many_to_one", dense={"units": 2, "activation": "softmax"})
    artifacts = backend.build(model, tmp_path, "cuda", {}, "fp32")
    assert (tmp_path / "tvm" / "model.so").is_file() and artifacts
    if reason is None:  # a GPU here: it must also run and agree
        runner = backend.load(tmp_path, _manifest(model, "cuda"), "cuda", None, "fp32")
        x = model.random_inputs(3, 4, np.random.default_rng(0))
        want = model.reference64(x)["output"]
        assert np.abs(runner(**x)["output"] - want).max() / np.abs(want).max() <= TOL
    else:
        assert "CUDA" in reason
        assert backend.available("cuda") is None  # it can be built here, only not run


# -- tvm:bf16 and tvm:int8 ---------------------------------------------------------------------

_HAS_VNNI = "avx512vnni" in host.llvm_features(host.host_target()) and "avx512vnni" in (host.cpu_flags() or set())


def _int8_path() -> str:
    """The path int8_path=auto takes here: AMX where the host has its int8 tiles, VNNI, the fallback."""
    from rnnc.compiler.tvm import amx

    if not _HAS_VNNI:
        return "fallback"
    return "vnni" if host.amx_reason("int8") or amx.request_permission() else "amx"


def _spec_file(tmp_path: Path, name: str, **rnn) -> Path:
    import yaml

    spec = {"name": name, "input": {"type": "features", "features": 10},
            "rnn": {"cell": "lstm", "hidden_size": 20, **rnn}, "output": {"mode": "many_to_many"},
            "shapes": {"batch_sizes": [1, 3], "seq_lens": [6]}}
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


def test_compile_int8_and_bf16_are_verified_entries(tmp_path):
    import rnnc.api

    manifest, _ = rnnc.api.compile(_spec_file(tmp_path, "q", bidirectional=True), "cpu", ["tvm:int8", "tvm:bf16"],
                                   tmp_path / "out", options={"tuning": SMALL})
    for name, bound in (("tvm:int8", 2e-2), ("tvm:bf16", 5e-3)):
        entry = manifest.backends[name]
        assert entry.status == "ok", entry.reason
        assert entry.verification.passed and 1e-5 < entry.verification.rel_err < bound, (name, entry.verification)
    int8 = json.loads((tmp_path / "out" / "tvm-int8" / "tvm.json").read_text())
    bf16 = json.loads((tmp_path / "out" / "tvm-bf16" / "tvm.json").read_text())
    assert int8["precision"] == "int8" and int8["isa_path"] == _int8_path()
    assert "gate row" in int8["scales"] and bf16["precision"] == "bf16"
    assert all(layer["precision"] == "int8" for layer in int8["layers"] if "cell" in layer)
    assert not (tmp_path / "out" / "tvm" / "tvm.json").exists()
    # the precision a record was built at is the one it loads as
    (tmp_path / "out" / "tvm").mkdir()
    (tmp_path / "out" / "tvm" / "tvm.json").write_text(json.dumps(int8))
    with pytest.raises(UserError, match="precision int8, not fp32"):
        backend.load(tmp_path / "out", manifest, "cpu", 1, "fp32")


def test_int8_fallback_forced_and_chained(tmp_path):
    """The path without VNNI (forced by option), and a stateful model chained 50 calls at int8."""
    import rnnc.api

    spec = _spec_file(tmp_path, "s", state=True)
    for path in ("fallback", "auto"):
        out = tmp_path / path
        manifest, _ = rnnc.api.compile(spec, "cpu", ["tvm:int8"], out, options={"tuning": SMALL, "int8_path": path})
        assert manifest.backends["tvm:int8"].status == "ok", manifest.backends["tvm:int8"].reason
        record = json.loads((out / "tvm-int8" / "tvm.json").read_text())
        assert record["generation"] == "layered"  # the fused stream kernel is float32
        if path == "fallback":
            assert record["isa_path"] == "fallback" and "forced" in record["fallback"]
        else:
            assert record["isa_path"] == _int8_path()
        checked = rnnc.api.verify(out, chain=50)
        entry = checked.backends["tvm:int8"]
        assert entry.verification.passed and entry.verification.rel_err < 2e-2, entry.verification


def test_int8_vnni_refused_where_the_target_lacks_it(tmp_path):
    from rnnc.errors import Unsupported

    with pytest.raises(Unsupported, match="no AVX512-VNNI"):
        backend.build(_spec(), tmp_path, "cpu", {"mcpu": "x86-64", "int8_path": "vnni", "tuning": SMALL}, "int8")
