"""What shapes the generated code of one generation loop (`GenSpec`), the generation kernel's
parameters in order (`signature`) and its constants, packed from PyTorch's tensors (`pack_generator`).

The layers' weights are packed as `kernels.pack` packs one direction (16-wide column panels, H
padded to Hp with zeros, which keeps the padded units at 0 for every cell); the gates stay in
PyTorch's orders (LSTM i, f, g, o; GRU r, z, n), which `pack` carries through unchanged apart from
GRU's third gate, whose recurrent bias stays apart (Rbn) in both orders. For tokens, layer 0's input
projection is folded into the embedding table where it stays under FOLD_MAX floats: row v is
Emb[v] W0^T + b0 in packed column order (float64, rounded once), so a step's first layer gathers a
row instead of multiplying. The head is `dense.pack_dense`'s; a softmax head's padded logits get
the bias -1e30, so that they never win the argmax and their exp is 0.

Sequence mode (`sequence`, a stateful many_to_many / many_to_one model): X is `[batch, seq]`
tokens or `[batch, seq, features]`, H0 (and C0) always given, Hn (and Cn) always returned, Out
`[batch, seq, units]` or `[batch, units]` (units: the head's, or hidden with no head: then no
Wd, Bd); the folded table has one row per `vocab` token.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from rnnc.compiler.tvm.dense import DenseSpec, pack_dense
from rnnc.compiler.tvm.emit import Param
from rnnc.compiler.tvm.kernels import pack
from rnnc.compiler.tvm.spec import GATES, LANES, SERIAL_BELOW, LayerSpec, padded

__all__ = ["FOLD_MAX", "GenSpec", "check", "pack_generator", "signature"]

FOLD_MAX = 1 << 22  # floats of a folded embedding table (16 MiB); a bigger one gathers and multiplies
HEADS = ("none", "softmax", "sigmoid", "tanh", "relu", "leaky_relu")
_NEG = -1e30


@dataclass(frozen=True)
class GenSpec:
    """Everything that shapes the generated code of one generation loop."""

    cell: str  # lstm | gru | rnn (PyTorch gate orders: i f g o, r z n)
    hidden: int
    layers: int
    input_size: int  # layer 0's input: the embedding width, or the features (== units)
    units: int  # the head's width (tokens: the vocabulary)
    steps: int
    tokens: bool  # feed back the argmax token (True) or the head's output
    head: str = "softmax"  # the head's activation, one of HEADS (tokens: softmax)
    nonlinearity: str = "Tanh"  # cell rnn: Tanh | Relu
    folded: bool = True  # tokens: layer 0's input projection folded into the embedding table
    start_token: int | None = None  # a decoder's constant first token; None: the input X
    initial_h: bool = False  # H0 [L, batch, H] given (else zeros)
    initial_c: bool = False  # C0 likewise (LSTM)
    final_state: bool = False  # outputs Hn (and Cn for an LSTM) after the last step
    batch_tile: int = 4  # rows of a register tile
    columns_below: int = -1  # batch under which a step's columns are split across cores; -1: by size
    serial_below: int = SERIAL_BELOW  # G x Hp^2 under which a barrier costs more than it saves
    sequence: str | None = None  # a stateful model's chunk: "many_to_many" | "many_to_one"; None: generation
    dense: bool = True  # sequence mode: a dense head (else units == hidden, the top layer's h)
    vocab: int = 0  # sequence mode, tokens: the embedding's rows (generation: units)
    serial_one: bool = True  # sequence mode, row tiles: batch 1 runs on the calling thread (no launch)

    @property
    def gates(self) -> int:
        return GATES[self.cell]

    @property
    def hp(self) -> int:
        return padded(self.hidden)

    @property
    def np_(self) -> int:
        return padded(self.units)

    @property
    def blocks(self) -> int:
        """16-lane accumulators per row of a column tile: the gates (GRU: n's recurrent part apart)."""
        return self.gates + (self.cell == "gru")

    @property
    def softmax(self) -> bool:
        return self.head == "softmax"

    def split_below(self) -> int:
        """The batch under which each step's columns are split across the cores (1: never).

        By size (columns_below -1): 3 x G x Hp^2 / serial_below, at most batch_tile + 1 (the rows
        of one register tile); none under serial_below or with one column tile, which cannot be
        split (TVM drops a parallel loop of extent 1 inside a parallel region, and every thread
        would run its body, updating C in place twice)."""
        macs = self.gates * self.hp * self.hp
        if macs < self.serial_below or self.hp <= LANES:
            return 1
        if self.columns_below >= 0:
            return self.columns_below
        return max(2, min(self.batch_tile + 1, 3 * macs // max(self.serial_below, 1)))


def check(spec: GenSpec) -> None:
    assert spec.cell in GATES and spec.layers >= 1 and spec.steps >= 1 and spec.batch_tile >= 1
    assert spec.head in HEADS and spec.nonlinearity in ("Tanh", "Relu")
    if spec.sequence is not None:  # X read step by step, the state given and returned
        assert spec.sequence in ("many_to_many", "many_to_one") and spec.start_token is None
        assert spec.initial_h and spec.final_state and spec.initial_c == (spec.cell == "lstm")
        assert spec.dense or spec.units == spec.hidden
        assert not spec.tokens or spec.vocab >= 1
        return
    assert spec.dense
    assert not spec.tokens or spec.softmax, "token generation needs a softmax head"
    assert spec.tokens or spec.input_size == spec.units, "fed-back features need units == features"
    assert spec.start_token is None or (spec.tokens and spec.initial_h)
    assert not spec.initial_c or spec.cell == "lstm"


# ---------------------------------------------------------------------------------------------
# the parameters and their constants


def signature(spec: GenSpec) -> tuple[Param, ...]:
    """The PrimFunc's parameters in order: [X], [H0], [C0], [Emb], per layer W, R, B (, Rbn for a GRU),
    Wd, Bd, then the outputs Out, [Gen], [Hn, Cn]."""
    g, h, hp, n = spec.gates, spec.hidden, spec.hp, spec.units
    params = []
    if spec.sequence is not None:
        params.append(Param("X", ("batch", "seq"), "int64") if spec.tokens
                      else Param("X", ("batch", "seq", spec.input_size)))
    elif spec.start_token is None:
        params.append(Param("X", ("batch",), "int64") if spec.tokens else Param("X", ("batch", spec.input_size)))
    state = (spec.layers, "batch", h)
    if spec.initial_h:
        params.append(Param("H0", state))
    if spec.initial_c:
        params.append(Param("C0", state))
    if spec.tokens:
        params.append(Param("Emb", (_vocab(spec), g * hp if spec.folded else spec.input_size)))
    for layer in range(spec.layers):
        if layer or not (spec.tokens and spec.folded):
            params.append(Param(f"W{layer}", (g * hp // LANES, spec.input_size if layer == 0 else h, LANES)))
        params += [Param(f"R{layer}", (hp // LANES, hp, g, LANES)), Param(f"B{layer}", (g * hp,))]
        if spec.cell == "gru":
            params.append(Param(f"Rbn{layer}", (hp,)))
    if spec.dense:
        params += [Param("Wd", (spec.np_ // LANES, h, LANES)), Param("Bd", (spec.np_,))]
    if spec.sequence == "many_to_one":
        params.append(Param("Out", ("batch", n), output=True))
    else:
        params.append(Param("Out", ("batch", "seq" if spec.sequence else spec.steps, n), output=True))
    if spec.tokens and spec.sequence is None:
        params.append(Param("Gen", ("batch", spec.steps), "int64", output=True))
    if spec.final_state:
        params.append(Param("Hn", state, output=True))
        if spec.cell == "lstm":
            params.append(Param("Cn", state, output=True))
    return tuple(params)


def _vocab(spec: GenSpec) -> int:
    if spec.sequence is not None:
        return spec.vocab
    return spec.units  # the head's argmax indexes the embedding: one row per unit


def pack_generator(spec: GenSpec, layers: list[tuple[np.ndarray, np.ndarray, np.ndarray | None]],
                   head: tuple[np.ndarray, np.ndarray | None], embedding: np.ndarray | None) -> dict[str, np.ndarray]:
    """The float32 constants by parameter name, from PyTorch's tensors: per layer (weight_ih [G*H, I],
    weight_hh [G*H, H], bias_ih + bias_hh concatenated [2*G*H] or None), the head (weight [N, H],
    bias [N] or None) and the embedding table [vocab, E] (tokens)."""
    out: dict[str, np.ndarray] = {}
    for layer, (w, r, b) in enumerate(layers):
        ls = LayerSpec(spec.cell, int(w.shape[1]), spec.hidden)
        packed = pack(ls, w[None], r[None], None if b is None else b[None])
        out[f"W{layer}"], out[f"R{layer}"], out[f"B{layer}"] = packed["W"][0], packed["R"][0], packed["Bias"][0]
        if spec.cell == "gru":
            out[f"Rbn{layer}"] = packed["Rbn"][0]
    if spec.tokens:
        assert embedding is not None
        if spec.folded:  # row v: token v's x W0 + b0, in packed column order
            w0 = out.pop("W0").astype(np.float64)  # [G*Hp/16, E, 16]
            flat = w0.transpose(0, 2, 1).reshape(-1, w0.shape[1])  # [G*Hp, E]
            out["Emb"] = embedding.astype(np.float64) @ flat.T + out["B0"].astype(np.float64)
        else:
            out["Emb"] = embedding
    if spec.dense:
        wd, bd = pack_dense(DenseSpec(spec.hidden, spec.units), np.asarray(head[0]).T, head[1])
        if spec.softmax:
            bd[spec.units:] = _NEG
        out["Wd"], out["Bd"] = wd, bd
    return {k: np.ascontiguousarray(v, dtype=np.float32) for k, v in out.items()}
