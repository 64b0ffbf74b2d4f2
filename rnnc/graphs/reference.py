"""rnnc's float64 reference of ONNX's LSTM, GRU and RNN, written with the operator pages' symbols.

`X W R B sequence_lens initial_h initial_c P`, activations `f g h`, `clip`, `input_forget`,
`direction`, `layout`, `linear_before_reset` and `activation_alpha` / `activation_beta` are all
honoured; anything else (an unknown attribute, activation or value) raises `NotImplementedError`,
so a verification never passes on something the reference did not compute. `onnx.reference`'s own
recurrent operators silently ignore several of these, which is why they are replaced here.

Semantics where the operator pages are terse, checked against ONNX Runtime 1.32 (tests pin them):
- `sequence_lens`: for batch entry b of length L, only steps t < L are computed. `Y[t >= L]` is
  zero; `Y_h` / `Y_c` hold the state after the last valid step. The reverse direction starts at step
  L - 1 (the sequence's own last step), not at the padded end. For L = 0, Y is zero, and so are
  Y_h / Y_c when there is no initial state. With an initial state the pages leave Y_h / Y_c
  undefined (ONNX Runtime 1.32 returns zeros; "the state after the last valid step" would be the
  initial state), so the reference refuses that case rather than pick one.
- `clip` bounds the gates' pre-activations (the inputs of f and g) to [-clip, clip]. The page says
  "applied to the input of activations"; ONNX Runtime does not clip the input of the LSTM's h,
  `h(C_t)`, nor the cell state C_t, and neither does this reference.
- `input_forget=1` couples the gates: `f_t = 1 - i_t` (the forget peephole is then unused).
- `activation_alpha` / `activation_beta` are consumed in the order of the activation list, one
  value for each function that takes that parameter (as ONNX Runtime reads them). A function whose
  value is not given takes the default of the ONNX operator of the same name (Affine 1, 0;
  LeakyRelu 0.01; ThresholdedRelu 1; HardSigmoid 0.2, 0.5; Elu 1), as the operator page says;
  ONNX Runtime uses 0 for Affine, ThresholdedRelu and ScaledTanh instead, so the graph rnnc gives
  it spells those values out (`rnnc.graphs.from_onnx`). ScaledTanh has no default (it is
  no ONNX operator any more) and needs both values. More values than functions that take them is
  accepted only where reading them one per activation would give the same values.
- `bidirectional` takes the activations of both directions, forward's first (3 + 3 for the LSTM).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper
from onnx.reference import ReferenceEvaluator
from onnx.reference.op_run import OpRun
from onnx.reference.ops.op_loop import Loop as _OnnxLoop
from onnx.reference.ops.op_scan import Scan as _OnnxScan

Activation = Callable[[np.ndarray], np.ndarray]
Arrays = dict[str, np.ndarray]


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 0.5 * (1.0 + np.tanh(0.5 * x))  # overflow-free logistic function


# name -> (function of x, alpha, beta), whether it reads alpha / beta, and the ONNX operators' defaults
_Function = tuple[Callable[[np.ndarray, float, float], np.ndarray], bool, bool, float | None, float | None]
_FUNCTIONS: dict[str, _Function] = {
    "relu": (lambda x, a, b: np.maximum(x, 0.0), False, False, None, None),
    "tanh": (lambda x, a, b: np.tanh(x), False, False, None, None),
    "sigmoid": (lambda x, a, b: _sigmoid(x), False, False, None, None),
    "affine": (lambda x, a, b: a * x + b, True, True, 1.0, 0.0),
    "leakyrelu": (lambda x, a, b: np.where(x >= 0, x, a * x), True, False, 0.01, None),
    "thresholdedrelu": (lambda x, a, b: np.where(x > a, x, 0.0), True, False, 1.0, None),
    "scaledtanh": (lambda x, a, b: a * np.tanh(b * x), True, True, None, None),
    "hardsigmoid": (lambda x, a, b: np.clip(a * x + b, 0.0, 1.0), True, True, 0.2, 0.5),
    "elu": (lambda x, a, b: np.where(x >= 0, x, a * np.expm1(np.minimum(x, 0.0))), True, False, 1.0, None),
    "softsign": (lambda x, a, b: x / (1.0 + np.abs(x)), False, False, None, None),
    "softplus": (lambda x, a, b: np.logaddexp(0.0, x), False, False, None, None),
}
ACTIVATION_NAMES = ("Relu", "Tanh", "Sigmoid", "Affine", "LeakyRelu", "ThresholdedRelu", "ScaledTanh",
                    "HardSigmoid", "Elu", "Softsign", "Softplus")


@dataclass(frozen=True)
class Cell:
    """What differs between the three operators: gate count, default activations, extra attributes."""

    op: str
    gates: int
    activations: tuple[str, ...]
    extra: tuple[str, ...]  # attributes besides the common ones
    states: int  # 2 for LSTM (H and C), else 1


CELLS = {
    "LSTM": Cell("LSTM", 4, ("Sigmoid", "Tanh", "Tanh"), ("input_forget",), 2),
    "GRU": Cell("GRU", 3, ("Sigmoid", "Tanh"), ("linear_before_reset",), 1),
    "RNN": Cell("RNN", 1, ("Tanh",), (), 1),
}
_COMMON = ("activation_alpha", "activation_beta", "activations", "clip", "direction", "hidden_size", "layout")
_DIRECTIONS = {"forward": 1, "reverse": 1, "bidirectional": 2}


@dataclass(frozen=True)
class Attributes:
    """A recurrent node's attributes, checked and with every default filled in."""

    cell: Cell
    hidden_size: int | None
    direction: str
    layout: int
    clip: float | None
    f: tuple[tuple[Activation, ...], ...]  # per direction, the cell's activations in order (f, g, h)
    explicit: tuple[tuple[str, float, float], ...]  # (name, alpha, beta) of every activation, all directions
    input_forget: int = 0
    linear_before_reset: int = 0

    @property
    def num_directions(self) -> int:
        return _DIRECTIONS[self.direction]


