"""Limits a spec must keep for its build to fit on this machine, checked from the spec alone.

A spec can ask for more memory than any machine has (`rnn.hidden_size: 100000000` is 4e16
parameters); without this check the build dies in torch's allocator with a traceback. The parameter
count has a closed form, so the memory a compile needs is known before anything is allocated.

How the memory is counted: bytes per *allocated* parameter (for `bias: single` that includes the
frozen zero recurrent biases, which torch allocates although they are not trainable), summed over
every copy alive at once, in the worse of the two peaks of a compile with every backend:

- the ONNX export (`model_from_spec` -> `export_onnx`): the float32 torch module (4), its
  float64 `state_dict` (8), one layer's gate-reordered float64 W, R and B (8 at most, for a network
  whose weights sit in one layer), the float32 initializers three times over (the builder's list,
  the GraphProto that `make_graph` copies them into, the ModelProto that `make_model` copies that
  into: 12), and `check_model(full_check=True)`'s serialized bytes, their parse and the shape
  inference's copy (12): 44 bytes.
- the TVM build, the last backend, with the others' runners loaded: the `Model` (float32 module 4,
  float64 twin 8, ONNX initializers 4), the torch, TorchScript and ONNX Runtime runners (4 each),
  and the lowering's own copies (initializers as numpy 4, the packing's float64 temporaries 8,
  packed float32 4, Relax constants 4, the executable's 4: 24): 52 bytes.

Measured on a 30M-parameter LSTM (peak RSS over a tiny spec's): 41.8 and 53.2 bytes. A fixed 1 GiB
covers the interpreter and the libraries (a tiny spec's compile peaks at 0.56 GB). Activations are
not counted: they grow with `shapes`, linearly in the sizes, and stay small beside the weights.
"""
from __future__ import annotations

from dataclasses import dataclass

from rnnc import host
from rnnc.errors import UserError
from rnnc.graphs.spec import DecoderSpec, ModelSpec

GATES = {"lstm": 4, "gru": 3, "rnn": 1}
EXPORT_BYTES = 4 + 8 + 8 + 12 + 12  # per allocated parameter, see the module's docstring
COMPILE_BYTES = 4 + 8 + 4 + 3 * 4 + 24
BYTES_PER_PARAMETER = max(EXPORT_BYTES, COMPILE_BYTES)
FIXED_BYTES = 2**30
ONNX_LIMIT = 2**31  # bytes in one protobuf message, and so in one ONNX file without external data
_UNITS = ("B", "KiB", "MiB", "GiB", "TiB", "PiB", "EiB", "ZiB", "YiB")


@dataclass(frozen=True)
class Term:
    """One part of the parameter count and the spec fields it is a product of (path -> factor)."""

    trainable: int
    allocated: int
    factors: dict[str, int]


def terms(spec: ModelSpec) -> list[Term]:
    """The parameter count as a sum of parts, each exactly what torch allocates for it."""
    rnn, inp = spec.rnn, spec.input
    g, h, d, layers = GATES[rnn.cell], rnn.hidden_size, rnn.directions, rnn.num_layers
    # bias: true -> b_ih and b_hh; single -> b_ih trainable, b_hh allocated but frozen at zero
    trainable_bias = {True: 2, "single": 1, False: 0}[rnn.bias] * g * h
    allocated_bias = (0 if rnn.bias is False else 2) * g * h
    if inp.type == "tokens":
        width, width_field = inp.embedding_dim, "input.embedding_dim"
    else:
        width, width_field = inp.features, "input.features"
    found = []
    if inp.type == "tokens":
        table = inp.vocab_size * inp.embedding_dim
        found.append(Term(table, table, {"input.vocab_size": inp.vocab_size, "input.embedding_dim": width}))
    first = d * g * h * width  # layer 0's input weights
    found.append(Term(first, first, {"rnn.hidden_size": h, width_field: width}))
    stack = d * g * h * h * layers + d * g * h * (d * h) * (layers - 1)  # recurrent + upper layers' input
    found.append(Term(stack + d * layers * trainable_bias, stack + d * layers * allocated_bias,
                      {"rnn.hidden_size": h * h, "rnn.num_layers": layers}))
    if spec.output.dense:
        units = spec.output.dense.units
        head = d * h * units + units
        found.append(Term(head, head, {"output.dense.units": units, "rnn.hidden_size": d * h}))
    if spec.decoder is not None:
        found += _decoder_terms(spec.decoder)
    return found


