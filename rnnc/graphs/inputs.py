"""The one checked boundary for the arrays a user hands to a model (SPEC section 2, exit code 2).

Every backend's runner and the Python API pass the user's arrays through `check_inputs` before
any runtime sees them, so a wrong array is refused the same way everywhere, with one line naming
the input, what was expected and what came. Left to the runtimes, the same mistakes give a
traceback (a wrong feature size), abort the process (an empty batch in ONNX Runtime) or, worst,
answer: an out-of-range token id makes a compiled embedding lookup read past its table.
"""
from __future__ import annotations

from functools import lru_cache
from typing import Any, Mapping, Sequence

import numpy as np

from rnnc.errors import UserError
from rnnc.records.manifest import TensorInfo

Arrays = dict[str, np.ndarray]


def check_inputs(inputs: Sequence[TensorInfo], arrays: Mapping[str, Any]) -> Arrays:
    """The arrays as the model takes them (dtype converted, C-contiguous), or a `UserError`.

    Checked: the names; each array's rank and every fixed size; symbolic sizes >= 1 and the same
    for every input that shares an axis name (`batch`, `seq`); a numeric dtype (integer inputs take
    integers only, float inputs any real number); integer ids in [0, high) where the model bounds
    them (token ids < vocabulary size).
    """
    fast = _as_given(inputs, arrays)
    if fast is not None:
        return fast
    names = [t.name for t in inputs]
    missing = [n for n in names if n not in arrays]
    unknown = [n for n in arrays if n not in names]
    if missing or unknown:
        raise UserError(f"inputs {sorted(arrays)} do not match the model's inputs {names}"
                        + (f": missing {missing}" if missing else "") + (f": unknown {unknown}" if unknown else ""))
    sizes: dict[str, tuple[int, str]] = {}  # symbolic axis -> (size, the input that fixed it)
    checked = {}
    for info in inputs:
        a = _array(info, arrays[info.name])
        _check_shape(info, a.shape, sizes)
        a = _converted(info, a)
        checked[info.name] = a if a.flags.c_contiguous else np.require(a, requirements="C")  # keeps rank 0
    return checked


def _as_given(inputs: Sequence[TensorInfo], arrays: Mapping[str, Any]) -> Arrays | None:
    """The arrays as they are, when each already is what the model takes (the common case, and
    all of a streaming call's: a few small arrays whose checks would cost more than the model's
    step); None sends them through the checks below, which also say what is wrong."""
    if len(arrays) != len(inputs):
        return None
    sizes: dict[str, int] = {}
    for info in inputs:
        a = arrays.get(info.name)
        if type(a) is not np.ndarray or a.dtype != _dtype(info.dtype) or a.ndim != len(info.dims) \
                or not a.flags.c_contiguous:
            return None
        for want, got in zip(info.dims, a.shape):
            if (got != want) if type(want) is int else (got < 1 or sizes.setdefault(want, got) != got):
                return None
        if a.dtype.kind in "iu" and a.size:  # ids in range: as `_converted` checks them
            top = info.high if info.high is not None else None
            bottom = (info.low or 0) if info.high is not None else None
            if top is not None and (int(a.min()) < bottom or int(a.max()) >= top):
                return None
    return dict(arrays)


@lru_cache(maxsize=None)
def _dtype(name: str) -> np.dtype:
    return np.dtype(name)


def _array(info: TensorInfo, value: Any) -> np.ndarray:
    if type(value) is np.ndarray and value.dtype.kind in "biuf":  # the common case, a streaming call's
        return value
    try:
        a = np.asarray(value)
    except (ValueError, TypeError) as err:
        raise UserError(f"input {info.name!r}: not an array ({err})") from None
    if a.dtype.kind not in "biuf":
        raise UserError(f"input {info.name!r}: expected {info.dtype} numbers, got an array of {a.dtype}")
    return a


def _check_shape(info: TensorInfo, shape: tuple[int, ...], sizes: dict[str, tuple[int, str]]) -> None:
    if len(shape) == len(info.dims) and all(
            (g == w) if isinstance(w, int) else (g >= 1 and sizes.setdefault(w, (g, info.name))[0] == g)
            for w, g in zip(info.dims, shape)):
        return  # the common case, checked in one pass; the loop below says what is wrong
    expected = "(" + ", ".join(str(d) for d in info.dims) + ")"
    if len(shape) != len(info.dims):
        raise UserError(f"input {info.name!r}: expected rank {len(info.dims)} {expected}, "
                        f"got shape {tuple(shape)} of rank {len(shape)}")
    for axis, (want, got) in enumerate(zip(info.dims, shape)):
        if isinstance(want, int):
            if got != want:
                raise UserError(f"input {info.name!r}: expected size {want} on axis {axis} {expected}, "
                                f"got shape {tuple(shape)}")
            continue
        if got < 1:
            raise UserError(f"input {info.name!r}: {want} (axis {axis}) must be >= 1, got {got} "
                            f"in shape {tuple(shape)}")
        seen = sizes.setdefault(want, (got, info.name))
        if seen[0] != got:
            raise UserError(f"input {info.name!r}: {want} is {got} (axis {axis}), but {seen[0]} in "
                            f"input {seen[1]!r}: inputs that share an axis must agree")


def _converted(info: TensorInfo, a: np.ndarray) -> np.ndarray:
    want = _dtype(info.dtype)
    if want.kind in "iu":
        if a.dtype.kind not in "iu":
            raise UserError(f"input {info.name!r}: expected integer ids ({info.dtype}), got {a.dtype}")
        if a.size:
            low, high = int(a.min()), int(a.max())
            top = info.high if info.high is not None else int(np.iinfo(want).max) + 1
            bottom = (info.low or 0) if info.high is not None else int(np.iinfo(want).min)
            if low < bottom or high >= top:
                bad = low if low < bottom else high
                what = f"token ids in [{bottom}, {info.high})" if info.high is not None else f"values that fit {want}"
                raise UserError(f"input {info.name!r}: expected {what}, got {bad}")
    elif a.dtype.kind == "b" and want.kind != "b":
        raise UserError(f"input {info.name!r}: expected {info.dtype} numbers, got an array of {a.dtype}")
    return a if a.dtype == want else a.astype(want)
