"""Untuned tiles follow the target CPU's vector width (`spec.default_tiles`, `tune.untuned`)."""
from __future__ import annotations

import pytest

from rnnc.compiler.tvm.spec import DEFAULT_TILES, NARROW_TILES, Tuning, default_tiles

pytestmark = pytest.mark.tvm


def test_default_tiles_by_vector_width():
    assert default_tiles(512) == DEFAULT_TILES == Tuning(6, 6)
    assert default_tiles(256) == default_tiles(128) == NARROW_TILES == Tuning(1, 1)


@pytest.mark.parametrize("mcpu, bits", [("skylake-avx512", 512), ("sapphirerapids", 512), ("znver4", 512),
                                        ("haswell", 256), ("znver1", 256), ("x86-64", 128)])
def test_vector_width_of_llvm_targets(mcpu, bits):
    from rnnc.compiler.tvm import tune
    from rnnc.compiler.tvm.target import vector_bits

    target = {"kind": "llvm", "mcpu": mcpu, "mtriple": "x86_64-pc-linux-gnu"}
    assert vector_bits(target) == bits
    assert tune.untuned("cpu", target) == default_tiles(bits)
    assert tune.untuned("cuda", target) == Tuning()
