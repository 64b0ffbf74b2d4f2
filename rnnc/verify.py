"""Numerical equivalence of every backend against the float64 reference, on fresh random inputs.

Errors are normwise: `rel_err = max|y - ref| / max|ref|` per output and shape, the worst kept.
Element-wise relative error is meaningless near zero (softmax tails, ReLU outputs); the
normwise one is what the tolerances of float32 arithmetic bound. Non-finite outputs never pass.
"""
from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from rnnc.graphs.model import Arrays, Model
from rnnc.progress import SILENT, Progress
from rnnc.targets.base import Runner

TOLERANCE = {"float32": 1e-5, "float16": 1e-2, "bfloat16": 4e-2}


def compare(outputs: Arrays, reference: Arrays) -> dict[str, Any]:
    """Worst absolute and normwise relative error over all outputs; names and shapes must match."""
    worst_abs, worst_rel, problems = 0.0, 0.0, []
    for name, ref in reference.items():
        if name not in outputs:
            problems.append(f"output {name!r} missing")
            continue
        got = np.asarray(outputs[name], dtype=np.float64)
        if got.shape != ref.shape:
            problems.append(f"output {name!r} has shape {list(got.shape)}, expected {list(ref.shape)}")
            continue
        if not np.all(np.isfinite(got)):
            problems.append(f"output {name!r} has {int(np.sum(~np.isfinite(got)))} non-finite values")
            continue
        abs_err = float(np.max(np.abs(got - ref))) if ref.size else 0.0
        scale = float(np.max(np.abs(ref))) if ref.size else 0.0
        worst_abs = max(worst_abs, abs_err)
        worst_rel = max(worst_rel, abs_err / scale if scale > 0 else abs_err)
    return {"max_abs_err": worst_abs, "rel_err": worst_rel, "problems": problems}


def verify(
    model: Model,
    runners: dict[str, Runner],
    shapes: Sequence[tuple[int, int]],
    seed: int | None = None,
    progress: Progress = SILENT,
) -> dict[str, dict[str, Any]]:
    """Run every backend and the reference on the same fresh inputs for each (batch, seq) shape.

    `seed` makes the inputs reproducible; by default it is drawn afresh and recorded.
    """
    seed = int(np.random.SeedSequence().entropy % 2**32) if seed is None else seed
    rng = np.random.default_rng(seed)
    tolerance = TOLERANCE.get(model.dtype, TOLERANCE["float32"])
    results = {
        name: {"max_abs_err": 0.0, "rel_err": 0.0, "passed": True, "tolerance": tolerance,
               "inputs_seed": seed, "shapes": [], "per_shape": [], "problems": []}
        for name in runners
    }
    total, done = len(shapes) * (len(runners) + 1), 0
    for batch, seq in shapes:
        inputs = model.random_inputs(batch, seq, rng)
        progress.update(done, total, f"reference (float64) batch {batch} seq {seq}")
        reference = {k: np.asarray(v, dtype=np.float64) for k, v in model.reference64(inputs).items()}
        done += 1
        for name, runner in runners.items():
            progress.update(done, total, f"verify {name} batch {batch} seq {seq}")
            result = results[name]
            try:
                errors = compare(runner(**inputs), reference)
            except Exception as err:  # noqa: BLE001 - a backend crashing is a failed check, not ours
                errors = {"max_abs_err": None, "rel_err": None,
                          "problems": [f"batch {batch} seq {seq}: {type(err).__name__}: {err}"]}
            done += 1
            result["shapes"].append([batch, seq])
            result["per_shape"].append({"batch": batch, "seq": seq, **errors})
            result["problems"] += errors["problems"]
            for key in ("max_abs_err", "rel_err"):
                if errors[key] is None:
                    result[key] = None
                elif result[key] is not None:
                    result[key] = max(result[key], errors[key])
    progress.update(total, total, "verified")
    progress.done()
    for result in results.values():
        result["passed"] = not result["problems"] and result["rel_err"] is not None \
            and result["rel_err"] <= tolerance
    return results
