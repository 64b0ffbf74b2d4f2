"""Every step of a generation in one TIR PrimFunc: one_to_many's loop, or an encoder-decoder's decoder.

Generated as TVMScript text from a frozen `GenSpec` (like `kernels` does for one layer) and parsed
with `tvm.script.from_source`, batch symbolic and the steps a constant. Per step and batch row:

    x   = Emb'[token] (tokens: the embedding row, folded with layer 0's W x + b, see below)
          or the fed-back head output (features)
    for each layer l: gates = x W_l + h_l R_l + b_l (16 units x all gates of a row tile in
          registers, W and R packed by `kernels.pack`), state update (`cell._act`'s fast tanh and
          sigmoid), x = the new h_l
    logits = x Wd + bd; softmax (a polynomial exp) or the head's activation; argmax (lowest index
          on ties, per lane while the logits are stored, then across the 16 lanes);
          output[b, step, :], generated[b, step], and the next step's input

Folding (`genspec`): for tokens, layer 0's input projection of token v is a row of a constant
table, so a step's first layer gathers a row instead of multiplying.

Serial or parallel. Batch rows never depend on each other, so the rows are cut into an even number
of tiles of at most `batch_tile` rows (16 rows: 4 x 4), one parallel work item each, that run all
of their steps with no barrier at all, each core keeping its own copy of the weights in its L2.
Small batches would leave a core idle that way (batch 1: the other core waits; batch 2: each core
streams all of R for one row), so under `GenSpec.split_below()` (by size: 3 x G x Hp^2 /
SERIAL_BELOW, at most batch_tile + 1) the steps run in one parallel region
(`pragma_parallel_launch_point`): each layer's 16-unit column tiles, all rows in one register
tile, are split across the cores, with a barrier after each layer and after the head
(`pragma_parallel_barrier_when_finish`), so that each core streams half of R. Measured on this
project's 2-core Sapphire Rapids VM, char-level LSTM 256 (vocab 96, 64 steps), us per step, row
tiles / columns split: batch 1 7.4 / 4.8, 2 8.1 / 6.4, 3 11.2 / 8.7, 4 11.8 / 10.3, 5 14.4 / 12.8,
6 14.6 / 14.2 (split_below 6); 16: 31 with row tiles (63 on one core). At LSTM 128 the split wins
10% at batch 1 and loses at 4, at 64 it loses at batch 1 (0.73 / 0.92): under SERIAL_BELOW
multiply-adds a step (as for `kernels`' layers) every batch runs as row tiles, batch 1 serially.
Splitting a one-row tile's k over two accumulators (twice the FMA chains) measured no faster:
one row's step is bound by streaming R from L2, not by FMA latency.

Sequence mode (`GenSpec.sequence`, a stateful spec model streamed in chunks, `fused.streams`):
the same per-step code with `seq` symbolic as well as batch. Step s reads X[b, s] (a token: its
folded table row, or the embedding row multiplied; or the features row) instead of a fed-back
input, starts from H0/C0 and ends with Hn/Cn; many_to_many writes Out[b, s, :] per step (the head
without argmax, or the top layer's h), many_to_one only Out[b, :] from the top layer's final h
(the head once, after the last step). At batch 1 with row tiles the chunk runs on the calling
thread (`serial_one`): a streamed step of one row is too small to pay for waking a second core.

Two TVM 0.27 facts shape the code, as in `kernels`: no scalar is let-bound inside a
`T.vectorized` loop (per-lane temporaries live in the small buffer `v`), and register
accumulators are "global" buffers under 1 KiB, one per row.
"""
from __future__ import annotations

from collections.abc import Callable

from rnnc.compiler.tvm import cell
from rnnc.compiler.tvm.emit import Emitter, prim_func
from rnnc.compiler.tvm.genhead import head, store_out
from rnnc.compiler.tvm.genspec import GenSpec, check, signature
from rnnc.compiler.tvm.spec import LANES

__all__ = ["generate_primfunc", "generate_source"]

_REGION = 'for _region in T.serial(1, annotations={"pragma_parallel_launch_point": 1}):'


def _barrier(name: str) -> str:
    return f'for {name} in T.serial(1, annotations={{"pragma_parallel_barrier_when_finish": 1}}):'



def generate_primfunc(spec: GenSpec, name: str = "generate"):
    """The parsed PrimFunc."""
    import tvm.script

    return tvm.script.from_source(generate_source(spec, name))


