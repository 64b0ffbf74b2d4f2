"""bf16 and int8 layer kernels on AMX tiles (`amx`) against float64, the fallbacks on request, and
what tvm.json records.

The AMX path rounds X and H to bf16 as well as W and R, so its error is about 1.5x the widened
kernel's (measured here 2-7e-3 against 2-5e-3); the bound is the verify tolerance of bf16.
"""
from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest

from rnnc.compiler.tvm import amx, kernels
from rnnc.compiler.tvm.spec import LayerSpec, signature
from rnnc.compiler.tvm.target import amx_reason, configure_threads, cpu_count, host_target
from rnnc.verify import tolerance
from tests.compiler.test_tvm_kernels import _inputs, call, in_layouts, onnx_reference
from tests.compiler.test_tvm_quant import layer_errors

pytestmark = pytest.mark.tvm

NO_AMX = amx_reason() or amx.request_permission()
needs_amx = pytest.mark.skipif(bool(NO_AMX), reason=f"no AMX here: {NO_AMX}")
NO_AMX_INT8 = amx_reason("int8") or amx.request_permission()
needs_amx_int8 = pytest.mark.skipif(bool(NO_AMX_INT8), reason=f"no AMX int8 here: {NO_AMX_INT8}")
BOUND = tolerance("float32", "bf16")

CASES = [  # cell, I, H, directions, extra, T, batch (partial 16-row tiles, K not a multiple of 32)
    ("lstm", 7, 20, ("forward", "reverse"), dict(initial_h=True, initial_c=True, yc_layout="dbh"), 4, 5),
    ("lstm", 40, 48, ("forward",), dict(y_layout="btdh"), 5, 19),
    ("gru", 9, 18, ("forward", "reverse"), dict(), 5, 1),
    ("rnn", 8, 17, ("forward",), dict(x_layout="bti"), 5, 3),
]


@pytest.fixture(autouse=True, scope="module")
def _threads():
    configure_threads(cpu_count())


def _compile(func):
    import tvm

    return tvm.compile(tvm.IRModule({"main": func}), target=tvm.target.Target(amx.target_with_amx(host_target())))


@needs_amx
@pytest.mark.parametrize("cell,I,H,dirs,extra,T,batch", CASES)
def test_amx_layer_matches_float64(cell, I, H, dirs, extra, T, batch):
    spec = LayerSpec(cell, I, H, dirs, precision="bf16", amx_from=1, **extra)
    errors = layer_errors(spec, T, batch, _compile)
    print(f"amx {cell} {dirs} batch {batch}: {['%.2e' % e for e in errors]}")
    assert 1e-5 < max(errors) < BOUND, errors


@needs_amx
def test_crossover_runs_both_bodies():
    """amx_from 4: batch 2 runs the widened body, batch 6 the AMX one; both right."""
    spec = LayerSpec("lstm", 7, 20, precision="bf16", amx_from=4)
    src = kernels.layer_source(spec)
    assert "if batch >= 4:" in src and "llvm.x86.tdpbf16ps" in src
    lib = _compile(kernels.layer_primfunc(spec))
    for batch in (2, 6):
        X, W, R, B, h0, c0, P, lens = _inputs(spec, 4, batch, np.random.default_rng(2))
        got = call(lib, spec, "llvm", {"X": X, **kernels.pack(spec, W, R, B)}, 4, batch)
        want = in_layouts(spec, *onnx_reference(spec, X, W, R, B, h0, c0, P, lens))
        assert max(float(np.abs(g - w).max() / np.abs(w).max()) for g, w in zip(got, want)) < BOUND


def test_building_gives_eligible_bf16_layers_an_amx_body():
    lstm = LayerSpec("lstm", 8, 256, precision="bf16")
    with amx.building("auto"):
        assert amx.resolve(lstm).amx_from == 1  # a large step: AMX at every batch (measured)
        assert amx.resolve(LayerSpec("lstm", 8, 32, precision="bf16")).amx_from == amx.SMALL_FROM
        for other in (LayerSpec("lstm", 8, 32), LayerSpec("lstm", 8, 32, precision="int8"),
                      LayerSpec("gru", 8, 32, precision="bf16", linear_before_reset=False),
                      LayerSpec("lstm", 8, 32, precision="bf16", seq_lens=True)):
            assert amx.resolve(other).amx_from == 0
        assert [p.name for p in signature(lstm, "llvm")][3:6] == ["Bias", "Wa", "Ra"]
    with amx.building("amx"):
        assert amx.resolve(LayerSpec("lstm", 8, 32, precision="bf16")).amx_from == 1
    assert amx.resolve(lstm).amx_from == 0 and "tdpbf16ps" not in kernels.layer_source(lstm)


