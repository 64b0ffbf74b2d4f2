"""ONNX Loop and Scan, which TVM's ONNX frontend lacks, as recursive Relax functions: the loop runs
inside the compiled VM, not in Python.

Both operators are one loop seen twice: run a body graph while `i < n` (and, for Loop, while the
body's condition holds), threading loop-carried values and stacking per-iteration scan outputs.
A node becomes three kinds of Relax function and a call of the last one in place of the node:

- `body(i, n, cond, carried..., invariants...) -> (cond', carried'..., scans...)`: the ONNX body
  converted by the importer itself, so a recurrent node in it becomes our TIR kernel and a nested
  If, Loop or Scan converts as it does anywhere. `invariants` are the values the body reads from
  the enclosing graph (a Relax function cannot see another's variables) and, for Scan, the whole
  scan inputs, which the body slices at step i. Constants are inlined instead of passed: the
  recurrent converter packs its weights at build time and takes only constants.
- `loop1 .. loop{LEVELS}(c, state..., n, invariants...)`: `if i < n and cond and c < FANOUT:
  recurse with c + 1 after one step (loop1) or one run of the level below, else return the state`.
  The Relax VM recurses on the C++ stack (plain recursion crashes after a few thousand iterations
  with 8 MiB of stack), so levels bound the depth to LEVELS * FANOUT plus n / FANOUT**LEVELS at
  `loop_top`, which is the same without the counter.
- scan outputs are written in place (`call_tir_inplace` of a small TIR kernel) into buffers that
  grow by doubling, and sliced to the trip count after the loop: O(n) copies and memory, where
  concatenating every step would keep O(n^2) alive in the recursion frames. The buffers start
  with zero rows, so every buffer written to was made by the growth step itself and is shared
  with nothing.

Taken: Loop with M and/or cond (cond_out is honoured even without a cond input, as ONNX Runtime
does), Scan (opset 9+) with any scan_input/output_axes and _directions; loop-carried values are
tensors whose shape does not change across iterations. Refused with `Unsupported` naming the node:
a Loop with neither M nor cond, sequence or optional values, carried values whose shape changes,
scan outputs whose shape is not known before the loop runs. A loop-carried sequence that only
collects one tensor per iteration (torch.onnx's list.append: SequenceEmpty, SequenceInsert in the
body, ConcatFromSequence after the loop) arrives here as a scan output: `sequences` rewrites it
before `absorb`; any other sequence is refused.
"""
from __future__ import annotations

import contextlib
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import onnx
import tvm
import tvm_ffi
from tvm import relax, tirx
from tvm.ir.expr import Constant, StringImm

from rnnc.compiler.tvm.emit import Emitter, Param, prim_func
from rnnc.errors import Unsupported
from rnnc.graphs.walk import subgraphs

__all__ = ["FANOUT", "LEVELS", "convert"]

FANOUT = 64  # iterations per frame of a bounded level
LEVELS = 3  # bounded levels below the top: FANOUT**LEVELS = 262144 iterations per top-level frame

_I64, _BOOL = relax.TensorType([], "int64"), relax.TensorType([], "bool")
Expr = Any  # relax.Expr


@dataclass(frozen=True)
class _Node:
    what: str  # "Loop node 'name'", how messages name it
    hint: str  # the stem of its functions' names


Bind = Callable[[list, list], dict]  # (i, n, cond, carried...), (invariants...) -> body input name -> value


def convert(importer: Any, op_name: str, inputs: Sequence[Expr | None], attrs: dict) -> Expr:
    """The Relax value of a Loop or Scan node: one expr, or a relax.Tuple of its outputs in order."""
    name = attrs["tvm_custom"]["name"]
    node = _Node(f"{op_name} node {name!r}", _ident(f"{op_name}_{name}"))
    outs = (_loop if op_name == "Loop" else _scan)(importer, node, list(inputs), attrs)
    outs = outs[:attrs["tvm_custom"].get("num_outputs", len(outs))]
    return outs[0] if len(outs) == 1 else relax.Tuple(outs)


# -- the two operators ----------------------------------------------------------------------------

