"""A corpus of small recurrent models after public architectures, written by code, as test data for
importers and backends: every file is seeded (the same weights on every run; the scripted ones'
value names may differ between builds in one process), tiny (hidden 16-32, a few channels, so TVM
builds in seconds), opset 17, with symbolic batch and time axes.

    case = build("crnn", tmp_dir)   # writes tmp_dir/crnn.onnx, returns its Case

Each case says how to feed it (`shapes`, `bind`, `int_ranges`), which inputs carry state
(`state`), the op types it must contain, subgraphs included (`ops`), and, where one exists, the
torch module it came from as a function of named arrays (`reference`).
"""
from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from tests.corpus import control_flow, ocr, scan, speech
from tests.corpus.case import Case, graphs, op_types

__all__ = ["NAMES", "Case", "build", "graphs", "op_types"]

_BUILDERS: dict[str, Callable[[Path], Case]] = {
    "crnn": ocr.build,
    "deepspeech2": speech.deepspeech2,
    "kws_stream": speech.kws_stream,
    "if_scalar": control_flow.if_scalar,
    "lstm_in_if": control_flow.lstm_in_if,
    "generate_loop": control_flow.generate_loop,
    "scan_gru": scan.build,
    "float16": speech.float16,
}

NAMES: tuple[str, ...] = tuple(_BUILDERS)


def build(name: str, out_dir: Path) -> Case:
    """Write `out_dir/<name>.onnx` and describe it; checked (onnx full check, promised ops) before
    it is returned."""
    if name not in _BUILDERS:
        raise KeyError(f"no corpus model {name!r}; there are {', '.join(NAMES)}")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    return _BUILDERS[name](out_dir)
