"""Every backend module fills in the one declared contract of `rnnc.targets.base`, the same way."""
from __future__ import annotations

import inspect
import os

import numpy as np
import pytest

from rnnc import api, targets
from rnnc.targets.base import CONTRACT, Runner
from tests.conftest import make_spec

pytestmark = pytest.mark.xdist_group("contract")  # one compile per module

SIGNATURES = {
    "available": ["target"],
    "runnable": ["target"],
    "build": ["model", "out_dir", "target", "options", "precision"],
    "load": ["out_dir", "manifest", "target", "threads", "precision"],
}


def test_the_backends_in_table_order():
    assert targets.names() == ("torch", "torchscript", "onnxruntime", "openvino", "tvm")
    keys = [(targets.backend(n).ORDER, n) for n in targets.names()]  # a tie in ORDER goes by name
    assert keys == sorted(keys)


@pytest.mark.parametrize("name", targets.names())
def test_every_backend_declares_the_contract(name):
    module = targets.backend(name)
    assert all(hasattr(module, f) for f in CONTRACT), [f for f in CONTRACT if not hasattr(module, f)]
    assert isinstance(module.ORDER, int)
    assert targets.declared(name) == {"ORDER": module.ORDER, "PRECISIONS": module.PRECISIONS}  # read without import
    for function, params in SIGNATURES.items():
        signature = inspect.signature(getattr(module, function))
        assert list(signature.parameters) == params, (name, function)
        assert all(p.default is inspect.Parameter.empty for p in signature.parameters.values()), \
            f"{name}.{function}: every argument is passed explicitly"
    for target in targets.TARGETS:
        for ask in (module.available, module.runnable):
            reason = ask(target)
            assert reason is None or (isinstance(reason, str) and reason), (name, target)
    assert module.available("cpu") is None and module.runnable("cpu") is None  # CI runs every backend


@pytest.fixture(scope="module")
def compiled(tmp_path_factory):
    import yaml

    root = tmp_path_factory.mktemp("contract")
    spec = root / "spec.yaml"
    spec.write_text(yaml.safe_dump(make_spec(
        input={"type": "tokens", "vocab_size": 20, "embedding_dim": 4},
        output={"mode": "many_to_one", "dense": {"units": 3, "activation": "softmax"}})))
    before = dict(os.environ)
    manifest, out = api.compile(spec, "cpu", list(targets.names()), root / "out",
                                options={"tuning": {"batch_tile": 2, "gemm_rows": 4}})
    assert dict(os.environ) == before, "library code writes no environment variable"
    return manifest, out


@pytest.mark.parametrize("name", targets.names())
def test_every_backend_writes_its_own_artifacts_and_binds_one_way(name, compiled):
    manifest, out = compiled
    record = manifest.backends[name]
    assert record.status == "ok", record.reason
    assert record.artifacts and all((out / a).is_file() for a in record.artifacts)
    runner = targets.load(name, out, manifest, "cpu", 1)
    assert isinstance(runner, Runner) and type(runner).__call__ is Runner.__call__  # __call__ is bind()()
    x = {"tokens": np.random.default_rng(0).integers(0, 20, (2, 4))}
    call = runner.bind(**x)
    first, second = call(), call()
    assert set(first) == {"output"} and all(type(v) is np.ndarray for v in first.values())  # on the host
    np.testing.assert_array_equal(first["output"], second["output"])
    np.testing.assert_allclose(runner(**x)["output"], first["output"], rtol=1e-6, atol=1e-7)