def generate_source(spec: GenSpec, name: str = "generate") -> str:
    """TVMScript of the whole generation; its parameters are `signature(spec)`."""
    check(spec)
    e = Emitter()
    with prim_func(e, name, signature(spec), ("batch", "seq") if spec.sequence else ("batch",)):
        e.line(f'Hs = T.alloc_buffer((2, {spec.layers}, batch, {spec.hp}), "float32")')
        if spec.cell == "lstm":
            e.line(f'Cs = T.alloc_buffer(({spec.layers}, batch, {spec.hp}), "float32")')
        if spec.dense:
            e.line(f'Lg = T.alloc_buffer((batch, {spec.np_}), "float32")')
        if spec.sequence is None and spec.tokens:
            e.line('Tok = T.alloc_buffer((batch,), "int64")')
        elif spec.dense:  # the fed-back features, or (sequence mode) the head's scratch
            e.line(f'Xf = T.alloc_buffer((batch, {spec.np_}), "float32")')
        if spec.split_below() > 1:
            with e.block(f"if batch < {spec.split_below()}:"):
                _columns(e, spec)
            with e.block("else:"):
                _rows(e, spec)
        else:
            _rows(e, spec)
    return e.text()


def _rows(e: Emitter, spec: GenSpec) -> None:
    """Row tiles as parallel work items, each running all of its steps: no barrier at all. An even
    number of items of at most `batch_tile` rows, as equal as they come (16 rows: 4 x 4, not
    6 + 6 + 4), so that two cores (or any even count) share the rows evenly."""
    if spec.sequence is not None and spec.serial_one:  # a streamed chunk of one row: no thread launch
        with e.block("if batch == 1:"):
            e.line("b0: T.let[T.int64] = T.int64(0)")
            _row_tile(e, spec, 1)
        with e.block("else:"):
            _row_items(e, spec)
    else:
        _row_items(e, spec)


def _row_items(e: Emitter, spec: GenSpec) -> None:
    bt = spec.batch_tile
    e.line(f"nt: T.let[T.int64] = (batch + {2 * bt - 1}) // {2 * bt} * 2")
    e.line("rt: T.let[T.int64] = (batch + nt - 1) // nt")
    with e.block("for w in T.parallel(nt):"):
        e.line("b0: T.let[T.int64] = w * rt")
        e.line("n: T.let[T.int64] = T.min(rt, batch - b0)")
        for rows, header in _variants(bt, "n == {n}", last="n == 1"):  # n < 1: an item with no rows
            with e.block(header):
                _row_tile(e, spec, rows)


def _row_tile(e: Emitter, spec: GenSpec, rows: int) -> None:
    """Rows b0 .. b0+rows-1, every step: the initial state, the layers and outputs, the final state."""
    with e.block(f"for i in T.serial({rows}):"):
        _init_row(e, spec, "b0 + i")
    with e.block(f"for s in T.serial({_steps(spec)}):"):
        e.line("cur: T.let[T.int64] = s % 2")
        for layer in range(spec.layers):
            with e.block(f"for jo in T.serial({spec.hp // LANES}):"):
                _layer_tile(e, spec, layer, rows)
        _step_out(e, spec, rows)
    if spec.sequence == "many_to_one" and spec.dense:
        e.line(f"cur: T.let[T.int64] = ({_steps(spec)} + 1) % 2")  # 1 - cur: the last h
        head(e, spec, rows)
    if spec.final_state:
        with e.block(f"for i in T.serial({rows}):"):
            _final_row(e, spec, "b0 + i")


def _variants(top: int, test: str, last: str | None = None) -> list[tuple[int, str | None]]:
    """(rows, header) for tiles of top .. 1 rows: `if` / `elif` `test` per size, then for one row
    `elif last`, or `else` where `last` is None (a single size with no `last`: no test at all)."""
    out = []
    for n in range(top, 0, -1):
        cond = test.format(n=n) if n > 1 else last
        out.append((n, ("if " if n == top else "elif ") + f"{cond}:" if cond else ("else:" if top > 1 else None)))
    return out


