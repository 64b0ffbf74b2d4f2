"""A generative spec model (one_to_many, encoder_decoder) as one Relax `main` with its generation
fused into one PrimFunc (`generate`): one VM call runs every step, no per-step dispatch.

- one_to_many: `main(tokens | features[, h0[, c0]])` is one `call_tir` of the generation kernel.
- encoder_decoder: the encoder is the ONNX graph cut where the decoder's Loop starts (its outputs
  are the Loop's initial h and, for an LSTM encoder and decoder, c), lowered by `lower` as any
  graph is (our layer kernels); `main` calls it, then the decoder's generation kernel on its states.

The ONNX Loop (`control`) stays the path for imported models and for CUDA; this one reads the
weights from the spec model's PyTorch module, so its gates are in PyTorch's orders.
"""
from __future__ import annotations

from typing import Any

import numpy as np
import onnx

from rnnc.compiler.tvm.generate import generate_primfunc
from rnnc.compiler.tvm.genspec import FOLD_MAX, GenSpec, pack_generator, signature
from rnnc.compiler.tvm.lower import Lowered, lower
from rnnc.compiler.tvm.spec import GATES, LANES, SERIAL_BELOW, Tuning
from rnnc.errors import Unsupported
from rnnc.graphs.model import Model
from rnnc.graphs.spec import ModelSpec

__all__ = ["fused_module", "gen_spec", "stream_by_default", "streams"]


def streams(spec: ModelSpec | None) -> bool:
    """A stateful sequence model the fused kernel runs in sequence mode (many_to_many, many_to_one
    with `rnn.state`, unidirectional by the spec's rules)."""
    return (spec is not None and spec.mode in ("many_to_many", "many_to_one") and bool(spec.rnn.state)
            and not spec.rnn.bidirectional)