def _loop(importer: Any, node: _Node, inputs: list, a: dict) -> list:
    """Loop(M, cond, v_initial...): trip bound M (int64 max without it), cond True without it."""
    what = node.what
    graph: onnx.GraphProto = a["body"]
    m, cond, *init = inputs + [None] * (2 - len(inputs))
    if m is None and cond is None:
        raise Unsupported(f"{what}: neither M nor cond (an endless loop)")
    names = [v.name for v in graph.input]
    if len(names) != 2 + len(init) or len(graph.output) < 1 + len(init):
        raise Unsupported(f"{what}: body with {len(names)} inputs and {len(graph.output)} outputs "
                          f"for {len(init)} loop-carried values")
    bb = importer.bb
    n = relax.const(np.iinfo(np.int64).max, "int64") if m is None else _scalar(bb, m, "int64")
    c = relax.const(True, "bool") if cond is None else _scalar(bb, cond, "bool")

    def bind(loop: list, inv: list) -> dict:
        i, _, cond_in, *carried = loop
        return {names[0]: _as_declared(bb, i, graph.input[0]), names[1]: _as_declared(bb, cond_in, graph.input[1]),
                **dict(zip(names[2:], carried))}

    return _lower(importer, node, graph, n, c, init, [], bind, cond_out=True)


def _scan(importer: Any, node: _Node, inputs: list, a: dict) -> list:
    """Scan(initial states..., scan inputs...): n the scan inputs' length, each sliced by the body."""
    what = node.what
    if importer.opset < 9:
        raise Unsupported(f"{what}: Scan-8 (batched, with sequence_lens); opset 9 and later are taken")
    graph: onnx.GraphProto = a["body"]
    k = int(a["num_scan_inputs"])
    states, xs = inputs[: len(inputs) - k], inputs[len(inputs) - k:]
    n_out = len(graph.output) - len(states)
    if k < 1 or len(graph.input) != len(inputs) or n_out < 0 or any(x is None for x in inputs):
        raise Unsupported(f"{what}: body with {len(graph.input)} inputs and {len(graph.output)} outputs "
                          f"for {len(states)} states and {k} scan inputs")
    in_axes = [_axis(what, ax, _rank(what, x)) for ax, x in zip(a.get("scan_input_axes", [0] * k), xs)]
    in_dirs = list(a.get("scan_input_directions", ())) + [0] * k
    lengths = [x.ty.shape.values[ax] for x, ax in zip(xs, in_axes)]
    if any(isinstance(s, tirx.IntImm) and isinstance(lengths[0], tirx.IntImm) and int(s) != int(lengths[0])
           for s in lengths):
        raise Unsupported(f"{what}: scan inputs of different lengths {[int(s) for s in lengths]}")
    bb = importer.bb
    n = _tensor(bb, lengths[0])
    names = [v.name for v in graph.input]

    def bind(loop: list, inv: list) -> dict:
        i, n_, _, *carried = loop
        back = bb.emit(relax.op.subtract(relax.op.subtract(n_, relax.const(1, "int64")), i)) if any(in_dirs) else None
        slices = {names[len(states) + j]: bb.emit(relax.op.take(x, back if d else i, axis=ax, mode="clip"))
                  for j, (x, ax, d) in enumerate(zip(inv[:k], in_axes, in_dirs))}
        return {**dict(zip(names, carried)), **slices}

    outs = _lower(importer, node, graph, n, relax.const(True, "bool"), states, xs, bind,
                  cond_out=False, trips=lengths[0])
    finals, stacked = outs[: len(states)], outs[len(states):]
    out_axes = list(a.get("scan_output_axes", ())) + [0] * n_out
    out_dirs = list(a.get("scan_output_directions", ())) + [0] * n_out
    for j, y in enumerate(stacked):  # rows were stacked forwards on axis 0
        if out_dirs[j]:
            y = bb.emit(relax.op.flip(y, axis=0))
        rank = len(y.ty.shape.values)
        ax = _axis(what, out_axes[j], rank)
        if ax:
            perm = list(range(1, rank))
            perm.insert(ax, 0)
            y = bb.emit(relax.op.permute_dims(y, perm))
        stacked[j] = y
    return finals + stacked


# -- the loop, common to both ---------------------------------------------------------------------

