"""Loop-carried sequences that only collect one tensor per iteration, rewritten as Loop scan outputs.

torch.onnx (the TorchScript exporter) exports a scripted loop that appends to a Python list, and
the `torch.stack` / `torch.cat` of that list after it, as

    seq0 = SequenceEmpty()
    ..., seq = Loop(M, cond, ..., seq0)      body: seq_out = SequenceInsert(seq_in, x)
    y = ConcatFromSequence(seq, axis=a, new_axis=0|1)

`control` (Loop as recursive Relax functions) takes tensors only, and TVM's frontend has no
sequence type to carry. Such a sequence is exactly a scan output: `x` becomes a body scan output
(stacked by the Loop along a new axis 0, as `ys` of shape [n, *x.shape]) and the ConcatFromSequence
becomes the ops that give the same tensor from `ys`:

- new_axis=1 (stack at axis a of rank r + 1): `ys` itself for a = 0, else a Transpose moving axis 0
  to a;
- new_axis=0 (concatenate along axis a of rank r): a Transpose moving axis 0 next to axis a (for
  a > 0), then a Reshape (allowzero=1, so a zero dim is a zero) to the shape computed at run time
  from Shape / Slice / Mul / Concat: [d_0 .. d_{a-1}, n * d_a, d_{a+1} ..], exact for symbolic and
  zero sizes alike. Scan outputs must have one shape in every iteration, which stacking requires
  anyway; concatenation does not (a ragged axis a), so a loop that appends tensors of changing
  length along a fails at run time (in ONNX Runtime and in TVM) instead of computing it.

The pattern, all of which must hold (anything else is left as it is, and `control` refuses the
sequence naming it): the initial value is the output of a SequenceEmpty node of the same graph;
in the body, the sequence input is read only by one SequenceInsert with no position input, whose
output is the body output carrying the sequence and read by nothing else; the Loop's output of it
is read only by ConcatFromSequence nodes of the same graph (not a graph output, not read from a
subgraph); the element rank is known (shape inference or the declared types) where the axis needs
it; new_axis=0 needs opset 14 (Reshape's allowzero). A SequenceEmpty left unread is removed.
Every graph is rewritten, subgraphs first (a Loop in an If branch or another Loop's body too).
"""
from __future__ import annotations

import itertools

import onnx
from onnx import TensorProto, helper

from rnnc.graphs.walk import all_graphs, outer_reads, subgraphs

__all__ = ["sequences_to_scan_outputs"]


def sequences_to_scan_outputs(proto: onnx.ModelProto) -> onnx.ModelProto:
    """A copy of `proto` with each carried sequence of the pattern above made a scan output (an
    unchanged copy when nothing matches)."""
    out = onnx.ModelProto()
    out.CopyFrom(proto)
    if not any(n.op_type == "SequenceEmpty" for g in all_graphs(out.graph) for n in g.node):
        return out
    opset = next((o.version for o in out.opset_import if o.domain in ("", "ai.onnx")), 1)
    _Rewrite(out, opset).graph(out.graph)
    return out


