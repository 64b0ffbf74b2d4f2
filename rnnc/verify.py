"""Stage 4: numerical equivalence of every backend against the float64 reference, on fresh inputs.

Errors are normwise: `rel_err = max|y - ref| / max|ref|` per output and shape, the worst kept.
Element-wise relative error is meaningless near zero (softmax tails, ReLU outputs); the
normwise one is what the tolerances of float32 arithmetic bound. Non-finite outputs never pass.

Generated tokens (one_to_many, encoder_decoder) are checked step by step on the backend's own
history: the reference is run with the backend's tokens fed back (`Model.teacher64`), so one
near-tie does not turn every later step into a mismatch. A token must be the argmax of the
reference's probabilities at its step, or within `tolerance` of it (a tie within float32
rounding: counted and reported as `ties`, not failed); the probabilities must match within tolerance.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np

from rnnc.errors import UserError
from rnnc.graphs.model import Arrays, Model
from rnnc.progress import SILENT, Progress
from rnnc.records.manifest import Errors, ShapeErrors, Verification
from rnnc.targets import precision_of
from rnnc.targets.base import Runner

TOLERANCE = {"float32": 1e-5, "float16": 1e-2, "bfloat16": 4e-2}
# a backend built at a lower precision than the model's (`tvm:int8`, `openvino:bf16`): its weights
# (and for some, its arithmetic) carry 8 significant bits (bf16) or 8 bits per gate row (int8);
# measured worst normwise errors here: bf16 weights 1-4e-3, OpenVINO's bf16 arithmetic ~5e-3,
# ORT's dynamic int8 1.6-2e-2. A wrong kernel is off by O(1).
PRECISION_TOLERANCE = {"fp16": 1e-2, "bf16": 2e-2, "int8": 6e-2}


def tolerance(dtype: str, precision: str = "fp32") -> float:
    """The normwise relative error a backend running `dtype` arithmetic, built at `precision`, may
    reach and pass: the looser of the two."""
    return max(TOLERANCE.get(dtype, TOLERANCE["float32"]), PRECISION_TOLERANCE.get(precision, 0.0))


def output_errors(outputs: Arrays, reference: Arrays) -> tuple[dict[str, tuple[float, float]], list[str]]:
    """Per output: (max|y - ref|, max|ref|); and a line per output missing, misshapen or non-finite."""
    found, problems = {}, []
    for name, raw in reference.items():
        ref = np.asarray(raw, dtype=np.float64)
        if name not in outputs:
            problems.append(f"output {name!r} missing")
            continue
        if _kind(outputs[name]) != _kind(raw):
            problems.append(f"output {name!r} is {np.asarray(outputs[name]).dtype}, expected {np.asarray(raw).dtype}")
            continue
        got = np.asarray(outputs[name], dtype=np.float64)
        if got.shape != ref.shape:
            problems.append(f"output {name!r} has shape {list(got.shape)}, expected {list(ref.shape)}")
            continue
        if not np.all(np.isfinite(got)):
            problems.append(f"output {name!r} has {int(np.sum(~np.isfinite(got)))} non-finite values")
            continue
        found[name] = (float(np.max(np.abs(got - ref))) if ref.size else 0.0,
                       float(np.max(np.abs(ref))) if ref.size else 0.0)
    return found, problems


def _kind(a: object) -> str:
    """Flags, integers or reals: a float32 output where the reference gives bool or int64 is wrong,
    a float32 one where it gives float64 is the precision under test."""
    kind = np.asarray(a).dtype.kind
    return {"b": "bool", "i": "int", "u": "int"}.get(kind, "real")


def normwise(errors: dict[str, tuple[float, float]]) -> float:
    """The worst output's max|y - ref| / max|ref| (the absolute error where the reference is 0)."""
    return max((e / scale if scale > 0 else e for e, scale in errors.values()), default=0.0)


def compare(outputs: Arrays, reference: Arrays) -> Errors:
    """Worst absolute and normwise relative error over all outputs; names and shapes must match."""
    found, problems = output_errors(outputs, reference)
    return Errors(max_abs_err=max((e for e, _ in found.values()), default=0.0), rel_err=normwise(found),
                  problems=tuple(problems))


# Outputs far below the unit scale of the states they come from (a ReLU head of one hidden unit:
# max|ref| 2e-3) turn float32's rounding of those O(1) states into rel_err 1e-5 (Hypothesis found
# one such spec in ~100): an error below `limit * ABS_FLOOR` in absolute terms (1e-7 at float32's
# 1e-5, its rounding of a unit value) passes whatever the outputs' size.
ABS_FLOOR = 1e-2


def judge(errors: Errors, limit: float) -> tuple[bool, str | None]:
    """Whether errors pass `limit` (normwise, or below `limit * ABS_FLOOR` absolutely), and why not."""
    if errors.problems:
        return False, "; ".join(errors.problems)
    if errors.rel_err > limit and errors.max_abs_err > limit * ABS_FLOOR:
        return False, f"rel_err {errors.rel_err:.3g} > tolerance {limit:g} against the float64 reference"
    return True, None


