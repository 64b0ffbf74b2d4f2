"""The TIR layer kernels against a float64 numpy transcription of the ONNX operator pages."""
from __future__ import annotations

import numpy as np
import pytest

import tvm  # noqa: E402 - a hard dependency of rnnc: never skipped

from rnnc.compiler.tvm import kernels  # noqa: E402
from rnnc.compiler.tvm import dense  # noqa: E402
from rnnc.compiler.tvm.dense import DenseSpec  # noqa: E402
from rnnc.compiler.tvm.kernels import LayerSpec  # noqa: E402
from rnnc.compiler.tvm.target import host_target, set_threads  # noqa: E402

TOL = 1e-5  # relative to max |reference|, float32 kernels against float64

_F = {"Sigmoid": lambda x: 1 / (1 + np.exp(-x)), "Tanh": np.tanh, "Relu": lambda x: np.maximum(x, 0)}
_DEFAULT = {"lstm": ["Sigmoid", "Tanh", "Tanh"], "gru": ["Sigmoid", "Tanh"], "rnn": ["Tanh"]}


def onnx_rnn(cell, X, W, R, B, dirs, acts=None, h0=None, c0=None, clip=None, P=None, lbr=1, lens=None):
    """ONNX LSTM/GRU/RNN in float64, layout 0: Y [T,D,B,H], Y_h, Y_c [D,B,H]."""
    if lens is not None:  # each row on its own, for its own length; Y is 0 past it
        T, batch, D, H = X.shape[0], X.shape[1], len(dirs), R.shape[-1]
        Y, Yh, Yc = np.zeros((T, D, batch, H)), np.zeros((D, batch, H)), np.zeros((D, batch, H))
        for b, n in enumerate(lens):
            hb = None if h0 is None else h0[:, b:b + 1]
            cb = None if c0 is None else c0[:, b:b + 1]
            if n == 0:
                Yh[:, b] = 0 if hb is None else hb[:, 0]
                Yc[:, b] = 0 if cb is None else cb[:, 0]
                continue
            y, yh, yc = onnx_rnn(cell, X[:n, b:b + 1], W, R, B, dirs, acts, hb, cb, clip, P, lbr)
            Y[:n, :, b], Yh[:, b], Yc[:, b] = y[:, :, 0], yh[:, 0], yc[:, 0]
        return Y, Yh, Yc
    T, batch, _ = X.shape
    D, H, G = len(dirs), R.shape[-1], {"lstm": 4, "gru": 3, "rnn": 1}[cell]
    B = np.zeros((D, 2 * G * H)) if B is None else B
    acts = list(acts or _DEFAULT[cell] * D)
    per = len(acts) // D
    cl = (lambda x: np.clip(x, -clip, clip)) if clip else (lambda x: x)
    Y, Yh, Yc = np.zeros((T, D, batch, H)), np.zeros((D, batch, H)), np.zeros((D, batch, H))
    for d, direction in enumerate(dirs):
        f, g, h_ = ([_F[a] for a in acts[d * per:(d + 1) * per]] + [None, None])[:3]
        H_t = np.zeros((batch, H)) if h0 is None else h0[d].copy()
        C_t = np.zeros((batch, H)) if c0 is None else c0[d].copy()
        Wb, Rb = B[d, :G * H], B[d, G * H:]
        for t in (range(T) if direction == "forward" else range(T - 1, -1, -1)):
            if cell == "lstm":
                i, o, fg, c = np.split(X[t] @ W[d].T + H_t @ R[d].T + Wb + Rb, 4, axis=1)
                pi, po, pf = np.split(P[d], 3) if P is not None else (0, 0, 0)
                C_t = f(cl(fg + pf * C_t)) * C_t + f(cl(i + pi * C_t)) * g(cl(c))
                H_t = f(cl(o + po * C_t)) * h_(C_t)
            elif cell == "gru":
                xw, hr = X[t] @ W[d].T + Wb, H_t @ R[d].T + Rb
                z = f(cl(xw[:, :H] + hr[:, :H]))
                r = f(cl(xw[:, H:2 * H] + hr[:, H:2 * H]))
                if lbr:
                    n = g(cl(xw[:, 2 * H:] + r * hr[:, 2 * H:]))
                else:
                    n = g(cl(xw[:, 2 * H:] + (r * H_t) @ R[d, 2 * H:].T + Rb[2 * H:]))
                H_t = (1 - z) * n + z * H_t
            else:
                H_t = f(cl(X[t] @ W[d].T + H_t @ R[d].T + Wb + Rb))
            Y[t, d] = H_t
        Yh[d], Yc[d] = H_t, C_t
    return Y, Yh, Yc