def parameters_taken(name: str) -> tuple[bool, bool]:
    """Whether the activation function `name` reads alpha, and beta."""
    _, alpha, beta, _, _ = _FUNCTIONS[name.lower()]
    return alpha, beta


def parse_attributes(node: onnx.NodeProto) -> Attributes:
    """The node's attributes, or `NotImplementedError` naming what the reference does not implement."""
    cell = CELLS.get(node.op_type)
    if cell is None or node.domain not in ("", "ai.onnx"):
        raise NotImplementedError(f"no recurrent reference for operator {node.domain or 'ai.onnx'}.{node.op_type}")
    attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
    unknown = sorted(set(attrs) - set(_COMMON) - set(cell.extra))
    if unknown:
        raise NotImplementedError(f"{cell.op} attribute(s) {', '.join(unknown)} not implemented")
    direction = _text(attrs.get("direction", b"forward"))
    if direction not in _DIRECTIONS:
        raise NotImplementedError(f"{cell.op} direction {direction!r}: expected forward, reverse or bidirectional")
    layout = int(attrs.get("layout", 0))
    flags = {k: int(attrs.get(k, 0)) for k in ("layout",) + cell.extra}
    bad = [f"{k}={v}" for k, v in flags.items() if v not in (0, 1)]
    if bad:
        raise NotImplementedError(f"{cell.op} {', '.join(bad)}: only 0 and 1 are defined")
    clip = attrs.get("clip")
    if clip is not None and not clip > 0:
        raise NotImplementedError(f"{cell.op} clip={clip}: must be a positive threshold")
    d = _DIRECTIONS[direction]
    names = [_text(a) for a in attrs.get("activations", [])] or list(cell.activations) * d
    n = len(cell.activations)
    if len(names) != n * d:
        raise NotImplementedError(f"{cell.op} direction={direction} takes {n * d} activations, got {len(names)}")
    explicit = _bind_parameters(cell.op, names, list(attrs.get("activation_alpha", [])),
                                list(attrs.get("activation_beta", [])))
    funcs = tuple(_FUNCTIONS[name.lower()][0] for name, _, _ in explicit)
    bound = tuple(lambda x, fn=fn, a=a, b=b: fn(x, a, b) for fn, (_, a, b) in zip(funcs, explicit))
    hidden = attrs.get("hidden_size")
    return Attributes(
        cell=cell, hidden_size=None if hidden is None else int(hidden), direction=direction, layout=layout,
        clip=None if clip is None else float(clip),
        f=tuple(bound[i * n:(i + 1) * n] for i in range(d)), explicit=explicit,
        input_forget=flags.get("input_forget", 0), linear_before_reset=flags.get("linear_before_reset", 0),
    )