def test_amx_packing_interleaves_k_pairs():
    spec = LayerSpec("lstm", 7, 20, precision="bf16", amx_from=1)
    rng = np.random.default_rng(0)
    packed = kernels.pack(spec, rng.standard_normal((1, 80, 7)), rng.standard_normal((1, 80, 20)), None)
    ra, r = packed["Ra"], packed["R"]  # Ra [1, 2, 16, 4, 32] (kp 32), R [1, 2, 32, 4, 16] (hp 32)
    assert ra.shape == (1, 2, 16, 4, 32) and packed["Wa"].shape == (1, 8, 16, 32)
    assert (ra[..., 0::2] == r[:, :, 0::2]).all() and (ra[..., 1::2] == r[:, :, 1::2]).all()
    wa = packed["Wa"]  # k 7..31 zero
    assert (wa[:, :, :3, 0::2] == packed["W"][:, :, 0:6:2]).all() and not wa[:, :, 4:].any()


def _spec_file(tmp_path):
    import yaml

    spec = {"name": "a", "input": {"type": "features", "features": 24},
            "rnn": {"cell": "lstm", "hidden_size": 40, "num_layers": 1},
            "output": {"mode": "many_to_many"}, "shapes": {"batch_sizes": [1, 5], "seq_lens": [3]}}
    path = tmp_path / "a.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


@pytest.mark.parametrize("path", ["auto", "widened"])
def test_record_and_fallback_on_request(tmp_path, path):
    import rnnc.api

    out = tmp_path / path
    manifest, _ = rnnc.api.compile(_spec_file(tmp_path), "cpu", ["tvm:bf16"], out,
                                   options={"tuning": {"batch_tile": 2, "gemm_rows": 4}, "bf16_path": path})
    entry = manifest.backends["tvm:bf16"]
    assert entry.status == "ok", entry.reason
    assert entry.verification.passed and 1e-5 < entry.verification.rel_err < BOUND, entry.verification
    record = json.loads((out / "tvm-bf16" / "tvm.json").read_text())
    if path == "widened":
        assert record["isa_path"] == "widened" and "forced" in record["amx"]["why_not"]
    elif NO_AMX:
        assert record["isa_path"] == "widened" and record["amx"]["why_not"] == NO_AMX
    else:
        assert record["isa_path"] == "amx" and record["amx"]["mode"] == "auto"
        assert "amx-tile" in record["host"]["isa"] and "+amx-bf16" in record["tvm_target"]["mattr"]


def test_amx_forced_without_it_is_refused(tmp_path):
    from rnnc.errors import Unsupported
    from rnnc.targets import tvm as backend
    from tests.targets.test_tvm import SMALL, _spec

    with pytest.raises(Unsupported, match="bf16_path=amx"):
        backend.build(_spec(), tmp_path, "cpu", {"mcpu": "x86-64", "bf16_path": "amx", "tuning": SMALL}, "bf16")


# ---------------------------------------------------------------------------------------------
# int8 on tdpbusd: the VNNI packing as AMX's B operand, the same integer sums as VNNI's


INT8_CASES = CASES + [("lstm", 130, 70, ("forward",), dict(), 3, 33),  # K past 64, two row tiles
                      ("rnn", 8, 17, ("forward",), dict(initial_h=True, activations=("Relu",)), 5, 3)]


