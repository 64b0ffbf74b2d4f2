"""The register-tiled GEMM of the CPU kernels: a layer's input projection and the dense head.

`Out[m, :] = X(m) @ W` for `rows` rows (a symbolic T.int64 in scope), W packed as 16-wide column
panels `[(lead,) panels * panel, K, 16]`. A work item is one register tile: `tile` rows x `panel`
16-wide column blocks, row tiles fastest, so a thread's consecutive items share one panel of W,
which stays in its L2 while X streams past: W (MiBs at H >= 512) comes from memory once, not once
per row tile. The `rows % tile` rows left over are one item, a tile of that many rows: as single-row
items (4 FMAs per 5 loads in a 4-block panel), a 16-row dense head (K 256, N 10,000) took 0.42 ms,
as one 4-row tile 0.37 ms (2-core Sapphire Rapids VM, two threads).

One accumulator buffer per row, "global" scope and under 1 KiB: TVM 0.27's LowerTVMBuiltin keeps
only those on the stack (where LLVM promotes them to registers) and turns "local" ones into a
workspace allocation per work item.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence

from rnnc.compiler.tvm.emit import Emitter

# store(e, i, col): the statements (inside `for c in T.unroll(panel)`) that store row m0 + i,
# column `col` of each 16-lane block, from acc{i}[c, l]
Store = Callable[[Emitter, int, str], None]
# product(e, rows): the statements that leave a tile's sums in acc{i}[c, l], rows i < `rows`
Product = Callable[[Emitter, int], None]


def column_parts(blocks: int, whole: int | None = None) -> list[tuple[int, int, int]]:
    """The 16-wide column blocks of a GEMM as (first block, panel, panels) parts, each one `gemm`.

    Panels of 4 blocks where they fit, the 1-3 blocks left over (and, where `whole` < `blocks`, the
    blocks from the last whole group of 4 on, the padded one among them) as one narrower panel.
    Not the largest panel dividing `blocks`: 10,000 columns are 625 blocks, which only 1 divides,
    and a 6 x 1-block tile does 6 FMAs per 7 loads where a 6 x 4 one does 24 per 10. Measured on
    the 2-core Sapphire Rapids VM, two threads, a language model's head (K 256, N 10,000): 149 ms
    as 1-block panels, 82 ms as 4-block ones (ONNX Runtime's MatMul: 105 ms) at 4,096 rows."""
    whole = blocks if whole is None else whole
    main = whole // 4 * 4
    parts = [(0, 4, main // 4)] if main else []
    return parts + [(main, blocks - main, 1)] if blocks > main else parts


def gemm_columns(e: Emitter, *, columns: int, store: Callable[[Emitter, int, str, bool], None], **kw) -> None:
    """`gemm` over `columns` output columns (W packed to whole 16-wide blocks), one part of
    `column_parts` after the other; `store(e, i, col, whole)` is told whether every column of the
    part is a real one (a vector store) or the part holds the padded block (a guarded one)."""
    blocks = -(-columns // 16)
    for first, panel, panels in column_parts(blocks, columns // 16):
        whole = (first + panel * panels) * 16 <= columns
        gemm(e, panel=panel, panels=panels, first=first, store=lambda e, i, col, whole=whole: store(e, i, col, whole),
             **kw)


def gemm(e: Emitter, *, tile: int, panel: int, panels: int, depth: int, x: Callable[[int], str],
         store: Store, lead: int | None = None, scratch: Sequence[str] = (),
         widen: Callable[[str], str] = lambda w: w, product: Product | None = None, first: int = 0) -> None:
    """The tiled product, its work items in one `T.parallel` loop.

    `first`: the column block the `panels` panels start at (one part of `column_parts`);
    `x(i)`: the element X[m0 + i, k]; `lead`: a leading dimension of W and the output (a layer's
    directions, index `d`), none for the dense head; `scratch`: buffers each work item allocates;
    `widen(w)`: W's element as float32 (W stored below float32, `quant`); `product(e, rows)`: the
    tile's accumulation into acc{i} in place of the float one (VNNI's, `quant.accumulate_vnni`)."""
    if not first:  # the part at block 0 counts the row tiles; the later parts of the GEMM reuse them
        e.line(f"nmt: T.let[T.int64] = rows // {tile}")
        e.line(f"nm: T.let[T.int64] = (rows + {tile - 1}) // {tile}")
    items = f"nm * {panels}" if lead is None else f"{lead} * nm * {panels}"
    with e.block(f"for w in T.parallel({items}):"):
        if lead is None:
            e.line("pn: T.let[T.int64] = w // nm")
        else:
            e.line(f"d: T.let[T.int64] = w // (nm * {panels})")
            e.line(f"pn: T.let[T.int64] = w % (nm * {panels}) // nm")
        e.line("mi: T.let[T.int64] = w % nm")
        e.lines(scratch)
        assert not first or product is None, "a VNNI product indexes W from block 0"
        block = f"{first} + pn * {panel} + c" if first else f"pn * {panel} + c"
        w = f"W[{'' if lead is None else 'd, '}{block}, k, l]"
        with e.block("if mi < nmt:"):
            _tile(e, tile, f"mi * {tile}", panel, depth, x, widen(w), store, product, block)
        for rest in range(1, tile):  # the last item: the rows % tile rows left, one variant per count
            with e.block(f"elif rows % {tile} == {rest}:" if rest < tile - 1 else "else:"):
                _tile(e, rest, f"nmt * {tile}", panel, depth, x, widen(w), store, product, block)


def _tile(e: Emitter, rows: int, m0: str, panel: int, depth: int, x: Callable[[int], str], w: str,
          store: Store, product: Product | None, block: str) -> None:
    e.line(f"m0: T.let[T.int64] = {m0}")
    if product is not None:
        product(e, rows)
    else:
        accumulate(e, rows, panel, "c", depth, lambda i: f"{x(i)} * {w}")
    for i in range(rows):
        with e.block(f"for c in T.unroll({panel}):"):
            store(e, i, f"({block}) * 16 + l")


def accumulate(e: Emitter, rows: int, width: int, var: str, depth: int, term: Callable[[int], str]) -> None:
    """`acc{i}[var, l] = sum over k < depth of term(i)` for rows i < `rows`, in registers: one
    accumulator of `width` 16-lane blocks per row ("global" scope, see above). Both register tiles
    of the CPU kernels are this: the GEMM's (X @ W) and the recurrent step's (H @ R)."""
    for i in range(rows):
        e.line(f'acc{i} = T.alloc_buffer(({width}, 16), "float32")')
        with e.block(f"for {var}, l in T.grid({width}, 16):"):
            e.line(f"acc{i}[{var}, l] = T.float32(0)")
    with e.block(f"for k in T.serial({depth}):"):
        for i in range(rows):
            with e.block(f"for {var} in T.unroll({width}):"), e.block("for l in T.vectorized(16):"):
                e.line(f"acc{i}[{var}, l] = acc{i}[{var}, l] + {term(i)}")