def _columns(e: Emitter, spec: GenSpec) -> None:
    """One parallel region: per step, each layer's column tiles across the cores (all rows of the
    batch in one register tile), a barrier, then the head per row, a barrier."""
    rows = spec.split_below() - 1
    with e.block(_REGION):
        with e.block(_barrier("_init")), e.block("for b in T.parallel(batch):"):
            _init_row(e, spec, "b")
        with e.block(f"for s in T.serial({_steps(spec)}):"):
            e.line("cur: T.let[T.int64] = s % 2")
            for layer in range(spec.layers):
                with e.block(_barrier(f"_layer{layer}")), e.block(f"for jo in T.parallel({spec.hp // LANES}):"):
                    e.line("b0: T.let[T.int64] = T.int64(0)")
                    for n, header in _variants(rows, "batch == {n}", last="batch == 1"):  # batch 0: none
                        with e.block(header):
                            _layer_tile(e, spec, layer, n)
                            if spec.sequence == "many_to_many" and not spec.dense and layer == spec.layers - 1:
                                _top_out(e, spec, n)
            if spec.sequence is None or (spec.sequence == "many_to_many" and spec.dense):
                with e.block(_barrier("_head")), e.block("for b in T.parallel(batch):"):
                    e.line("b0: T.let[T.int64] = b")
                    head(e, spec, 1)
        if spec.final_state:
            with e.block("for b in T.parallel(batch):"):
                if spec.sequence == "many_to_one" and spec.dense:
                    e.line("b0: T.let[T.int64] = b")
                    e.line(f"cur: T.let[T.int64] = ({_steps(spec)} + 1) % 2")  # 1 - cur: the last h
                    head(e, spec, 1)
                _final_row(e, spec, "b")


def _steps(spec: GenSpec) -> str:
    """The step loop's extent: the constant steps, or (sequence mode) the symbolic seq."""
    return "seq" if spec.sequence else f"T.int64({spec.steps})"


def _step_out(e: Emitter, spec: GenSpec, rows: int) -> None:
    """A step's output after its layers (row tiles): the head (generation, many_to_many with a
    head), the top layer's h (many_to_many without), nothing (many_to_one)."""
    if spec.sequence is None or (spec.sequence == "many_to_many" and spec.dense):
        head(e, spec, rows)
    elif spec.sequence == "many_to_many":
        with e.block(f"for jo in T.serial({spec.hp // LANES}):"):
            _top_out(e, spec, rows)


def _top_out(e: Emitter, spec: GenSpec, rows: int) -> None:
    """Out[b0 + i, s, jo*16 ..] = the top layer's new h of column tile jo (no head)."""
    top = spec.layers - 1
    for i in range(rows):
        store_out(e, spec, f"b0 + {i}", f"Hs[1 - cur, {top}, b0 + {i}, jo * 16 + l]", "jo * 16")


def _init_row(e: Emitter, spec: GenSpec, b: str) -> None:
    h = spec.hidden
    with e.block(f"for l, j in T.grid({spec.layers}, {spec.hp}):"):
        for flag, buf, dst in ((spec.initial_h, "H0", "Hs[0, l, {b}, j]"), (spec.initial_c, "C0", "Cs[l, {b}, j]")):
            if buf == "C0" and spec.cell != "lstm":
                continue
            value = f"T.if_then_else(j < {h}, {buf}[l, {b}, T.min(j, {h - 1})], T.float32(0))" if flag else "T.float32(0)"
            e.line(f"{dst.format(b=b)} = {value}")
    if spec.sequence is not None:  # X is read step by step
        return
    if spec.tokens:
        e.line(f"Tok[{b}] = " + (f"X[{b}]" if spec.start_token is None else f"T.int64({spec.start_token})"))
    else:
        with e.block(f"for k in T.serial({spec.input_size}):"):
            e.line(f"Xf[{b}, k] = X[{b}, k]")


def _final_row(e: Emitter, spec: GenSpec, b: str) -> None:
    last = "seq % 2" if spec.sequence else spec.steps % 2
    with e.block(f"for l, j in T.grid({spec.layers}, {spec.hidden}):"):
        e.line(f"Hn[l, {b}, j] = Hs[{last}, l, {b}, j]")
        if spec.cell == "lstm":
            e.line(f"Cn[l, {b}, j] = Cs[l, {b}, j]")
    if spec.sequence == "many_to_one" and not spec.dense:  # the top layer's final h
        with e.block(f"for j in T.serial({spec.hidden}):"):
            e.line(f"Out[{b}, j] = Hs[{last}, {spec.layers - 1}, {b}, j]")