def _lower(importer: Any, node: _Node, graph: onnx.GraphProto, n: Expr, cond: Expr, init: list, scanned: list,
           bind: Bind, cond_out: bool, trips: Any = None) -> list:
    """Final carried values then stacked scan outputs of running `graph` from `init`; `scanned`
    are whole values the body slices (Scan's inputs); `trips` the trip count if known up front."""
    bb, what = importer.bb, node.what
    first = 2 if cond_out else 0  # Loop's body takes iteration_num and cond first
    for k, v in enumerate(init + scanned):
        label = "loop-carried value" if k < len(init) else "scan input"
        _tensor_type(what, f"{label} {graph.input[first + k].name!r}", v)
    outer = [(name, importer._nodes[name]) for name in sorted(_outer_reads(graph))
             if name in importer._nodes and not _closed(importer._nodes[name])]
    inv = list(scanned) + [v for _, v in outer]
    body, elems = _body(importer, node, graph, init, inv, [name for name, _ in outer], bind, cond_out)

    n_carried = len(init)
    buf_types = [relax.TensorType(ndim=len(e.shape.values) + 1, dtype=e.dtype) for e in elems]
    state_types = [_I64, _BOOL, _I64, *(v.ty for v in init), *buf_types]  # i, cond, capacity, ...
    writes = [bb.add_func(_write_kernel(len(e.shape.values), str(e.dtype), importer.target_kind),
                          f"scan_write{len(e.shape.values)}_{e.dtype}") for e in elems]

    def step(state: list, invariants: list) -> list:
        """One iteration: the body, then its scan outputs written to row i of their buffers."""
        i, _, cap, *rest = state
        r = bb.emit(relax.Call(body, [i, invariants[0], state[1], *rest[:n_carried], *invariants[1:]]))
        cond2, *got = _unpack(bb, r, 1 + n_carried + len(elems))
        carried, ys = got[:n_carried], got[n_carried:]
        bufs, cap = _grow(bb, rest[n_carried:], ys, elems, i, cap) if ys else ([], cap)
        bufs = [bb.emit(relax.call_tir_inplace(w, [b, y, i], [0], b.ty)) for w, b, y in zip(writes, bufs, ys)]
        return [bb.emit(relax.op.add(i, relax.const(1, "int64"))), cond2, cap, *carried, *bufs]

    inner: Callable[[list, list], list] = step
    for level in range(1, LEVELS + 2):
        bound = FANOUT if level <= LEVELS else None
        gv = _recursive(bb, f"{node.hint}_loop{level if bound else '_top'}", state_types,
                        [_I64, *(v.ty for v in inv)], inner, bound)
        inner = _calling(bb, gv)

    zero = relax.const(0, "int64")
    empty = [_zeros(bb, [0, *e.shape.values], str(e.dtype)) for e in elems]
    out = _unpack(bb, bb.emit(relax.Call(gv, [zero, cond, zero, *init, *empty, n, *inv])), len(state_types))
    finals, bufs = out[3:3 + n_carried], out[3 + n_carried:]
    if bufs and trips is None:  # the trip count, known now: a symbolic dim of the outputs
        trips = tirx.Var("trips", "int64")
        bb.match_cast(bb.emit(relax.op.tensor_to_shape(relax.op.reshape(out[0], [1]))), relax.ShapeType([trips]))
    stacked = [bb.emit(relax.op.strided_slice(bb.match_cast(b, _rows(e)), [0], [0], [trips], assume_inbound=True))
               for b, e in zip(bufs, elems)]
    return finals + stacked


def _grow(bb: relax.BlockBuilder, bufs: list, ys: list, elems: list, i: Expr, cap: Expr) -> tuple[list, Expr]:
    """The scan buffers with room for row i: when full, each becomes [buf, buf, y] (capacity
    2 * cap + 1, the second copy is overwritten later), so the copies add up to O(n)."""
    bufs = [bb.match_cast(b, _rows(e)) for b, e in zip(bufs, elems)]

    def grown() -> Expr:
        bigger = [bb.emit(relax.op.concat([b, b, relax.op.expand_dims(y, 0)], axis=0)) for b, y in zip(bufs, ys)]
        two, one = relax.const(2, "int64"), relax.const(1, "int64")
        return bb.emit(relax.Tuple([*bigger, bb.emit(relax.op.add(relax.op.multiply(cap, two), one))]))

    full = bb.emit(relax.op.greater_equal(i, cap))
    out = bb.emit(relax.If(full, _branch(bb, grown), relax.SeqExpr([], relax.Tuple([*bufs, cap]))))
    *bufs, cap = _unpack(bb, out, len(bufs) + 1)
    return [bb.match_cast(b, _rows(e)) for b, e in zip(bufs, elems)], cap


