"""Hypothesis strategies over the spec space of SPEC section 1, and the invalid mutations of it.

`specs()` draws only valid specs: each rule of `rnnc/graphs/spec.py` (and SPEC section 1) that
ties fields together is built into the draw (one_to_many's head feeds the next step, a decoder's
hidden size is the encoder's times its directions, a streaming network is unidirectional), so
no example is thrown away by `assume`. Sizes stay tiny so that one example compiles in well under
a second on torch, TorchScript and ONNX Runtime. `invalid_specs()` breaks exactly one rule of a
valid spec and says which field path the refusal must name.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any, Sequence

from hypothesis import strategies as st

Spec = dict[str, Any]
CELLS = ("rnn", "lstm", "gru")
GENERATIVE = ("one_to_many", "encoder_decoder")
MODES = ("many_to_many", "many_to_one", "one_to_many", "encoder_decoder")
ACTIVATIONS = ("none", "softmax", "sigmoid", "tanh", "relu", "leaky_relu")
DTYPES = ("float32", "float16", "bfloat16")

names = st.from_regex(r"\A[a-z0-9][a-z0-9_-]{0,8}\Z")
small = st.integers(1, 4)


@st.composite
def cells(draw: st.DrawFn, cell: str, hidden: int, decoder: bool = False) -> Spec:
    """The fields every cell shares (rnn: and decoder:): cell, hidden_size, depth, nonlinearity, bias;
    a default is sometimes written out and sometimes left out."""
    out: Spec = {"cell": cell, "hidden_size": hidden}
    if draw(st.booleans()):
        out["num_layers"] = draw(st.integers(1, 2 if decoder else 3))
    if cell == "rnn" and draw(st.booleans()):
        out["nonlinearity"] = draw(st.sampled_from(["tanh", "relu"]))
    if draw(st.booleans()):
        out["bias"] = draw(st.sampled_from([True, False, "single"]))
    return out


@st.composite
def specs(draw: st.DrawFn, cell: str | None = None, mode: str | None = None,
          dtypes: Sequence[str] = ("float32",)) -> Spec:
    """One valid spec; `cell` and `mode` pin a part of the space (None: drawn too), `dtype` is
    drawn from `dtypes`."""
    cell = cell or draw(st.sampled_from(CELLS))
    mode = mode or draw(st.sampled_from(MODES))
    tokens = draw(st.booleans())
    vocab = draw(st.integers(1, 6))
    inp: Spec = ({"type": "tokens", "vocab_size": vocab, "embedding_dim": draw(small)} if tokens
                 else {"type": "features", "features": draw(small)})
    hidden = draw(st.integers(1, 8))
    rnn = draw(cells(cell, hidden))
    generating = mode == "one_to_many"
    bidirectional = False if generating else draw(st.booleans())
    if bidirectional or draw(st.booleans()):
        rnn["bidirectional"] = bidirectional
    if not bidirectional and mode != "encoder_decoder" and draw(st.booleans()):
        rnn["state"] = draw(st.booleans())
    output: Spec = {"mode": mode} if mode != "many_to_many" or draw(st.booleans()) else {}
    spec: Spec = {"name": draw(names), "input": inp, "rnn": rnn}
    if mode == "one_to_many":
        output["steps"] = draw(small)
        output["dense"] = ({"units": vocab, "activation": "softmax"} if tokens else
                           {"units": inp["features"], "activation": draw(st.sampled_from(ACTIVATIONS))})
    elif mode == "encoder_decoder":
        dec_vocab = draw(st.integers(1, 6))
        decoder = draw(cells(draw(st.sampled_from(CELLS)), hidden * (2 if bidirectional else 1), decoder=True))
        decoder.update(vocab_size=dec_vocab, embedding_dim=draw(small), max_steps=draw(small))
        if draw(st.booleans()):
            decoder["start_token"] = draw(st.integers(0, dec_vocab - 1))
        spec["decoder"] = decoder
    elif draw(st.booleans()):
        output["dense"] = {"units": draw(st.integers(1, 5)), "activation": draw(st.sampled_from(ACTIVATIONS))}
    if output:
        spec["output"] = output
    spec["dtype"] = draw(st.sampled_from(dtypes))
    if draw(st.booleans()):
        spec["seed"] = draw(st.one_of(st.integers(0, 2**31), st.integers(2**31, 2**70)))
    spec["shapes"] = {"batch_sizes": [draw(st.integers(1, 3))], "seq_lens": [draw(small)]}
    return spec


# ---- invalid specs: one rule broken, and the field paths its refusal must name ---------------------


@dataclass(frozen=True)
class Broken:
    """An invalid spec and the field paths its refusal names, one line each, in any order."""

    spec: Spec
    paths: tuple[str, ...]
    how: str


INT_FIELDS = {  # the integer fields >= 1, by the section they sit in
    "input": ("vocab_size", "embedding_dim", "features"),
    "rnn": ("hidden_size", "num_layers"),
    "decoder": ("hidden_size", "num_layers", "vocab_size", "embedding_dim", "max_steps"),
}
CHOICES = (("rnn", "cell"), ("rnn", "bias"), ("rnn", "nonlinearity"), ("output", "mode"), ("dtype",),
           ("decoder", "cell"), ("decoder", "bias"), ("input", "type"), ("output", "dense", "activation"))
NULL_REFUSED = (("name",), ("input",), ("rnn",), ("output",), ("shapes",), ("dtype",), ("seed",),
                ("rnn", "cell"), ("rnn", "bias"), ("rnn", "bidirectional"), ("rnn", "state"),
                ("output", "mode"), ("decoder", "start_token"), ("decoder", "cell"))
not_int = st.one_of(st.text(max_size=4), st.floats(), st.booleans(), st.lists(st.integers(), max_size=2),
                    st.none(), st.dictionaries(st.text(max_size=2), st.integers(), max_size=1))


def _has(spec: Spec, path: tuple[str, ...]) -> bool:
    node: Any = spec
    for key in path:
        if not isinstance(node, dict) or key not in node:
            return False
        node = node[key]
    return True


def _fields(spec: Spec) -> list[tuple[str, ...]]:
    """The paths of every integer field that must be >= 1 in this spec."""
    found = [(part, key) for part, keys in INT_FIELDS.items() for key in keys if _has(spec, (part, key))]
    return found + [p for p in (("output", "dense", "units"), ("output", "steps")) if _has(spec, p)]


def _set(spec: Spec, path: tuple[str, ...], value: Any) -> Spec:
    """A copy of `spec` with `path` set to `value` (sections created where absent)."""
    spec = copy.deepcopy(spec)
    node = spec
    for key in path[:-1]:
        node = node.setdefault(key, {})
    node[path[-1]] = value
    return spec


def _drop(spec: Spec, path: tuple[str, ...]) -> Spec:
    spec = copy.deepcopy(spec)
    node = spec
    for key in path[:-1]:
        node = node[key]
    del node[path[-1]]
    return spec


def _broken(spec: Spec, how: str, *paths: tuple[str, ...] | str) -> Broken:
    return Broken(spec, tuple(p if isinstance(p, str) else ".".join(p) for p in paths), how)


@st.composite
def invalid_specs(draw: st.DrawFn) -> Broken:
    """A valid spec with one thing wrong: a size out of range, a value of the wrong type, a choice
    that does not exist, null where a value is needed, an unknown or a missing key, a bad name or
    shapes list, or two fields that contradict each other (SPEC section 1's cross-field rules)."""
    spec = draw(specs(dtypes=DTYPES))
    how = draw(st.sampled_from(["range", "type", "choice", "null", "unknown", "missing", "name", "shapes",
                                "rule"]))
    if how == "range":
        path = draw(st.sampled_from(_fields(spec) + [("seed",)]))
        return _broken(_set(spec, path, draw(st.integers(-3, -1 if path == ("seed",) else 0))), how, path)
    if how == "type":
        path = draw(st.sampled_from(_fields(spec) + [("seed",)] + [p for p in [("decoder", "start_token")]
                                                                    if _has(spec, p[:1])]))
        return _broken(_set(spec, path, draw(not_int)), how, path)
    if how == "choice":
        path = draw(st.sampled_from([p for p in CHOICES if _has(spec, p[:-1] or p)]))
        if path[-1] == "nonlinearity":
            spec = _set(spec, ("rnn", "cell"), "rnn")
        bad = draw(st.sampled_from(["", "LSTM", "cnn", "float64", "both", "True", 1, 0, 2.5, [], {}]))
        return _broken(_set(spec, path, bad), how, path)
    if how == "null":
        path = draw(st.sampled_from([p for p in NULL_REFUSED if _has(spec, p[:-1] or p)]
                                    + [p for p in (("output", "steps"), ("output", "dense"), ("decoder",))
                                       if _has(spec, p) and spec["output"].get("mode") in GENERATIVE]))
        return _broken(_set(spec, path, None), how, path)
    if how == "unknown":
        part = draw(st.sampled_from([(), *((p,) for p in ("input", "rnn", "output", "decoder", "shapes")
                                               if isinstance(spec.get(p), dict))]))
        path = (*part, draw(st.sampled_from(["hiden_size", "layers", "Bias", "x"])))
        return _broken(_set(spec, path, 1), how, path)
    if how == "missing":
        required = [("name",), ("input",), ("rnn",), ("input", "type"), ("rnn", "cell"), ("rnn", "hidden_size")]
        required += [("input", k) for k in spec["input"] if k != "type"]
        if "decoder" in spec:
            required += [("decoder", k) for k in ("cell", "hidden_size", "vocab_size", "embedding_dim", "max_steps")]
        path = draw(st.sampled_from(required))
        return _broken(_drop(spec, path), how, path)
    if how == "name":
        bad = draw(st.one_of(st.sampled_from(["", "-x", "_x", "Upper", "a b", "a.b", "é", "x\n"]),
                             st.from_regex(r"\A[a-z][A-Z./ ]\Z")))
        return _broken(_set(spec, ("name",), bad), how, "name")
    if how == "shapes":
        key = draw(st.sampled_from(["batch_sizes", "seq_lens"]))
        bad = draw(st.sampled_from([[], [0], [2, -1], "8", 8, [1.5], [True], None]))
        where = f"shapes.{key}" if not isinstance(bad, list) or not bad else f"shapes.{key}.{len(bad) - 1}"
        return _broken(_set(spec, ("shapes", key), bad), how, where)
    return draw(contradictions(spec))


@st.composite
def contradictions(draw: st.DrawFn, spec: Spec) -> Broken:
    """Two fields that cannot go together: each rule of SPEC section 1 that ties fields together,
    applied to a spec of a mode where it can be broken."""
    mode = spec.get("output", {}).get("mode", "many_to_many")
    rnn = spec["rnn"]
    rules = ["nonlinearity"] + {
        "one_to_many": ["no-steps", "no-head", "head-units", "head-activation", "bidirectional", "decoder-elsewhere"],
        "encoder_decoder": ["head", "state", "no-decoder", "dec-hidden", "start-token", "steps-elsewhere"],
    }.get(mode, ["stream", "steps-elsewhere", "decoder-elsewhere"])
    rule = draw(st.sampled_from(rules))
    if rule == "nonlinearity":
        part = draw(st.sampled_from(["rnn", "decoder"] if "decoder" in spec else ["rnn"]))
        spec = _set(spec, (part, "cell"), draw(st.sampled_from(["lstm", "gru"])))
        return _broken(_set(spec, (part, "nonlinearity"), "tanh"), rule, f"{part}.nonlinearity")
    if rule == "steps-elsewhere":
        return _broken(_set(spec, ("output", "steps"), 2), rule, "output.steps")
    if rule == "decoder-elsewhere":
        decoder = {"cell": "gru", "hidden_size": 2, "vocab_size": 3, "embedding_dim": 2, "max_steps": 2}
        return _broken(_set(spec, ("decoder",), decoder), rule, "decoder")
    if rule == "stream":  # many_to_*: a bidirectional network cannot stream
        return _broken(_set(_set(spec, ("rnn", "bidirectional"), True), ("rnn", "state"), True), rule, "rnn.state")
    if rule == "no-steps":
        return _broken(_drop(spec, ("output", "steps")), rule, "output.steps")
    if rule == "no-head":
        return _broken(_drop(spec, ("output", "dense")), rule, "output.dense")
    if rule == "head-units":
        units = spec["output"]["dense"]["units"]
        return _broken(_set(spec, ("output", "dense", "units"), units + draw(st.integers(1, 3))), rule,
                       "output.dense.units")
    if rule == "head-activation":
        if spec["input"]["type"] == "features":  # fed back whatever its activation: only units can break it
            return _broken(_set(spec, ("output", "dense", "units"), 9), rule, "output.dense.units")
        act = draw(st.sampled_from([a for a in ACTIVATIONS if a != "softmax"]))
        return _broken(_set(spec, ("output", "dense", "activation"), act), rule, "output.dense.activation")
    if rule == "bidirectional":  # one_to_many; with state too, the streaming rule is broken as well
        lines = ["rnn.bidirectional"] + (["rnn.state"] if rnn.get("state") is True else [])
        return _broken(_set(spec, ("rnn", "bidirectional"), True), rule, *lines)
    if rule == "head":
        return _broken(_set(spec, ("output", "dense"), {"units": 2}), rule, "output.dense")
    if rule == "state":  # encoder_decoder; bidirectional too breaks the streaming rule as well
        lines = ["rnn.state"] * (2 if rnn.get("bidirectional") is True else 1)
        return _broken(_set(spec, ("rnn", "state"), True), rule, *lines)
    if rule == "no-decoder":
        return _broken(_drop(spec, ("decoder",)), rule, "decoder")
    if rule == "dec-hidden":
        hidden = spec["decoder"]["hidden_size"]
        return _broken(_set(spec, ("decoder", "hidden_size"), hidden + draw(st.integers(1, 3))), rule,
                       "decoder.hidden_size")
    vocab = spec["decoder"]["vocab_size"]
    return _broken(_set(spec, ("decoder", "start_token"), draw(st.sampled_from([vocab, vocab + 5, -1]))), rule,
                   "decoder.start_token")