def _layer_tile(e: Emitter, spec: GenSpec, layer: int, rows: int) -> None:
    """Units jo*16 .. jo*16+15 of layer `layer` for rows b0 .. b0+rows-1: products, then the update."""
    g_, nb = spec.gates, spec.blocks
    col = f"(jo * {g_} + g) * 16 + l"
    folded = layer == 0 and spec.tokens and spec.folded
    tok = "X[b0 + {i}, s]" if spec.sequence else "Tok[b0 + {i}]"
    for i in range(rows):
        e.line(f'acc{i} = T.alloc_buffer(({nb}, 16), "float32")')
        with e.block(f"for g, l in T.grid({g_}, 16):"):
            e.line(f"acc{i}[g, l] = " + (f"Emb[{tok.format(i=i)}, {col}]" if folded else f"B{layer}[{col}]"))
        if spec.cell == "gru":  # n's recurrent part r * (W_hn h + b_hn) stays apart
            with e.block("for l in T.vectorized(16):"):
                e.line(f"acc{i}[3, l] = Rbn{layer}[jo * 16 + l]")
    if not folded:
        if layer:
            x = f"Hs[1 - cur, {layer - 1}, b0 + {{i}}, k]"
        else:
            x = f"Emb[{tok}, k]" if spec.tokens else ("X[b0 + {i}, s, k]" if spec.sequence else "Xf[b0 + {i}, k]")
        depth = spec.hidden if layer else spec.input_size
        _products(e, rows, depth, lambda i: f"{x.format(i=i)} * W{layer}[jo * {g_} + g, k, l]", "g", g_)
    block = "g + g // 2" if spec.cell == "gru" else "g"  # GRU: r, z, then n's recurrent part to block 3
    _products(e, rows, spec.hidden, lambda i: f"Hs[cur, {layer}, b0 + {i}, k] * R{layer}[jo, k, g, l]", block, g_)
    e.line('v = T.alloc_buffer((8, 16), "float32")')
    for i in range(rows):
        with e.block("for l in T.vectorized(16):"):
            e.lines(_update(spec, layer, i))


def _products(e: Emitter, rows: int, depth: int, term: Callable[[int], str], block: str, gates: int) -> None:
    """acc{i}[block(g), l] += sum over k < depth of term(i), g < gates, for rows i < rows: the gemm
    module's `accumulate`, adding to accumulators that start at the bias (or the folded row)."""
    with e.block(f"for k in T.serial({depth}):"):
        for i in range(rows):
            with e.block(f"for g in T.unroll({gates}):"), e.block("for l in T.vectorized(16):"):
                e.line(f"acc{i}[{block}, l] = acc{i}[{block}, l] + {term(i)}")


def _update(spec: GenSpec, layer: int, i: int) -> list[str]:
    """Lane l of row b0 + i: the gates in PyTorch's order, the state update, the new h."""
    j = f"{layer}, b0 + {i}, jo * 16 + l"
    a = [f"acc{i}[{g}, l]" for g in range(spec.blocks)]
    h_new, h_old, c = f"Hs[1 - cur, {j}]", f"Hs[cur, {j}]", f"Cs[{j}]"

    def act(name: str, dst: str, src: str) -> list[str]:
        return cell._act(name, dst, src, "v[{s}, l]")

    if spec.cell == "lstm":  # i, f, g, o
        return (act("Sigmoid", "v[4, l]", a[0]) + act("Sigmoid", "v[5, l]", a[1]) + act("Tanh", "v[6, l]", a[2])
                + [f"{c} = v[5, l] * {c} + v[4, l] * v[6, l]"]
                + act("Sigmoid", "v[4, l]", a[3]) + act("Tanh", "v[5, l]", c) + [f"{h_new} = v[4, l] * v[5, l]"])
    if spec.cell == "gru":  # r, z, n = tanh(W_in x + b_in + r * (W_hn h + b_hn))
        return (act("Sigmoid", "v[4, l]", a[0]) + act("Sigmoid", "v[5, l]", a[1])
                + act("Tanh", "v[6, l]", f"{a[2]} + v[4, l] * {a[3]}")
                + [f"{h_new} = (T.float32(1) - v[5, l]) * v[6, l] + v[5, l] * {h_old}"])
    return act(spec.nonlinearity, h_new, a[0])