def _decoder_terms(dec: DecoderSpec) -> list[Term]:
    """An encoder-decoder's generating half: its embedding, its cells and the projection."""
    g, h, layers = GATES[dec.cell], dec.hidden_size, dec.num_layers
    trainable_bias = {True: 2, "single": 1, False: 0}[dec.bias] * g * h
    allocated_bias = (0 if dec.bias is False else 2) * g * h
    table = dec.vocab_size * dec.embedding_dim
    first = g * h * dec.embedding_dim
    stack = g * h * h * layers + g * h * h * (layers - 1)
    projection = h * dec.vocab_size + dec.vocab_size
    return [Term(table, table, {"decoder.vocab_size": dec.vocab_size, "decoder.embedding_dim": dec.embedding_dim}),
            Term(first, first, {"decoder.hidden_size": h, "decoder.embedding_dim": dec.embedding_dim}),
            Term(stack + layers * trainable_bias, stack + layers * allocated_bias,
                 {"decoder.hidden_size": h * h, "decoder.num_layers": layers}),
            Term(projection, projection, {"decoder.vocab_size": dec.vocab_size, "decoder.hidden_size": h})]


def parameter_count(spec: ModelSpec) -> int:
    """Trainable parameters, as `torch_model.parameter_count` counts them on the built module."""
    return sum(t.trainable for t in terms(spec))


def allocated_parameters(spec: ModelSpec) -> int:
    """Every element torch allocates for the module's parameters, frozen ones included."""
    return sum(t.allocated for t in terms(spec))


def compile_bytes(spec: ModelSpec) -> int:
    """The host memory a compile of `spec` needs at its peak, by the count of the module docstring."""
    return BYTES_PER_PARAMETER * allocated_parameters(spec) + FIXED_BYTES


def dominant_field(spec: ModelSpec) -> str:
    """The field path behind most of the count: the largest part, then its largest factor."""
    largest = max(terms(spec), key=lambda t: t.allocated)
    return max(largest.factors, key=lambda path: largest.factors[path])


def check_limits(spec: ModelSpec, memory: int | None = None) -> None:
    """Refuse, with one line, a spec whose compile needs more memory than this machine has, or
    whose weights do not fit in one ONNX file (protobuf holds at most 2 GiB in one message).

    `memory` defaults to `host.memory_bytes()`; when that is unknown (0) the memory is not checked.
    """
    memory = host.memory_bytes() if memory is None else memory
    needed = compile_bytes(spec)
    if memory and needed > memory:
        raise UserError(
            f"{dominant_field(spec)}: this model has {_sci(parameter_count(spec))} parameters and needs "
            f"about {_sci(needed)} bytes ({binary_size(needed)}) to compile; "
            f"this machine has {binary_size(memory)}")
    weights = 4 * allocated_parameters(spec)  # float32 initializers of model.onnx
    if weights >= ONNX_LIMIT:
        raise UserError(
            f"{dominant_field(spec)}: this model has {_sci(parameter_count(spec))} parameters, "
            f"{binary_size(weights)} of float32 weights: more than the {binary_size(ONNX_LIMIT)} one ONNX "
            "file can hold (protobuf's limit)")


def binary_size(n: int) -> str:
    """`n` bytes in binary units, one decimal: 23.4 GiB, 1.2 EiB (exact for integers of any size)."""
    for i, unit in enumerate(_UNITS):
        scale = 1024**i
        if n < 1024 * scale or unit == _UNITS[-1]:
            whole = n // scale
            if whole >= 10**15:  # beyond what a float shows well: 1.2e+20 YiB
                return f"{_sci(whole)} {unit}"
            return f"{n / scale:.1f} {unit}" if i else f"{n} B"
    raise AssertionError("unreachable")


def _sci(n: int) -> str:
    """An integer in `%.1e` notation, also beyond the range of a float."""
    if n < 10**300:
        return f"{n:.1e}"
    digits = str(n)
    mantissa = round(int(digits[:3]) / 100, 1)  # 1.23... -> 1.2; 9.96... -> 10.0
    exponent = len(digits) - 1
    if mantissa >= 10:
        mantissa, exponent = mantissa / 10, exponent + 1
    return f"{mantissa:.1f}e+{exponent}"
