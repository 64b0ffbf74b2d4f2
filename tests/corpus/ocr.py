"""CRNN (Shi, Bai and Yao, 2015): a conv stack over a text-line image, its columns read as a sequence
by a deep bidirectional LSTM, per-column class scores for CTC decoding."""
from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from tests.corpus import _torch
from tests.corpus.case import Case, check_written

HEIGHT = 32
CLASSES = 11  # ten digits and the CTC blank


class CRNN(nn.Module):
    def __init__(self, hidden: int = 24) -> None:
        super().__init__()

        def block(cin: int, cout: int) -> list[nn.Module]:
            return [nn.Conv2d(cin, cout, 3, padding=1), nn.BatchNorm2d(cout), nn.ReLU(), nn.MaxPool2d(2)]

        self.cnn = nn.Sequential(*block(1, 8), *block(8, 16))  # [B, 16, H/4, W/4]
        self.rnn = nn.LSTM(16 * HEIGHT // 4, hidden, num_layers=2, bidirectional=True, batch_first=True)
        self.head = nn.Linear(2 * hidden, CLASSES)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        f = self.cnn(image)
        # collapse channels x height into each column's feature vector: [B, W/4, 16 * H/4]
        seq = f.flatten(1, 2).transpose(1, 2)
        y, _ = self.rnn(seq)
        return torch.log_softmax(self.head(y), dim=-1)


def build(out_dir: Path) -> Case:
    """image [batch, 1, 32, width] float32 -> log_probs [batch, width // 4, 11]."""
    module = _torch.seeded(CRNN(), seed=1)
    axes = {"image": {0: "batch", 3: "width"}, "log_probs": {0: "batch", 1: "seq"}}
    path = _torch.export(module, [torch.zeros(2, 1, HEIGHT, 64)], out_dir / "crnn.onnx", ["image"],
                         ["log_probs"], axes, keep_batchnorm=True)
    return check_written(Case(
        path=path, shapes={"image": (2, 1, HEIGHT, 64)}, bind={}, state={},
        ops=frozenset({"Conv", "BatchNormalization", "Relu", "MaxPool", "LSTM", "MatMul", "LogSoftmax"}),
        dtype="float32", reference=_torch.reference(module, ["image"], ["log_probs"])))
