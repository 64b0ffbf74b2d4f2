"""rnnc's own lowering of recurrent networks to Apache TVM (the `tvm` backend's compiler).

- `spec`: what shapes a layer's code (`LayerSpec`), the tile defaults (`Tuning`), the kernel signature;
- `kernels` (with `cell`, the gate arithmetic of one row): the CPU TIR of one LSTM/GRU/RNN layer;
  `dense`: the head; `gemm`: the register-tiled GEMM both use; `emit`: how all of them write TVMScript;
- `quant`: W and R below float32 (bf16; int8 on AVX512-VNNI or widened), packing and the TIR reading them;
- `cuda`: the same layers as GPU TIR (cross-compiled where there is no GPU);
- `lower`: ONNX graph -> Relax module (recurrent nodes to the kernels of the target kind, the rest via `ops`);
- `target`: the host CPU target and ISA, TVM's thread pool, CUDA availability;
- `tune`: the `--tune` search of tile sizes, cached in a directory the caller names.
"""
