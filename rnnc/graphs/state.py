"""State pairs: an output that is the next value of an input (`--state IN=OUT`, SPEC section 2).

Streaming models (voice activity detectors, keyword spotters) take their recurrent state as an
input and return the next one as an output, for the caller to carry to the next chunk. Given
pairs are checked (both exist, same element type and dims); where none are given, pairs are found
by name and shape: an input and an output whose names reduce to the same stem (`state`/`stateN`,
`h`/`hn`, `h0`/`h_n`, `c`/`cn`, `hidden_in`/`hidden_out`, `prev_h`/`next_h`, ...), with the same
dims and element type, each the only candidate of the other.
"""
from __future__ import annotations

import re

from rnnc.errors import UserError
from rnnc.records.manifest import TensorInfo

_IN_AFFIXES = (r"^(initial|init|prev|previous|old|last|in)_", r"(_?0|_in|_input|_prev|_init)$")
_OUT_AFFIXES = (r"^(next|new|final|out|updated)_", r"(_?n|_out|_output|_new|_next|_final|_?1)$")


def parse_state(text: str) -> dict[str, str]:
    """`h0=hn,c0=cn` -> {"h0": "hn", "c0": "cn"}."""
    pairs: dict[str, str] = {}
    problems = []
    for item in (t.strip() for t in text.split(",") if t.strip()):
        name, sep, out = (p.strip() for p in item.partition("="))
        if not sep or not name or not out:
            problems.append(f"--state: {item!r} is not IN=OUT (an input and the output that is its next value)")
        elif name in pairs:
            problems.append(f"--state: input {name!r} is given twice")
        else:
            pairs[name] = out
    if problems:
        raise UserError(*problems)
    return pairs


def state_pairs(inputs: list[TensorInfo], outputs: list[TensorInfo], given: dict[str, str] | None
                ) -> dict[str, str]:
    """The given pairs, checked, or else the pairs found by name and shape."""
    if given:
        return _checked(inputs, outputs, given)
    found: dict[str, list[str]] = {}
    for i in inputs:
        for o in outputs:
            if _stem(i.name, _IN_AFFIXES) == _stem(o.name, _OUT_AFFIXES) and _same(i, o) and i.name != o.name:
                found.setdefault(i.name, []).append(o.name)
    claimed: dict[str, int] = {}
    for outs in found.values():
        for o in outs:
            claimed[o] = claimed.get(o, 0) + 1
    return {i: outs[0] for i, outs in found.items() if len(outs) == 1 and claimed[outs[0]] == 1}


def _checked(inputs: list[TensorInfo], outputs: list[TensorInfo], given: dict[str, str]) -> dict[str, str]:
    ins, outs = {t.name: t for t in inputs}, {t.name: t for t in outputs}
    problems = []
    for i, o in given.items():
        if i not in ins:
            problems.append(f"--state {i}={o}: no input named {i!r}; the inputs are {', '.join(map(repr, ins))}")
        elif o not in outs:
            problems.append(f"--state {i}={o}: no output named {o!r}; the outputs are {', '.join(map(repr, outs))}")
        elif not _same(ins[i], outs[o]):
            problems.append(f"--state {i}={o}: output {o!r} is {_shown(outs[o])} but input {i!r} is "
                            f"{_shown(ins[i])}; a state output must have its input's type and shape")
    if len(set(given.values())) != len(given):
        problems.append("--state: an output is the next value of two inputs")
    if problems:
        raise UserError(*problems)
    return dict(given)


def _stem(name: str, affixes: tuple[str, ...]) -> str:
    s = re.sub(r"[^a-z0-9_]", "_", name.lower()).strip("_")
    for pattern in affixes:
        stripped = re.sub(pattern, "", s)
        s = stripped or s
    return s


def _same(i: TensorInfo, o: TensorInfo) -> bool:
    """Same element type and dims; an output dim shape inference left unknown ("?") matches any."""
    return i.dtype == o.dtype and len(i.dims) == len(o.dims) and all(
        a == b or b == "?" for a, b in zip(i.dims, o.dims))


def _shown(t: TensorInfo) -> str:
    return f"{t.dtype} [{', '.join(map(str, t.dims))}]"