def _calling(bb: relax.BlockBuilder, gv: Any) -> Callable[[list, list], list]:
    """`state, inv -> state`: one run of the bounded level `gv` (its counter from 0)."""
    return lambda state, inv: _unpack(bb, bb.emit(relax.Call(gv, [relax.const(0, "int64"), *state, *inv])),
                                      len(state))


def _body(importer: Any, node: _Node, graph: onnx.GraphProto, init: list, inv: list, outer_names: list[str],
          bind: Bind, cond_out: bool) -> tuple[Any, list]:
    """The body as a Relax function `(i, n, cond, carried..., inv...) -> (cond', carried'..., scans...)`
    built by the importer's own machinery, and the types of one row of each scan output."""
    bb, what = importer.bb, node.what
    loop = [relax.Var("i", _I64), relax.Var("n", _I64), relax.Var("cond", _BOOL),
            *(relax.Var(f"carried{k}", v.ty) for k, v in enumerate(init))]
    params = [relax.Var(f"inv{k}", v.ty) for k, v in enumerate(inv)]
    saved = importer._nodes
    has_if = any(nd.op_type == "If" for nd in graph.node)  # upstream's If cannot sit in a dataflow block
    try:
        with bb.function(f"{node.hint}_body", loop + params, private=True):
            with contextlib.nullcontext() if has_if else bb.dataflow():
                nodes = dict(saved)
                nodes.update(zip(outer_names, params[len(inv) - len(outer_names):]))
                nodes.update((t.name, relax.const(importer._parse_array(t))) for t in graph.initializer)
                importer._nodes = nodes
                nodes.update(bind(loop, params))
                _refuse_non_tensors(what, graph)
                importer._construct_nodes(graph)
                outs = _bind_once(bb, [importer._nodes[o.name] for o in graph.output])
                if cond_out:
                    c = outs.pop(0)
                    if not tvm_ffi.structural_equal(c.ty, _BOOL):
                        c = _scalar(bb, c, "bool")
                else:
                    c = loop[2]
                carried = [_same_type(bb, what, o.name, v, p.ty)
                           for o, v, p in zip(graph.output[int(cond_out):], outs, loop[3:])]
                scans = outs[len(carried):]
                elems = [_known_shape(what, o.name, v) for o, v in zip(graph.output[int(cond_out) + len(carried):],
                                                                      scans)]
                result = relax.Tuple([c, *carried, *scans])
                result = result if has_if else bb.emit_output(result)
            gv = bb.emit_func_output(result)
    finally:
        importer._nodes = saved
    bb.update_func(gv, relax.utils.copy_with_new_vars(bb.get()[gv]))  # a symbolic dim lives in one function
    return gv, elems


def _recursive(bb: relax.BlockBuilder, name: str, state_types: list, inv_types: list,
               inner: Callable[[list, list], list], bound: int | None) -> Any:
    """`f([c,] state..., inv...)`: while `i < n and cond [and c < bound]`, state = inner(state);
    returns the state. Built by hand, not with `bb.function`, because it calls its own GlobalVar."""
    counter = [relax.Var("c", _I64)] if bound else []
    state = [relax.Var(f"s{k}", t) for k, t in enumerate(state_types)]
    inv = [relax.Var(f"v{k}", t) for k, t in enumerate(inv_types)]
    params, ret = counter + state + inv, relax.TupleType(state_types)
    taken = {g.name_hint for g in bb.get().get_global_vars()}
    gv = relax.GlobalVar(next(f"{name}{k or ''}" for k in range(len(taken) + 1) if f"{name}{k or ''}" not in taken))
    relax.expr._update_type(gv, relax.FuncType([p.ty for p in params], ret))
    bb.begin_scope(params)
    bb._begin_dataflow_block()  # so that the test fuses into one kernel: a third less time per iteration
    go = relax.op.logical_and(relax.op.less(state[0], inv[0]), state[1])
    if bound:
        go = relax.op.logical_and(go, relax.op.less(counter[0], relax.const(bound, "int64")))
        counter = [relax.op.add(counter[0], relax.const(1, "int64"))]
    go = bb.emit_output(go)
    test = bb._end_block()
    bb._begin_binding_block()
    again = _branch(bb, lambda: bb.emit(relax.Call(gv, [*counter, *inner(state, inv), *inv])))
    out = bb.emit(relax.If(go, again, relax.SeqExpr([], relax.Tuple(state))))
    func = relax.Function(params, relax.SeqExpr([test, bb._end_block()], out), ret, is_pure=True)
    bb.end_scope()
    bb.update_func(gv, relax.utils.copy_with_new_vars(func))
    return gv


