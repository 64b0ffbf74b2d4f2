"""The PyTorch reference module for every model a spec can describe, with seeded weights.

The module is built from torch.nn's own RNN/LSTM/GRU so that what users know from PyTorch is
what they get; rnnc's other artifacts (TorchScript, ONNX, TVM) are derived from its weights.
"""
from __future__ import annotations

import numpy as np
import torch
from torch import nn

from rnnc.graphs.spec import ModelSpec

_CELLS = {"rnn": nn.RNN, "lstm": nn.LSTM, "gru": nn.GRU}
TORCH_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


class RNNModel(nn.Module):
    """Embedding or features -> stacked RNN -> (all steps | top layer's h_n) -> optional dense."""

    # TorchScript treats these as constants, so the branches not taken are never compiled
    __constants__ = ["is_lstm", "many_to_one", "directions", "hidden_size", "activation", "has_dense"]

    def __init__(self, spec: ModelSpec) -> None:
        super().__init__()
        rnn = spec.rnn
        if spec.input.type == "tokens":
            self.embedding = nn.Embedding(spec.input.vocab_size, spec.input.embedding_dim)
            input_size = spec.input.embedding_dim
        else:
            self.embedding = None
            input_size = spec.input.features
        kwargs = dict(
            input_size=input_size,
            hidden_size=rnn.hidden_size,
            num_layers=rnn.num_layers,
            bidirectional=rnn.bidirectional,
            bias=rnn.bias is not False,
            batch_first=True,
        )
        if rnn.cell == "rnn":
            kwargs["nonlinearity"] = rnn.activation
        self.rnn = _CELLS[rnn.cell](**kwargs)
        width = rnn.hidden_size * rnn.directions
        dense = spec.output.dense
        self.dense = nn.Linear(width, dense.units) if dense else None
        self.is_lstm = rnn.cell == "lstm"
        self.many_to_one = spec.output.mode == "many_to_one"
        self.directions = rnn.directions
        self.hidden_size = rnn.hidden_size
        self.activation = dense.activation if dense else "none"
        self.has_dense = dense is not None
        _init_weights(self, spec)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.embedding is not None:
            x = self.embedding(x)
        if self.is_lstm:
            y, (h_n, _) = self.rnn(x)
        else:
            y, h_n = self.rnn(x)
        if self.many_to_one:
            # h_n of the top layer: forward state after the last step, backward after the first
            top = h_n[h_n.shape[0] - self.directions:]
            y = top.transpose(0, 1).reshape(x.shape[0], self.directions * self.hidden_size)
        if self.dense is not None:
            y = _activate(self.dense(y), self.activation)
        return y


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
            elif name.startswith("rnn.bias_hh") and spec.rnn.bias == "single":
                value = np.zeros(shape)
                param.requires_grad_(False)
            elif name.startswith("rnn."):
                fan_in = shape[1] if name.startswith("rnn.weight") else hidden
                bound = 1.0 / np.sqrt(fan_in)
                value = rng.uniform(-bound, bound, shape)
            else:  # the dense head
                bound = 1.0 / np.sqrt(model.dense.in_features)
                value = rng.uniform(-bound, bound, shape)
            param.copy_(torch.from_numpy(value))


def build_torch_model(spec: ModelSpec) -> RNNModel:
    """The reference module in float32 (cast it to `spec.dtype` to run it), in eval mode."""
    return RNNModel(spec).eval()


def parameter_count(model: nn.Module) -> int:
    """Trainable parameters (the frozen zero biases of `bias: single` are not parameters)."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)
