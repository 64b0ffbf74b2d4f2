"""Scripted models whose ONNX graphs hold control flow: an If on a scalar input (outside and around a
recurrent layer) and a greedy generation Loop. torch.jit.script is what makes torch.onnx emit If and
Loop; tracing would bake in the branch taken and unroll the loop."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import nn

from tests.corpus import _torch
from tests.corpus.case import Case, check_written

BATCH_TIME = {0: "batch", 1: "time"}


class SampleRateVAD(nn.Module):
    """Silero VAD's interface: audio features and a sample rate `sr`, the front-end chosen by `sr`
    (a wider kernel at 16 kHz), one LSTM after the branch, a per-frame speech probability."""

    def __init__(self, features: int = 16, hidden: int = 16) -> None:
        super().__init__()
        self.conv16k = nn.Conv1d(features, 16, 5, padding=2)
        self.conv8k = nn.Conv1d(features, 16, 3, padding=1)
        self.rnn = nn.LSTM(16, hidden, batch_first=True)
        self.head = nn.Linear(hidden, 1)

    def forward(self, features: torch.Tensor, sr: torch.Tensor) -> torch.Tensor:
        x = features.transpose(1, 2)
        if bool(sr == 16000):
            x = torch.relu(self.conv16k(x))
        else:
            x = torch.tanh(self.conv8k(x)) * 2.0
        y, _ = self.rnn(x.transpose(1, 2))
        return torch.sigmoid(self.head(y)).squeeze(-1)


class OptionalContext(nn.Module):
    """An encoder whose LSTM runs only when `use_rnn` > 0 (otherwise a per-frame projection), so the
    recurrent node lies inside the If's then_branch."""

    def __init__(self, features: int = 12, hidden: int = 16, classes: int = 5) -> None:
        super().__init__()
        self.rnn = nn.LSTM(features, hidden, batch_first=True)
        self.proj = nn.Linear(features, hidden)
        self.head = nn.Linear(hidden, classes)

    def forward(self, features: torch.Tensor, use_rnn: torch.Tensor) -> torch.Tensor:
        if bool(use_rnn > 0):
            y, _ = self.rnn(features)
        else:
            y = torch.tanh(self.proj(features))
        return self.head(y)


class GreedyDecoder(nn.Module):
    """Greedy decoding: each step embeds the previous token, runs the LSTM one step (nn.LSTM on a
    length-1 sequence, so the Loop body holds an ONNX LSTM node), projects to the vocabulary and
    takes the argmax as the next token."""

    def __init__(self, vocab: int = 12, embedding: int = 8, hidden: int = 16) -> None:
        super().__init__()
        self.embedding = nn.Embedding(vocab, embedding)
        self.rnn = nn.LSTM(embedding, hidden)
        self.head = nn.Linear(hidden, vocab)

    def forward(self, start_token: torch.Tensor, h0: torch.Tensor, c0: torch.Tensor, steps: torch.Tensor):
        token, h, c = start_token, h0, c0
        tokens: list[torch.Tensor] = []
        scores: list[torch.Tensor] = []
        for _ in range(int(steps)):
            y, (h, c) = self.rnn(self.embedding(token).unsqueeze(0), (h, c))  # [1, B, H]
            logits = self.head(y[0])
            token = torch.argmax(logits, dim=-1)
            tokens.append(token)
            scores.append(logits)
        return torch.stack(tokens, 1), torch.stack(scores, 1)


def if_scalar(out_dir: Path) -> Case:
    """features [batch, time, 16] float32, sr int64 [] -> speech_prob [batch, time]; If at top level,
    a Conv in each branch, the LSTM after it."""
    module = _torch.script(_torch.seeded(SampleRateVAD(), seed=4))
    names, outs = ["features", "sr"], ["speech_prob"]
    path = _torch.export(module, [torch.zeros(2, 10, 16), torch.tensor(16000)], out_dir / "if_scalar.onnx",
                         names, outs, {"features": BATCH_TIME, "speech_prob": BATCH_TIME})
    return check_written(Case(
        path=path, shapes={"features": (2, 10, 16)}, bind={"sr": np.array(16000, np.int64)}, state={},
        ops=frozenset({"If", "Equal", "Conv", "LSTM", "Sigmoid"}), dtype="float32",
        int_ranges={"sr": range(8000, 16001, 8000)}, reference=_torch.reference(module, names, outs)),
        where={"Conv": "If"})


def lstm_in_if(out_dir: Path) -> Case:
    """features [batch, time, 12] float32, use_rnn int64 [] -> output [batch, time, 5]; the LSTM only
    inside the If's then_branch."""
    module = _torch.script(_torch.seeded(OptionalContext(), seed=5))
    names, outs = ["features", "use_rnn"], ["output"]
    path = _torch.export(module, [torch.zeros(2, 10, 12), torch.tensor(1)], out_dir / "lstm_in_if.onnx",
                         names, outs, {"features": BATCH_TIME, "output": BATCH_TIME})
    return check_written(Case(
        path=path, shapes={"features": (2, 10, 12)}, bind={"use_rnn": np.array(1, np.int64)}, state={},
        ops=frozenset({"If", "LSTM", "Tanh"}), dtype="float32", int_ranges={"use_rnn": range(0, 2)},
        reference=_torch.reference(module, names, outs)), where={"LSTM": "If"})


def generate_loop(out_dir: Path) -> Case:
    """start_token int64 [batch], h0 and c0 [1, batch, 16] float32, steps int64 [] ->
    generated int64 [batch, steps], logits [batch, steps, 12]; the LSTM, Gemm and ArgMax inside the
    Loop body, the per-step outputs gathered with Sequence ops."""
    module = _torch.script(_torch.seeded(GreedyDecoder(), seed=6))
    names, outs = ["start_token", "h0", "c0", "steps"], ["generated", "logits"]
    state_axes = {1: "batch"}
    path = _torch.export(module, [torch.tensor([1, 2]), torch.zeros(1, 2, 16), torch.zeros(1, 2, 16),
                                  torch.tensor(6)], out_dir / "generate_loop.onnx", names, outs,
                         {"start_token": {0: "batch"}, "h0": state_axes, "c0": state_axes,
                          "generated": {0: "batch", 1: "steps"}, "logits": {0: "batch", 1: "steps"}})
    return check_written(Case(
        path=path, shapes={"start_token": (2,), "h0": (1, 2, 16), "c0": (1, 2, 16)},
        bind={"steps": np.array(6, np.int64)}, state={},
        ops=frozenset({"Loop", "LSTM", "Gather", "Gemm", "ArgMax", "SequenceInsert", "ConcatFromSequence"}),
        dtype="float32", int_ranges={"start_token": range(12), "steps": range(1, 8)},
        reference=_torch.reference(module, names, outs)), where={"LSTM": "Loop", "ArgMax": "Loop"})
