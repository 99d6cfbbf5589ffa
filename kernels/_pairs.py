"""Angle pairs moved whole: the even and odd entries of rows of pairs, read and written as contiguous rows.

Mamba-3's rotations act on pairs (2i, 2i + 1) of B, C, k, q and the state. Reading the even entries and the
odd ones apart, every other element, makes each access cover half of every memory sector it touches (for
bfloat16, one 2-byte element at a time). These helpers read a row's entries as one contiguous block and
split it into its even and odd entries in registers (``tl.reshape`` to (rows, pairs, 2), ``tl.split``), and
join them back for a store.
"""

import triton
import triton.language as tl


@triton.jit
def load_pairs(ptr, rows, rows_ok, c0, N, ROWS: tl.constexpr, PAIRS: tl.constexpr):
    """Entries c0 .. c0 + 2 PAIRS - 1 (those below N) of the rows that start at element offsets ``rows``
    (ROWS,): their even and their odd entries, float32 (ROWS, PAIRS) each."""
    c = c0 + tl.arange(0, 2 * PAIRS)
    v = tl.load(ptr + rows[:, None] + c[None, :], mask=rows_ok[:, None] & (c < N)[None, :], other=0.0)
    return tl.split(tl.reshape(v.to(tl.float32), (ROWS, PAIRS, 2)))


@triton.jit
def pairs_block(rows, rows_ok, c0, N, even, odd, ROWS: tl.constexpr, PAIRS: tl.constexpr):
    """``load_pairs``'s inverse, for a store or an atomic add: the offsets, the mask and the values of ``even``
    and ``odd`` (ROWS, PAIRS) put back in place, (ROWS, 2 PAIRS) each."""
    c = c0 + tl.arange(0, 2 * PAIRS)
    return (rows[:, None] + c[None, :], rows_ok[:, None] & (c < N)[None, :],
            tl.reshape(tl.join(even, odd), (ROWS, 2 * PAIRS)))
