"""The spine's matrix: every spec combination, compiled, on every CPU backend, against float64.

cell x nonlinearity x direction x depth (1, 2) x input type x output mode; head activations, bias
modes and the TVM kernels' register tiles cycle through the combinations so that each cell meets
every head, bias mode and tiling (the default 6 x 6 among them; batch 7 leaves a partial tile in
each); shapes cover sequence lengths 1 and 256 and batch sizes 1 and 7.
"""
from __future__ import annotations

import itertools

import pytest

from rnnc import api, targets
from rnnc.pipeline import exit_code

pytestmark = [pytest.mark.slow, pytest.mark.tvm]

CELLS = [("rnn", "tanh"), ("rnn", "relu"), ("lstm", None), ("gru", None)]
HEADS = [None, "none", "softmax", "sigmoid", "tanh", "relu", "leaky_relu"]
BIASES = [True, "single", False]
TILES = [(6, 6), (2, 4), (3, 2), (1, 1), (4, 3)]  # (batch_tile, gemm_rows); the first is the default
BACKENDS = targets.names()  # torch, torchscript, onnxruntime, openvino and tvm: every backend CI can run


def cases() -> list[tuple]:
    out = []
    for (cell, nonlin), group in itertools.groupby(
        itertools.product(CELLS, [False, True], [1, 2], ["tokens", "features"], ["many_to_many", "many_to_one"]),
        key=lambda c: c[0],
    ):
        for i, (_, bidir, layers, inp, mode) in enumerate(group):
            out.append((cell, nonlin, bidir, layers, inp, mode, HEADS[i % len(HEADS)], BIASES[i % len(BIASES)],
                        TILES[i % len(TILES)]))
    return out


def spec_for(cell, nonlin, bidir, layers, inp, mode, head, bias, tiles=None) -> dict:
    rnn = {"cell": cell, "hidden_size": 6, "num_layers": layers, "bidirectional": bidir, "bias": bias}
    if nonlin:
        rnn["nonlinearity"] = nonlin
    output = {"mode": mode}
    if head:
        output["dense"] = {"units": 4, "activation": head}
    source = {"type": "tokens", "vocab_size": 23, "embedding_dim": 5} if inp == "tokens" \
        else {"type": "features", "features": 5}
    return {"name": "m", "input": source, "rnn": rnn, "output": output, "seed": 7,
            "shapes": {"batch_sizes": [1, 7], "seq_lens": [1, 256]}}


def test_matrix_covers_every_head_and_bias_per_cell() -> None:
    for cell in CELLS:
        mine = [c for c in cases() if c[:2] == cell]
        assert len(mine) == 16
        assert {c[6] for c in mine} == set(HEADS) and {c[7] for c in mine} == set(BIASES)
        assert {c[8] for c in mine} == set(TILES)


@pytest.mark.parametrize("case", cases(), ids=lambda c: "-".join(str(x) for x in c))
def test_every_backend_matches_float64(case, write_spec, tmp_path) -> None:
    tiles = dict(zip(("batch_tile", "gemm_rows"), case[8]))
    manifest, _ = api.compile(write_spec(spec_for(*case)), "cpu", BACKENDS, tmp_path / "out",
                              options={"tuning": tiles})
    assert exit_code(manifest) == 0, {n: b.reason for n, b in manifest.backends.items()}
    for name in BACKENDS:
        v = manifest.backends[name].verification
        assert v.passed and v.rel_err <= 1e-5, (name, v)
        assert sorted(v.shapes) == [(1, 1), (1, 256), (7, 1), (7, 256)]