# -- helpers --------------------------------------------------------------------------------------

def _branch(bb: relax.BlockBuilder, build: Callable[[], Expr]) -> relax.SeqExpr:
    """An If branch whose bindings stay inside it (upstream's If emits both branches before it,
    which for a recursive call would never end)."""
    bb._begin_binding_block()
    result = build()
    return relax.SeqExpr([bb._end_block()], result)


def _bind_once(bb: relax.BlockBuilder, values: list) -> list:
    """Converters return unbound calls: bind each once, however many outputs it is."""
    bound: dict = {}  # keyed by the object itself (hash and == are identity)
    for v in values:
        if v not in bound:
            bound[v] = v if isinstance(v, relax.Var | Constant) else bb.emit(v)
    return [bound[v] for v in values]


def _unpack(bb: relax.BlockBuilder, tup: Expr, count: int) -> list:
    return [bb.emit(relax.TupleGetItem(tup, k)) for k in range(count)]


def _rows(elem: relax.TensorType) -> relax.TensorType:
    """A buffer of rows of `elem`, the row count a fresh symbolic dim."""
    return relax.TensorType([tirx.Var("rows", "int64"), *elem.shape.values], elem.dtype)


def _scalar(bb: relax.BlockBuilder, value: Expr, dtype: str) -> Expr:
    """M or cond as a scalar of `dtype` (exporters also write shape [1])."""
    if value.ty.dtype != dtype:
        value = relax.op.astype(value, dtype)
    return bb.emit(relax.op.reshape(value, []))


def _as_declared(bb: relax.BlockBuilder, value: Expr, declared: onnx.ValueInfoProto) -> Expr:
    """iteration_num / cond as the body declares it: a scalar, or shape [1] (as ONNX Runtime gives)."""
    t = declared.type.tensor_type
    return bb.emit(relax.op.reshape(value, [1])) if t.HasField("shape") and len(t.shape.dim) == 1 else value


def _tensor(bb: relax.BlockBuilder, dim: Any) -> Expr:
    """A dimension (static or symbolic) as an int64 scalar tensor."""
    if isinstance(dim, tirx.IntImm):
        return relax.const(int(dim), "int64")
    return bb.emit(relax.op.reshape(relax.op.shape_to_tensor(relax.ShapeExpr([dim])), []))


def _zeros(bb: relax.BlockBuilder, shape: list, dtype: str) -> Expr:
    if all(isinstance(s, int | tirx.IntImm) for s in shape):
        return relax.const(np.zeros([int(s) for s in shape], dtype), dtype)
    return bb.emit(relax.op.zeros(relax.ShapeExpr(shape), dtype))


def _rank(what: str, value: Expr) -> int:
    return len(_tensor_type(what, "scan input", value).shape.values)


def _axis(what: str, axis: int, rank: int) -> int:
    if not -rank <= axis < rank:
        raise Unsupported(f"{what}: axis {axis} out of range for rank {rank}")
    return axis % rank


def _tensor_type(what: str, label: str, value: Expr) -> relax.TensorType:
    ty = getattr(value, "ty", None)
    if not isinstance(ty, relax.TensorType) or ty.shape is None:
        kind = "a sequence or tuple" if isinstance(ty, relax.TupleType) else f"of type {ty}"
        raise Unsupported(f"{what}: {label} is {kind} (tensors of known rank are taken)")
    return ty


