"""Speech models: DeepSpeech2 (offline CTC), a streaming keyword spotter, and a float16 conv+GRU."""
from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from tests.corpus import _torch
from tests.corpus.case import Case, check_written

FEATURES = 40  # log-mel bins per frame
BATCH_TIME = {0: "batch", 1: "time"}


class BatchRNN(nn.Module):
    """One DeepSpeech2 recurrent layer, after deepspeech.pytorch: sequence-wise BatchNorm on the
    layer's input (all but the first layer), a bidirectional GRU, the two directions summed.
    BatchNorm1d over [B, F, T] pools batch and time, as deepspeech.pytorch's [B*T, F] view does, and
    without a Reshape whose -1 leaves the exported output's feature dim unknown."""

    def __init__(self, size_in: int, hidden: int, batch_norm: bool) -> None:
        super().__init__()
        self.norm = nn.BatchNorm1d(size_in) if batch_norm else None
        self.rnn = nn.GRU(size_in, hidden, bidirectional=True, batch_first=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.norm is not None:
            x = self.norm(x.transpose(1, 2)).transpose(1, 2)
        y, _ = self.rnn(x)
        b, t, _ = y.shape
        return y.view(b, t, 2, -1).sum(2)


class DeepSpeech2(nn.Module):
    def __init__(self, hidden: int = 24, classes: int = 29) -> None:
        super().__init__()
        # 2-D convolutions over (frequency, time), DS2's strides: time halved once, frequency twice
        self.conv = nn.Sequential(
            nn.Conv2d(1, 8, (11, 5), stride=(2, 2), padding=(5, 2)), nn.BatchNorm2d(8), nn.Hardtanh(0, 20),
            nn.Conv2d(8, 8, (7, 5), stride=(2, 1), padding=(3, 2)), nn.BatchNorm2d(8), nn.Hardtanh(0, 20))
        size = 8 * FEATURES // 4
        self.rnns = nn.Sequential(BatchRNN(size, hidden, False), BatchRNN(hidden, hidden, True),
                                  BatchRNN(hidden, hidden, True))
        self.head_norm = nn.BatchNorm1d(hidden)
        self.head = nn.Linear(hidden, classes, bias=False)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        x = self.conv(features.unsqueeze(1).transpose(2, 3))  # [B, 8, F/4, ceil(T/2)]
        x = self.rnns(x.flatten(1, 2).transpose(1, 2))  # [B, ceil(T/2), H]
        x = self.head(self.head_norm(x.transpose(1, 2)).transpose(1, 2))
        return torch.log_softmax(x, dim=-1)


class KeywordSpotter(nn.Module):
    """A streaming KWS model (conv front-end + LSTM, as in Hello Edge's CRNN variant): each call
    takes one chunk of frames and the LSTM state the previous chunk left. The convolution sees
    each chunk alone (its padding is zeros at the chunk's edges), only the LSTM state streams."""

    def __init__(self, hidden: int = 24, keywords: int = 12) -> None:
        super().__init__()
        self.conv = nn.Conv1d(FEATURES, 16, 3, padding=1)
        self.rnn = nn.LSTM(16, hidden, batch_first=True)
        self.head = nn.Linear(hidden, keywords)

    def forward(self, features: torch.Tensor, h0: torch.Tensor, c0: torch.Tensor):
        x = torch.relu(self.conv(features.transpose(1, 2))).transpose(1, 2)
        y, (hn, cn) = self.rnn(x, (h0, c0))
        return self.head(y), hn, cn


class HalfConvGRU(nn.Module):
    def __init__(self, features: int = 20, hidden: int = 24, classes: int = 6) -> None:
        super().__init__()
        self.conv = nn.Conv1d(features, 16, 3, padding=1)
        self.rnn = nn.GRU(16, hidden, batch_first=True)
        self.head = nn.Linear(hidden, classes)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.conv(features.transpose(1, 2))).transpose(1, 2)
        y, _ = self.rnn(x)
        return self.head(y)


def deepspeech2(out_dir: Path) -> Case:
    """features [batch, time, 40] float32 -> log_probs [batch, frames, 29], frames = ceil(time / 2)."""
    module = _torch.seeded(DeepSpeech2(), seed=2)
    path = _torch.export(module, [torch.zeros(2, 20, FEATURES)], out_dir / "deepspeech2.onnx", ["features"],
                         ["log_probs"], {"features": BATCH_TIME, "log_probs": {0: "batch", 1: "frames"}},
                         keep_batchnorm=True)
    return check_written(Case(
        path=path, shapes={"features": (2, 20, FEATURES)}, bind={}, state={},
        ops=frozenset({"Conv", "BatchNormalization", "Clip", "GRU", "ReduceSum", "MatMul", "LogSoftmax"}),
        dtype="float32", reference=_torch.reference(module, ["features"], ["log_probs"])))


def kws_stream(out_dir: Path) -> Case:
    """features [batch, time, 40], h0 and c0 [1, batch, 24] float32 -> logits [batch, time, 12],
    hn and cn [1, batch, 24]: the state pairs h0->hn, c0->cn."""
    module = _torch.seeded(KeywordSpotter(), seed=3)
    names, outs = ["features", "h0", "c0"], ["logits", "hn", "cn"]
    state_axes = {1: "batch"}
    path = _torch.export(module, [torch.zeros(2, 10, FEATURES), torch.zeros(1, 2, 24), torch.zeros(1, 2, 24)],
                         out_dir / "kws_stream.onnx", names, outs,
                         {"features": BATCH_TIME, "logits": BATCH_TIME, "h0": state_axes, "c0": state_axes,
                          "hn": state_axes, "cn": state_axes})
    return check_written(Case(
        path=path, shapes={"features": (2, 10, FEATURES), "h0": (1, 2, 24), "c0": (1, 2, 24)}, bind={},
        state={"h0": "hn", "c0": "cn"}, ops=frozenset({"Conv", "Relu", "LSTM", "MatMul"}), dtype="float32",
        reference=_torch.reference(module, names, outs)))


def float16(out_dir: Path) -> Case:
    """features [batch, time, 20] float16 -> logits [batch, time, 6] float16; every initializer float16."""
    module = _torch.seeded(HalfConvGRU(), seed=8).half()
    path = _torch.export(module, [torch.zeros(2, 10, 20, dtype=torch.float16)], out_dir / "float16.onnx",
                         ["features"], ["logits"], {"features": BATCH_TIME, "logits": BATCH_TIME})
    return check_written(Case(
        path=path, shapes={"features": (2, 10, 20)}, bind={}, state={},
        ops=frozenset({"Conv", "Relu", "GRU", "MatMul"}), dtype="float16",
        reference=_torch.reference(module, ["features"], ["logits"])))
