"""rnnc's own lowering of recurrent networks to Apache TVM (the `tvm` backend's compiler).

- `kernels`: the CPU TIR of one LSTM/GRU/RNN layer, generated per shape; `dense`: the head;
- `cuda`: the same layers as GPU TIR (cross-compiled where there is no GPU);
- `lower`: ONNX graph -> Relax module (recurrent nodes to the kernels, the rest via `ops`);
- `target`: the host CPU target and ISA, the thread count, CUDA availability;
- `tune`: the `--tune` search of tile sizes, cached on disk.
"""