def verify(
    model: Model,
    runners: dict[str, Runner],
    shapes: Sequence[tuple[int, int]],
    seed: int | None = None,
    progress: Progress = SILENT,
) -> dict[str, Verification]:
    """Run every backend and the reference on the same fresh inputs for each (batch, seq) shape.

    A backend's `rel_err` is normwise over everything verified: per output, the largest error over
    every shape over the largest |reference| over every shape. Per shape, a small output (batch 1,
    a leaky-ReLU head whose units all came out negative: max|ref| 0.003) can make float32's honest
    rounding read as 1e-5 and fail ~1% of fresh draws; over all shapes its scale is the model's.
    `per_shape` keeps each shape's own errors. `seed` makes the inputs reproducible; by default it
    is drawn afresh and recorded.
    """
    seed = int(np.random.SeedSequence().entropy % 2**32) if seed is None else seed
    rng = np.random.default_rng(seed)
    limits = {name: tolerance(model.dtype, precision_of(name)) for name in runners}
    per_shape: dict[str, list[ShapeErrors]] = {name: [] for name in runners}
    overall: dict[str, dict[str, tuple[float, float]]] = {name: {} for name in runners}
    total, done = len(shapes) * (len(runners) + 1), 0
    for batch, seq in shapes:
        inputs = model.random_inputs(batch, seq, rng)
        progress.update(done, total, f"reference (float64) batch {batch} seq {seq}")
        reference = {k: np.asarray(v) for k, v in model.reference64(inputs).items()}  # kinds kept: see _kind
        done += 1
        for name, runner in runners.items():
            progress.update(done, total, f"verify {name} batch {batch} seq {seq}")
            try:
                got = runner(**inputs)
                want, ties, tokens, tie_notes = generated_reference(model, inputs, got, reference, limits[name])
                errors, problems = output_errors(got, want)
                found = ShapeErrors(batch=batch, seq=seq, max_abs_err=max((e for e, _ in errors.values()), default=0.0),
                                    rel_err=normwise(errors), problems=tuple(problems + tie_notes),
                                    ties=ties, tokens=tokens)
                seen = overall[name]
                for out, (e, scale) in errors.items():
                    before = seen.get(out, (0.0, 0.0))
                    seen[out] = (max(before[0], e), max(before[1], scale))
            except Exception as err:  # noqa: BLE001 - a backend crashing is a failed check, not ours
                found = ShapeErrors(batch=batch, seq=seq, max_abs_err=None, rel_err=None,
                                    problems=(f"batch {batch} seq {seq}: {type(err).__name__}: {err}",))
            per_shape[name].append(found)
            done += 1
    progress.update(total, total, "verified")
    progress.done()
    return {name: summarize(found, normwise(overall[name]), limits[name], seed) for name, found in per_shape.items()}


def summarize(per_shape: Sequence[ShapeErrors], rel_err: float, limit: float, seed: int | None) -> Verification:
    """The worst absolute error over every shape and the normwise `rel_err` over all of them; an error
    that could not be measured (a crash) is None."""
    def worst(key: str) -> float | None:
        values = [getattr(s, key) for s in per_shape]
        return None if any(v is None for v in values) else max(values, default=0.0)

    problems = tuple(p for s in per_shape for p in s.problems)
    rel = None if worst("rel_err") is None else rel_err
    return Verification(max_abs_err=worst("max_abs_err"), rel_err=rel,
                        passed=not problems and rel is not None and rel <= limit, tolerance=limit,
                        inputs_seed=seed, shapes=tuple((s.batch, s.seq) for s in per_shape),
                        per_shape=tuple(per_shape), problems=problems,
                        ties=sum(s.ties for s in per_shape), tokens=sum(s.tokens for s in per_shape))


GENERATED = "generated"


