"""Memory across calls, end to end on every backend (SPEC sections 1-2): a stream fed in chunks
gives what one call gives; generated tokens agree with the float64 reference; bad state and a
sequence given to a one-step model are one line, exit 2."""
from __future__ import annotations

import numpy as np
import pytest
import yaml

import rnnc
from rnnc import targets
from rnnc.errors import UserError
from rnnc.graphs import load_model
from rnnc.verify import generated_reference
from tests.conftest import make_spec
from tests.graphs.test_memory_modes import CASES, TOKENS, generator, translator

pytestmark = [pytest.mark.tvm, pytest.mark.xdist_group("memory")]  # the compiles are shared per module

BACKENDS = ["torch", "torchscript", "onnxruntime", "openvino", "tvm"]
STREAMS = {
    "lstm": make_spec(name="stream-lstm", rnn={"cell": "lstm", "hidden_size": 12, "num_layers": 2, "state": True}),
    "gru": make_spec(name="stream-gru", input=TOKENS, rnn={"cell": "gru", "hidden_size": 8, "state": True},
                     output={"mode": "many_to_many", "dense": {"units": 3}}),
}


@pytest.fixture(scope="module")
def compiled(tmp_path_factory: pytest.TempPathFactory):
    root = tmp_path_factory.mktemp("memory")
    done: dict[str, object] = {}

    def build(name: str, spec: dict):
        if name not in done:
            path = root / f"{name}.yaml"
            path.write_text(yaml.safe_dump({**spec, "name": name}))
            manifest, out = rnnc.compile(path, "cpu", backends=BACKENDS, out=root / name,
                                         options={"tuning": {"batch_tile": 2, "gemm_rows": 4}})
            done[name] = (manifest, out, path)
        return done[name]

    return build


@pytest.mark.parametrize("case", list(CASES))
def test_every_mode_verifies_on_every_backend(compiled, case: str) -> None:
    manifest, _, _ = compiled(case.replace(" ", "-").replace(",", "").replace("(", "").replace(")", "")
                              .replace(">", "").lower(), CASES[case])
    for name, record in manifest.backends.items():
        assert record.status == "ok", (name, record.reason)
        assert record.verification.passed, (name, record.verification)
        assert record.verification.rel_err <= 1e-5


@pytest.mark.parametrize("chunk", [1, 7, 64])
@pytest.mark.parametrize("which", list(STREAMS))
def test_a_stream_in_chunks_is_one_call(compiled, which: str, chunk: int) -> None:
    _, out, _ = compiled(f"stream-{which}", STREAMS[which])
    seq = 130  # 130 = 2 x 64 + 2: the last chunk is short at every chunk length
    for backend in ["torch", "onnxruntime", "openvino", "tvm"]:
        runner = rnnc.load(out, backend)
        rng = np.random.default_rng(chunk)
        x = (rng.integers(0, TOKENS["vocab_size"], (2, seq)) if which == "gru"
             else rng.standard_normal((2, seq, 5)).astype(np.float32))
        name = runner.input_names[0]
        state = {t.name: rng.standard_normal([d if isinstance(d, int) else 2 for d in t.dims]).astype(np.float32)
                 for t in runner.inputs[1:]}
        whole = runner(**{name: x}, **state)
        pieces, carried = [], dict(state)
        for start in range(0, seq, chunk):
            got = runner(**{name: x[:, start:start + chunk]}, **carried)
            pieces.append(got["output"])
            carried = {k: got[k.replace("0", "_n")] for k in carried}
        chained = np.concatenate(pieces, axis=1)
        scale = np.abs(whole["output"]).max()
        assert np.abs(chained - whole["output"]).max() <= 1e-5 * scale, backend
        for k, v in carried.items():
            assert np.abs(v - whole[k.replace("0", "_n")]).max() <= 1e-5 * np.abs(v).max(), (backend, k)


@pytest.mark.parametrize("spec", [generator("lstm", num_layers=2), translator("gru", "lstm", bidirectional=True)],
                         ids=["one_to_many", "encoder_decoder"])
def test_generated_tokens_agree_with_the_reference_on_20_seeds(compiled, spec: dict) -> None:
    name = f"seeds-{spec['output']['mode'].replace('_', '-')}"
    _, out, path = compiled(name, spec)
    model = load_model(path)
    runners = {b: rnnc.load(out, b) for b in BACKENDS}
    agree = ties = 0
    for seed in range(20):
        inputs = model.random_inputs(4, 6, np.random.default_rng(seed))
        want = model.reference64(inputs)
        for backend, runner in runners.items():
            got = runner(**inputs)
            if np.array_equal(got["generated"], want["generated"]):
                agree += 1
                continue
            _, tied, _, wrong = generated_reference(model, inputs, got, want, 1e-5)
            assert not wrong and tied, (backend, seed, wrong)  # only a tie within rounding may differ
            ties += 1
    assert agree + ties == 20 * len(runners) and agree >= 20 * len(runners) - 2


def test_verify_chain_on_a_stateful_generator(compiled, cli) -> None:
    _, out, _ = compiled("chain-generator", generator("gru", state=True))
    code, text, err = cli("verify", out, "--target", "cpu", "--chain", "5")
    assert code == 0, (text, err)
    assert "tokens (ties)" in text  # generated tokens checked, and the ties among them
    for name in BACKENDS:
        assert any(line.startswith(name) and "5 calls" in line for line in text.splitlines()), text


def test_a_wrong_state_shape_is_one_line_exit_2_on_every_backend(compiled, cli, tmp_path) -> None:
    _, out, _ = compiled("stream-lstm", STREAMS["lstm"])
    x = np.zeros((2, 3, 5), np.float32)
    bad = {"h0": np.zeros((1, 2, 12), np.float32), "c0": np.zeros((2, 2, 12), np.float32)}  # 1 layer, not 2
    inputs = tmp_path / "in.npz"
    np.savez(inputs, features=x, **bad)
    for backend in BACKENDS:
        with pytest.raises(UserError, match=r"input 'h0': expected size 2 on axis 0"):
            rnnc.load(out, backend)(features=x, **bad)
        code, text, err = cli("run", out, "--backend", backend, "--inputs", inputs)
        assert code == 2 and len(err.strip().splitlines()) == 1 and "h0" in err, (backend, err)
    with pytest.raises(UserError, match=r"input 'c0': expected rank 3"):
        rnnc.load(out, "tvm")(features=x, h0=np.zeros((2, 2, 12), np.float32), c0=np.zeros((2, 12), np.float32))
    with pytest.raises(UserError, match=r"missing \['c0'\]"):
        rnnc.load(out, "onnxruntime")(features=x, h0=np.zeros((2, 2, 12), np.float32))


def test_a_sequence_given_to_a_one_step_model_is_one_line_exit_2(compiled, cli, tmp_path) -> None:
    _, out, _ = compiled("generate-tokens-lstm", CASES["generate tokens lstm"])
    inputs = tmp_path / "seq.npz"
    np.savez(inputs, tokens=np.zeros((2, 4), np.int64))
    for backend in BACKENDS:
        code, _, err = cli("run", out, "--backend", backend, "--inputs", inputs)
        assert code == 2 and "input 'tokens': expected rank 1" in err and len(err.strip().splitlines()) == 1, err
    assert set(targets.names()) >= set(BACKENDS)