def _refuse_non_tensors(what: str, graph: onnx.GraphProto) -> None:
    for v in list(graph.input) + list(graph.output):
        kind = v.type.WhichOneof("value")
        if kind not in (None, "tensor_type"):
            raise Unsupported(f"{what}: body value {v.name!r} is a {kind.replace('_type', '')} (tensors are taken)")


def _same_type(bb: relax.BlockBuilder, what: str, name: str, value: Expr, want: relax.TensorType) -> Expr:
    """A loop-carried body output, checked to keep the type it came in with (runtime-checked where
    its dims are not known statically)."""
    got = value.ty
    if tvm_ffi.structural_equal(got, want):
        return value
    mismatch = (not isinstance(got, relax.TensorType) or got.dtype != want.dtype or got.ndim != want.ndim
                or (got.shape is not None and any(isinstance(g, tirx.IntImm) and isinstance(w, tirx.IntImm)
                                                  and int(g) != int(w)
                                                  for g, w in zip(got.shape.values, want.shape.values))))
    if mismatch:
        raise Unsupported(f"{what}: loop-carried value {name!r} changes from {want} to {got} "
                          "(values whose shape changes across iterations are not taken)")
    return bb.match_cast(value, want)


def _known_shape(what: str, name: str, value: Expr) -> relax.TensorType:
    ty = getattr(value, "ty", None)
    if not isinstance(ty, relax.TensorType) or ty.shape is None:
        raise Unsupported(f"{what}: scan output {name!r} has no shape known before the loop runs ({ty})")
    return ty


def _closed(value: Expr) -> bool:
    """Whether a value needs nothing of its function (a constant): inlined into the body."""
    if isinstance(value, Constant | StringImm):
        return True
    if isinstance(value, relax.ShapeExpr):
        return all(isinstance(s, tirx.IntImm) for s in value.values)
    return isinstance(value, relax.Tuple) and all(_closed(f) for f in value.fields)


def _outer_reads(graph: onnx.GraphProto) -> set[str]:
    """Names a graph and its subgraphs read that it does not define itself."""
    defined = {v.name for v in graph.input} | {t.name for t in graph.initializer}
    reads: set[str] = set()
    for node in graph.node:
        reads.update(i for i in node.input if i and i not in defined)
        for sub in subgraphs(node):
            reads.update(r for r in _outer_reads(sub) if r not in defined)
        defined.update(node.output)
    return reads | {o.name for o in graph.output if o.name not in defined}


def _ident(name: str) -> str:
    return re.sub(r"\W", "_", name) or "node"


def _write_kernel(rank: int, dtype: str, target_kind: str) -> Any:
    """TIR `Buf[I, ...] = Y[...]`, in place: one row of a scan output into its buffer. On CUDA one
    thread per element (no default schedule binds a hand-written loop to threads)."""
    dims = [f"d{k}" for k in range(rank)]
    e = Emitter()
    params = [Param("Buf", ("rows", *dims), dtype, output=True), Param("Y", tuple(dims), dtype),
              Param("I", (), "int64")]
    idx = [f"e{k}" for k in range(rank)]
    store = f"Buf[{', '.join(['I[()]', *idx])}] = Y[{', '.join(idx) or '()'}]"
    attrs = '"tir.noalias": True' + (', "tirx.is_scheduled": True' if target_kind == "cuda" else "")
    # named by rank and dtype, as added to the module: its global symbol, unique per kernel
    with prim_func(e, f"scan_write{rank}_{dtype}", params, ["rows", *dims], attrs):
        if target_kind != "cuda":
            with e.block(f"for {', '.join(idx)} in T.grid({', '.join(dims)}):" if rank else None):
                e.line(store)
            return tvm.script.from_source(e.text())
        total = " * ".join(dims) or "1"
        with e.block(f'for bx in T.thread_binding(({total} + 255) // 256, thread="blockIdx.x"):'), \
                e.block('for tx in T.thread_binding(256, thread="threadIdx.x"):'), \
                e.block(f"if bx * 256 + tx < {total}:"):
            for k in range(rank):  # the flat index split into the element's coordinates
                inner = " * ".join(dims[k + 1:])
                e.line(f"{idx[k]} = (bx * 256 + tx){f' // ({inner})' if inner else ''} % {dims[k]}")
            e.line(store)
    return tvm.script.from_source(e.text())