def generated_reference(model: Model, inputs: Arrays, got: Arrays, reference: Arrays, limit: float
                        ) -> tuple[Arrays, int, int, list[str]]:
    """The reference to hold a generative backend's outputs against: the float64 steps on the
    backend's own tokens, with each token that is a tie within `limit` of the reference's argmax
    accepted. Returns (reference, ties, tokens checked, a line per wrong token, at most 3).
    Models that generate no tokens get `reference` back as it is."""
    if model.teacher64 is None or GENERATED not in got or GENERATED not in reference:
        return reference, 0, 0, []
    tokens = np.asarray(got[GENERATED])
    if tokens.shape != np.shape(reference[GENERATED]) or tokens.dtype.kind not in "iu":
        return reference, 0, 0, []  # output_errors names the shape or kind
    vocab = np.shape(reference["output"])[-1]
    if tokens.size and (tokens.min() < 0 or tokens.max() >= vocab):
        return reference, 0, 0, [f"output {GENERATED!r}: token ids outside [0, {vocab})"]
    forced = {k: np.asarray(v) for k, v in model.teacher64(inputs, tokens).items()}
    probs = forced["output"]  # [batch, steps, vocab]
    best = np.argmax(probs, axis=-1)
    chosen = np.take_along_axis(probs, tokens[..., None], axis=-1)[..., 0]
    top = np.max(probs, axis=-1)
    gap = top - chosen
    tie = (tokens != best) & (gap <= limit * np.maximum(top, np.finfo(np.float32).tiny))
    wrong = (tokens != best) & ~tie
    notes = [f"output {GENERATED!r}: row {b} step {t + 1}: token {tokens[b, t]} (p={chosen[b, t]:.6g}) is not the "
             f"reference's argmax {best[b, t]} (p={top[b, t]:.6g})" for b, t in zip(*np.nonzero(wrong))][:3]
    forced[GENERATED] = np.where(tie, tokens, best).astype(np.int64)
    return forced, int(tie.sum()), int(tokens.size), notes


def verify_chain(
    model: Model,
    runners: dict[str, Runner],
    calls: int,
    seed: int | None = None,
    progress: Progress = SILENT,
) -> dict[str, Verification]:
    """`calls` consecutive calls at the model's first shape, each call's state outputs fed back as
    the next call's state inputs: every backend carries its own state and the float64 reference
    its own, so drift across calls shows (a kernel right for one call that drifts over a thousand
    fails). The other inputs are fresh each call, the same for all. Errors: the worst over the
    chain (normwise per output over every call)."""
    pairs = model.state
    if not pairs:
        raise UserError(f"--chain: model {model.name!r} has no state pairs; declare them with --state IN=OUT")
    if calls < 1:
        raise UserError(f"--chain: needs at least 1 call, got {calls}")
    seed = int(np.random.SeedSequence().entropy % 2**32) if seed is None else seed
    rng = np.random.default_rng(seed)
    batch, seq = model.shapes[0]
    limits = {name: tolerance(model.dtype, precision_of(name)) for name in runners}
    first = model.random_inputs(batch, seq, rng)
    dtypes = {t.name: t.dtype for t in model.inputs}
    # each backend's reference carries its own state (a generative model's reference follows the
    # backend's own tokens, see `generated_reference`); the reference computes in float64
    reference_state = {name: {k: first[k] for k in pairs} for name in runners}
    states = {name: {k: first[k] for k in pairs} for name in runners}
    seen: dict[str, dict[str, tuple[float, float]]] = {name: {} for name in runners}
    problems: dict[str, list[str]] = {name: [] for name in runners}
    ties = {name: 0 for name in runners}
    checked = {name: 0 for name in runners}
    for call in range(calls):
        progress.update(call, calls, f"chain call {call + 1}/{calls}")
        fresh = {k: v for k, v in model.random_inputs(batch, seq, rng).items() if k not in pairs}
        shared: Arrays | None = None  # without teacher forcing every reference state is the same one
        for name, runner in runners.items():
            if problems[name]:
                continue  # already failed: its state is no longer comparable
            if shared is not None:
                plain = shared
            else:
                plain = {k: np.asarray(v) for k, v in model.reference64({**fresh, **reference_state[name]}).items()}
                shared = plain if model.teacher64 is None else None
            try:
                got = runner(**fresh, **states[name])
                want, tied, count, notes = generated_reference(model, {**fresh, **reference_state[name]}, got, plain,
                                                               limits[name])
                errors, found = output_errors(got, want)
                found += notes
            except Exception as err:  # noqa: BLE001 - a backend crashing is a failed check
                errors, found, want, tied, count = {}, [f"{type(err).__name__}: {err}"], plain, 0, 0
            if found:
                problems[name] = [f"call {call + 1}: {p}" for p in found]
                continue
            ties[name] += tied
            checked[name] += count
            for out, (e, scale) in errors.items():
                before = seen[name].get(out, (0.0, 0.0))
                seen[name][out] = (max(before[0], e), max(before[1], scale))
            states[name] = {k: np.asarray(got[o]).astype(dtypes[k]) for k, o in pairs.items()}
            reference_state[name] = {k: want[o] for k, o in pairs.items()}
    progress.update(calls, calls, "chain verified")
    progress.done()
    results = {}
    for name in runners:
        rel = normwise(seen[name])
        worst = max((e for e, _ in seen[name].values()), default=0.0)
        results[name] = Verification(
            max_abs_err=None if problems[name] else worst, rel_err=None if problems[name] else rel,
            passed=not problems[name] and rel <= limits[name], tolerance=limits[name], inputs_seed=seed,
            shapes=((batch, seq),), problems=tuple(problems[name][:3]), chain=calls, ties=ties[name],
            tokens=checked[name])
    return results
