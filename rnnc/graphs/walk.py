"""Walks over an ONNX graph and the subgraphs its nodes hold (If branches, Loop and Scan bodies):
the one place every stage reads them from."""
from __future__ import annotations

from collections.abc import Iterator

import onnx


def subgraphs(node: onnx.NodeProto) -> list[onnx.GraphProto]:
    """The graphs a node holds as attributes."""
    return [g for a in node.attribute
            for g in ([a.g] if a.type == onnx.AttributeProto.GRAPH else list(a.graphs))]


def all_graphs(graph: onnx.GraphProto) -> Iterator[onnx.GraphProto]:
    """`graph` and every subgraph in it, each enclosing graph before the subgraphs it holds."""
    yield graph
    for node in graph.node:
        for sub in subgraphs(node):
            yield from all_graphs(sub)


def all_nodes(graph: onnx.GraphProto) -> Iterator[onnx.NodeProto]:
    """Every node of `graph` and of its subgraphs, depth first."""
    for node in graph.node:
        yield node
        for sub in subgraphs(node):
            yield from all_nodes(sub)


def outer_reads(node: onnx.NodeProto) -> set[str]:
    """Names a node's subgraphs read from the enclosing scope (inputs of their nodes and outputs
    that the subgraph does not define)."""
    reads: set[str] = set()
    for sub in subgraphs(node):
        defined = {i.name for i in sub.input} | {t.name for t in sub.initializer}
        for n in sub.node:
            defined.update(n.output)
        for n in sub.node:
            reads.update(i for i in n.input if i and i not in defined)
            reads.update(r for r in outer_reads(n) if r not in defined)
        reads.update(o.name for o in sub.output if o.name not in defined)
    return reads
