"""Bad arrays are refused the same way on every backend, before any backend sees them: one line,
exit 2 from `rnnc run`, a `UserError` from `rnnc.load(...)(...)`; never a traceback, an abort or an
answer (SPEC section 2)."""
from __future__ import annotations

import numpy as np
import pytest
import yaml

import rnnc
from rnnc import targets
from rnnc.errors import UserError
from tests.conftest import make_spec

pytestmark = [pytest.mark.tvm, pytest.mark.xdist_group("bad-inputs")]  # one compile per module

BACKENDS = list(targets.names())
VOCAB, FEATURES = 20, 5
BAD_FEATURES = {
    "feature size off by one": (np.zeros((2, 3, FEATURES + 1), np.float32), "expected size 5 on axis 2"),
    "wrong rank": (np.zeros((2, 3), np.float32), "expected rank 3"),
    "batch 0": (np.zeros((0, 3, FEATURES), np.float32), "batch (axis 0) must be >= 1, got 0"),
    "sequence length 0": (np.zeros((2, 0, FEATURES), np.float32), "seq (axis 1) must be >= 1, got 0"),
    "strings": (np.full((2, 3, FEATURES), "a"), "expected float32 numbers"),
}
BAD_TOKENS = {
    "token id = vocab": (np.full((2, 3), VOCAB), f"token ids in [0, {VOCAB}), got {VOCAB}"),
    "token id -1": (np.full((2, 3), -1), "got -1"),
    "token id 10^7": (np.full((2, 3), 10**7), "got 10000000"),
    "a float array for token ids": (np.zeros((2, 3), np.float32), "expected integer ids (int64), got float32"),
    "batch 0": (np.zeros((0, 3), np.int64), "batch (axis 0) must be >= 1"),
}


def _compile(root, name, spec):
    path = root / f"{name}.yaml"
    path.write_text(yaml.safe_dump(spec))
    manifest, out = rnnc.compile(path, "cpu", backends=BACKENDS, out=root / name,
                                 options={"tuning": {"batch_tile": 2, "gemm_rows": 4}})
    assert {b.status for b in manifest.backends.values()} == {"ok"}, manifest.backends
    return out


@pytest.fixture(scope="module")
def dirs(tmp_path_factory):
    root = tmp_path_factory.mktemp("bad-inputs")
    return {
        "features": _compile(root, "features", make_spec(name="f", input={"type": "features", "features": FEATURES})),
        "tokens": _compile(root, "tokens", make_spec(
            name="k", input={"type": "tokens", "vocab_size": VOCAB, "embedding_dim": 4},
            output={"mode": "many_to_one", "dense": {"units": 3, "activation": "softmax"}})),
    }


CASES = [("features", k, *v) for k, v in BAD_FEATURES.items()] + [("tokens", k, *v) for k, v in BAD_TOKENS.items()]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("kind, case, array, words", CASES, ids=[f"{c[0]}: {c[1]}" for c in CASES])
def test_the_api_refuses_with_one_line(dirs, backend, kind, case, array, words):
    runner = rnnc.load(dirs[kind], backend)
    with pytest.raises(UserError) as err:
        runner(**{kind: array})
    assert len(err.value.problems) == 1 and words in err.value.problems[0], err.value.problems
    with pytest.raises(UserError):
        runner.bind(**{kind: array})  # the timed path checks the same way


@pytest.mark.parametrize("backend", BACKENDS)
def test_rnnc_run_refuses_with_exit_2(dirs, backend, cli, tmp_path):
    for kind, case, array, words in CASES:
        np.savez(tmp_path / "in.npz", **{kind: array})
        code, out, err = cli("run", dirs[kind], "--backend", backend, "--inputs", tmp_path / "in.npz",
                             "--out", tmp_path / "out.npz")
        assert code == 2 and err.count("\n") == 1 and words in err and "Traceback" not in err, (case, err)
        assert not (tmp_path / "out.npz").exists(), f"{case}: no answer"


@pytest.mark.parametrize("backend", BACKENDS)
def test_good_inputs_still_run_everywhere(dirs, backend):
    got = rnnc.load(dirs["tokens"], backend)(tokens=np.array([[0, VOCAB - 1, 3]], np.int32))  # int32: cast
    assert got["output"].shape == (1, 3) and np.allclose(got["output"].sum(-1), 1, atol=1e-5)
    got = rnnc.load(dirs["features"], backend)(features=np.ones((1, 2, FEATURES)))  # float64: cast
    assert got["output"].shape == (1, 2, 8)