def _run_layer(spec: LayerSpec, T: int, batch: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    D, G, H, I = len(spec.directions), spec.gates, spec.hidden, spec.input_size
    s = 1 / np.sqrt(H)
    W, R, B = rng.uniform(-s, s, (D, G * H, I)), rng.uniform(-s, s, (D, G * H, H)), rng.uniform(-s, s, (D, 2 * G * H))
    X = rng.standard_normal((T, batch, I)) * 2
    h0 = rng.standard_normal((D, batch, H)) if spec.initial_h else None
    c0 = rng.standard_normal((D, batch, H)) if spec.initial_c else None
    P = rng.uniform(-1, 1, (D, 3 * H)) if spec.peepholes else None
    lens = rng.integers(0, T + 1, batch).astype(np.int32) if spec.seq_lens else None
    if lens is not None:
        lens[0] = T  # one full row, and the others anywhere from 0 to T
    set_threads()
    lib = tvm.compile(tvm.IRModule({"main": kernels.layer_primfunc(spec)}), target=tvm.target.Target(host_target()))
    packed = kernels.pack_weights(spec, W, R, B)
    xin = X.transpose(1, 0, 2) if spec.x_layout == "bti" else X
    args = [xin] + [packed[k] for k in ("w", "r", "bias", "rbn") if k in packed]
    args += [a.astype(np.float32) for a in (h0, c0) if a is not None]
    args += [kernels.pack_peepholes(spec, P)] if P is not None else []
    outs = []
    if spec.y_layout:
        outs.append(np.zeros({"tdbh": (T, D, batch, H), "tbdh": (T, batch, D * H), "btdh": (batch, T, D * H),
                              "btd_h": (batch, T, D, H)}[spec.y_layout], np.float32))
    for lay in (spec.yh_layout, spec.yc_layout):
        if lay:
            outs.append(np.zeros({"dbh": (D, batch, H), "bdh": (batch, D * H), "bd_h": (batch, D, H)}[lay], np.float32))
    dev = [tvm.runtime.tensor(np.ascontiguousarray(a, dtype=np.float32)) for a in args + outs]
    if lens is not None:
        dev.insert(len(args), tvm.runtime.tensor(lens))
    lib["main"](*dev)
    got = [t.numpy() for t in dev[len(args) + (lens is not None):]]
    Y, Yh, Yc = onnx_rnn(spec.cell, X, W, R, B, spec.directions, spec.activations or None, h0, c0, spec.clip, P,
                         lbr=spec.linear_before_reset, lens=lens)
    want = []
    if spec.y_layout:
        want.append({"tdbh": Y, "tbdh": Y.transpose(0, 2, 1, 3).reshape(T, batch, D * H),
                     "btdh": Y.transpose(2, 0, 1, 3).reshape(batch, T, D * H), "btd_h": Y.transpose(2, 0, 1, 3)}[spec.y_layout])
    for lay, ref in ((spec.yh_layout, Yh), (spec.yc_layout, Yc)):
        if lay:
            want.append({"dbh": ref, "bdh": ref.transpose(1, 0, 2).reshape(batch, D * H), "bd_h": ref.transpose(1, 0, 2)}[lay])
    return got, want


CASES = [
    # cell, I, H, directions, extra spec fields, T, batch; serial_below=0: the parallel step always,
    # 1 << 30: the serial one always (the default picks by batch x step size at run time)
    ("lstm", 7, 16, ("forward",), dict(yc_layout="dbh", serial_below=0), 6, 5),  # a 4-row tile + 1
    ("lstm", 5, 20, ("forward", "reverse"), dict(x_layout="bti", y_layout="tbdh", yh_layout="bdh"), 4, 3),
    ("lstm", 6, 12, ("reverse",), dict(initial_h=True, initial_c=True, clip=0.7, yc_layout="bd_h", y_layout="btd_h",
                                       serial_below=0, batch_tile=2), 5, 2),
    ("gru", 9, 33, ("forward", "reverse"), dict(y_layout="btdh", serial_below=0), 7, 6),
    ("gru", 4, 16, ("reverse",), dict(initial_h=True, batch_tile=2, serial_below=1 << 30), 1, 3),
    ("rnn", 8, 17, ("forward", "reverse"), dict(activations=("Relu", "Relu"), serial_below=0, batch_tile=6), 5, 7),
    ("rnn", 8, 16, ("forward",), dict(gemm_rows=3, batch_tile=1, serial_below=1 << 30), 9, 2),
    ("lstm", 4, 16, ("forward",), dict(activations=("Sigmoid", "Relu", "Tanh"), batch_tile=1), 3, 1),
    ("lstm", 3, 18, ("forward", "reverse"), dict(peepholes=True, initial_c=True, yc_layout="dbh", serial_below=0, batch_tile=2), 4, 2),
    ("gru", 5, 20, ("forward", "reverse"), dict(linear_before_reset=False, initial_h=True, serial_below=0,
                                                batch_tile=2), 5, 6),
    ("gru", 5, 16, ("reverse",), dict(linear_before_reset=False, clip=0.9, serial_below=1 << 30), 4, 3),
    ("lstm", 4, 20, ("forward", "reverse"), dict(seq_lens=True, initial_h=True, yc_layout="dbh", serial_below=0,
                                                 batch_tile=3), 6, 7),
    ("gru", 4, 16, ("reverse",), dict(seq_lens=True, linear_before_reset=False, y_layout="btdh", batch_tile=2), 5, 4),
    ("rnn", 4, 16, ("forward",), dict(seq_lens=True, batch_tile=2, serial_below=1 << 30), 5, 3)]


@pytest.mark.parametrize("cell,I,H,dirs,extra,T,batch", CASES)
def test_layer_matches_float64(cell, I, H, dirs, extra, T, batch):
    spec = LayerSpec(cell, I, H, dirs, **extra)
    got, want = _run_layer(spec, T, batch)
    assert len(got) == len(want) > 0
    for g, w in zip(got, want):
        assert g.shape == w.shape
        err = np.abs(g - w).max() / np.abs(w).max()
        assert err <= TOL, f"relative error {err:.2e} (worst at {np.unravel_index(np.abs(g - w).argmax(), g.shape)})"


def test_one_kernel_serves_every_batch_and_length():
    """Batch and T are symbolic: the same compiled function runs shapes it never saw."""
    spec = LayerSpec("lstm", 6, 16, ("forward", "reverse"), yc_layout="dbh")
    rng = np.random.default_rng(3)
    W, R, B = rng.uniform(-.3, .3, (2, 64, 6)), rng.uniform(-.3, .3, (2, 64, 16)), rng.uniform(-.3, .3, (2, 128))
    lib = tvm.compile(tvm.IRModule({"main": kernels.layer_primfunc(spec)}), target=tvm.target.Target(host_target()))
    p = kernels.pack_weights(spec, W, R, B)
    for T, batch in ((1, 1), (37, 3), (2, 9)):
        X = rng.standard_normal((T, batch, 6))
        outs = [np.zeros(s, np.float32) for s in ((T, 2, batch, 16), (2, batch, 16), (2, batch, 16))]
        dev = [tvm.runtime.tensor(np.ascontiguousarray(a, dtype=np.float32)) for a in [X, p["w"], p["r"], p["bias"]] + outs]
        lib["main"](*dev)
        for got, want in zip(dev[4:], onnx_rnn("lstm", X, W, R, B, ("forward", "reverse"))):
            assert np.abs(got.numpy() - want).max() / np.abs(want).max() <= TOL


def test_source_is_flat_in_T():
    """The time loop is a loop: the generated code does not mention any sequence length."""
    src = kernels.layer_source(LayerSpec("gru", 8, 32, ("forward",)))
    assert "for t in T.serial(seq)" in src and "pragma_parallel_launch_point" in src


@pytest.mark.parametrize("act,n", [(None, 16), ("Sigmoid", 5), ("LeakyRelu", 21), ("Tanh", 3)])
def test_dense_matches_float64(act, n):
    rng = np.random.default_rng(1)
    spec = DenseSpec(11, n, act, 0.01)
    w, b = rng.standard_normal((11, n)), rng.standard_normal(n)
    x = rng.standard_normal((7, 11))
    lib = tvm.compile(tvm.IRModule({"main": dense.dense_primfunc(spec)}), target=tvm.target.Target(host_target()))
    wp, bp = dense.pack_dense(spec, w, b)
    dev = [tvm.runtime.tensor(np.ascontiguousarray(a, dtype=np.float32)) for a in (x, wp, bp, np.zeros((7, n)))]
    lib["main"](*dev)
    z = x @ w + b
    want = {None: z, "Sigmoid": 1 / (1 + np.exp(-z)), "Tanh": np.tanh(z), "LeakyRelu": np.where(z < 0, 0.01 * z, z)}[act]
    assert np.abs(dev[3].numpy() - want).max() / np.abs(want).max() <= TOL


def test_packing_keeps_padding_zero():
    spec = LayerSpec("gru", 3, 20, ("forward",))
    rng = np.random.default_rng(0)
    p = kernels.pack_weights(spec, rng.standard_normal((1, 60, 3)), rng.standard_normal((1, 60, 20)), rng.standard_normal((1, 120)))
    assert p["w"].shape == (1, 6, 3, 16) and p["r"].shape == (1, 2, 32, 3, 16)
    assert not p["r"][:, :, 20:].any()  # padded rows of R: padded units never feed real ones
    assert not p["r"][0, 1, :, :, 4:].any() and not p["bias"][0].reshape(2, 3, 16)[1, :, 4:].any()


@pytest.mark.parametrize("cell,dirs,extra", [
    ("lstm", ("forward", "reverse"), dict(y_layout="btdh", yc_layout="dbh", initial_h=True, peepholes=True)),
    ("gru", ("reverse",), dict(x_layout="bti", yh_layout="bdh", clip=0.8)),
    ("rnn", ("forward",), dict(activations=("Relu",), y_layout="tbdh")),
    ("gru", ("forward", "reverse"), dict(linear_before_reset=False, y_layout="tdbh", initial_h=True)),
])
def test_cuda_kernel_logic_on_cpu(cell, dirs, extra):
    """No GPU here: the CUDA layer's TIR with its thread bindings made serial loops runs on the CPU,
    which checks its indexing and cell arithmetic against float64 (not its speed, nor CUDA itself)."""
    from rnnc.compiler.tvm import cuda

    spec = LayerSpec(cell, 5, 130, dirs, **extra)  # 130 units: two thread blocks, the second partial
    src = cuda.layer_source(spec, "main")
    src = src.replace('"tirx.is_scheduled": True', "").replace(', scope="local"', "")
    import re

    src = re.sub(r'T\.thread_binding\(([^,]+), thread="[a-zA-Z.]+"\)', r"T.serial(\1)", src)
    lib = tvm.compile(tvm.IRModule({"main": tvm.script.from_source(src)}), target=tvm.target.Target(host_target()))
    rng = np.random.default_rng(4)
    D, G, H, T_, batch = len(dirs), spec.gates, 130, 4, 3
    W, R, B = rng.uniform(-.1, .1, (D, G * H, 5)), rng.uniform(-.1, .1, (D, G * H, H)), rng.uniform(-.1, .1, (D, 2 * G * H))
    X = rng.standard_normal((T_, batch, 5))
    h0 = rng.standard_normal((D, batch, H)) if spec.initial_h else None
    P = rng.uniform(-1, 1, (D, 3 * H)) if spec.peepholes else None
    Y, Yh, Yc = onnx_rnn(cell, X, W, R, B, dirs, spec.activations or None, h0=h0, clip=spec.clip, P=P,
                         lbr=spec.linear_before_reset)
    args = [X.transpose(1, 0, 2) if spec.x_layout == "bti" else X] + cuda.pack_weights(spec, W, R, B)
    args += [h0] if h0 is not None else []
    args += [P.reshape(D, 3, H)] if P is not None else []
    want = []
    if spec.y_layout:
        want.append({"tdbh": Y, "tbdh": Y.transpose(0, 2, 1, 3).reshape(T_, batch, D * H),
                     "btdh": Y.transpose(2, 0, 1, 3).reshape(batch, T_, D * H)}[spec.y_layout])
    for lay, ref in ((spec.yh_layout, Yh), (spec.yc_layout, Yc)):
        if lay:
            want.append({"dbh": ref, "bdh": ref.transpose(1, 0, 2).reshape(batch, D * H)}[lay])
    dev = [tvm.runtime.tensor(np.ascontiguousarray(a, dtype=np.float32)) for a in args + [np.zeros_like(w) for w in want]]
    lib["main"](*dev)
    for got, w in zip(dev[len(args):], want):
        assert np.abs(got.numpy() - w).max() / np.abs(w).max() <= TOL
