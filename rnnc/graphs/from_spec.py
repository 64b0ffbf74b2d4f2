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
    inputs, outputs = spec_io(spec)
    twin = build_torch_model(spec).double()  # same seed, same weights, float64
    names = [t.name for t in inputs]

    def tensors(arrays: Arrays) -> list[torch.Tensor]:
        out = []
        for name in names:
            x = torch.from_numpy(np.asarray(arrays[name]))
            out.append(x.double() if x.is_floating_point() else x)
        return out

    def reference64(arrays: Arrays) -> Arrays:
        with torch.inference_mode():
            result = twin(*tensors(arrays))
        result = result if isinstance(result, list) else [result]
        return {t.name: r.numpy() for t, r in zip(outputs, result)}

    def teacher64(arrays: Arrays, generated: np.ndarray) -> Arrays:
        """The reference's steps with `generated` fed back in place of its own argmax (verify)."""
        forced = torch.from_numpy(np.asarray(generated, dtype=np.int64))
        with torch.inference_mode():
            args = tensors(arrays)
            if spec.mode == "one_to_many":
                result = twin.generate(args[0], *(args[1:] + [None, None])[:2], forced)
            else:
                result = twin.translate(args[0], forced)
        return {t.name: r.numpy() for t, r in zip(outputs, result)}

    if spec.mode == "one_to_many":  # one input step: the shapes' seq is the steps generated
        shapes = [(b, spec.steps) for b in spec.shapes.batch_sizes]
    else:
        shapes = [(b, t) for b in spec.shapes.batch_sizes for t in spec.shapes.seq_lens]
    lstm = spec.rnn.cell == "lstm"
    return Model(
        name=spec.name,
        inputs=inputs,
        outputs=outputs,
        onnx=onnx_model,
        reference64=reference64,
        shapes=shapes,
        source={"kind": "spec", "spec": spec.normalised()},
        torch_module=module,
        spec=spec,
        dtype=spec.dtype,
        state={"h0": "h_n", "c0": "c_n"} if spec.rnn.state and lstm else ({"h0": "h_n"} if spec.rnn.state else {}),
        teacher64=teacher64 if spec.generative and "generated" in [t.name for t in outputs] else None,
    )


def spec_io(spec: ModelSpec) -> tuple[list[TensorInfo], list[TensorInfo]]:
    """The inputs and outputs every artifact of a spec has, by mode (SPEC section 1)."""
    rnn = spec.rnn
    step = ("batch",) if spec.mode == "one_to_many" else ("batch", "seq")
    float_dtype = "float16" if spec.dtype == "float16" else "float32"  # numpy has no bfloat16: cast by the backend
    if spec.input.type == "tokens":
        inputs = [TensorInfo("tokens", "int64", step, high=spec.input.vocab_size)]
    else:
        inputs = [TensorInfo("features", float_dtype, step + (spec.input.features,))]
    state_dims = (rnn.num_layers, "batch", rnn.hidden_size)
    state = [TensorInfo(n, float_dtype, state_dims) for n in ("h0", "c0")[: 1 + (rnn.cell == "lstm")]]
    if rnn.state:
        inputs += state
    if spec.mode == "encoder_decoder":
        outputs = [TensorInfo("output", "float32", ("batch", spec.steps, spec.decoder.vocab_size)),
                   TensorInfo("generated", "int64", ("batch", spec.steps))]
    elif spec.mode == "one_to_many":
        outputs = [TensorInfo("output", "float32", ("batch", spec.steps, spec.output.dense.units))]
        if spec.input.type == "tokens":
            outputs.append(TensorInfo("generated", "int64", ("batch", spec.steps)))
    else:
        width = spec.output.dense.units if spec.output.dense else rnn.hidden_size * rnn.directions
        dims = ("batch", "seq", width) if spec.mode == "many_to_many" else ("batch", width)
        outputs = [TensorInfo("output", "float32", dims)]
    if rnn.state:
        outputs += [TensorInfo(f"{t.name[0]}_n", "float32", state_dims) for t in state]
    return inputs, outputs
