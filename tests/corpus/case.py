"""What a corpus builder hands back, and the op-type walk over an ONNX graph and its subgraphs."""
from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx

Reference = Callable[[Mapping[str, np.ndarray]], dict[str, np.ndarray]]


@dataclass(frozen=True)
class Case:
    """One written model and what a caller needs to compile, bind, stream and check it.

    `shapes` gives whole shapes by input name for every input with a symbolic dim (the `--shapes`
    value); `int_ranges` the values an integer input may take (token ids below the vocabulary, the
    branch selectors worth trying), which random inputs must respect; `reference` runs the torch module
    the file was exported from (or an equivalent one) on named arrays and returns named outputs.
    """

    path: Path
    shapes: dict[str, tuple[int, ...]]
    bind: dict[str, np.ndarray]
    state: dict[str, str]
    ops: frozenset[str]
    dtype: str
    int_ranges: dict[str, range] = field(default_factory=dict)
    reference: Reference | None = field(default=None, compare=False, repr=False)


def graphs(graph: onnx.GraphProto) -> Iterator[onnx.GraphProto]:
    """`graph` and every subgraph below it (If branches, Loop and Scan bodies), depth first."""
    yield graph
    for node in graph.node:
        for attr in node.attribute:
            if attr.type == onnx.AttributeProto.GRAPH:
                yield from graphs(attr.g)
            elif attr.type == onnx.AttributeProto.GRAPHS:
                for sub in attr.graphs:
                    yield from graphs(sub)


def op_types(graph: onnx.GraphProto) -> frozenset[str]:
    """Op types of `graph` and of all its subgraphs."""
    return frozenset(node.op_type for g in graphs(graph) for node in g.node)


def check_written(case: Case, where: Mapping[str, str] | None = None) -> Case:
    """Refuse a builder's output that lacks an op it promises, or (`where`: op -> parent op) has it
    only at the wrong level: a corpus that silently lost its If or Loop would test nothing."""
    model = onnx.load(case.path)
    onnx.checker.check_model(model, full_check=True)
    missing = case.ops - op_types(model.graph)
    if missing:
        raise AssertionError(f"{case.path.name}: exported graph lacks {sorted(missing)}")
    for op, parent in (where or {}).items():
        top = {n.op_type for n in model.graph.node}
        inside = any(op in op_types(a.g) for n in model.graph.node if n.op_type == parent
                     for a in n.attribute if a.type == onnx.AttributeProto.GRAPH)
        if op in top or not inside:
            raise AssertionError(f"{case.path.name}: {op} must sit only inside a {parent} subgraph")
    return case