def stream_by_default(spec: ModelSpec) -> bool:
    """Whether a streaming model (`streams`) takes the fused chunk kernel unless told otherwise:
    where its recurrent weights are small enough (G x Hp^2 under SERIAL_BELOW) that every batch
    runs as row tiles, each core keeping all of R in its L2. Measured on the 2-core VM (us per
    call, 40 features, layered / fused): LSTM 128 batch 1 seq 1 17.9 / 15.9, seq 4 22.9 / 22.0,
    seq 64 135 / 153, batch 8 seq 64 396 / 331; GRU 128 15.0 / 13.1, 20.0 / 18.9, 120 / 126,
    327 / 258. Above it the layer kernels split R's columns across the cores and the fused
    kernel's row tiles (batch >= split_below) stream all of R per core: LSTM 512 batch 1 seq 1
    75 / 73, seq 4 195 / 204, seq 64 2567 / 2894, batch 8 seq 64 5509 / 9585."""
    rnn = spec.rnn
    hp = -(-rnn.hidden_size // LANES) * LANES
    return GATES[rnn.cell] * hp * hp < SERIAL_BELOW


def gen_spec(spec: ModelSpec, tuning: Tuning) -> GenSpec:
    """The generation kernel's record for a generative spec (or a stateful sequence one, `streams`)."""
    if streams(spec):
        rnn, tokens, dense = spec.rnn, spec.input.type == "tokens", spec.output.dense
        width = spec.input.embedding_dim if tokens else spec.input.features
        units = dense.units if dense else rnn.hidden_size
        vocab = spec.input.vocab_size if tokens else 0
        return GenSpec(cell=rnn.cell, hidden=rnn.hidden_size, layers=rnn.num_layers, input_size=width,
                       units=units, steps=1, tokens=tokens, head=dense.activation if dense else "none",
                       nonlinearity=rnn.activation.capitalize(), folded=tokens and _fold(rnn.cell, rnn.hidden_size, vocab),
                       initial_h=True, initial_c=rnn.cell == "lstm", final_state=True, batch_tile=tuning.batch_tile,
                       sequence=spec.mode, dense=dense is not None, vocab=vocab)
    if spec.mode == "one_to_many":
        rnn, tokens = spec.rnn, spec.input.type == "tokens"
        width = spec.input.embedding_dim if tokens else spec.input.features
        return GenSpec(cell=rnn.cell, hidden=rnn.hidden_size, layers=rnn.num_layers, input_size=width,
                       units=spec.output.dense.units, steps=spec.steps, tokens=tokens,
                       head=spec.output.dense.activation, nonlinearity=rnn.activation.capitalize(),
                       folded=_fold(rnn.cell, rnn.hidden_size, spec.output.dense.units),
                       initial_h=rnn.state, initial_c=rnn.state and rnn.cell == "lstm", final_state=rnn.state,
                       batch_tile=tuning.batch_tile)
    dec = spec.decoder
    return GenSpec(cell=dec.cell, hidden=dec.hidden_size, layers=dec.num_layers, input_size=dec.embedding_dim,
                   units=dec.vocab_size, steps=dec.max_steps, tokens=True, head="softmax",
                   nonlinearity=dec.activation.capitalize(), folded=_fold(dec.cell, dec.hidden_size, dec.vocab_size),
                   start_token=dec.start_token, initial_h=True,
                   initial_c=dec.cell == "lstm" and spec.rnn.cell == "lstm", batch_tile=tuning.batch_tile)


def _fold(cell: str, hidden: int, vocab: int) -> bool:
    return vocab * GATES[cell] * (-(-hidden // LANES) * LANES) <= FOLD_MAX


def fused_module(model: Model, tuning: Tuning) -> Lowered:
    """The Relax module of a generative spec model: `main` takes the model's inputs in order and
    returns its outputs in order."""
    from tvm import relax, tirx

    spec = model.spec
    assert spec is not None and (spec.generative or streams(spec))
    gs = gen_spec(spec, tuning)
    prefix = ("rnn", "dense", "embedding") if spec.mode != "encoder_decoder" else ("decoder", "projection", "dec_embedding")
    constants = pack_generator(gs, *_weights(model, gs, *prefix))
    encoder = _encoder(model, tuning) if spec.mode == "encoder_decoder" else None
    bb = relax.BlockBuilder(encoder.module if encoder else None)
    batch, seq = tirx.Var("batch", "int64"), tirx.Var("seq", "int64")
    dims = {"batch": batch, "seq": seq}
    params = [relax.Var(t.name, relax.TensorType([dims.get(d, d) for d in t.dims], t.dtype)) for t in model.inputs]
    gv = bb.add_func(generate_primfunc(gs, "generate"), "generate")
    sig = signature(gs)
    with bb.function("main", params):
        values: dict[str, Any] = {k: relax.const(v) for k, v in constants.items()}
        if encoder is None:
            values.update(zip(("X", "H0", "C0"), params))
        else:
            states = bb.emit(relax.Call(bb.get().get_global_var("encode"), params))
            n = len(encoder.outputs)
            values.update(zip(("H0", "C0"), [bb.emit(relax.TupleGetItem(states, i)) for i in range(n)] if n > 1
                              else [states]))
        outs = [p for p in sig if p.output]
        sinfo = [relax.TensorType([dims.get(s, s) for s in p.shape], p.dtype) for p in outs]
        call = bb.emit(relax.call_tir(gv, [values[p.name] for p in sig if not p.output],
                                      sinfo if len(sinfo) > 1 else sinfo[0]))
        bb.emit_func_output(call)
    layers = [{"name": "generate", "kind": "stream" if gs.sequence else "generation", **vars(gs)}]
    if encoder is not None:
        layers = encoder.layers + layers
    inputs = [{"name": t.name, "dtype": t.dtype} for t in model.inputs]
    return Lowered(bb.finalize(), inputs, [t.name for t in model.outputs], layers)


def _weights(model: Model, gs: GenSpec, rnn: str, head: str, table: str) -> tuple[list, tuple, np.ndarray | None]:
    """PyTorch's tensors of the generating cell (weight_ih, weight_hh, bias_ih + bias_hh), head and table."""
    state = {k: v.detach().float().numpy().astype(np.float64) for k, v in model.torch_module.state_dict().items()}
    layers = []
    for k in range(gs.layers):
        bias = None
        if f"{rnn}.bias_ih_l{k}" in state:
            bias = np.concatenate([state[f"{rnn}.bias_ih_l{k}"], state[f"{rnn}.bias_hh_l{k}"]])
        layers.append((state[f"{rnn}.weight_ih_l{k}"], state[f"{rnn}.weight_hh_l{k}"], bias))
    dense = (state[f"{head}.weight"], state.get(f"{head}.bias")) if gs.dense else (None, None)
    return layers, dense, state.get(f"{table}.weight")


def _encoder(model: Model, tuning: Tuning) -> Lowered:
    """The ONNX graph up to the decoder Loop's initial states, lowered, its `main` renamed `encode`."""
    import tvm
    from tvm import relax

    cut = encoder_graph(model)
    lowered = lower(cut, "llvm", tuning)
    mod = lowered.module
    funcs = {}
    for gvar, func in mod.functions_items():
        if gvar.name_hint == "main":
            encode = relax.GlobalVar("encode")
            relax.expr._update_type(encode, func.ty)
            funcs[encode] = func.with_attr("global_symbol", "encode")
        else:
            funcs[gvar] = func
    lowered.module = tvm.IRModule(funcs, attrs=mod.attrs)
    return lowered


def encoder_graph(model: Model) -> onnx.ModelProto:
    """model.onnx cut at its generation Loop: outputs the Loop's initial h (and c where the decoder
    starts from the encoder's c: both LSTMs), [L_dec, batch, H_dec]."""
    from onnx import TensorProto, helper

    spec, graph = model.spec, model.onnx.graph
    loops = [n for n in graph.node if n.op_type == "Loop"]
    if len(loops) != 1 or len(loops[0].input) < 4:
        raise Unsupported("the encoder-decoder's ONNX graph has no single generation Loop to cut at")
    wanted = [loops[0].input[3]]
    if spec.decoder.cell == "lstm" and spec.rnn.cell == "lstm":
        wanted.append(loops[0].input[4])
    producers = {o: n for n in graph.node for o in n.output}
    keep, todo = set(), list(wanted)
    while todo:
        node = producers.get(todo.pop())
        if node is not None and id(node) not in keep:
            keep.add(id(node))
            todo.extend(node.input)
    nodes = [n for n in graph.node if id(n) in keep]
    used = {i for n in nodes for i in n.input}
    dims = [spec.decoder.num_layers, "batch", spec.decoder.hidden_size]
    cut = helper.make_graph(nodes, f"{graph.name}-encoder", list(graph.input),
                            [helper.make_tensor_value_info(w, TensorProto.FLOAT, dims) for w in wanted],
                            initializer=[t for t in graph.initializer if t.name in used])
    return helper.make_model(cut, opset_imports=list(model.onnx.opset_import), ir_version=model.onnx.ir_version)
