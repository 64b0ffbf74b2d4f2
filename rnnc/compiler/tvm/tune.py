"""`--tune SECONDS` (build option `tune_s`): search the knobs where search pays, cache the winner.

The space is small on purpose: the recurrent step's batch register tile (rows sharing one pass over
R) and the input/dense GEMM's row tile. Each candidate is lowered, built and timed on the model's
own largest spec shape (median of several runs); the search stops when the budget is spent.

A cache is used only when the caller names its directory (`tune_cache`; the CLI passes its default):
the winner is stored there as JSON, keyed by the graph's structure (ops, attributes, weight shapes,
not values), the shapes and the TVM target, and any later build of the same key with the same
directory reuses it, tuned or not. Without `tune_cache` nothing is read or written: an untuned
build uses the defaults, and a search is not kept.
"""
from __future__ import annotations

import hashlib
import json
import os
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from rnnc.compiler.tvm.lower import lower
from rnnc.compiler.tvm.spec import Tuning, default_tiles

# searched in this order after the target's default; wide tiles suit AVX-512, narrow ones AVX2
CANDIDATES = [Tuning(), Tuning(4, 4), Tuning(4, 6), Tuning(6, 4), Tuning(2, 4), Tuning(3, 6), Tuning(5, 6),
              Tuning(1, 1), Tuning(3, 1), Tuning(1, 2), Tuning(6, 1), Tuning(2, 1), Tuning(2, 2)]


def untuned(target: str, tvm_target: dict[str, Any]) -> Tuning:
    """The tiles of a build without tuning: by the CPU's vector width (`spec.default_tiles`)."""
    if target != "cpu":
        return Tuning()
    from rnnc.compiler.tvm.target import vector_bits

    return default_tiles(vector_bits(tvm_target))


def cache_dir(options: dict[str, Any]) -> Path | None:
    """The directory of tuning records the caller named, or None: no cache."""
    return Path(options["tune_cache"]) if options.get("tune_cache") else None


def key(proto: onnx.ModelProto, shapes: list[tuple[int, int]], tvm_target: dict[str, Any],
        precision: str = "fp32") -> str:
    """What makes two builds the same problem: structure, shapes, target and the weights' precision
    (an int8 step is another kernel), not weight values."""
    h = hashlib.sha256()
    for node in proto.graph.node:
        h.update(node.op_type.encode())
        h.update(str(sorted((a.name, str(onnx.helper.get_attribute_value(a))) for a in node.attribute)).encode())
    for init in proto.graph.initializer:
        h.update(f"{init.name}:{list(init.dims)}".encode())
    h.update(json.dumps([list(s) for s in shapes]).encode())
    h.update(json.dumps(tvm_target, sort_keys=True).encode())
    if precision != "fp32":  # fp32 keys stay what they were: existing caches still hit
        h.update(precision.encode())
    return h.hexdigest()[:24]


def choose(model: Any, target: str, tvm_target: dict[str, Any], options: dict[str, Any],
           precision: str = "fp32", vnni: bool = False) -> tuple[Tuning, dict[str, Any]]:
    """The tuning to build with, and what to record about where it came from; `precision` and
    `vnni` are the layer kernels' (`lower.lower`), searched as they will be built."""
    budget = float(options.get("tune_s") or options.get("tune") or 0)
    k = key(model.onnx, list(model.shapes), tvm_target, precision)
    if options.get("tuning"):  # the caller's own choice wins over cache and search
        return Tuning(**options["tuning"]), {"source": "options", "key": k}
    directory = cache_dir(options)
    path = None if directory is None else directory / f"{k}.json"
    if path is not None and path.is_file():
        try:
            rec = json.loads(path.read_text())
            return Tuning(**rec["tuning"]), {"source": "cache", "key": k, "measured_ms": rec.get("measured_ms")}
        except (ValueError, KeyError, TypeError):
            pass  # a damaged record is searched again
    if budget <= 0 or target != "cpu":
        return untuned(target, tvm_target), {"source": "default", "key": k}
    best, trials = search(model, tvm_target, budget, untuned(target, tvm_target), precision, vnni)
    if path is not None:
        rec = {"tuning": best[0].as_dict(), "measured_ms": best[1], "trials": trials, "key": k}
        path.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile("w", dir=path.parent, delete=False, suffix=".tmp") as f:
            f.write(json.dumps(rec, indent=2))
        os.replace(f.name, path)
    return best[0], {"source": "search", "key": k, "measured_ms": best[1], "trials": len(trials)}


def search(model: Any, tvm_target: dict[str, Any], budget: float, first: Tuning | None = None,
           precision: str = "fp32", vnni: bool = False) -> tuple[tuple[Tuning, float], list[dict[str, Any]]]:
    import tvm
    from tvm import relax

    batch, seq = max(model.shapes, key=lambda s: s[0] * s[1])
    seq = min(seq, 64)  # the step cost is what differs; a long T only adds time
    arrays = model.random_inputs(batch, seq, np.random.default_rng(0))
    deadline = time.perf_counter() + budget
    trials: list[dict[str, Any]] = []
    best: tuple[Tuning, float] | None = None
    for cand in dict.fromkeys(([first] if first else []) + CANDIDATES):
        if time.perf_counter() > deadline and best is not None:
            break
        ex = tvm.compile(lower(model.onnx, "llvm", cand, precision=precision, vnni=vnni).module,
                         tvm.target.Target(tvm_target))
        vm = relax.VirtualMachine(ex, tvm.cpu())
        args = [tvm.runtime.tensor(arrays[t.name]) for t in model.inputs]
        vm["main"](*args)
        samples = []
        for _ in range(7):
            t0 = time.perf_counter()
            vm["main"](*args)
            samples.append((time.perf_counter() - t0) * 1e3)
        ms = float(np.median(samples))
        trials.append({**cand.as_dict(), "median_ms": round(ms, 4)})
        if best is None or ms < best[1]:
            best = (cand, ms)
    assert best is not None
    return best, trials
