"""The PyTorch reference module for every model a spec can describe, with seeded weights.

The module is built from torch.nn's own RNN/LSTM/GRU so that what users know from PyTorch is
what they get; rnnc's other artifacts (TorchScript, ONNX, TVM) are derived from its weights.
"""
from __future__ import annotations

import numpy as np
import torch
from torch import nn

from typing import List, Optional, Tuple

from rnnc.graphs.spec import ModelSpec

_CELLS = {"rnn": nn.RNN, "lstm": nn.LSTM, "gru": nn.GRU}
TORCH_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


def _cell(cell: str, input_size: int, hidden: int, layers: int, bidirectional: bool, bias: bool,
          nonlinearity: str) -> nn.Module:
    kwargs = dict(input_size=input_size, hidden_size=hidden, num_layers=layers, bidirectional=bidirectional,
                  bias=bias, batch_first=True)
    if cell == "rnn":
        kwargs["nonlinearity"] = nonlinearity
    return _CELLS[cell](**kwargs)


class RNNModel(nn.Module):
    """Embedding or features -> stacked RNN -> (all steps | top layer's h_n) -> optional dense.

    Every mode of SPEC section 1 is this module (or `MemoryModel`, its forward with state and
    generation), so that TorchScript scripts the loop of a generative mode as it is written here:
    - many_to_many / many_to_one: `forward(x)` returns the output; with `rnn.state`, `forward(x, h0,
      c0)` returns [output, h_n, c_n] (c only for an LSTM);
    - one_to_many: x is one step; each step's head output (its argmax, for tokens) is the next
      step's input; returns [output, generated (tokens only), h_n, c_n (with state)];
    - encoder_decoder: the encoder reads x; the decoder starts from its top layer's final state and
      returns [output (probabilities), generated].
    """

    # TorchScript treats these as constants, so the branches not taken are never compiled
    __constants__ = ["is_lstm", "many_to_one", "directions", "hidden_size", "activation", "has_dense", "mode",
                     "stateful", "tokens", "steps", "layers", "dec_lstm", "start_token", "dec_layers"]

    def __init__(self, spec: ModelSpec) -> None:
        super().__init__()
        rnn = spec.rnn
        if spec.input.type == "tokens":
            self.embedding = nn.Embedding(spec.input.vocab_size, spec.input.embedding_dim)
            input_size = spec.input.embedding_dim
        else:
            self.embedding = None
            input_size = spec.input.features
        self.rnn = _cell(rnn.cell, input_size, rnn.hidden_size, rnn.num_layers, rnn.bidirectional,
                         rnn.bias is not False, rnn.activation)
        width = rnn.hidden_size * rnn.directions
        dense = spec.output.dense
        self.dense = nn.Linear(width, dense.units) if dense else None
        self.is_lstm = rnn.cell == "lstm"
        self.mode = spec.output.mode
        self.many_to_one = spec.output.mode == "many_to_one"
        self.directions = rnn.directions
        self.hidden_size = rnn.hidden_size
        self.layers = rnn.num_layers
        self.activation = dense.activation if dense else "none"
        self.has_dense = dense is not None
        self.stateful = rnn.state
        self.tokens = spec.input.type == "tokens"
        self.steps = spec.steps or 0
        dec = spec.decoder
        if dec is not None:
            self.dec_embedding = nn.Embedding(dec.vocab_size, dec.embedding_dim)
            self.decoder = _cell(dec.cell, dec.embedding_dim, dec.hidden_size, dec.num_layers, False,
                                 dec.bias is not False, dec.activation)
            self.projection = nn.Linear(dec.hidden_size, dec.vocab_size)
        else:
            self.dec_embedding = self.decoder = self.projection = None
        self.dec_lstm = dec is not None and dec.cell == "lstm"
        self.dec_layers = dec.num_layers if dec is not None else 0
        self.start_token = dec.start_token if dec is not None else 0
        _init_weights(self, spec)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.embedding is not None:
            x = self.embedding(x)
        if self.is_lstm:
            y, (h_n, _) = self.rnn(x)
        else:
            y, h_n = self.rnn(x)
        return self._head(x.shape[0], y, h_n)

    def _head(self, batch: int, y: torch.Tensor, h_n: torch.Tensor) -> torch.Tensor:
        if self.many_to_one:
            # h_n of the top layer: forward state after the last step, backward after the first
            top = h_n[h_n.shape[0] - self.directions:]
            y = top.transpose(0, 1).reshape(batch, self.directions * self.hidden_size)
        if self.dense is not None:
            y = _activate(self.dense(y), self.activation)
        return y

    def _run(self, x: torch.Tensor, h: Optional[torch.Tensor],
             c: Optional[torch.Tensor]) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """One call of the encoder (or only) cell from state (h, c); c is h's twin for cells without one."""
        assert h is not None
        if self.is_lstm:
            assert c is not None
            y, (h_n, c_n) = self.rnn(x, (h, c))
            return y, h_n, c_n
        y, h_n = self.rnn(x, h)
        return y, h_n, h_n

    def _decode(self, x: torch.Tensor, h: torch.Tensor,
                c: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """One step of the decoder cell."""
        assert self.decoder is not None
        if self.dec_lstm:
            y, (h_n, c_n) = self.decoder(x, (h, c))
            return y, h_n, c_n
        y, h_n = self.decoder(x, h)
        return y, h_n, h_n

    def generate(self, x: torch.Tensor, h0: Optional[torch.Tensor], c0: Optional[torch.Tensor],
                 forced: Optional[torch.Tensor]) -> List[torch.Tensor]:
        """one_to_many: `steps` steps from input x; `forced` [batch, steps] (the reference's teacher
        forcing, for verify): step k+1 reads forced[:, k] in place of step k's argmax."""
        batch = x.shape[0]
        zeros = torch.zeros(self.layers, batch, self.hidden_size, dtype=self.rnn.weight_ih_l0.dtype, device=x.device)
        h = h0 if h0 is not None else zeros
        c = c0 if c0 is not None else zeros
        inp = x
        probs: List[torch.Tensor] = []
        tokens: List[torch.Tensor] = []
        for step in range(self.steps):
            e = self.embedding(inp) if self.embedding is not None else inp
            y, h, c = self._run(e.unsqueeze(1), h, c)
            assert self.dense is not None
            p = _activate(self.dense(y[:, 0]), self.activation)
            probs.append(p)
            if self.tokens:
                token = torch.argmax(p, dim=-1)
                tokens.append(token)
                inp = forced[:, step] if forced is not None else token
            else:
                inp = p
        out = [torch.stack(probs, 1)]
        if self.tokens:
            out.append(torch.stack(tokens, 1))
        if self.stateful:
            out.append(h)
            if self.is_lstm:
                out.append(c)
        return out

    def translate(self, x: torch.Tensor, forced: Optional[torch.Tensor]) -> List[torch.Tensor]:
        """encoder_decoder: encode x; every decoder layer starts from the encoder's top layer's final
        state (directions concatenated), an LSTM decoder's cell state from the encoder's when both
        are LSTMs (zeros otherwise); then `steps` tokens from `start_token`."""
        batch = x.shape[0]
        if self.embedding is not None:
            x = self.embedding(x)
        if self.is_lstm:
            _, (h_n, c_n) = self.rnn(x)
        else:
            _, h_n = self.rnn(x)
            c_n = h_n
        width = self.directions * self.hidden_size
        top = h_n[h_n.shape[0] - self.directions:].transpose(0, 1).reshape(batch, width)
        h = top.unsqueeze(0).repeat(self.dec_layers, 1, 1)
        if self.dec_lstm and self.is_lstm:
            c = c_n[c_n.shape[0] - self.directions:].transpose(0, 1).reshape(batch, width)
            c = c.unsqueeze(0).repeat(self.dec_layers, 1, 1)
        else:
            c = torch.zeros_like(h)
        assert self.dec_embedding is not None and self.decoder is not None and self.projection is not None
        token = torch.full((batch,), self.start_token, dtype=torch.long, device=x.device)
        probs: List[torch.Tensor] = []
        tokens: List[torch.Tensor] = []
        for step in range(self.steps):
            y, h, c = self._decode(self.dec_embedding(token).unsqueeze(1), h, c)
            p = torch.softmax(self.projection(y[:, 0]), dim=-1)
            probs.append(p)
            token = torch.argmax(p, dim=-1)
            tokens.append(token)
            if forced is not None:
                token = forced[:, step]
        return [torch.stack(probs, 1), torch.stack(tokens, 1)]


class MemoryModel(RNNModel):
    """The modes with memory (rnn.state, one_to_many, encoder_decoder): inputs x[, h0[, c0]], a list
    of outputs in the order of the model's output names (TorchScript needs one return type)."""

    def forward(self, x: torch.Tensor, h0: Optional[torch.Tensor] = None,
                c0: Optional[torch.Tensor] = None) -> List[torch.Tensor]:
        if self.mode == "one_to_many":
            return self.generate(x, h0, c0, None)
        if self.mode == "encoder_decoder":
            return self.translate(x, None)
        if self.embedding is not None:
            x = self.embedding(x)
        y, h_n, c_n = self._run(x, h0, c0)
        y = self._head(x.shape[0], y, h_n)
        return [y, h_n, c_n] if self.is_lstm else [y, h_n]


def _activate(y: torch.Tensor, activation: str) -> torch.Tensor:
    if activation == "softmax":
        return torch.softmax(y, dim=-1)
    if activation == "sigmoid":
        return torch.sigmoid(y)
    if activation == "tanh":
        return torch.tanh(y)
    if activation == "relu":
        return torch.relu(y)
    if activation == "leaky_relu":
        return nn.functional.leaky_relu(y, 0.01)
    return y


def _init_weights(model: RNNModel, spec: ModelSpec) -> None:
    """Draw every weight from `spec.seed` with numpy's PCG64, the same on every machine.

    Input and recurrent matrices are scaled by 1/sqrt(fan-in), so each gate's pre-activation has
    a standard deviation near 0.6 and the gates do not saturate, whatever the sizes.
    With `bias: single` the recurrent biases are zero and frozen: one bias per gate, as Keras.
    """
    rng = np.random.default_rng(spec.seed)
    hidden = spec.rnn.hidden_size
    with torch.no_grad():
        for name, param in model.named_parameters():
            shape = tuple(param.shape)
            if name.startswith("embedding"):
                value = rng.standard_normal(shape)
            elif name.startswith("dec_embedding"):
                value = rng.standard_normal(shape)
            elif (name.startswith("rnn.bias_hh") and spec.rnn.bias == "single") or (
                    name.startswith("decoder.bias_hh") and spec.decoder.bias == "single"):
                value = np.zeros(shape)
                param.requires_grad_(False)
            elif name.startswith(("rnn.", "decoder.")):
                cell_hidden = hidden if name.startswith("rnn.") else spec.decoder.hidden_size
                fan_in = shape[1] if ".weight" in name else cell_hidden
                bound = 1.0 / np.sqrt(fan_in)
                value = rng.uniform(-bound, bound, shape)
            else:  # the dense head or the decoder's projection: fan-in is the input width
                head = model.dense if name.startswith("dense.") else model.projection
                bound = 1.0 / np.sqrt(head.in_features)
                value = rng.uniform(-bound, bound, shape)
            param.copy_(torch.from_numpy(value))


def build_torch_model(spec: ModelSpec) -> RNNModel:
    """The reference module in float32 (cast it to `spec.dtype` to run it), in eval mode."""
    memory = spec.rnn.state or spec.generative
    return (MemoryModel(spec) if memory else RNNModel(spec)).eval()


def parameter_count(model: nn.Module) -> int:
    """Trainable parameters (the frozen zero biases of `bias: single` are not parameters)."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)