def _bind_parameters(op: str, names: list[str], alphas: list[float], betas: list[float]) -> tuple:
    """Each activation's (name, alpha, beta): alpha/beta consumed in list order by the functions that
    take them, the rest from the ONNX operators' defaults."""
    for name in names:
        if name.lower() not in _FUNCTIONS:
            raise NotImplementedError(f"{op} activation {name!r}: expected one of {', '.join(ACTIVATION_NAMES)}")
    entries = [_FUNCTIONS[name.lower()] for name in names]
    alpha = _consume(op, "activation_alpha", alphas, [(e[1], e[3]) for e in entries])
    beta = _consume(op, "activation_beta", betas, [(e[2], e[4]) for e in entries])
    for name, a, b, (_, takes_alpha, takes_beta, _, _) in zip(names, alpha, beta, entries):
        if (takes_alpha and a is None) or (takes_beta and b is None):
            raise NotImplementedError(f"{op} activation {name}: needs activation_alpha and activation_beta")
    return tuple((name, float(a or 0.0), float(b or 0.0)) for name, a, b in zip(names, alpha, beta))


def _consume(op: str, attr: str, values: list[float], takers: list[tuple[bool, float | None]]) -> list:
    """One value per function that takes one, in order; leftovers must not change the meaning."""
    queue = list(values)
    bound = [(queue.pop(0) if queue else default) if takes else None for takes, default in takers]
    if queue:  # more values than takers: fine only if one value per activation reads the same
        padded = list(values) + [None] * len(takers)
        positional = [(default if v is None else v) if takes else None for v, (takes, default) in zip(padded, takers)]
        if positional != bound:
            raise NotImplementedError(
                f"{op} {attr}={[round(v, 6) for v in values]}: more values than the activations that take "
                "one, and reading them one per activation would give other values; ambiguous")
    return bound


def _text(value: object) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def recurrent(
    attrs: Attributes,
    X: np.ndarray,
    W: np.ndarray,
    R: np.ndarray,
    B: np.ndarray | None = None,
    sequence_lens: np.ndarray | None = None,
    initial_h: np.ndarray | None = None,
    initial_c: np.ndarray | None = None,
    P: np.ndarray | None = None,
) -> tuple[np.ndarray, ...]:
    """(Y, Y_h) or, for the LSTM, (Y, Y_h, Y_c), in float64, in the node's layout."""
    cell, d = attrs.cell, attrs.num_directions
    X = np.asarray(X, dtype=np.float64)
    if attrs.layout == 1:  # batch-major [B, S, I] -> [S, B, I]; states [B, D, H] -> [D, B, H]
        X = X.transpose(1, 0, 2)
        initial_h = None if initial_h is None else np.asarray(initial_h).transpose(1, 0, 2)
        initial_c = None if initial_c is None else np.asarray(initial_c).transpose(1, 0, 2)
    seq_length, batch_size, input_size = X.shape
    W, R = np.asarray(W, dtype=np.float64), np.asarray(R, dtype=np.float64)
    H = R.shape[-1]
    g = cell.gates
    if attrs.hidden_size is not None and attrs.hidden_size != H:
        raise ValueError(f"{cell.op}: hidden_size={attrs.hidden_size} but R has shape {list(R.shape)}")
    _expect(cell.op, "W", W, (d, g * H, input_size))
    _expect(cell.op, "R", R, (d, g * H, H))
    B = np.zeros((d, 2 * g * H)) if B is None else _expect(cell.op, "B", B, (d, 2 * g * H))
    state = (d, batch_size, H)
    H_0 = np.zeros(state) if initial_h is None else _expect(cell.op, "initial_h", initial_h, state)
    C_0 = np.zeros(state) if initial_c is None else _expect(cell.op, "initial_c", initial_c, state)
    P = np.zeros((d, 3 * H)) if P is None else _expect(cell.op, "P", P, (d, 3 * H))
    if sequence_lens is None:
        lens = np.full(batch_size, seq_length, dtype=np.int64)
    else:
        lens = np.asarray(sequence_lens).astype(np.int64).reshape(-1)
        if lens.shape != (batch_size,) or np.any(lens < 0) or np.any(lens > seq_length):
            raise ValueError(f"{cell.op}: sequence_lens {lens.tolist()} must hold {batch_size} lengths in "
                             f"[0, {seq_length}]")
        if np.any(lens == 0) and (initial_h is not None or initial_c is not None):
            raise NotImplementedError(f"{cell.op}: sequence_lens 0 with initial_h / initial_c: Y_h and Y_c of an "
                                      "empty sequence are not defined by the operator page")

    Y = np.zeros((seq_length, d, batch_size, H))
    Y_h, Y_c = np.zeros((d, batch_size, H)), np.zeros((d, batch_size, H))
    for k in range(d):
        reverse = attrs.direction == "reverse" or k == 1
        steps = range(seq_length - 1, -1, -1) if reverse else range(seq_length)
        Ht, Ct = H_0[k], C_0[k]
        for t in steps:
            valid = (t < lens)[:, None]
            Hn, Cn = _STEP[cell.op](attrs, attrs.f[k], X[t], W[k], R[k], B[k], P[k], Ht, Ct)
            Ht, Ct = np.where(valid, Hn, Ht), np.where(valid, Cn, Ct)
            Y[t, k] = np.where(valid, Hn, 0.0)
        Y_h[k], Y_c[k] = Ht, Ct
    if attrs.layout == 1:  # Y [S, D, B, H] -> [B, S, D, H]; states -> [B, D, H]
        Y, Y_h, Y_c = Y.transpose(2, 0, 1, 3), Y_h.transpose(1, 0, 2), Y_c.transpose(1, 0, 2)
    return (Y, Y_h, Y_c) if cell.states == 2 else (Y, Y_h)