class _Rewrite:
    def __init__(self, model: onnx.ModelProto, opset: int) -> None:
        self.opset = opset
        self.types = _types(model)  # name -> TypeProto (names are unique across a model's scopes)
        self.taken = {n for g in all_graphs(model.graph) for n in _names(g)}
        self.counter = itertools.count()

    def fresh(self, hint: str) -> str:
        while True:
            name = f"{hint}__rnnc{next(self.counter)}"
            if name not in self.taken:
                self.taken.add(name)
                return name

    def graph(self, g: onnx.GraphProto) -> None:
        for node in g.node:  # inner graphs first: what they become is what the outer pattern sees
            for sub in subgraphs(node):
                self.graph(sub)
        k = 0
        while k < len(g.node):  # by index: a rewrite replaces the nodes after the loop
            if g.node[k].op_type == "Loop" and g.node[k].domain in ("", "ai.onnx"):
                self.loop(g, k)
            k += 1
        _drop_unread_sequence_empty(g)

    def loop(self, g: onnx.GraphProto, at: int) -> None:
        loop = g.node[at]
        body = next(a.g for a in loop.attribute if a.name == "body")
        n_carried = len(loop.input) - 2
        if n_carried < 1 or len(body.input) != 2 + n_carried or len(body.output) < 1 + n_carried:
            return
        matched = [m for j in range(n_carried) if (m := self.match(g, at, body, j)) is not None]
        if not matched:
            return
        n_scans = len(body.output) - 1 - n_carried
        outputs = list(loop.output) + [""] * (n_carried + n_scans - len(loop.output))
        drop = {j for j, _, _ in matched}
        inserts = {i for _, i, _ in matched}
        body_nodes = [onnx.NodeProto.FromString(n.SerializeToString()) for i, n in enumerate(body.node)
                      if i not in inserts]
        body_outputs = [onnx.ValueInfoProto.FromString(o.SerializeToString()) for k, o in enumerate(body.output)
                        if k - 1 not in drop]
        dead: set[str] = set()
        after: dict[int, list[onnx.NodeProto]] = {}  # index in g.node -> the nodes replacing it
        new_outputs = [o for j, o in enumerate(outputs) if j not in drop]
        for j, i, consumers in matched:
            insert = body.node[i]
            x = insert.input[1]
            dead.update((body.input[2 + j].name, body.output[1 + j].name, outputs[j]))
            produced = {o for n in body_nodes for o in n.output}
            if x in produced and x not in {o.name for o in body_outputs}:
                row = x
            else:  # a carried value, a body input or an outer value: a fresh name for the scan output
                row = self.fresh(x)
                label = self.fresh(f"{insert.name or 'SequenceInsert'}_row")
                body_nodes.append(helper.make_node("Identity", [x], [row], name=label))
            body_outputs.append(_value(row, self.row_type(x, body.input[2 + j])))
            ys = self.fresh(f"{outputs[j] or loop.name}_scan")
            new_outputs.append(ys)
            rank = self.rank(x)
            for c in consumers:
                after[c] = self.concat(ys, g.node[c], rank)
        body_inputs = [v for k, v in enumerate(body.input) if k - 2 not in drop]
        _replace(body.input, body_inputs)
        _replace(body.output, body_outputs)
        _replace(body.node, body_nodes)
        _drop_value_info(body, dead)
        inputs = [v for k, v in enumerate(loop.input) if k - 2 not in drop]
        del loop.input[:]
        loop.input.extend(inputs)
        del loop.output[:]
        loop.output.extend(new_outputs)
        nodes: list[onnx.NodeProto] = []
        for k, n in enumerate(g.node):
            nodes.extend(after.get(k, [n]))
        _replace(g.node, nodes)
        _drop_value_info(g, dead)

    def match(self, g: onnx.GraphProto, at: int, body: onnx.GraphProto, j: int):
        """(j, the index of the body's SequenceInsert, the indices in g of the ConcatFromSequence
        nodes after the loop) where carried value j is a collecting sequence, else None."""
        loop = g.node[at]
        init = loop.input[2 + j]
        producer = next((n for n in g.node if init in n.output), None)
        if producer is None or producer.op_type != "SequenceEmpty" or list(loop.input[2:]).count(init) != 1:
            return None
        seq_in, seq_out = body.input[2 + j].name, body.output[1 + j].name
        readers = [k for k, n in enumerate(body.node)
                   if {seq_in, seq_out} & (set(n.input) | outer_reads(n))]
        if len(readers) != 1:
            return None
        insert = body.node[readers[0]]
        if (insert.op_type != "SequenceInsert" or insert.domain not in ("", "ai.onnx") or len(insert.input) < 2
                or insert.input[0] != seq_in or any(insert.input[2:]) or list(insert.output) != [seq_out]
                or insert.input[1] in (seq_in, seq_out)):
            return None
        if [o.name for o in body.output].count(seq_out) != 1 or seq_in in {o.name for o in body.output}:
            return None
        result = loop.output[j] if j < len(loop.output) else ""
        consumers: list[int] = []
        if result:
            if result in {o.name for o in g.output}:
                return None
            for k, n in enumerate(g.node):
                if result in outer_reads(n):
                    return None
                if result in n.input:
                    if n.op_type != "ConcatFromSequence" or list(n.input) != [result]:
                        return None
                    consumers.append(k)
        x = insert.input[1]
        elem = self.rank(x)
        if elem is None:
            seq_elem = _seq_elem(body.input[2 + j].type)
            elem = _rank(seq_elem)
            if elem is not None:
                self.types[x] = seq_elem
        for k in consumers:
            a = _attrs(g.node[k])
            new_axis, axis = int(a.get("new_axis", 0)), a.get("axis")
            if axis is None or new_axis not in (0, 1):
                return None
            if new_axis == 1 and axis == 0:
                continue
            if elem is None:
                return None
            rank = elem + new_axis
            if not -rank <= axis < rank or (new_axis == 0 and (elem == 0 or self.opset < 14)):
                return None
        return j, readers[0], consumers

    def rank(self, name: str) -> int | None:
        t = self.types.get(name)
        return None if t is None else _rank(t)

    def row_type(self, x: str, seq_input: onnx.ValueInfoProto) -> onnx.TypeProto:
        """The scan output's per-iteration type: x's own, else the sequence's element type, else unset."""
        t = self.types.get(x)
        if t is not None and t.HasField("tensor_type"):
            return t
        elem = _seq_elem(seq_input.type)
        return elem if elem is not None else onnx.TypeProto()

    def concat(self, ys: str, c: onnx.NodeProto, elem: int | None) -> list[onnx.NodeProto]:
        """Nodes computing ConcatFromSequence `c` of the sequence from its stacked rows `ys`."""
        a = _attrs(c)
        new_axis, axis, out, name = int(a.get("new_axis", 0)), int(a["axis"]), c.output[0], c.name or "concat"
        if new_axis == 1:
            axis %= elem + 1 if elem is not None else 1
            if axis == 0:
                return [helper.make_node("Identity", [ys], [out], name=name)]
            return [helper.make_node("Transpose", [ys], [out], name=name, perm=_moving_0_to(axis, elem + 1))]
        axis %= elem
        nodes: list[onnx.NodeProto] = []
        consts: dict[int, str] = {}
        shapes: dict[str, str] = {}

        def node(op: str, inputs: list[str], hint: str, **attrs) -> str:
            got = self.fresh(f"{name}_{hint}")
            nodes.append(helper.make_node(op, inputs, [got], name=got, **attrs))
            return got

        def const(v: int) -> str:  # an int64 [1] Constant, one per value
            if v not in consts:
                consts[v] = node("Constant", [], str(v), value=helper.make_tensor("value", TensorProto.INT64, [1], [v]))
            return consts[v]

        def dims(of: str, start: int, end: int) -> str:  # Shape(of)[start:end]
            if of not in shapes:
                shapes[of] = node("Shape", [of], "shape")
            return node("Slice", [shapes[of], const(start), const(end), const(0)], "dims")

        rank = elem + 1
        moved = ys if axis == 0 else node("Transpose", [ys], "moved", perm=_moving_0_to(axis, rank))
        # n * d_a as a dim (TVM's importer keeps shapes symbolic through Shape, Slice and Concat, but
        # has no Mul of shapes): the first dim of ys, its axes 0 and a + 1 first, flattened after them
        pair = ys if axis == 0 else node("Transpose", [ys], "pair",
                                         perm=[0, axis + 1, *(k for k in range(1, rank) if k != axis + 1)])
        parts = ([dims(moved, 0, axis)] if axis else []) + [dims(node("Flatten", [pair], "flat", axis=2), 0, 1)]
        if axis + 2 < rank:
            parts.append(dims(moved, axis + 2, rank))
        target = parts[0] if len(parts) == 1 else node("Concat", parts, "target", axis=0)
        nodes.append(helper.make_node("Reshape", [moved, target], [out], name=name, allowzero=1))
        return nodes