@needs_amx_int8
@pytest.mark.parametrize("cell,I,H,dirs,extra,T,batch", INT8_CASES)
def test_amx_int8_layer_is_vnnis_to_float32_rounding(cell, I, H, dirs, extra, T, batch):
    """Integer sums are exact, so the AMX body (every batch) and the hybrid (AMX's projection, VNNI's
    steps below amx_from) give VNNI's outputs up to float32 rounding, within int8's bound of float64."""
    X, W, R, B, h0, c0, P, lens = _inputs(LayerSpec(cell, I, H, dirs, **extra), T, batch, np.random.default_rng(3))
    outs = {}
    for name, amx_from in (("vnni", 0), ("amx", 1), ("hybrid", batch + 1)):
        spec = LayerSpec(cell, I, H, dirs, precision="int8", vnni=True, amx_from=amx_from, **extra)
        if amx_from > 1 and not amx.projection_always(spec):
            continue  # a small layer's body below amx_from is VNNI's own: the same as "vnni"
        values = {"X": X.transpose(1, 0, 2) if spec.x_layout == "bti" else X, "H0": h0, "C0": c0,
                  **kernels.pack(spec, W, R, B, P)}
        outs[name] = call(_compile(kernels.layer_primfunc(spec)), spec, "llvm", values, T, batch)
    want = in_layouts(spec, *onnx_reference(spec, X, W, R, B, h0, c0, P, lens))
    for name, got in outs.items():
        errors = [float(np.abs(g - w).max() / np.abs(w).max()) for g, w in zip(got, want)]
        assert 1e-5 < max(errors) < tolerance("float32", "int8"), (name, errors)
        for g, v in zip(got, outs["vnni"]):
            assert np.allclose(g, v, rtol=1e-5, atol=1e-6), (name, float(np.abs(g - v).max()))


def test_amx_int8_source_and_choice():
    lstm = LayerSpec("lstm", 8, 256, precision="int8", vnni=True)
    with amx.building("auto"):
        assert amx.resolve(lstm).amx_from == amx.INT8_STEPS_FROM  # large steps: AMX's projection always
        assert amx.resolve(LayerSpec("lstm", 8, 32, precision="int8", vnni=True)).amx_from == amx.SMALL_FROM
        assert amx.resolve(LayerSpec("lstm", 8, 32, precision="int8")).amx_from == 0  # the widened fallback
        spec = amx.resolve(lstm)
    assert spec.kq == 256 and spec.ip == 64  # K of R and of W to whole 64-byte tile rows
    src = kernels.layer_source(dataclasses.replace(lstm, amx_from=amx.INT8_STEPS_FROM))
    assert "llvm.x86.tdpbusd" in src and "vpdpbusd" in src and f"if batch >= {amx.INT8_STEPS_FROM}:" in src
    assert src.count("llvm.x86.tdpbusd") == 8  # projection: Xq and Xr x 2 column tiles; steps: 4 gates


def test_fixed_h_scale_where_h_stays_in_the_unit_interval():
    """H quantized by the cell update at 1/127 where it cannot leave [-1, 1]; a per-step phase elsewhere."""
    fixed = [LayerSpec("lstm", 8, 32, precision="int8", vnni=True, initial_h=True),
             LayerSpec("gru", 8, 32, precision="int8", vnni=True, linear_before_reset=True),
             LayerSpec("rnn", 8, 32, precision="int8", vnni=True)]
    per_step = [LayerSpec("rnn", 8, 32, precision="int8", vnni=True, activations=("Relu",)),
                LayerSpec("gru", 8, 32, precision="int8", vnni=True, linear_before_reset=True, initial_h=True),
                LayerSpec("gru", 8, 32, precision="int8", vnni=True, linear_before_reset=False),  # RH: its own phase
                LayerSpec("lstm", 8, 32, precision="int8", vnni=True, activations=("Sigmoid", "Relu", "Relu")),
                LayerSpec("lstm", 8, 32, precision="int8", vnni=True, seq_lens=True)]
    assert all(s.fixed_h for s in fixed) and not any(s.fixed_h for s in per_step)
    assert not LayerSpec("lstm", 8, 32, precision="int8").fixed_h  # widened int8 has float32 activations
    src = kernels.layer_source(fixed[0])
    assert "Hq[1 - cur, d, br" in src and "if t == 0:" in src  # H0: a per-row scale at step 0 only
    assert "_hquant" not in kernels.layer_source(fixed[2]) and "_hquant" in kernels.layer_source(per_step[0])
