"""A `Model` from a YAML spec: the seeded PyTorch module, its ONNX graph and its float64 twin."""
from __future__ import annotations

import numpy as np
import torch

from rnnc.graphs.limits import check_limits
from rnnc.graphs.onnx_export import export_onnx
from rnnc.graphs.model import Arrays, Model, TensorInfo
from rnnc.graphs.spec import ModelSpec
from rnnc.graphs.torch_model import TORCH_DTYPES, build_torch_model


def model_from_spec(spec: ModelSpec) -> Model:
    """Everything later stages need, rebuilt from the spec alone (the seed fixes the weights)."""
    check_limits(spec)  # before any allocation: a spec too big for this machine is refused
    module = build_torch_model(spec)
    onnx_model = export_onnx(module, spec)  # the float32 IR, whatever the spec's dtype
    module = module.to(TORCH_DTYPES[spec.dtype])
    if spec.input.type == "tokens":
        inp = TensorInfo("tokens", "int64", ("batch", "seq"), high=spec.input.vocab_size)
    else:  # numpy has no bfloat16: such features come as float32 and are cast by the backend
        feature_dtype = "float16" if spec.dtype == "float16" else "float32"
        inp = TensorInfo("features", feature_dtype, ("batch", "seq", spec.input.features))
    width = spec.output.dense.units if spec.output.dense else spec.rnn.hidden_size * spec.rnn.directions
    dims = ("batch", "seq", width) if spec.output.mode == "many_to_many" else ("batch", width)
    twin = build_torch_model(spec).double()  # same seed, same weights, float64

    def reference64(arrays: Arrays) -> Arrays:
        x = torch.from_numpy(np.asarray(arrays[inp.name]))
        if x.is_floating_point():
            x = x.double()
        with torch.inference_mode():
            return {"output": twin(x).numpy()}

    shapes = [(b, t) for b in spec.shapes.batch_sizes for t in spec.shapes.seq_lens]
    return Model(
        name=spec.name,
        inputs=[inp],
        outputs=[TensorInfo("output", "float32", dims)],
        onnx=onnx_model,
        reference64=reference64,
        shapes=shapes,
        source={"kind": "spec", "spec": spec.normalised()},
        torch_module=module,
        spec=spec,
        dtype=spec.dtype,
    )