# -- helpers --------------------------------------------------------------------------------------

def _moving_0_to(axis: int, rank: int) -> list[int]:
    """The Transpose perm that moves axis 0 of a rank-`rank` tensor to `axis`."""
    perm = list(range(1, rank))
    perm.insert(axis, 0)
    return perm


def _attrs(node: onnx.NodeProto) -> dict:
    return {a.name: helper.get_attribute_value(a) for a in node.attribute}


def _names(g: onnx.GraphProto) -> set[str]:
    names = {v.name for v in list(g.input) + list(g.output) + list(g.value_info)} | {t.name for t in g.initializer}
    for n in g.node:
        names.update(n.output)
        names.update(n.input)
        names.add(n.name)
    return names


def _types(model: onnx.ModelProto) -> dict[str, onnx.TypeProto]:
    """Every value's type the model declares or shape inference finds, subgraphs included."""
    found: dict[str, onnx.TypeProto] = {}
    try:
        inferred = onnx.shape_inference.infer_shapes(model)
    except Exception:  # noqa: BLE001 - inference is a help here, the declared types remain
        inferred = model
    for source in (model, inferred):  # declared types win
        for g in all_graphs(source.graph):
            for v in list(g.input) + list(g.output) + list(g.value_info):
                if v.type.WhichOneof("value") is not None and v.name not in found:
                    found[v.name] = v.type
    return found


def _rank(t: onnx.TypeProto | None) -> int | None:
    if t is None or not t.HasField("tensor_type") or not t.tensor_type.HasField("shape"):
        return None
    return len(t.tensor_type.shape.dim)


def _seq_elem(t: onnx.TypeProto) -> onnx.TypeProto | None:
    if t.HasField("sequence_type") and t.sequence_type.elem_type.HasField("tensor_type"):
        return t.sequence_type.elem_type
    return None


def _value(name: str, t: onnx.TypeProto) -> onnx.ValueInfoProto:
    v = onnx.ValueInfoProto(name=name)
    v.type.CopyFrom(t)
    return v


def _replace(field, items: list) -> None:
    """Set a repeated message field to `items` (copied first: some may be its own elements)."""
    copies = [type(i).FromString(i.SerializeToString()) for i in items]
    del field[:]
    field.extend(copies)


def _drop_value_info(g: onnx.GraphProto, names: set[str]) -> None:
    keep = [v for v in g.value_info if v.name not in names]
    _replace(g.value_info, keep)


def _drop_unread_sequence_empty(g: onnx.GraphProto) -> None:
    read = {i for n in g.node for i in list(n.input) + sorted(outer_reads(n))} | {o.name for o in g.output}
    keep = [n for n in g.node if not (n.op_type == "SequenceEmpty" and n.output[0] not in read)]
    if len(keep) != len(g.node):
        _replace(g.node, keep)