def _expect(op: str, name: str, a: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    a = np.asarray(a, dtype=np.float64)
    if a.shape != shape:
        raise ValueError(f"{op}: {name} has shape {list(a.shape)}, expected {list(shape)}")
    return a


def _clip(attrs: Attributes, x: np.ndarray) -> np.ndarray:
    return x if attrs.clip is None else np.clip(x, -attrs.clip, attrs.clip)


def _lstm_step(attrs, fgh, Xt, W, R, B, P, Ht, Ct):
    """it = f(Xt*(Wi^T) + Ht-1*(Ri^T) + Pi (.) Ct-1 + Wbi + Rbi), and so on (ONNX LSTM page)."""
    f, g, h = fgh
    Wb, Rb = np.split(B, 2)
    gates = Xt @ W.T + Ht @ R.T + Wb + Rb
    i, o, f_, c = np.split(gates, 4, axis=-1)  # ONNX gate order: i o f c
    Pi, Po, Pf = np.split(P, 3)
    it = f(_clip(attrs, i + Pi * Ct))
    ft = 1.0 - it if attrs.input_forget else f(_clip(attrs, f_ + Pf * Ct))
    ct = g(_clip(attrs, c))
    C = ft * Ct + it * ct
    ot = f(_clip(attrs, o + Po * C))
    return ot * h(C), C


def _gru_step(attrs, fg, Xt, W, R, B, P, Ht, Ct):
    """zt = f(Xt*(Wz^T) + Ht-1*(Rz^T) + Wbz + Rbz), and so on (ONNX GRU page, gate order z r h)."""
    f, g = fg
    Wz, Wr, Wh = np.split(W, 3)
    Rz, Rr, Rh = np.split(R, 3)
    Wbz, Wbr, Wbh, Rbz, Rbr, Rbh = np.split(B, 6)
    zt = f(_clip(attrs, Xt @ Wz.T + Ht @ Rz.T + Wbz + Rbz))
    rt = f(_clip(attrs, Xt @ Wr.T + Ht @ Rr.T + Wbr + Rbr))
    if attrs.linear_before_reset:
        ht = g(_clip(attrs, Xt @ Wh.T + rt * (Ht @ Rh.T + Rbh) + Wbh))
    else:
        ht = g(_clip(attrs, Xt @ Wh.T + (rt * Ht) @ Rh.T + Rbh + Wbh))
    return (1.0 - zt) * ht + zt * Ht, Ct


def _rnn_step(attrs, fs, Xt, W, R, B, P, Ht, Ct):
    """Ht = f(Xt*(Wi^T) + Ht-1*(Ri^T) + Wbi + Rbi) (ONNX RNN page)."""
    (f,) = fs
    Wb, Rb = np.split(B, 2)
    return f(_clip(attrs, Xt @ W.T + Ht @ R.T + Wb + Rb)), Ct


_STEP = {"LSTM": _lstm_step, "GRU": _gru_step, "RNN": _rnn_step}


class _Recurrent(OpRun):
    """Plugs `recurrent` into onnx.reference.ReferenceEvaluator in place of its own operators."""

    op_domain = ""

    def _run(self, *inputs, **_schema_defaults):  # attributes are read from the node itself
        attrs = parse_attributes(self.onnx_node)
        names = ["X", "W", "R", "B", "sequence_lens", "initial_h", "initial_c", "P"]
        given = {n: v for n, v in zip(names, inputs) if v is not None}
        outs = recurrent(attrs, **given)
        return tuple(outs[: len(self.onnx_node.output)])


class LSTM(_Recurrent):
    pass


class GRU(_Recurrent):
    pass


class RNN(_Recurrent):
    pass


class Loop(_OnnxLoop):
    """onnx.reference's Loop with two of its departures from the operator page fixed: an absent
    `cond` input means true (onnx.reference runs no iteration), and scan outputs are stacked on a
    new axis 0 (np.stack; onnx.reference's np.vstack makes per-iteration [B, H] rows [n*B, H] and
    fails on zero iterations). Zero iterations give scan outputs of shape [0, *row] where the body
    declares the row's shape with fixed dims, and raise `NotImplementedError` otherwise (the row
    shape is then not known). As in ONNX Runtime, the body's cond output stops the loop even
    without a cond input. Loop-carried sequences (lists) pass through as onnx.reference has them.
    The body runs in onnx.reference's nested evaluator, built with this module's NEW_OPS (the
    recurrent operators above, and this Loop for nested loops)."""

    def _run(self, M=None, cond=None, *v_initial, context=None, attributes=None, bindings=None, **_schema_defaults):
        body = self.body
        names, outs = body.input_names, body.output_names
        n_carried = len(names) - 2
        n_scans = len(outs) - 1 - n_carried
        if len(v_initial) != n_carried or n_scans < 0:
            raise ValueError(f"Loop node {self.onnx_node.name!r}: {len(v_initial)} loop-carried values for a "
                             f"body of {len(names)} inputs and {len(outs)} outputs")
        inputs = dict(context or {})  # outer values first: a body input of the same name shadows them
        inputs.update(zip(names[2:], v_initial))
        go = True if cond is None else bool(np.asarray(cond).reshape(()))
        trips = None if M is None else int(np.asarray(M).reshape(()))
        carried, rows, it = list(v_initial), [[] for _ in range(n_scans)], 0
        while go and (trips is None or it < trips):
            inputs[names[0]] = np.array(it, dtype=np.int64)
            inputs[names[1]] = np.array(go)
            results = self._run_body(inputs, attributes=attributes, bindings=bindings)
            if results[0] is None:
                raise RuntimeError(f"Loop node {self.onnx_node.name!r}: the body's condition {outs[0]!r} is None")
            go = bool(np.asarray(results[0]).reshape(()))
            carried = list(results[1:1 + n_carried])
            inputs.update(zip(names[2:], carried))
            for k in range(n_scans):
                rows[k].append(results[1 + n_carried + k])
            it += 1
        scans = [np.stack(r, axis=0) if r else self._no_rows(1 + n_carried + k) for k, r in enumerate(rows)]
        return self._check_and_fix_outputs(tuple((carried + scans)[:len(self.onnx_node.output)]))

    def _no_rows(self, index: int) -> np.ndarray:
        """The [0, *row] scan output of zero iterations, from the body's declared output type."""
        graph = next(a.g for a in self.onnx_node.attribute if a.name == "body")
        out = graph.output[index]
        t = out.type.tensor_type
        dims = [d.dim_value if d.HasField("dim_value") else None for d in t.shape.dim] if t.HasField("shape") else None
        if not t.elem_type or dims is None or None in dims:
            raise NotImplementedError(
                f"Loop node {self.onnx_node.name!r}: zero iterations, and the body declares no fixed shape for "
                f"scan output {out.name!r} ({'no shape' if dims is None else dims}), so its [0, ...] shape is unknown")
        return np.zeros([0, *dims], dtype=helper.tensor_dtype_to_np_dtype(t.elem_type))


class Scan(_OnnxScan):
    """onnx.reference's Scan (opset 9 on) with what it refuses implemented as the operator page
    says: `scan_input_axes` / `scan_input_directions` (a reversed input is read from its end) and
    `scan_output_axes` / `scan_output_directions` (a reversed output is written from its end),
    negative axes counted from the end. Zero iterations with scan outputs raise, as there."""

    def __init__(self, onnx_node, run_params):  # noqa: ANN001 - onnx.reference's signature
        OpRun.__init__(self, onnx_node, run_params)  # not _OnnxScan's: it refuses axes and directions
        self.input_names = self.body.input_names
        self.output_names = self.body.output_names

    def _run(self, *args, context=None, attributes=None, bindings=None, **_schema_defaults):
        m = int(self.num_scan_inputs)
        n = len(args) - m
        k = len(self.output_names) - n
        scans = args[n:]
        in_axes = [a % scans[i].ndim for i, a in enumerate(_listed(self.scan_input_axes, m))]
        in_dirs = _listed(self.scan_input_directions, m)
        out_axes, out_dirs = _listed(self.scan_output_axes, k), _listed(self.scan_output_directions, k)
        length = scans[0].shape[in_axes[0]]
        if k and length == 0:
            raise NotImplementedError(f"Scan node {self.onnx_node.name!r}: zero iterations with scan outputs")
        states, rows = list(args[:n]), [[] for _ in range(k)]
        for it in range(length):
            inputs = dict(context or {})
            inputs.update(zip(self.input_names[:n], states))
            for i, (value, axis, rev) in enumerate(zip(scans, in_axes, in_dirs)):
                inputs[self.input_names[n + i]] = np.take(value, length - 1 - it if rev else it, axis=axis)
            outs = self._run_body(inputs, bindings=bindings)
            states = list(outs[:n])
            for j in range(k):
                rows[j].append(outs[n + j])
        results = []
        for j, r in enumerate(rows):
            stacked = np.stack(r[::-1] if out_dirs[j] else r, axis=0)
            results.append(np.moveaxis(stacked, 0, out_axes[j] % stacked.ndim))
        return self._check_and_fix_outputs(tuple(states + results))


def _listed(values, count: int) -> list[int]:  # noqa: ANN001 - an attribute list or None
    values = list(values) if values is not None else []
    return [int(values[i]) if i < len(values) else 0 for i in range(count)]


NEW_OPS = [LSTM, GRU, RNN, Loop, Scan]


# -- a whole graph in float64: onnx.reference for the ordinary operators, ours for the recurrent ones

def float64_reference(proto: onnx.ModelProto) -> Callable[[Arrays], Arrays]:
    """`arrays -> arrays`: the user's graph with every float tensor in float64, evaluated by
    onnx.reference with the recurrent operators above (which raise on what they do not implement)."""
    model64 = to_float64(proto)
    evaluator = ReferenceEvaluator(model64, new_ops=NEW_OPS)
    names = [o.name for o in model64.graph.output]
    float_inputs = {v.name for v in model64.graph.input if v.type.tensor_type.elem_type == TensorProto.DOUBLE}

    def reference64(arrays: Arrays) -> Arrays:
        feeds = {k: np.asarray(v, dtype=np.float64) if k in float_inputs else np.asarray(v)
                 for k, v in arrays.items()}
        return dict(zip(names, evaluator.run(None, feeds)))

    return reference64


_FLOATS = (TensorProto.FLOAT, TensorProto.FLOAT16, TensorProto.BFLOAT16)


def to_float64(proto: onnx.ModelProto) -> onnx.ModelProto:
    """A copy whose float values (float32, float16 and bfloat16: inputs, outputs, initializers,
    Constants, Casts), subgraphs included, are float64."""
    out = onnx.ModelProto()
    out.CopyFrom(proto)
    _graph_to_float64(out.graph)
    return out


def _graph_to_float64(g: onnx.GraphProto) -> None:
    for t in g.initializer:
        if t.data_type in _FLOATS:
            t.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(t).astype(np.float64), t.name))
    for v in list(g.input) + list(g.output) + list(g.value_info):
        if v.type.tensor_type.elem_type in _FLOATS:
            v.type.tensor_type.elem_type = TensorProto.DOUBLE
    for node in g.node:
        for a in node.attribute:
            if a.type == onnx.AttributeProto.TENSOR and a.t.data_type in _FLOATS:
                a.t.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(a.t).astype(np.float64), a.t.name))
            elif node.op_type in ("Cast", "EyeLike", "RandomNormal", "RandomUniform", "RandomNormalLike",
                                  "RandomUniformLike") and a.name in ("to", "dtype") and a.i in _FLOATS:
                a.i = TensorProto.DOUBLE
            elif node.op_type == "Constant" and a.name in ("value_float", "value_floats"):
                values = [a.f] if a.name == "value_float" else list(a.floats)
                shape = [] if a.name == "value_float" else [len(values)]
                a.CopyFrom(helper.make_attribute("value", numpy_helper.from_array(
                    np.array(values, dtype=np.float64).reshape(shape))))
            elif a.type == onnx.AttributeProto.GRAPH:
                _graph_to_float64(a.g)
            elif a.type == onnx.AttributeProto.GRAPHS:
                for sub in a.graphs:
                    _graph_to_float64(sub)
