"""Stage 1: what the user brought (a YAML spec, an ONNX file, a TorchScript file) -> a `Model`."""
from __future__ import annotations

from pathlib import Path
from typing import Any

from rnnc.errors import UserError
from rnnc.graphs.model import Arrays, Model, TensorInfo
from rnnc.graphs.spec import ModelSpec, load_spec, parse_spec

__all__ = ["Arrays", "Model", "ModelSpec", "TensorInfo", "load_model", "load_spec", "model_from_source"]


def load_model(path: str | Path, shapes: dict[str, tuple[int, ...]] | None = None,
               bind: dict[str, Any] | None = None, state: dict[str, str] | None = None) -> Model:
    """A spec (.yaml/.yml), an ONNX model (.onnx) or a TorchScript file (anything else torch loads).

    For an imported model: `shapes` gives concrete sizes for inputs whose shapes are symbolic,
    `bind` fixes inputs to constants (`--bind`), `state` pairs state inputs with outputs (`--state`).
    """
    path = Path(path)
    if not path.exists():
        raise UserError(f"{path}: no such file")
    if path.is_dir():
        raise UserError(f"{path}: is a directory, expected a spec (.yaml), an ONNX or a TorchScript file")
    suffix = path.suffix.lower()
    if suffix in (".yaml", ".yml"):
        from rnnc.graphs.from_spec import model_from_spec

        flags = [f for f, v in (("--bind", bind), ("--state", state)) if v]
        if flags:
            raise UserError(f"{', '.join(flags)}: for ONNX and TorchScript files; a spec declares its own inputs")
        return model_from_spec(load_spec(path))
    if suffix == ".onnx":
        from rnnc.graphs.from_onnx import model_from_onnx

        return model_from_onnx(path, shapes, bind, state)
    from rnnc.graphs.from_torchscript import model_from_torchscript

    return model_from_torchscript(path, shapes, bind=bind, state=state)


def model_from_source(source: dict[str, Any], directory: Path) -> Model:
    """Rebuild a compiled model from the `source` record of its manifest (never from artifacts)."""
    kind = source.get("kind")
    if kind == "spec":
        from rnnc.graphs.from_spec import model_from_spec

        return model_from_spec(parse_spec(source["spec"], "manifest spec"))
    if kind in ("onnx", "torchscript"):
        if kind == "onnx":
            from rnnc.graphs.from_onnx import model_from_onnx as rebuild
        else:
            from rnnc.graphs.from_torchscript import model_from_torchscript as rebuild
        from rnnc.graphs.bind import bind_from_record

        options = {"bind": bind_from_record(source.get("bind"))} if source.get("bind") else {}
        options["state"] = source.get("state")
        model = rebuild(directory / source["file"], source.get("shapes"), **options)
        model.name = source.get("name", model.name)  # the copy is named source.*, the model is not
        return model
    raise UserError(f"{directory}/manifest.json: unknown source kind {kind!r}")
